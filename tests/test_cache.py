"""The one stage cache key (tasks/cache.py): every stage's key covers the code it runs, and only that code; keys do
not depend on where the checkout lies."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.cache import code_digest, stage_key

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "recipes", "data_contracts", "infra")
UPSTREAM_OF_FINETUNE = ("ingest", "generalist-base", "synthesis", "corpus")

# Every stage's key for fixed inputs, computed by the code under the current directory.
KEYS_SCRIPT = """
import json
from pathlib import Path

import numpy as np

from data_contracts.cards import get_card
from infra.profiles import load_profile
from tasks.evaluation.stage import predictions_key, report_key
from tasks.generalist.corpus import SampleSource, corpus_key
from tasks.generalist.stage import base_key, finetune_key
from tasks.generalist.synthesis import synthesis_key
from tasks.ingest.dataset import ingest_key
from tasks.rad.index import _build_tag
from tasks.specialists.architectures import arch_spec
from tasks.specialists.data import SpecialistData, Split
from tasks.specialists.training import job_fingerprint

p = load_profile("tiny")
split = lambda: Split(["x", "y"], [np.zeros((4, 4), np.uint8)] * 2, np.array([0, 1]))
data = SpecialistData("breastmnist", "binary", ["a", "b"], split(), split(), split(), digest="d" * 32)
job = {"fingerprint": "f" * 32}
print(json.dumps({
    "ingest": ingest_key(get_card("ham10000"), "0" * 64, "fail"),
    "generalist-base": base_key(["a text"], p.generalist.tiny_model),
    "synthesis": synthesis_key("dgb", "d" * 32, "transformers:local@0123", p.synthesis.dgb.generation),
    "corpus": corpus_key([SampleSource(Path("/t"), "ham10000", "train", "diagnosis", "d" * 32)], {},
                         {"rows_per_shard": 1, "bytes_per_shard": 2}),
    "finetune": finetune_key("b" * 16, "c" * 32, p.finetune),
    "specialist-job": job_fingerprint(data, arch_spec("resnet18", p.specialists.arch_settings["resnet18"]),
                                      p.specialists.recipe, None),
    "rad-index": _build_tag("c" * 64, {"index_type": "FLAT"}),
    "evaluation-predictions": predictions_key("breastmnist", "t" * 32, "g", {"resnet18": job}, job, p.evaluation),
    "report": report_key("p" * 32, p.evaluation),
}))
"""


def _keys(root: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", KEYS_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _copy_code(dst: Path) -> Path:
    for pkg in PACKAGES:
        shutil.copytree(REPO / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit_line(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: expected one line holding {old!r}"
    path.write_text(text.replace(old, new))


@pytest.fixture(scope="module")
def original(tmp_path_factory):
    return _keys(_copy_code(tmp_path_factory.mktemp("original")))


def test_keys_do_not_depend_on_where_the_checkout_lies(original):
    assert _keys(REPO) == original
    assert len(set(original.values())) == len(original)   # one key per stage: the stage name is part of it


@pytest.mark.parametrize("path, old, new", [
    ("tasks/generalist/finetune/training.py", "    tokens_total, train_time = 0, 0.0\n",
     "    tokens_total, train_time = 0, 0.0  # counted per step\n"),
    ("recipes/finetune.py", 'help="run config JSON (FinetuneConfig fields)"', 'help="the run config (JSON)"'),
])
def test_one_line_of_finetuning_code_changes_its_key_and_nothing_upstream(tmp_path, original, path, old, new):
    root = _copy_code(tmp_path)
    _edit_line(root / path, old, new)
    changed = _keys(root)
    assert changed["finetune"] != original["finetune"]
    assert {s: changed[s] for s in UPSTREAM_OF_FINETUNE} == {s: original[s] for s in UPSTREAM_OF_FINETUNE}
    # and nothing beside it: the specialist, index and evaluation keys do not read fine-tuning code either
    assert {s: k for s, k in changed.items() if s != "finetune"} == {s: k for s, k in original.items()
                                                                     if s != "finetune"}


def test_stage_key_covers_inputs_settings_and_code():
    base = stage_key("s", {"a": "1"}, {"x": 1}, ["tasks.cache"])
    assert base == stage_key("s", {"a": "1"}, {"x": 1}, ["tasks.cache"])
    assert base != stage_key("s", {"a": "2"}, {"x": 1}, ["tasks.cache"])
    assert base != stage_key("s", {"a": "1"}, {"x": 2}, ["tasks.cache"])
    assert base != stage_key("s", {"a": "1"}, {"x": 1}, ["tasks.plan"])
    # a package stands for every module under it
    assert code_digest(["tasks.rad"]) != code_digest(["tasks.rad.index"])
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        code_digest(["tasks.no_such_module"])
