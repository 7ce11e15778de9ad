"""The generalist (MedDr) behind one interface: batched (image, instruction) -> text for synthesis and evaluation.

    OMP_NUM_THREADS=1 pytest -q tests/test_generalist.py

    g = load_generalist({"backend": "transformers", "model": "/models/InternVL3-2B-hf"})      # local path or hub id
    g = load_generalist({"backend": "openai", "base_url": "http://meddr:8000/v1", "model": "MedDr",
                         "api_key_env": "MEDDR_API_KEY"})
    texts = g.generate(images, instructions, GenerationSettings(max_new_tokens=256))

Backends:
- `transformers`: an InternVL-family checkpoint in the transformers-native format (InternVL3 "-hf" checkpoints, the
  tiny profile's model, a merged MedDr fine-tune) through `InternVLForConditionalGeneration` + `AutoProcessor`; other
  image-text-to-text models through `AutoModelForImageTextToText`. Nothing is downloaded unless the caller opts in,
  and remote code stays off unless the caller opts in.
- `openai`: an OpenAI-compatible chat endpoint, for the published MedDr weights, which need the authors' own model code
  and so are served elsewhere (SPEC §5). The API key is read from a named environment variable at request time and is
  never stored, logged or put in an error message.

Chat format (SPEC §4): the image placeholder comes first, then a newline, then the instruction; `chat_text` renders it
for generation here and for fine-tuning in tasks/finetune.py, so both see the same prompt tokens. `build_tiny_internvl`
builds the tiny profile's model: the real InternVL architecture from tiny sub-configs, random-initialised, with a BPE
tokenizer trained offline on the given texts.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

# ChatML, the format of InternVL's Qwen2-based chat models: user turn = image placeholder, newline, instruction.
# Used for the tiny model and for checkpoints that ship no chat template.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<IMG_CONTEXT>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Named special tokens InternVLProcessor reads from its tokenizer (attribute name -> token).
INTERNVL_SPECIAL_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                           "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}
CHATML_TOKENS = {"pad": "<|endoftext|>", "bos": "<|im_start|>", "eos": "<|im_end|>"}

# Files whose full content identifies a checkpoint besides its weights (config, tokenizer, processor, template).
_SMALL_FILE_BYTES = 16 * 1024 * 1024


class WeightsNotFoundError(FileNotFoundError):
    """A model's weights are not present locally and downloading was not allowed."""


