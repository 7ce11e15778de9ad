"""Secrets never reach what a run records or prints: a key typed as an override, a password inside base_url and the
messages quoting them are refused or masked before anything starts; URL credentials are not accepted at all.

    pytest -q tests/test_secrets.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.profiles import ProfileError, load_profile
from tasks.secrets import redact, url_credentials

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-gsco-TOPSECRET-9f8e7d"


def test_redact_masks_url_passwords_and_secret_named_values_only():
    assert redact(f"http://bob:{SECRET}@host:8000/v1") == "http://bob:***@host:8000/v1"
    assert redact(f"--set generalist.api_key={SECRET}") == "--set generalist.api_key=***"
    assert redact(f"{{'password': '{SECRET}', 'steps': 5}}") == "{'password': '***', 'steps': 5}"
    assert redact(f"HF_TOKEN={SECRET} next") == "HF_TOKEN=*** next"
    for plain in ("finetune.max_steps=5", "http://host:8000/v1", "api_key_env=OPENAI_API_KEY", "tokens_per_s: 12"):
        assert redact(plain) == plain
    assert url_credentials(f"https://bob:{SECRET}@h/v1") and not url_credentials("https://h:443/v1")


@pytest.mark.parametrize("override", [
    f"generalist.api_key={SECRET}",                                  # a key as a profile value: no such field
    f"generalist.base_url=http://bob:{SECRET}@127.0.0.1:9/v1",       # a password inside the server URL
    f"generalist.base_url=ftp://bob:{SECRET}@127.0.0.1:9/v1",        # ... in a URL refused for its scheme
    f"generalist.token: {SECRET}",                                   # not even KEY=VALUE
])
def test_a_secret_in_an_override_is_refused_without_being_quoted(override, tmp_path):
    with pytest.raises(ProfileError) as e:
        load_profile("micro", [override, "generalist.backend=openai", "generalist.model=meddr"])
    assert SECRET not in str(e.value) and str(e.value).strip()
    # from the command line: one line, before any Prefect server or MLflow store exists, and nothing written
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PYTHONPATH": str(REPO)}
    r = subprocess.run([str(Path(sys.executable).with_name("gsco")), "run", "--profile", "micro", "--out",
                        str(tmp_path / "out"), "--set", override, "--set", "generalist.backend=openai",
                        "--set", "generalist.model=meddr"], capture_output=True, text=True, timeout=120, env=env)
    msg = (r.stdout + r.stderr).strip()
    assert r.returncode == 2 and len(msg.splitlines()) == 1, msg
    assert SECRET not in msg
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "out").exists()


def test_base_url_with_a_password_is_refused_even_from_a_profile_file(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text(f"extends: micro\ngeneralist: {{backend: openai, model: m, base_url: 'http://u:{SECRET}@h/v1'}}\n")
    with pytest.raises(ProfileError, match="a password in the URL is not accepted") as e:
        load_profile(p)
    assert SECRET not in str(e.value)
