"""Scoring hand-made predictions tables: multiple-choice accuracy per modality, paired P-values on every task kind.

    OMP_NUM_THREADS=1 pytest -q tests/test_scoring.py
"""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from data_contracts.cards import get_card
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks.evaluation.bootstrap import MEAN
from tasks.evaluation.report_tables import validated
from tasks.evaluation.scoring import metrics_from_predictions, paired_pvalues

CARDS = {n: get_card(n) for n in ("omnimedvqa", "vqa_rad", "iu_xray", "pneumoniamnist")}
N_BOOT = 200


def _frame(dataset: str, kind: str, method: str, truth: list, preds: list, groups=None, failed=None,
           ids=None) -> list[dict]:
    ids = ids or [f"{dataset}:{i}" for i in range(len(truth))]
    return [{"dataset": dataset, "method": method, "sample_id": ids[i], "task_kind": kind, "truth": truth[i],
             "prediction": preds[i], "answer_text": None, "parse_failed": bool(failed[i]) if failed else False,
             "answer_type": None, "prompt": None, "group": groups[i] if groups else None} for i in range(len(truth))]


def _table(*parts: list[dict]) -> pl.DataFrame:
    return pl.from_arrow(pa.Table.from_pylist([r for p in parts for r in p], schema=PREDICTIONS_SCHEMA))


def _rows(m: pl.DataFrame, dataset: str, metric: str) -> dict[str, dict]:
    return {r["method"]: r for r in m.filter((pl.col("dataset") == dataset) & (pl.col("metric") == metric))
            .iter_rows(named=True)}


# ------------------------------------------------------------------------------------------------- multiple choice
CHOICE_TRUTH = [["A"], ["B"], ["C"], ["D"], ["A"], ["B"], ["C"], ["D"], ["A"], ["B"]]
CHOICE_GROUPS = ["CT"] * 4 + ["MRI"] * 6
# CT: 3 of 4 right ("b" in lower case still names option B); MRI: 3 of 6 right, one answer named no option
MEDDR_CHOICES = [["A"], ["b"], ["C"], ["A"], ["A"], ["B"], ["C"], ["A"], [], ["C"]]
MEDDR_FAILED = [False] * 8 + [True, False]


def _choice_table() -> pl.DataFrame:
    return _table(_frame("omnimedvqa", "vqa", "MedDr", CHOICE_TRUTH, MEDDR_CHOICES, CHOICE_GROUPS, MEDDR_FAILED),
                  _frame("omnimedvqa", "vqa", "generalist:rival", CHOICE_TRUTH, CHOICE_TRUTH, CHOICE_GROUPS))


def test_multiple_choice_overall_and_per_modality():
    m = metrics_from_predictions(_choice_table(), CARDS, n_boot=N_BOOT)
    meddr = {r["metric"]: r for r in m.filter(pl.col("method") == "MedDr").iter_rows(named=True)}
    assert list(meddr) == ["accuracy", "accuracy[CT]", "accuracy[MRI]"]
    assert meddr["accuracy"]["value"] == pytest.approx(0.6)
    assert meddr["accuracy[CT]"]["value"] == pytest.approx(0.75)
    assert meddr["accuracy[MRI]"]["value"] == pytest.approx(0.5)
    assert [meddr[k]["n"] for k in meddr] == [10, 4, 6]
    assert [meddr[k]["parse_failure_rate"] for k in meddr] == pytest.approx([0.1, 0.0, 1 / 6])
    for r in meddr.values():
        assert r["headline"] == "accuracy" and r["ci_low"] <= r["value"] <= r["ci_high"]
    rival = _rows(m, "omnimedvqa", "accuracy")["generalist:rival"]
    assert rival["value"] == 1.0 and rival["p_value_vs_best"] is None          # the best method
    assert 0 < meddr["accuracy"]["p_value_vs_best"] <= 1                      # paired test on the headline only
    assert meddr["accuracy[CT]"]["p_value_vs_best"] is None
    validated(m)   # per-modality rows carry their own parse-failure rates: still a valid metrics table


def test_multiple_choice_truth_must_be_one_letter():
    bad = _table(_frame("omnimedvqa", "vqa", "MedDr", [["A", "B"]], [["A"]]))
    with pytest.raises(ValueError, match=r"omnimedvqa/MedDr sample 'omnimedvqa:0': truth must be \[correct option"):
        metrics_from_predictions(bad, CARDS, n_boot=0)


# ------------------------------------------------------------------------------------------------------ P-values
def test_paired_pvalue_exact_cases():
    right, wrong = np.ones(12), np.zeros(12)
    ids = [f"s{i}" for i in range(12)]
    # every per-sample difference is 1: each resample's difference equals the observed one, so only the add-one
    # smoothing term counts as extreme: p = 1 / (1 + resamples)
    best, p = paired_pvalues(MEAN, {"a": (ids, (right,)), "b": (ids, (wrong,))}, n_boot=N_BOOT)
    assert best == "a" and p == {"b": 1 / (N_BOOT + 1)}
    # identical arms: every resample is as extreme as an observed difference of 0
    assert paired_pvalues(MEAN, {"a": (ids, (right,)), "b": (ids, (right,))}, n_boot=N_BOOT)[1] == {"b": 1.0}
    assert paired_pvalues(MEAN, {"a": (ids, (right,))}, n_boot=N_BOOT) == (None, {})
    assert paired_pvalues(MEAN, {"a": (ids, (right,)), "b": (ids, (wrong,))}, n_boot=0) == (None, {})
    # samples are matched by id, not by position: b scored in reverse order, and on one sample fewer
    rev = list(reversed(ids))[:-1]
    assert paired_pvalues(MEAN, {"a": (ids, (right,)), "b": (rev, (wrong[:-1],))}, n_boot=N_BOOT)[1] == \
        {"b": 1 / (N_BOOT + 1)}


