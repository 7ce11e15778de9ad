"""The GSCo arms (SPEC §7): per-sample predictions of MedDr alone, +MoED, +RAD, GSCo, Voting and every specialist on
a benchmark test split, and MedDr's answers on VQA and report sets.

    preds = diagnosis_predictions(test, card, generalist, generation, specialist_preds, rad_refs)

Arms on diagnosis sets: MedDr alone, MedDr+MoED (the specialists' predicted label names), MedDr+RAD (labels of the
top-k retrieved training cases), GSCo (both) with the Fig. A4 prompt; Voting over the specialists; every specialist
alone. VQA and report sets are answered by MedDr alone; a multiple-choice set (OmniMedVQA) shows the lettered options
and maps the answer to one by letter or text. Table A9's variants are tasks/evaluation/variants.py. Predictions are
kept per sample (data_contracts/predictions.py), so every number can be recomputed from the predictions table without
running a model.
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from data_contracts.cards import DataCard
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks import prompts
from tasks.evaluation.parsing import parse_answer
from tasks.evaluation.settings import GENERALIST_ARMS
from tasks.evaluation.voting import vote

def moed_reference(specialist_preds: Mapping[str, Mapping[str, Sequence[str]]], sample_id: str) -> list[str]:
    """MoED reference answers for one sample: each specialist's predicted label names, in architecture order."""
    out: list[str] = []
    for arch in specialist_preds:
        out.extend(specialist_preds[arch][sample_id])
    return out


def arm_prompt(arm: str, modality: str, label_set: Sequence[str], multilabel: bool, moed: Sequence[str] | None,
               rad: Sequence[str] | None, paraphrase: int = 0) -> str:
    """The diagnosis prompt of one ablation arm (the missing sentence dropped)."""
    use_moed, use_rad = GENERALIST_ARMS[arm]
    return prompts.diagnosis_prompt(modality, label_set, multilabel, rad=list(rad) if use_rad else None,
                                    moed=list(moed) if use_moed else None, paraphrase=paraphrase)


def _generate(generalist, images: list[bytes], texts: list[str], settings, batch_size: int) -> list[str]:
    out: list[str] = []
    for i in range(0, len(texts), batch_size):
        out.extend(generalist.generate(images[i:i + batch_size], texts[i:i + batch_size], settings))
    return out


def _rows(dataset: str, method: str, kind: str, ids, truth, pred, answers, failed, prompts_, answer_types=None,
          groups=None):
    n = len(ids)
    return [{"dataset": dataset, "method": method, "sample_id": ids[i], "task_kind": kind, "truth": list(truth[i]),
             "prediction": list(pred[i]), "answer_text": answers[i] if answers else None,
             "parse_failed": bool(failed[i]), "answer_type": answer_types[i] if answer_types else None,
             "prompt": prompts_[i] if prompts_ else None, "group": groups[i] if groups else None} for i in range(n)]


def diagnosis_predictions(test: pl.DataFrame, card: DataCard, generalist, settings,
                          specialist_preds: Mapping[str, Mapping[str, Sequence[str]]],
                          rad_refs: Mapping[str, Sequence[str]] | None, arms: Sequence[str] = tuple(GENERALIST_ARMS),
                          batch_size: int = 16, paraphrase: int = 0) -> pl.DataFrame:
    """Per-sample predictions of every generalist arm, Voting and each specialist on a diagnosis test split."""
    multilabel = card.task_type == "multilabel"
    ids = test["sample_id"].to_list()
    truth = test["labels"].to_list()
    images = test["image"].to_list()
    rows: list[dict] = []
    for arm in arms:
        use_moed, use_rad = GENERALIST_ARMS[arm]
        if use_moed and not specialist_preds:
            raise ValueError(f"{card.name}: arm {arm} needs specialist predictions (MoED), none were given")
        if use_rad and rad_refs is None:
            raise ValueError(f"{card.name}: arm {arm} needs retrieved neighbours (RAD), none were given")
        texts = [arm_prompt(arm, card.modality, card.labels, multilabel,
                            moed_reference(specialist_preds, s) if use_moed else None,
                            rad_refs[s] if use_rad else None, paraphrase) for s in ids]
        answers = _generate(generalist, images, texts, settings, batch_size)
        parsed = [parse_answer(a, card.labels, multilabel, synonyms=card.synonyms) for a in answers]
        rows += _rows(card.name, arm, "diagnosis", ids, truth, [p.labels for p in parsed], answers,
                      [p.failed for p in parsed], texts)
    if specialist_preds:
        voted = [vote([specialist_preds[a][s] for a in specialist_preds], multilabel, card.labels) for s in ids]
        rows += _rows(card.name, "Voting", "diagnosis", ids, truth, voted, None, [False] * len(ids), None)
        for arch, preds in specialist_preds.items():
            rows += _rows(card.name, f"specialist:{arch}", "diagnosis", ids, truth, [preds[s] for s in ids], None,
                          [False] * len(ids), None)
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


