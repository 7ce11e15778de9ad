"""What the benchmark runs (tasks/plan.py): stage groups, the datasets each stage takes, stage status and the units
a run recomputed; no Prefect."""
from __future__ import annotations

import pytest

from tasks import plan

INGESTED = ["chestmnist", "pneumoniamnist", "ham10000", "dermnet", "slake", "iu_xray", "openi_cases", "vqa_rad"]


def test_stage_groups_add_what_a_group_reads():
    assert plan.stage_groups(None) == set(plan.STAGE_GROUPS)
    assert plan.stage_groups(["ingest"]) == {"ingest"}
    assert plan.stage_groups(["specialists"]) == {"ingest", "specialists"}
    assert plan.stage_groups(["evaluation"]) == {"ingest", "generalist", "specialists", "evaluation"}
    with pytest.raises(ValueError, match=r"unknown group\(s\) \['training'\]"):
        plan.stage_groups(["training"])


def test_datasets_per_stage_follow_the_cards_and_the_profile():
    # diagnosis benchmark sets only, in ingest order
    assert plan.specialist_datasets(INGESTED, None) == ["chestmnist", "pneumoniamnist", "ham10000", "dermnet"]
    assert plan.specialist_datasets(INGESTED, ["ham10000", "slake"]) == ["ham10000"]
    # VQA and report benchmark sets are evaluated too; case studies (DES input only) never are
    assert plan.evaluation_datasets(INGESTED, None)[-3:] == ["slake", "iu_xray", "vqa_rad"]
    assert "openi_cases" not in plan.evaluation_datasets(INGESTED, None)
    assert plan.evaluation_datasets(INGESTED, ["slake", "openi_cases"]) == ["slake"]
    jobs = plan.jobs_by_dataset([{"dataset": "chestmnist", "arch": "resnet18", "metrics": {"val_macro_f1": 0.2}},
                                 {"dataset": "chestmnist", "arch": "vit_b16", "metrics": {"val_macro_f1": 0.4}},
                                 {"dataset": "pneumoniamnist", "arch": "vit_b16", "metrics": {"val_accuracy": 0.7}}])
    assert {d: c["arch"] for d, c in plan.retriever_choices(jobs, "best-validation").items()} == \
        {"chestmnist": "vit_b16", "pneumoniamnist": "vit_b16"}
    assert plan.retriever_choices(jobs, None) == {}


def test_status_and_recomputed_units():
    units = {"ingest": {"a": "cached", "b": "written"}, "finetune": {"finetune": "cached"},
             "specialists": {"a/resnet18": "skipped", "a/vit_b16": "resumed"}, "generalist-base": {"base": "external"},
             "synthesis": {"dgb": "empty", "des": "cached"}, "index": {}}
    stages, recomputed = plan.summarize(units)
    assert stages == {"ingest": "computed", "finetune": "cached", "specialists": "computed",
                      "generalist-base": "cached", "synthesis": "cached", "index": "computed"}
    assert recomputed == {"ingest": ["b"], "finetune": [], "specialists": ["a/vit_b16"], "generalist-base": [],
                          "synthesis": [], "index": []}