@dataclass(frozen=True)
class GenerationSettings:
    """Explicit decoding settings; `to_dict` is part of every cache key, so every field that changes output is here."""

    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.max_new_tokens, int) and self.max_new_tokens > 0):
            raise ValueError(f"GenerationSettings.max_new_tokens: expected a positive int, got {self.max_new_tokens!r}")
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"GenerationSettings.do_sample: expected a bool, got {self.do_sample!r}")
        if not self.temperature > 0:
            raise ValueError(f"GenerationSettings.temperature: expected > 0, got {self.temperature!r}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationSettings.top_p: expected in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.num_beams, int) and self.num_beams >= 1):
            raise ValueError(f"GenerationSettings.num_beams: expected an int >= 1, got {self.num_beams!r}")
        if not isinstance(self.seed, int):
            raise ValueError(f"GenerationSettings.seed: expected an int, got {self.seed!r}")

    def to_dict(self) -> dict:
        """The settings as a plain JSON-able dict (field order fixed)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        """Settings from a dict; unknown keys are an error (a typo would otherwise silently change nothing)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"GenerationSettings: unknown key(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


class Generalist(Protocol):
    """What synthesis, fine-tuning checks and evaluation need: a stable id and batched (image, prompt) -> text."""

    id: str

    def generate(self, images: list[bytes], prompts: list[str], settings: GenerationSettings) -> list[str]: ...


def _check_batch(images: list[bytes], prompts: list[str]) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"generate: got {len(images)} images but {len(prompts)} prompts; "
                         "expected one image per prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"generate: prompts[{i}]: expected a non-empty instruction, got {p!r}")
    for i, b in enumerate(images):
        if not isinstance(b, (bytes, bytearray)) or not b:
            raise ValueError(f"generate: images[{i}]: expected encoded image bytes (PNG/JPEG), got {type(b).__name__}")


def decode_image(data: bytes, where: str = "image"):
    """The image as an RGB PIL image; raises ValueError naming `where` when the bytes do not decode."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as e:
        raise ValueError(f"{where}: expected PNG/JPEG bytes that decode ({type(e).__name__}: {e})") from None


# --------------------------------------------------------------------------------------------------------------------
# Chat formatting shared by generation and fine-tuning


def chat_messages(instruction: str, answer: str | None = None) -> list[dict]:
    """The conversation for one sample: a user turn with the image first, then the instruction; optional answer."""
    msgs: list[dict] = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def chat_text(processor, instruction: str, answer: str | None = None) -> str:
    """The chat-formatted text with one image placeholder; a generation prompt when `answer` is None.

    Uses the processor's own chat template when it has one (a real checkpoint's), else ChatML (SPEC §4 format).
    """
    template = getattr(processor, "chat_template", None) or CHATML_TEMPLATE
    return processor.apply_chat_template(chat_messages(instruction, answer), chat_template=template,
                                         add_generation_prompt=answer is None, tokenize=False)


# --------------------------------------------------------------------------------------------------------------------
# transformers backend


def weights_fingerprint(path: str | Path) -> str:
    """A content fingerprint of a local checkpoint folder: small files in full, large files by size and head + tail.

    Hashing every byte of a 40B checkpoint takes minutes; size plus the first and last MiB of each weight file (the
    safetensors header holds every tensor's name, dtype, shape and offset) changes whenever the weights are replaced.
    """
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file() and not q.name.startswith(".")):
        rel = p.relative_to(root).as_posix()
        size = p.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        with open(p, "rb") as f:
            if size <= _SMALL_FILE_BYTES:
                h.update(f.read())
            else:
                h.update(f.read(1 << 20))
                f.seek(size - (1 << 20))
                h.update(f.read())
    return h.hexdigest()[:16]


def resolve_checkpoint(model: str, local_files_only: bool, revision: str | None) -> tuple[str, Path]:
    """(what to pass to from_pretrained, its local folder); raises WeightsNotFoundError when absent offline."""
    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise WeightsNotFoundError(f"{p}: expected a transformers checkpoint folder with config.json")
        return str(p), p
    if p.exists():
        raise WeightsNotFoundError(f"{p}: expected a checkpoint folder, found a file")
    if model.startswith((".", "/", "~")):
        raise WeightsNotFoundError(f"{p}: no such checkpoint folder")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(model, revision=revision, local_files_only=local_files_only)
        return local, Path(local)
    except Exception as e:
        if local_files_only:
            raise WeightsNotFoundError(
                f"weights for {model!r} are not present locally (local_files_only=True: nothing is downloaded); "
                f"place a snapshot in the Hugging Face cache or pass a local folder, or opt in to downloading "
                f"({type(e).__name__})") from None
        raise


def load_model_and_processor(model: str, *, dtype: str | None = None, device: str | None = None,
                             trust_remote_code: bool = False, local_files_only: bool = True,
                             revision: str | None = None):
    """(model in eval mode, processor, local folder) for a hub id or local checkpoint folder, never downloading offline.

    `internvl` configs load through `InternVLForConditionalGeneration`; other image-text-to-text models through
    `AutoModelForImageTextToText`. `dtype` is a torch dtype name ("bfloat16", "float32"; default bf16 on CUDA,
    float32 on CPU).
    """
    import torch
    from transformers import (AutoConfig, AutoModelForImageTextToText, AutoProcessor,
                              InternVLForConditionalGeneration)

    source, local = resolve_checkpoint(model, local_files_only, revision)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch_dtype = getattr(torch, dtype) if dtype else (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    kw = dict(trust_remote_code=trust_remote_code, local_files_only=local_files_only, revision=revision)
    config = AutoConfig.from_pretrained(source, **kw)
    cls = InternVLForConditionalGeneration if config.model_type == "internvl" else AutoModelForImageTextToText
    net = cls.from_pretrained(source, config=config, dtype=torch_dtype, **kw).to(device).eval()
    processor = AutoProcessor.from_pretrained(source, **kw)
    return net, processor, local


class TransformersGeneralist:
    """A local VLM checkpoint as a Generalist; `id` = backend, name and weights fingerprint (a cache-key part)."""

    def __init__(self, model: str, *, batch_size: int = 8, dtype: str | None = None, device: str | None = None,
                 trust_remote_code: bool = False, local_files_only: bool = True, revision: str | None = None,
                 crop_to_patches: bool = False):
        """`crop_to_patches=False` is the paper's single 448x448 tile (256 image tokens); True = dynamic tiling."""
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.model_name = model
        self.batch_size = batch_size
        self.crop_to_patches = crop_to_patches
        self.model, self.processor, local = load_model_and_processor(
            model, dtype=dtype, device=device, trust_remote_code=trust_remote_code,
            local_files_only=local_files_only, revision=revision)
        # The id must not depend on where a checkpoint folder lies (it keys caches): a hub id names itself, a local
        # folder is known by its content alone.
        label = "local" if Path(model).expanduser().is_dir() else model
        self.id = f"transformers:{label}@{weights_fingerprint(local)}"
        self.device = next(self.model.parameters()).device

    def __repr__(self) -> str:
        return f"TransformersGeneralist({self.id!r}, batch_size={self.batch_size})"

    def _generate_kwargs(self, settings: GenerationSettings) -> dict:
        tok = self.processor.tokenizer
        kw: dict[str, Any] = dict(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                                  num_beams=settings.num_beams)
        if settings.do_sample:
            kw.update(temperature=settings.temperature, top_p=settings.top_p)
        else:  # a checkpoint's generation_config may carry sampling values that greedy decoding would warn about
            kw.update(temperature=None, top_p=None, top_k=None)
        if tok.pad_token_id is not None:
            kw["pad_token_id"] = tok.pad_token_id
        return kw

    def processor_inputs(self, images: list[bytes], prompts: list[str]):
        """The padded model inputs (input_ids, attention_mask, pixel_values) for one batch, on the model's device."""
        pil = [decode_image(b, f"images[{i}]") for i, b in enumerate(images)]
        texts = [chat_text(self.processor, p) for p in prompts]
        extra = {"crop_to_patches": self.crop_to_patches} \
            if hasattr(getattr(self.processor, "image_processor", None), "crop_to_patches") else {}
        inputs = self.processor(images=pil, text=texts, padding=True, return_tensors="pt", **extra)
        inputs = inputs.to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        return inputs

    def generate(self, images: list[bytes], prompts: list[str], settings: GenerationSettings) -> list[str]:
        """One decoded answer per (image, prompt), in order; batches of `batch_size`, left-padded."""
        import torch

        _check_batch(images, prompts)
        out: list[str] = []
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues every row from its last real token
        for start in range(0, len(prompts), self.batch_size):
            end = start + self.batch_size
            inputs = self.processor_inputs(images[start:end], prompts[start:end])
            torch.manual_seed(settings.seed + start)  # sampling is reproducible per batch position
            with torch.inference_mode():
                ids = self.model.generate(**inputs, **self._generate_kwargs(settings))
            new = ids[:, inputs["input_ids"].shape[1]:]
            out.extend(t.strip() for t in self.processor.batch_decode(new, skip_special_tokens=True))
        return out


# --------------------------------------------------------------------------------------------------------------------
# OpenAI-compatible backend


def _image_data_url(data: bytes, where: str) -> str:
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        mime = "image/png"
    elif data[:3] == b"\xff\xd8\xff":
        mime = "image/jpeg"
    else:
        raise ValueError(f"{where}: expected PNG or JPEG bytes")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


class OpenAIGeneralist:
    """A model served behind an OpenAI-compatible /chat/completions endpoint (vLLM, lmdeploy, ...) as a Generalist."""

    RETRY_STATUS = (408, 429, 500, 502, 503, 504)

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = "OPENAI_API_KEY",
                 timeout_s: float = 120.0, max_retries: int = 3, concurrency: int = 4, model_revision: str = ""):
        """`api_key_env` names the variable holding the key (None: send no key); `model_revision` pins the served
        weights in `id` (an endpoint cannot prove which weights it serves, so the caller states it)."""
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url: expected an http(s) URL, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.concurrency = max(1, concurrency)
        self.id = f"openai:{model}@{self.base_url}" + (f"#{model_revision}" if model_revision else "")

    def __repr__(self) -> str:  # the key itself is never held; the env var name is enough to debug
        return f"OpenAIGeneralist({self.id!r}, api_key_env={self.api_key_env!r})"

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key_env:
            key = os.environ.get(self.api_key_env)
            if not key:
                raise RuntimeError(f"environment variable {self.api_key_env} (the API key for {self.base_url}) is "
                                   "not set; set it, or pass api_key_env=None for an endpoint without a key")
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def request_body(self, image: bytes, prompt: str, settings: GenerationSettings, where: str = "image") -> dict:
        """The /chat/completions JSON body for one sample: image first, then the instruction (SPEC §4)."""
        if settings.num_beams != 1:
            raise ValueError("the OpenAI chat API has no beam search: expected num_beams=1 for the openai backend, "
                             f"got {settings.num_beams}")
        body = {"model": self.model,
                "messages": [{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": _image_data_url(image, where)}},
                    {"type": "text", "text": prompt}]}],
                "max_tokens": settings.max_new_tokens, "n": 1, "seed": settings.seed,
                "temperature": settings.temperature if settings.do_sample else 0.0}
        if settings.do_sample:
            body["top_p"] = settings.top_p
        return body

    def _post(self, client, body: dict, where: str) -> str:
        import httpx

        url = f"{self.base_url}/chat/completions"
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                r = client.post(url, json=body, headers=self._headers(), timeout=self.timeout_s)
            except httpx.TransportError as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if r.status_code == 200:
                    try:
                        return r.json()["choices"][0]["message"]["content"] or ""
                    except (ValueError, KeyError, IndexError, TypeError):
                        raise RuntimeError(f"{url} ({where}): expected a chat completion JSON with "
                                           f"choices[0].message.content, got {r.text[:200]!r}") from None
                last = f"HTTP {r.status_code}: {r.text[:200]}"
                if r.status_code not in self.RETRY_STATUS:
                    break
            if attempt < self.max_retries:
                time.sleep(min(2 ** attempt, 30))
        raise RuntimeError(f"{url} ({where}) failed after {attempt + 1} attempt(s): {last}")

    def generate(self, images: list[bytes], prompts: list[str], settings: GenerationSettings) -> list[str]:
        """One completion per (image, prompt), in order; up to `concurrency` requests in flight."""
        import httpx

        _check_batch(images, prompts)
        bodies = [self.request_body(b, p, settings, f"images[{i}]") for i, (b, p) in enumerate(zip(images, prompts))]
        with httpx.Client() as client, ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(self._post, client, body, f"sample {i}") for i, body in enumerate(bodies)]
            return [f.result().strip() for f in futures]


