"""The profile's `evaluation` section: which datasets and arms, RAD's k, decoding per task type, bootstrap, the
Table A7 datasets and the local weights of the model-based report metrics.

    evaluation: {datasets: null, arms: [MedDr, MedDr+MoED, MedDr+RAD, GSCo], rad_k: 5, bootstrap: 1000}
    arms: [..., MedDr+RAD(MedDr-encoder), RAD-Voting]      # Table A9's variants, when a profile wants them
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
# Table A9's variants (SPEC §7), switched on by a profile: RAD with MedDr's own vision encoder as the retriever, and
# the retrieved cases' labels voted on without the generalist
ENCODER_RAD_ARM = "MedDr+RAD(MedDr-encoder)"
RAD_VOTING_ARM = "RAD-Voting"
RAD_VARIANT_ARMS = (ENCODER_RAD_ARM, RAD_VOTING_ARM)
# Table A7's nine datasets (SPEC §7)
PAPER_A7_DATASETS = ["pcam200", "dermnet", "ham10000", "retinal_oct_c8", "vindr_spinexr", "pneumoniamnist",
                     "breastmnist", "cbis_ddsm_calc", "pathmnist"]


def _arm(name: str) -> str:
    if name not in GENERALIST_ARMS and name not in RAD_VARIANT_ARMS:
        raise ValueError(f"unknown arm {name!r}; expected one of {[*GENERALIST_ARMS, *RAD_VARIANT_ARMS]}")
    return name


Arm = Annotated[str, AfterValidator(_arm)]


class TaskGeneration(Settings):
    """Decoding per task type: a diagnosis answer is a few label names, a report is a paragraph (never cut short)."""
    diagnosis: GenerationSettings = GenerationSettings(max_new_tokens=32)
    vqa: GenerationSettings = GenerationSettings(max_new_tokens=32)
    multiple_choice: GenerationSettings = GenerationSettings(max_new_tokens=16)
    report: GenerationSettings = GenerationSettings(max_new_tokens=256)

    def for_task(self, task_kind: str, task_type: str) -> GenerationSettings:
        """The decoding settings of a dataset's task (multiple choice apart from open VQA)."""
        if task_type == "multiple-choice":
            return self.multiple_choice
        return {"diagnosis": self.diagnosis, "vqa": self.vqa, "report": self.report}[task_kind]


class ReportMetricWeights(Settings):
    """Local weights for the model-based report metrics; null: reported as not computed (never 0)."""
    radgraph: str | None = None            # F1-RadGraph (the `radgraph` package's model folder)
    chexbert: str | None = None            # CheXbert vector similarity (the `f1chexbert` package's checkpoint)


class EvaluationSettings(Settings):
    datasets: DatasetNames = None          # null: every benchmark dataset ingested (diagnosis, VQA, report)
    arms: list[Arm] = list(GENERALIST_ARMS)
    rad_k: PositiveInt = 5                 # retrieved cases per query (paper: "the five most similar cases")
    paraphrase: int = Field(0, ge=0, le=3)   # which of the four Fig. A4 paraphrases
    batch_size: PositiveInt = 16
    bootstrap: NonNegativeInt = 1000       # resamples per CI (0: point values only)
    seed: int = 0
    generation: TaskGeneration = TaskGeneration()
    a7_datasets: list[str] = Field(default_factory=lambda: list(PAPER_A7_DATASETS))   # Table A7's average
    report_metrics: ReportMetricWeights = ReportMetricWeights()
    title: str = "GSCo benchmark"
