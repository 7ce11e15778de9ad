"""The profile's `evaluation` section: which datasets and arms, RAD's k, decoding, bootstrap.

    evaluation: {datasets: null, arms: [MedDr, MedDr+MoED, MedDr+RAD, GSCo], rad_k: 5, bootstrap: 1000}
"""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, NonNegativeInt, PositiveInt

from tasks.generalist.settings import GenerationSettings
from tasks.ingest.settings import DatasetNames
from tasks.settings import Settings

# the generalist arms of the ablation (Table A7): arm -> (uses MoED, uses RAD)
GENERALIST_ARMS: dict[str, tuple[bool, bool]] = {
    "MedDr": (False, False), "MedDr+MoED": (True, False), "MedDr+RAD": (False, True), "GSCo": (True, True)}


def _arm(name: str) -> str:
    if name not in GENERALIST_ARMS:
        raise ValueError(f"unknown arm {name!r}; expected one of {list(GENERALIST_ARMS)}")
    return name


Arm = Annotated[str, AfterValidator(_arm)]


class EvaluationSettings(Settings):
    datasets: DatasetNames = None          # null: every benchmark dataset ingested (diagnosis, VQA, report)
    arms: list[Arm] = list(GENERALIST_ARMS)
    rad_k: PositiveInt = 5                 # retrieved cases per query (paper: "the five most similar cases")
    paraphrase: int = Field(0, ge=0, le=3)   # which of the four Fig. A4 paraphrases
    batch_size: PositiveInt = 16
    bootstrap: NonNegativeInt = 1000       # resamples per CI (0: point values only)
    seed: int = 0
    generation: GenerationSettings = GenerationSettings()
    title: str = "GSCo benchmark"
