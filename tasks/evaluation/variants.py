"""Table A9's RAD variants (SPEC §7), arms a profile switches on: MedDr's own vision encoder as the retriever, and
"voting" over the retrieved cases' labels (reports: the top-1 retrieved report).

    rows = variant_predictions(test, train, card, generalist, generation, arms, db_dir, k=5, batch_size=16)

Diagnosis: MedDr+RAD(MedDr-encoder) asks the +RAD prompt with the encoder-retrieved cases' labels; RAD-Voting votes on
those labels (tasks/rad/voting.py). VQA: the encoder arm appends the retrieved images' question-answer pairs to the
VQA prompt (no voting: the paper defines none). Reports: the encoder arm appends the retrieved findings; RAD-Voting is
the top-1 retrieved report. `train` must hold the reference text the report is scored on (findings only).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pyarrow as pa

from data_contracts.cards import DataCard
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks import prompts
from tasks.evaluation.arms import _generate, _rows, arm_prompt
from tasks.evaluation.parsing import parse_answer
from tasks.evaluation.settings import ENCODER_RAD_ARM, RAD_VOTING_ARM
from tasks.rad.encoder import build_encoder_index, encoder_neighbours
from tasks.rad.voting import rad_vote

# an encoder table is small next to a specialist fan-out: the RAD defaults (exact search below 50k rows)
ANN_MIN_ROWS = 50_000


def _truth_and_texts(test: pl.DataFrame, card: DataCard) -> list[list[str]]:
    if card.task_kind == "diagnosis":
        return test["labels"].to_list()
    if card.task_kind == "vqa":
        return [[a] for a in test["answer"].to_list()]
    return [[t] for t in test["text"].to_list()]


def _diagnosis(test, card, generalist, settings, arm, neighbours, batch_size) -> list[dict]:
    ids, multilabel = test["sample_id"].to_list(), card.task_type == "multilabel"
    truth = _truth_and_texts(test, card)
    if arm == RAD_VOTING_ARM:
        voted = [rad_vote([n.labels for n in neighbours[s]], card.labels, multilabel) for s in ids]
        return _rows(card.name, arm, "diagnosis", ids, truth, voted, None, [False] * len(ids), None)
    texts = [arm_prompt("MedDr+RAD", card.modality, card.labels, multilabel, None,
                        [lab for n in neighbours[s] for lab in n.labels]) for s in ids]
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    parsed = [parse_answer(a, card.labels, multilabel, synonyms=card.synonyms) for a in answers]
    return _rows(card.name, arm, "diagnosis", ids, truth, [p.labels for p in parsed], answers,
                 [p.failed for p in parsed], texts)


def _text_task(test, card, generalist, settings, arm, neighbours, batch_size) -> list[dict]:
    ids, kind = test["sample_id"].to_list(), card.task_kind
    truth = _truth_and_texts(test, card)
    retrieved = {s: [n.text for n in neighbours[s]] for s in ids}
    types = test["answer_type"].to_list() if kind == "vqa" else None
    if arm == RAD_VOTING_ARM:   # reports only: the top-1 retrieved report (Table A9)
        top = [retrieved[s][0] for s in ids]
        return _rows(card.name, arm, kind, ids, truth, [[t] for t in top], top, [False] * len(ids), None, types)
    if kind == "vqa":
        texts = [prompts.vqa_rad_prompt(q, retrieved[s]) for q, s in zip(test["question"].to_list(), ids)]
    else:
        texts = [prompts.mrg_rad_prompt(retrieved[s]) for s in ids]
    answers = _generate(generalist, test["image"].to_list(), texts, settings, batch_size)
    return _rows(card.name, arm, kind, ids, truth, [[a] for a in answers], answers, [False] * len(ids), texts, types)


def variant_arms(card: DataCard, arms: Sequence[str]) -> list[str]:
    """The Table A9 arms among `arms` that apply to the card's task (no voting on VQA, none on multiple choice)."""
    if card.task_type == "multiple-choice":
        return []
    return [a for a in arms if a == ENCODER_RAD_ARM or (a == RAD_VOTING_ARM and card.task_kind != "vqa")]


def variant_predictions(test: pl.DataFrame, train: pl.DataFrame, card: DataCard, generalist, settings,
                        arms: Sequence[str], db_dir: Path, k: int, batch_size: int = 16) -> pl.DataFrame:
    """Per-sample predictions of the requested Table A9 arms on one test split (empty when none applies)."""
    wanted = variant_arms(card, arms)
    rows: list[dict] = []
    if wanted:
        build_encoder_index(generalist, card.name, train, card.task_kind, db_dir, ann_min_rows=ANN_MIN_ROWS,
                            index_params={})
        neighbours = encoder_neighbours(generalist, card.name, test, db_dir, k)
        fn = _diagnosis if card.task_kind == "diagnosis" else _text_task
        for arm in wanted:
            rows += fn(test, card, generalist, settings, arm, neighbours, batch_size)
    return pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))
