"""Evaluation: ablation-arm prompts, per-sample predictions -> metrics with CIs and P-values, Voting, no model run."""
from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from data_contracts.cards import get_card
from data_contracts.predictions import PREDICTIONS_SCHEMA
from tasks import prompts
from tasks.evaluation.arms import arm_prompt, diagnosis_predictions, moed_reference
from tasks.evaluation.scoring import metrics_from_predictions
from tasks.evaluation.settings import GENERALIST_ARMS

CARD = get_card("pneumoniamnist")


def test_arm_prompts_drop_the_missing_sentences():
    moed, rad = ["pneumonia", "normal"], ["pneumonia", "pneumonia", "normal"]
    texts = {a: arm_prompt(a, "chest X-ray", CARD.labels, False, moed, rad) for a in GENERALIST_ARMS}
    rad_s = "The diagnoses of the most similar cases are pneumonia,pneumonia,normal."
    moed_s = "The reference answers by other models are pneumonia,normal."
    assert rad_s not in texts["MedDr"] and moed_s not in texts["MedDr"]
    assert moed_s in texts["MedDr+MoED"] and rad_s not in texts["MedDr+MoED"]
    assert rad_s in texts["MedDr+RAD"] and moed_s not in texts["MedDr+RAD"]
    assert rad_s in texts["GSCo"] and moed_s in texts["GSCo"]
    assert texts["GSCo"] == prompts.diagnosis_prompt("chest X-ray", CARD.labels, False, rad, moed)
    assert texts["GSCo"].endswith("The response should only contain one option.")


class Scripted:
    """A generalist whose answer depends on the prompt: follows MoED when given, else says 'normal'."""
    id = "scripted@1"

    def generate(self, images, texts, settings):
        out = []
        for t in texts:
            if "reference answers by other models are " in t:
                out.append("The answer is " + t.split("reference answers by other models are ")[1].split(",")[0]
                           .split(".")[0])
            else:
                out.append("normal")
        return out


def _test_frame(n=40):
    rows = []
    for i in range(n):
        rows.append({"sample_id": f"p:{i}", "image": b"", "labels": ["pneumonia" if i % 2 else "normal"]})
    return pl.DataFrame(rows)


def test_predictions_and_metrics_from_them():
    test = _test_frame()
    ids = test["sample_id"].to_list()
    truth = {s: lab for s, lab in zip(ids, test["labels"].to_list())}
    spec = {"good": {s: truth[s] for s in ids},
            "bad": {s: ["normal"] for s in ids},
            "half": {s: (truth[s] if k % 4 < 2 else ["normal"]) for k, s in enumerate(ids)}}
    preds = diagnosis_predictions(test, CARD, Scripted(), None, spec, {s: truth[s] for s in ids},
                                  arms=["MedDr", "MedDr+MoED"])
    assert set(preds["method"]) == {"MedDr", "MedDr+MoED", "Voting", "specialist:good", "specialist:bad",
                                    "specialist:half"}
    moed = preds.filter(pl.col("method") == "MedDr+MoED")
    assert moed["prompt"][0].count("The reference answers by other models are") == 1
    assert moed_reference(spec, ids[1]) == ["pneumonia", "normal", "pneumonia"]
    m = metrics_from_predictions(preds, {"pneumoniamnist": CARD}, n_boot=300)
    acc = {r["method"]: r for r in m.filter(pl.col("metric") == "accuracy").to_dicts()}
    assert acc["MedDr"]["value"] == pytest.approx(0.5)             # always "normal"
    assert acc["MedDr+MoED"]["value"] == pytest.approx(1.0)        # follows the first (perfect) specialist
    assert acc["specialist:good"]["value"] == 1.0 and acc["specialist:bad"]["value"] == 0.5
    # Voting: good + half agree on the truth for half the samples, else good vs bad+half -> majority "normal"
    assert acc["Voting"]["value"] == pytest.approx(0.75)
    for r in acc.values():
        assert r["ci_low"] <= r["value"] <= r["ci_high"] and r["headline"] == "accuracy"
    assert acc["MedDr+MoED"]["p_value_vs_best"] is None or acc["specialist:good"]["p_value_vs_best"] is None
    assert acc["MedDr"]["p_value_vs_best"] < 0.05
    assert acc["MedDr"]["parse_failure_rate"] == 0.0


def test_parse_failures_count_as_wrong_and_are_reported():
    rows = [{"dataset": "pneumoniamnist", "method": "MedDr", "sample_id": f"s{i}", "task_kind": "diagnosis",
             "truth": ["normal"], "prediction": ["normal"] if i < 6 else [], "answer_text": "x",
             "parse_failed": i >= 6, "answer_type": None, "prompt": None} for i in range(10)]
    preds = pl.from_arrow(pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA))
    m = metrics_from_predictions(preds, {"pneumoniamnist": CARD}, n_boot=100)
    acc = m.filter(pl.col("metric") == "accuracy").row(0, named=True)
    assert acc["value"] == pytest.approx(0.6) and acc["parse_failure_rate"] == pytest.approx(0.4)