def load_generalist(spec: dict) -> Generalist:
    """A Generalist from a profile entry: {"backend": "transformers"|"openai", ...backend keyword arguments}."""
    spec = dict(spec)
    backend = spec.pop("backend", None)
    if backend == "transformers":
        if "model" not in spec:
            raise ValueError("generalist spec (transformers): expected a `model` hub id or local folder")
        return TransformersGeneralist(spec.pop("model"), **spec)
    if backend == "openai":
        missing = [k for k in ("base_url", "model") if k not in spec]
        if missing:
            raise ValueError(f"generalist spec (openai): missing {missing}")
        return OpenAIGeneralist(spec.pop("base_url"), spec.pop("model"), **spec)
    raise ValueError(f"generalist spec: backend must be 'transformers' or 'openai', got {backend!r}")


# --------------------------------------------------------------------------------------------------------------------
# Tiny profile: the real architecture, random-initialised, with a tokenizer trained offline

TINY_DEFAULTS: dict[str, Any] = {
    "seed": 0, "vocab_size": 512, "image_size": 32, "patch_size": 8,
    "vision_hidden_size": 32, "vision_layers": 2, "vision_heads": 2, "vision_intermediate_size": 64,
    "text_hidden_size": 64, "text_layers": 2, "text_heads": 4, "text_kv_heads": 2, "text_intermediate_size": 128,
    "max_position_embeddings": 1024, "downsample_ratio": 0.5,
    # Wider than the usual 0.02: with a frozen random output head of width 64, std 0.02 caps every logit near 1, so
    # no LoRA update could make any answer likely and fine-tuning tests would see a loss floor at ~ln(vocab).
    "initializer_range": 0.2,
}