VQA_TRUTH = [["yes"], ["no"], ["left lung"], ["right kidney"]]


def test_vqa_pvalues_on_token_f1():
    # MedDr: F1 1, 1, 1 and 2/3 ("kidney": precision 1, recall 1/2); the rival is wrong everywhere (F1 0)
    meddr = _frame("vqa_rad", "vqa", "MedDr", VQA_TRUTH, [["yes"], ["no"], ["left lung"], ["kidney"]])
    rival = _frame("vqa_rad", "vqa", "generalist:rival", VQA_TRUTH, [["no"], ["yes"], ["heart"], ["liver"]])
    m = metrics_from_predictions(_table(meddr, list(reversed(rival))), CARDS, n_boot=N_BOOT)
    f1 = _rows(m, "vqa_rad", "F1")
    assert f1["MedDr"]["value"] == pytest.approx(11 / 12) and f1["generalist:rival"]["value"] == 0
    assert f1["MedDr"]["p_value_vs_best"] is None and f1["MedDr"]["headline"] == "F1"
    # resampled differences lie in [2/3, 1]: never 11/12 away from the observed one, so only the smoothing term
    assert f1["generalist:rival"]["p_value_vs_best"] == pytest.approx(1 / (N_BOOT + 1))
    assert _rows(m, "vqa_rad", "BLEU-1")["generalist:rival"]["p_value_vs_best"] is None
    # row order does not matter: the same table sorted gives the same numbers
    again = metrics_from_predictions(_table(meddr, rival), CARDS, n_boot=N_BOOT)
    assert again.equals(m)


def test_report_pvalues_on_rouge_l_and_local_scorers():
    refs = [["no acute cardiopulmonary process"], ["heart size normal lungs clear"], ["small left effusion"]]
    meddr = _frame("iu_xray", "report", "MedDr", refs, refs)
    rival = _frame("iu_xray", "report", "generalist:rival", refs, [["zzz"], ["qqq"], ["www"]])
    # a RadGraph scorer from local weights: 1 when the report equals its reference, else 0.25
    radgraph = lambda h, r: [1.0 if a == b else 0.25 for a, b in zip(h, r)]   # noqa: E731
    m = metrics_from_predictions(_table(meddr, rival), CARDS, n_boot=N_BOOT, report_scorers={"radgraph": radgraph})
    rouge = _rows(m, "iu_xray", "ROUGE-L")
    assert rouge["MedDr"]["value"] == 1.0 and rouge["generalist:rival"]["value"] == 0.0
    assert rouge["MedDr"]["p_value_vs_best"] is None and rouge["MedDr"]["headline"] == "ROUGE-L"
    assert rouge["generalist:rival"]["p_value_vs_best"] == pytest.approx(1 / (N_BOOT + 1))
    graph = _rows(m, "iu_xray", "F1-RadGraph")
    assert graph["MedDr"]["value"] == 1.0 and graph["generalist:rival"]["value"] == 0.25
    chexbert = _rows(m, "iu_xray", "CheXbert")["generalist:rival"]   # no weights: not computed, never 0
    assert chexbert["value"] is None and chexbert["note"] and chexbert["p_value_vs_best"] is None


def test_diagnosis_pvalues_with_a_sample_missing_and_no_resamples():
    truth = [["normal"], ["pneumonia"]] * 5
    perfect = _frame("pneumoniamnist", "diagnosis", "GSCo", truth, truth)
    # the specialist lost its last sample: compared with GSCo on the nine both answered
    spec = _frame("pneumoniamnist", "diagnosis", "specialist:resnet18", truth[:9], [["normal"]] * 9)
    m = metrics_from_predictions(_table(perfect, spec), CARDS, n_boot=N_BOOT)
    acc = _rows(m, "pneumoniamnist", "accuracy")
    assert acc["specialist:resnet18"]["value"] == pytest.approx(5 / 9) and acc["specialist:resnet18"]["n"] == 9
    assert acc["GSCo"]["p_value_vs_best"] is None and 0 < acc["specialist:resnet18"]["p_value_vs_best"] < 1
    none = metrics_from_predictions(_table(perfect, spec), CARDS, n_boot=0)
    assert none["p_value_vs_best"].is_null().all() and none["value"].is_not_null().all()


def test_unknown_dataset_is_named():
    with pytest.raises(KeyError, match="dataset 'nowhere' has no data card"):
        metrics_from_predictions(_table(_frame("nowhere", "vqa", "MedDr", [["a"]], [["a"]])), CARDS, n_boot=0)


def test_scored_tables_render(tmp_path):
    from tasks.evaluation.report import render_report
    truth = [["normal"], ["pneumonia"]] * 5
    preds = _table(_choice_table().to_dicts(), _frame("pneumoniamnist", "diagnosis", "GSCo", truth, truth),
                   _frame("pneumoniamnist", "diagnosis", "specialist:resnet18", truth, [["normal"]] * 10))
    m = metrics_from_predictions(preds, CARDS, n_boot=N_BOOT)
    md = render_report(m, tmp_path, "t", generated_at=False, a7_datasets=["pneumoniamnist"])["report.md"].read_text()
    assert "| Method | CT (n=4) | MRI (n=6) | Overall (n=10) |" in md
    assert "MedDr on omnimedvqa: 10.0% of answers" not in md   # 10% is not above the limit
    assert "Best specialist: specialist:resnet18" in md
