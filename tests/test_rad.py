"""RAD on a trained specialist: neighbours retrieved from the LanceDB table share the query's label above chance."""
from __future__ import annotations

from collections import Counter

from data_contracts.io import read_samples
from data_contracts.layout import RunLayout
from tasks.rad.settings import RadSettings
from tasks.rad.stage import build_rad_index, rad_references
from tasks.specialists.stage import job_specs, job_summary, run_job


def test_rad_neighbours_share_labels(tiny_tables, tiny_profile, tmp_path):
    ds = "ham10000"
    layout = RunLayout(tmp_path)
    layout.tables.symlink_to(tiny_tables)
    settings = tiny_profile.specialists.model_copy(update={"architectures": ["resnet18"], "threads": 2})
    (spec,) = job_specs(layout, [ds], settings)   # the tiny profile's recipe and resnet18 settings
    result = run_job(spec)
    assert result["status"] == "trained"
    job = job_summary(result, {"run_id": None, "model_id": None})
    info = build_rad_index(job, layout, RadSettings(retriever="resnet18", ann_min_rows=50_000))
    train = read_samples(tiny_tables, ds, "train")
    assert info["rows"] == train.height and info["index_type"] == "FLAT" and not info["reused"]
    again = build_rad_index(job, layout, RadSettings(retriever="resnet18", ann_min_rows=50_000))
    assert again["reused"] and again["version"] == info["version"]

    k = 5
    refs = rad_references(job, layout, k)
    test = read_samples(tiny_tables, ds, "test")
    truth = dict(zip(test["sample_id"].to_list(), test["labels"].to_list()))
    assert set(refs) == set(truth) and all(len(v) == k for v in refs.values())
    share = sum(sum(lab == truth[s][0] for lab in refs[s]) for s in refs) / (k * len(refs))
    freq = Counter(lab[0] for lab in train["labels"].to_list())
    chance = sum((freq[truth[s][0]] / train.height) for s in truth) / len(truth)
    assert share >= chance + 0.25, (share, chance)

    # a training-split query (what a collaboration corpus shows) never retrieves itself: k *other* cases
    own = rad_references(job, layout, k, split="train")
    assert set(own) == set(train["sample_id"].to_list()) and all(len(v) == k for v in own.values())
    # with k = n - 1 every other case comes back: the label multiset is the split's minus the sample's own
    everyone = rad_references(job, layout, train.height - 1, split="train")
    all_labels = Counter(lab for labs in train["labels"].to_list() for lab in labs)
    for sid, labs in list(zip(train["sample_id"].to_list(), train["labels"].to_list()))[:5]:
        assert Counter(everyone[sid]) == all_labels - Counter(labs)