def build_tiny_internvl(out_dir: str | Path, corpus_texts: list[str], config: dict | None = None) -> Path:
    """The folder of a saved random-initialised InternVL model + processor, reloadable by `TransformersGeneralist`.

    Vision: InternVLVisionConfig at `image_size` px with `patch_size` patches; language model: Qwen2Config; tokenizer:
    byte-level BPE trained on `corpus_texts` plus ChatML and InternVL image tokens. Same texts, config and seed give
    byte-identical files. Written to a temporary folder and renamed into place.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (GenerationConfig, GotOcr2ImageProcessor, InternVLConfig,
                              InternVLForConditionalGeneration, InternVLProcessor, InternVLVideoProcessor,
                              InternVLVisionConfig, PreTrainedTokenizerFast, Qwen2Config)

    cfg = dict(TINY_DEFAULTS)
    unknown = sorted(set(config or {}) - set(cfg))
    if unknown:
        raise ValueError(f"build_tiny_internvl: unknown config key(s) {unknown}; expected a subset of {sorted(cfg)}")
    cfg.update(config or {})
    texts = [t for t in corpus_texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise ValueError("build_tiny_internvl: corpus_texts must hold at least one non-empty text for the tokenizer")
    grid = cfg["image_size"] // cfg["patch_size"]
    scale = int(round(1 / cfg["downsample_ratio"]))
    if cfg["image_size"] % cfg["patch_size"] or grid % scale:
        raise ValueError(f"build_tiny_internvl: image_size/patch_size = {cfg['image_size']}/{cfg['patch_size']} must "
                         f"give a whole patch grid divisible by 1/downsample_ratio = {scale}")
    image_seq_length = (grid // scale) ** 2

    specials = [CHATML_TOKENS["pad"], CHATML_TOKENS["bos"], CHATML_TOKENS["eos"], *INTERNVL_SPECIAL_TOKENS.values()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=cfg["vocab_size"], special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=CHATML_TOKENS["pad"], eos_token=CHATML_TOKENS["eos"],
        extra_special_tokens=dict(INTERNVL_SPECIAL_TOKENS), padding_side="left")
    size = {"height": cfg["image_size"], "width": cfg["image_size"]}
    processor = InternVLProcessor(image_processor=GotOcr2ImageProcessor(size=size, crop_to_patches=False),
                                  video_processor=InternVLVideoProcessor(size=size), tokenizer=tokenizer,
                                  image_seq_length=image_seq_length, chat_template=CHATML_TEMPLATE)

    vision = InternVLVisionConfig(hidden_size=cfg["vision_hidden_size"], num_hidden_layers=cfg["vision_layers"],
                                  num_attention_heads=cfg["vision_heads"],
                                  intermediate_size=cfg["vision_intermediate_size"], image_size=cfg["image_size"],
                                  patch_size=cfg["patch_size"])
    text = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg["text_hidden_size"],
                       num_hidden_layers=cfg["text_layers"], num_attention_heads=cfg["text_heads"],
                       num_key_value_heads=cfg["text_kv_heads"], intermediate_size=cfg["text_intermediate_size"],
                       max_position_embeddings=cfg["max_position_embeddings"], tie_word_embeddings=False,
                       initializer_range=cfg["initializer_range"],
                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       bos_token_id=tokenizer.convert_tokens_to_ids(CHATML_TOKENS["bos"]))
    model_config = InternVLConfig(vision_config=vision, text_config=text,
                                  image_token_id=tokenizer.context_image_token_id, image_seq_length=image_seq_length,
                                  downsample_ratio=cfg["downsample_ratio"], tie_word_embeddings=False)
    torch.manual_seed(cfg["seed"])
    model = InternVLForConditionalGeneration(model_config).eval()
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    out = Path(out_dir)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "gsco_tiny.json").write_text(json.dumps({"builder": "build_tiny_internvl", "config": cfg,
                                                        "corpus_texts": len(texts)}, indent=2, sort_keys=True))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
