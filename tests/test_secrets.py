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
from infra.team.services import free_port
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


@pytest.fixture()
def served_generalist(tmp_path):
    """A real OpenAI-compatible server (`transformers serve`, 127.0.0.1) serving a tiny InternVL the project builds."""
    import time
    import urllib.request

    from tasks.generalist.tiny_internvl import build_tiny_internvl

    model = build_tiny_internvl(tmp_path / "served-model", ["a chest x-ray", "a skin lesion", "normal", "pneumonia"],
                                load_profile("micro").generalist.tiny_model)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([str(Path(sys.executable).with_name("transformers")), "serve", str(model), "--host",
                             "127.0.0.1", "--port", str(port), "--device", "cpu"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail(f"transformers serve did not start: {(tmp_path / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.5)
    yield {"base_url": f"http://127.0.0.1:{port}/v1", "model": str(model), "log": tmp_path / "serve.log"}
    proc.kill()
    proc.wait()


def test_a_key_from_its_variable_reaches_the_server_and_nothing_a_run_records(served_generalist, tmp_path):
    """The third way a secret arrives (the supported one): the variable `generalist.api_key_env` names. A whole run
    against a real served generalist uses it (synthesis and every evaluation arm ask the server) and it is found in no
    file of the outputs folder (MLflow store and artifacts, tables, logs), the Prefect database or the console; the
    other two ways (an override, a password in base_url) are refused above."""
    served = served_generalist
    profile = tmp_path / "served.yaml"
    profile.write_text("extends: micro\n"
                       f"generalist: {{backend: openai, base_url: '{served['base_url']}', model: '{served['model']}', "
                       "api_key_env: GSCO_TEST_KEY, max_retries: 1}\n"
                       "data: {datasets: [pneumoniamnist, slake]}\n"
                       "specialists: {architectures: [resnet18]}\n"
                       "finetune: {max_steps: 2, save_steps: 1}\n")
    out, home = tmp_path / "out", tmp_path / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home), "PYTHONPATH": str(REPO), "GSCO_TEST_KEY": SECRET,
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PREFECT_API_URL", None)
    r = subprocess.run([str(Path(sys.executable).with_name("gsco")), "run", "--profile", str(profile), "--out",
                        str(out)], capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    asked = served["log"].read_text().count('"POST /v1/chat/completions HTTP/1.1" 200')
    assert asked >= 10, f"the served generalist answered {asked} requests"
    assert SECRET not in r.stdout + r.stderr
    scanned, found = 0, []
    for root in (out, home):
        for f in root.rglob("*"):
            if f.is_file():
                scanned += 1
                if SECRET.encode() in f.read_bytes():
                    found.append(str(f))
    assert scanned > 50 and (home / "prefect.db").is_file() and (out / "mlflow.db").is_file()
    assert not found, f"the key was written to {found}"


def test_a_served_generalist_with_the_encoder_rad_arm_is_refused_when_the_profile_loads():
    """MedDr+RAD(MedDr-encoder) needs MedDr's vision encoder, which an OpenAI-compatible server does not expose: the
    profile is refused at load (one line naming the arm and the backend), not at the index build minutes later."""
    with pytest.raises(ProfileError) as e:
        load_profile("micro", ["generalist.backend=openai", "generalist.model=m",
                               "generalist.base_url=http://127.0.0.1:9/v1",
                               "evaluation.arms=[MedDr, 'MedDr+RAD(MedDr-encoder)']"])
    msg = str(e.value)
    assert "evaluation.arms: MedDr+RAD(MedDr-encoder) embeds images with MedDr's own vision encoder" in msg
    assert "generalist.backend: openai" in msg and len(msg) < 600 and "\n" not in msg
