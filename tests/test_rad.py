"""RAD on a trained specialist: neighbours retrieved from the LanceDB table share the query's label above chance."""
from __future__ import annotations

from collections import Counter

from data_contracts.io import read_samples
from tasks.rad_index import build_rad_index, rad_references
from tasks.specialist_jobs import job_dir, run_job

from infra.profiles import load_profile

_TINY = load_profile("tiny")["specialists"]
RECIPE = _TINY["recipe"]                       # the tiny profile's recipe and resnet18 settings
ARCH = _TINY["arch_settings"]["resnet18"]


def test_rad_neighbours_share_labels(tiny_tables, tmp_path):
    ds = "ham10000"
    result = run_job({"tables_root": str(tiny_tables), "dataset": ds, "arch": "resnet18", "arch_settings": ARCH,
                      "recipe": RECIPE, "out_dir": str(job_dir(tmp_path, ds, "resnet18")), "threads": 2})
    assert result["status"] == "trained"
    info = build_rad_index(ds, "resnet18", tiny_tables, tmp_path, {"ann_min_rows": 50_000})
    train = read_samples(tiny_tables, ds, "train")
    assert info["rows"] == train.height and info["index_type"] == "FLAT" and not info["reused"]
    again = build_rad_index(ds, "resnet18", tiny_tables, tmp_path, {"ann_min_rows": 50_000})
    assert again["reused"] and again["version"] == info["version"]

    k = 5
    refs = rad_references(ds, "resnet18", tmp_path, k)
    test = read_samples(tiny_tables, ds, "test")
    truth = dict(zip(test["sample_id"].to_list(), test["labels"].to_list()))
    assert set(refs) == set(truth) and all(len(v) == k for v in refs.values())
    share = sum(sum(lab == truth[s][0] for lab in refs[s]) for s in refs) / (k * len(refs))
    freq = Counter(lab[0] for lab in train["labels"].to_list())
    chance = sum((freq[truth[s][0]] / train.height) for s in truth) / len(truth)
    assert share >= chance + 0.25, (share, chance)
