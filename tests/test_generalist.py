"""The generalist interface: tiny InternVL build/reload/generate, chat format, offline loading, OpenAI backend.

    OMP_NUM_THREADS=1 pytest -q tests/test_generalist.py
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from tasks.generalist.backends import OpenAIGeneralist, TransformersGeneralist, WeightsNotFoundError, generalist_for
from tasks.generalist.chat import CHATML_TEMPLATE, chat_text
from tasks.generalist.settings import GeneralistSettings, GenerationSettings, TinyInternVLConfig
from tasks.generalist.tiny_internvl import build_tiny_internvl

TEXTS = ["You are a helpful medical assistant. Your task is disease diagnosis. You are given a chest x-ray image. "
         "The possible diagnoses are: normal, pneumonia, effusion.", "normal", "pneumonia", "effusion"]


def _png(color, size=(40, 30)) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", size, color).save(b, "PNG")
    return b.getvalue()


def _jpeg(color) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (20, 20), color).save(b, "JPEG")
    return b.getvalue()


@pytest.fixture(scope="session")
def tiny_config(tiny_profile) -> TinyInternVLConfig:
    return tiny_profile.generalist.tiny_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_config):
    return build_tiny_internvl(tmp_path_factory.mktemp("generalist") / "tiny-internvl", TEXTS, tiny_config)


@pytest.fixture(scope="session")
def generalist(tiny_model):
    return TransformersGeneralist(str(tiny_model), batch_size=4)


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_settings_serialise_and_reject_bad_values():
    s = GenerationSettings(max_new_tokens=12, do_sample=True, temperature=0.7, top_p=0.9, seed=3)
    d = s.model_dump()
    assert list(d) == ["max_new_tokens", "do_sample", "temperature", "top_p", "num_beams", "seed"]
    assert GenerationSettings.model_validate(json.loads(json.dumps(d))) == s
    with pytest.raises(ValueError, match=r"max_tokens\n.*Extra inputs are not permitted"):
        GenerationSettings.model_validate({"max_tokens": 3})
    with pytest.raises(ValueError, match="top_p"):
        GenerationSettings(top_p=0.0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)


def test_tiny_build_is_deterministic(tiny_model, tiny_config, tmp_path):
    again = build_tiny_internvl(tmp_path / "again", TEXTS, tiny_config)
    other = build_tiny_internvl(tmp_path / "other", TEXTS, tiny_config.model_copy(update={"seed": tiny_config.seed + 1}))
    assert _digests(again) == _digests(tiny_model)
    assert _digests(other)["model.safetensors"] != _digests(tiny_model)["model.safetensors"]
    assert _digests(other)["tokenizer.json"] == _digests(tiny_model)["tokenizer.json"]  # same texts, same BPE
    with pytest.raises(ValueError, match=r"hidden\n.*Extra inputs are not permitted"):
        TinyInternVLConfig.model_validate({**tiny_config.model_dump(), "hidden": 3})
    with pytest.raises(ValueError, match="whole patch grid"):
        TinyInternVLConfig.model_validate({**tiny_config.model_dump(), "patch_size": 5})


def test_tiny_output_head_has_its_own_init_std(tiny_model, tiny_config):
    """The tiny profile's narrow init (attention that does not saturate at random positions) with a wide output
    head (logits a LoRA update can move): each at its configured std."""
    from safetensors.torch import load_file

    assert tiny_config.output_initializer_range is not None
    w = load_file(str(tiny_model / "model.safetensors"))
    head = next(v for k, v in w.items() if k.endswith("lm_head.weight"))
    q = next(v for k, v in w.items() if "language_model" in k and k.endswith("q_proj.weight"))
    assert float(head.std()) == pytest.approx(tiny_config.output_initializer_range, rel=0.05)
    assert float(q.std()) == pytest.approx(tiny_config.initializer_range, rel=0.1)


def test_reload_and_batched_generation_is_deterministic(generalist, tiny_model):
    assert generalist.id.startswith("transformers:") and len(generalist.id.split("@")[1]) == 16
    assert generalist.model.config.model_type == "internvl"
    images = [_png((40 * i, 90, 200 - 30 * i)) for i in range(5)] + [_jpeg((10, 200, 10))]
    prompts = [TEXTS[0], "normal", "The possible diagnoses are", "effusion pneumonia", "x", TEXTS[0] + " normal"]
    greedy = GenerationSettings(max_new_tokens=6)
    out = generalist.generate(images, prompts, greedy)  # batches of 4 and 2, left-padded to different lengths
    assert len(out) == 6 and all(isinstance(t, str) for t in out)
    assert generalist.generate(images, prompts, greedy) == out
    assert [generalist.generate([i], [p], greedy)[0] for i, p in zip(images, prompts)] == out
    # the model really produces tokens: generate on the raw model emits max_new_tokens new ids per row
    inputs = generalist.processor_inputs(images[:2], prompts[:2])
    ids = generalist.model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    assert ids.shape[1] == inputs["input_ids"].shape[1] + 6

    sample = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    first = generalist.generate(images, prompts, sample)
    assert generalist.generate(images, prompts, sample) == first
    assert generalist.generate(images, prompts, sample.model_copy(update={"seed": 8})) != first


def test_chat_prompt_puts_the_image_placeholder_first(generalist):
    proc = generalist.processor
    text = chat_text(proc, "Describe the image.")
    user_turn = text.split("<|im_start|>user\n", 1)[1]
    assert user_turn.startswith(proc.image_token + "\nDescribe the image.")
    assert text.endswith("<|im_start|>assistant\n")
    # without a checkpoint template, ChatML renders the same user turn
    assert proc.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
                                    chat_template=CHATML_TEMPLATE, tokenize=False).startswith(
        "<|im_start|>user\n<IMG_CONTEXT>\nq")
    # after expansion: <img>, image tokens, </img>, then the newline and the instruction's tokens
    ids = generalist.processor_inputs([_png((1, 2, 3))], ["Describe the image."])["input_ids"][0].tolist()
    tok = proc.tokenizer
    first_img = ids.index(proc.start_image_token_id)
    end_img = ids.index(proc.end_image_token_id)
    assert ids[first_img + 1:end_img] == [proc.image_token_id] * proc.image_seq_length
    assert tok.decode(ids[end_img + 1:]).startswith("\nDescribe the image.")
    assert "Describe" not in tok.decode(ids[:first_img])


def test_bad_inputs_and_offline_loading_fail_clearly(generalist, tmp_path):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        generalist.generate([_png((0, 0, 0))] * 2, ["a"], GenerationSettings())
    with pytest.raises(ValueError, match=r"images\[1\].*PNG/JPEG"):
        generalist.generate([_png((0, 0, 0)), b"not an image"], ["a", "b"], GenerationSettings(max_new_tokens=2))
    with pytest.raises(WeightsNotFoundError, match="not present locally.*local_files_only=True"):
        TransformersGeneralist("gsco-test-org/no-such-model-anywhere")
    with pytest.raises(WeightsNotFoundError, match="config.json"):
        TransformersGeneralist(str(tmp_path))
    with pytest.raises(ValueError, match=r"backend\n.*'transformers' or 'openai'"):
        GeneralistSettings(backend="vllm", model="m")


# ---------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible backend against a server on 127.0.0.1


class _Recorder(BaseHTTPRequestHandler):
    requests: list = []
    fail_first: int = 0

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail_first > 0:
            type(self).fail_first -= 1
            self.send_response(503)
            self.end_headers()
            self.wfile.write(b"busy")
            return
        prompt = body["messages"][0]["content"][1]["text"]
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": f" answer to {prompt} "}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(reply.encode())

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    _Recorder.requests = []
    _Recorder.fail_first = 0
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1", _Recorder
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=5)


def test_openai_backend_sends_the_expected_requests(server, monkeypatch):
    url, rec = server
    monkeypatch.setenv("GSCO_TEST_KEY", "sk-test-secret")
    g = generalist_for({}, GeneralistSettings(backend="openai", base_url=url, model="MedDr", api_key_env="GSCO_TEST_KEY",
                                              concurrency=2, max_retries=2))
    assert "sk-test-secret" not in repr(g) and "sk-test-secret" not in g.id
    images = [_png((200, 0, 0)), _jpeg((0, 0, 200)), _png((0, 200, 0))]
    prompts = ["first question", "second question", "third question"]
    rec.fail_first = 1  # one 503 is retried, not surfaced
    out = g.generate(images, prompts, GenerationSettings(max_new_tokens=32, seed=5))
    assert out == [f"answer to {p}" for p in prompts]
    assert len(rec.requests) == 4
    by_prompt = {r["body"]["messages"][0]["content"][1]["text"]: r for r in rec.requests[1:]}
    for img, prompt in zip(images, prompts):
        r = by_prompt[prompt]
        assert r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer sk-test-secret"
        body = r["body"]
        assert body["model"] == "MedDr" and body["max_tokens"] == 32 and body["seed"] == 5
        assert body["temperature"] == 0.0 and "top_p" not in body  # greedy
        content = body["messages"][0]["content"]
        assert [c["type"] for c in content] == ["image_url", "text"]  # image first (SPEC §4)
        mime = "image/jpeg" if img[:3] == b"\xff\xd8\xff" else "image/png"
        head, b64 = content[0]["image_url"]["url"].split(",", 1)
        assert head == f"data:{mime};base64" and base64.b64decode(b64) == img

    sampled = g.request_body(images[0], "q", GenerationSettings(do_sample=True, temperature=0.6, top_p=0.8))
    assert sampled["temperature"] == 0.6 and sampled["top_p"] == 0.8
    with pytest.raises(ValueError, match="num_beams"):
        g.request_body(images[0], "q", GenerationSettings(num_beams=2))


def test_openai_backend_errors_name_the_variable_not_the_key(server, monkeypatch):
    url, rec = server
    monkeypatch.delenv("GSCO_TEST_KEY", raising=False)
    g = OpenAIGeneralist(url, "MedDr", api_key_env="GSCO_TEST_KEY", max_retries=0)
    with pytest.raises(RuntimeError, match="GSCO_TEST_KEY.*not set"):
        g.generate([_png((1, 1, 1))], ["q"], GenerationSettings())
    monkeypatch.setenv("GSCO_TEST_KEY", "sk-do-not-print")
    rec.fail_first = 5
    with pytest.raises(RuntimeError, match="HTTP 503") as e:
        g.generate([_png((1, 1, 1))], ["q"], GenerationSettings())
    assert "sk-do-not-print" not in str(e.value)
