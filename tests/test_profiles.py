"""Profiles are typed: every YAML validates, `extends` merges, and a wrong key or value fails when the profile is
loaded (before any stage starts), naming the file or `--set`, the key and what was expected."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from infra.profiles import PROFILES_DIR, Profile, ProfileError, load_profile

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("path", sorted(PROFILES_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_profile_yaml_loads(path):
    prof = load_profile(path)
    assert isinstance(prof, Profile) and prof.name == path.stem and prof.path == str(path)
    assert prof.rad.retriever == "best-validation"
    assert prof.generalist.model or prof.generalist.tiny_model   # a base model to start from


def test_full_profile_carries_the_papers_recipes():
    full = load_profile("full")
    ft = full.finetune
    assert (ft.lora_r, ft.lora_alpha, ft.lora_dropout, ft.learning_rate, ft.num_epochs, ft.max_length) == \
        (16, 32, 0.05, 1e-5, 2.0, 2048)                                          # SPEC §5
    assert ft.per_device_batch_size * ft.gradient_accumulation_steps * ft.num_gpus == 128
    r = full.specialists.recipe
    assert (r.img_size, r.batch_size, r.max_epochs, r.lr, r.weight_decay, r.patience) == \
        (224, 64, 100, 1e-4, 0.01, 5)                                             # SPEC §6, Table A13
    assert len(full.specialists.architectures) == 10 and full.data.tiny_benchmark is None


def test_extends_merges_over_the_parent():
    tiny, micro = load_profile("tiny"), load_profile("micro")
    assert micro.name == "micro" and micro.finetune.max_steps != tiny.finetune.max_steps
    assert micro.generalist == tiny.generalist                      # untouched sections come from tiny
    assert micro.specialists.recipe != tiny.specialists.recipe      # a mapping given whole replaces key by key
    assert micro.specialists.arch_settings == tiny.specialists.arch_settings


@pytest.mark.parametrize("override, expected", [
    ("finetune.learning_rate=abc", r"--set finetune.learning_rate=abc: finetune.learning_rate: Input should be a "
                                   r"valid number.*\(got 'abc'\)"),
    ("nonexistent.key=1", r"--set nonexistent.key=1: nonexistent: unknown key \(expected one of name, data, "),
    ("specialists.recipe.lr=-1", r"specialists.recipe.lr: Input should be greater than 0"),
    ("specialists.arch_settings.vgg16.overridez={}", r"arch_settings.vgg16.overridez: unknown key \(expected one "
                                                     r"of weights_path, allow_scratch, pretrained_tag, img_size, "
                                                     r"overrides\)"),
    ("data.datasets=[ham10000, nosuchset]", r"data.datasets: .*unknown dataset\(s\) \['nosuchset'\]"),
    ("rad.retriever=vgg16", r"rad.retriever 'vgg16' is not in specialists.architectures"),
    ("rad.index_params={efs: 3}", r"rad.index_params: .*unknown keys \['efs'\]"),
    ("generalist.tiny_model=null", r"generalist: .*set `model`"),
    ("finetune.max_steps", r"expected KEY.PATH=VALUE"),
])
def test_bad_overrides_name_the_key_and_what_was_expected(override, expected):
    with pytest.raises(ProfileError, match=expected):
        load_profile("micro", [override])      # micro trains resnet18 and vit_b16 only


def test_a_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text(yaml.safe_dump({**yaml.safe_load((PROFILES_DIR / "micro.yaml").read_text()),
                                   "corpus": {"rows_per_shard": "many"}}))
    with pytest.raises(ProfileError, match=rf"{bad}: corpus.rows_per_shard: Input should be a valid integer"):
        load_profile(bad)
    with pytest.raises(ProfileError, match="unknown profile 'nosuch'"):
        load_profile("nosuch")


@pytest.mark.parametrize("override, key", [("finetune.learning_rate=abc", "finetune.learning_rate"),
                                           ("nonexistent.key=1", "nonexistent")])
def test_gsco_run_rejects_a_bad_override_before_any_stage(tmp_path, override, key):
    out = tmp_path / "out"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    t = time.monotonic()
    r = subprocess.run([str(BIN / "gsco"), "run", "--profile", "tiny", "--out", str(out), "--set", override],
                       env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"--set {override}: {key}" in r.stdout and ("valid number" in r.stdout or "unknown key" in r.stdout)
    assert not out.exists() and not (tmp_path / "prefect").exists()   # no stage, no Prefect server, no outputs
    assert seconds < 5, f"the profile error took {seconds:.1f} s"
