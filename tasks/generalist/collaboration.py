"""Collaboration instructions: GSCo-format diagnosis prompts built from *training-data* references (a corpus option).

    table = collaboration_rows(samples, moed, rad, arms=["GSCo"], paraphrase=0)   # INSTRUCTIONS_SCHEMA rows

The paper's GSCo is training-free: MedDr meets the Fig. A4 prompt with references only at test time. A profile may
instead show the generalist that prompt during fine-tuning (corpus.collaboration), which a small model needs before
it can use references at all. Honest by construction: the rows come from train/val samples only, MoED is what the
specialists predicted on *that* sample, RAD the labels of its nearest *other* training cases (the sample itself is
never its own neighbour), and the answer is the sample's true label. The report names the option when it is on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import polars as pl
import pyarrow as pa

from data_contracts.instructions import INSTRUCTIONS_SCHEMA, image_digest
from tasks import prompts

# arm -> (shows MoED, shows RAD), the ablation arms of Table A7 ("MedDr": the plain diagnosis prompt, for the sets
# whose CLS rows are not in the corpus)
ARM_REFERENCES = {"MedDr": (False, False), "MedDr+MoED": (True, False), "MedDr+RAD": (False, True),
                  "GSCo": (True, True)}


def sample_arms(arms: Sequence[str], index: int, per_sample: str) -> list[str]:
    """The arms the `index`-th sample gets rows for: all of them, or "MedDr" (if listed) + one reference arm in turn."""
    if per_sample == "all":
        return list(arms)
    if per_sample != "rotate":
        raise ValueError(f"per_sample: expected 'all' or 'rotate', got {per_sample!r}")
    plain = [a for a in arms if a == "MedDr"]
    refs = [a for a in arms if a != "MedDr"]
    return plain + ([refs[index % len(refs)]] if refs else [])


def collaboration_rows(samples: pl.DataFrame, moed: Mapping[str, Sequence[str]], rad: Mapping[str, Sequence[str]],
                       arms: Sequence[str], paraphrase: int = 0, per_sample: str = "all") -> pl.DataFrame:
    """One instruction row per (sample, arm): the arm's Fig. A4 prompt with the sample's references, answered with
    its true labels, referring to the sample's own image. `samples`: train/val diagnosis rows (sample_id, dataset,
    split, image, modality, label_set, labels, task_type); `moed` / `rad`: sample id -> reference label names
    (every sample must have both it needs)."""
    rows = []
    for index, r in enumerate(samples.iter_rows(named=True)):
        if r["split"] not in ("train", "val"):
            raise ValueError(f"{r['sample_id']}: collaboration rows come from train/val samples only, got "
                             f"split {r['split']!r}")
        sid, digest = r["sample_id"], image_digest(r["image"])
        for arm in sample_arms(arms, index, per_sample):
            if arm not in ARM_REFERENCES:
                raise ValueError(f"collaboration arm {arm!r}: expected one of {list(ARM_REFERENCES)}")
            use_moed, use_rad = ARM_REFERENCES[arm]
            if (use_moed and not moed.get(sid)) or (use_rad and not rad.get(sid)):
                raise ValueError(f"{sid}: arm {arm} needs {'MoED' if use_moed else 'RAD'} references, none given")
            text = prompts.diagnosis_prompt(r["modality"], r["label_set"], r["task_type"] == "multilabel",
                                            rad=list(rad[sid]) if use_rad else None,
                                            moed=list(moed[sid]) if use_moed else None, paraphrase=paraphrase)
            rows.append({"sample_id": f"collaboration:{arm}:{sid}", "image_sample_id": sid, "image_digest": digest,
                         "instruction": text, "answer": prompts.OPTION_SEP.join(r["labels"]),
                         "source_dataset": r["dataset"], "task_kind": "collaboration", "split": r["split"]})
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=INSTRUCTIONS_SCHEMA))