def vqa_predictions(test: pl.DataFrame, card: DataCard, generalist, settings, batch_size: int = 16) -> pl.DataFrame:
    """MedDr's answers to a VQA test split (VQA template of Fig. A3)."""
    ids = test["sample_id"].to_list()
    texts = [prompts.vqa_prompt(q) for q in test["question"].to_list()]
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    # VQA-Med writes accepted alternatives as "a#b": each is a truth the scorer accepts
    truth = [a.split("#") if card.raw.format == "vqa_med_txt" else [a] for a in test["answer"].to_list()]
    rows = _rows(card.name, "MedDr", "vqa", ids, truth, [[a] for a in answers], answers, [False] * len(ids), texts,
                 test["answer_type"].to_list())
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


def option_letters(options: Sequence[str]) -> dict[str, str]:
    """A question's options by letter, A, B, C, ... in the order the benchmark lists them."""
    if len(options) > 26:
        raise ValueError(f"at most 26 options can be lettered, got {len(options)}")
    return {chr(ord("A") + i): o for i, o in enumerate(options)}


def multiple_choice_predictions(test: pl.DataFrame, card: DataCard, generalist, settings,
                                batch_size: int = 16) -> pl.DataFrame:
    """MedDr's choices on a multiple-choice set (OmniMedVQA): the options shown in the prompt, the answer mapped to
    an option by letter or text; truth and prediction are option letters, group = the question's modality."""
    from tasks.evaluation.parsing import parse_choice

    ids = test["sample_id"].to_list()
    options = [option_letters(o) for o in test["label_set"].to_list()]
    truth = []
    for sid, opts, answer in zip(ids, options, test["answer"].to_list()):
        letters = [k for k, v in opts.items() if v == answer]
        if not letters:
            raise ValueError(f"{card.name} sample {sid}: answer {answer!r} is not one of its options {opts}")
        truth.append([letters[0]])
    texts = [prompts.multiple_choice_prompt(q, o) for q, o in zip(test["question"].to_list(), options)]
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    parsed = [parse_choice(a, o) for a, o in zip(answers, options)]
    rows = _rows(card.name, "MedDr", "vqa", ids, truth, [[p.letter] if p.letter else [] for p in parsed], answers,
                 [p.failed for p in parsed], texts, test["answer_type"].to_list(), test["modality"].to_list())
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


def report_predictions(test: pl.DataFrame, card: DataCard, generalist, settings,
                       batch_size: int = 16) -> pl.DataFrame:
    """MedDr's generated reports for a report test split (MRG template of Fig. A3)."""
    ids = test["sample_id"].to_list()
    texts = [prompts.mrg_prompt()] * len(ids)
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    rows = _rows(card.name, "MedDr", "report", ids, [[t] for t in test["text"].to_list()], [[a] for a in answers],
                 answers, [False] * len(ids), texts)
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))


def specialist_predictions(path: Path, card: DataCard) -> dict[str, list[str]]:
    """Sample id -> predicted label names from a specialist job's test_predictions.jsonl (empty multilabel -> the
    label set's "No finding")."""
    out = {}
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        labels = list(r["predicted"])
        if not labels and "No finding" in card.labels:
            labels = ["No finding"]
        out[r["sample_id"]] = labels
    return out
