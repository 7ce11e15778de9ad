"""The generalist (MedDr) behind one interface: batched (image, instruction) -> text for synthesis and evaluation.

    OMP_NUM_THREADS=1 pytest -q tests/test_generalist.py

    g = TransformersGeneralist("/models/InternVL3-2B-hf", batch_size=8)                 # local path or hub id
    g = OpenAIGeneralist("http://meddr:8000/v1", "MedDr", api_key_env="MEDDR_API_KEY")
    g = generalist_for(base_model, profile.generalist)     # what the profile configures (lazy: loads on first use)
    texts = g.generate(images, instructions, GenerationSettings(max_new_tokens=256))

Backends:
- `transformers`: an InternVL-family checkpoint in the transformers-native format (InternVL3 "-hf" checkpoints, the
  tiny profile's model, a merged MedDr fine-tune) through `InternVLForConditionalGeneration` + `AutoProcessor`; other
  image-text-to-text models through `AutoModelForImageTextToText`. Nothing is downloaded unless the caller opts in,
  and remote code stays off unless the caller opts in.
- `openai`: an OpenAI-compatible chat endpoint, for the published MedDr weights, which need the authors' own model code
  and so are served elsewhere (SPEC §5). The API key is read from a named environment variable at request time and is
  never stored, logged or put in an error message.
"""
from __future__ import annotations

import base64
import hashlib
import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tasks.generalist.chat import chat_text
from tasks.generalist.settings import GeneralistSettings, GenerationSettings

# Files whose full content identifies a checkpoint besides its weights (config, tokenizer, processor, template).
_SMALL_FILE_BYTES = 16 * 1024 * 1024


class WeightsNotFoundError(FileNotFoundError):
    """A model's weights are not present locally and downloading was not allowed."""


class Generalist(Protocol):
    """What synthesis and evaluation need: a stable id (part of their cache keys), batched (image, prompt) -> text.

    Local (transformers) generalists also have `embed_images(images) -> (n, d) float32`: the vision encoder's pooled
    features, the retriever of RAD's encoder variant (tasks/rad/encoder.py). A served (OpenAI-compatible) generalist
    exposes no encoder, so its `embed_images` raises and that variant cannot run on it.
    """

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

    def embed_images(self, images: list[bytes]) -> np.ndarray:
        """(n, d) float32: per image, the mean over its image tokens of the vision tower + projector output.

        These are the features generate() feeds the language model (the paper's "intermediate results" of MedDr's
        vision encoder), from the same image processor and tiling; batches of `batch_size`, no grad, eval mode, so
        the same bytes give the same vector run to run on the same device.
        """
        import torch

        for i, b in enumerate(images):
            if not isinstance(b, (bytes, bytearray)) or not b:
                raise ValueError(f"embed_images: images[{i}]: expected encoded image bytes (PNG/JPEG), "
                                 f"got {type(b).__name__}")
        if not hasattr(self.model, "get_image_features"):
            raise NotImplementedError(f"{self.id}: {type(self.model).__name__} has no get_image_features; "
                                      "expected an InternVL-family model to embed images with")
        extra = {"crop_to_patches": self.crop_to_patches} \
            if hasattr(getattr(self.processor, "image_processor", None), "crop_to_patches") else {}
        out: list[np.ndarray] = []
        for start in range(0, len(images), self.batch_size):
            pil = [decode_image(b, f"images[{start + i}]")
                   for i, b in enumerate(images[start:start + self.batch_size])]
            inputs = self.processor.image_processor(images=pil, return_tensors="pt", **extra)
            pixels = inputs["pixel_values"].to(self.device, self.model.dtype)
            tiles = inputs["num_patches"].tolist() if "num_patches" in inputs else [1] * len(pil)
            with torch.inference_mode():
                feats = self.model.get_image_features(pixel_values=pixels)
            feats = getattr(feats, "pooler_output", feats)
            if not isinstance(feats, torch.Tensor) or feats.ndim != 3 or feats.shape[0] != sum(tiles):
                raise RuntimeError(f"{self.id}: get_image_features gave {type(feats).__name__} "
                                   f"{getattr(feats, 'shape', '')}; expected (tiles, tokens, dim), {sum(tiles)} tiles")
            # one vector per image: the mean over every token of all its tiles, accumulated in float32
            for chunk in torch.split(feats.float(), tiles):
                out.append(chunk.mean(dim=(0, 1)).cpu().numpy())
        if not out:
            dim = self.model.config.get_text_config().hidden_size
            return np.zeros((0, dim), np.float32)
        return np.stack(out).astype(np.float32)


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

    def embed_images(self, images: list[bytes]) -> np.ndarray:
        raise NotImplementedError(f"{self.id}: a served generalist exposes no vision encoder, so RAD with the "
                                  "generalist's own encoder cannot run on it; use the transformers backend")


class LazyGeneralist:
    """A transformers generalist whose weights load on the first `generate` (cached stages never load them)."""

    def __init__(self, path: str, digest: str, settings: GeneralistSettings):
        self.path, self.settings = path, settings
        label = "local" if Path(path).is_dir() else path
        self.id = f"transformers:{label}@{digest}"
        self._loaded: TransformersGeneralist | None = None

    def _load(self) -> TransformersGeneralist:
        if self._loaded is None:
            self._loaded = TransformersGeneralist(self.path, batch_size=self.settings.batch_size,
                                                  dtype=self.settings.dtype,
                                                  trust_remote_code=self.settings.trust_remote_code,
                                                  local_files_only=self.settings.local_files_only)
            if self._loaded.id != self.id:
                raise RuntimeError(f"{self.path}: weights changed while running ({self._loaded.id} != {self.id})")
        return self._loaded

    def generate(self, images: list[bytes], prompts: list[str], generation: GenerationSettings) -> list[str]:
        return self._load().generate(images, prompts, generation)

    def embed_images(self, images: list[bytes]) -> np.ndarray:
        """The loaded model's `TransformersGeneralist.embed_images` (loads the weights on first use)."""
        return self._load().embed_images(images)


def generalist_for(model: dict, settings: GeneralistSettings) -> Generalist:
    """The generalist a stage uses: the configured OpenAI-compatible endpoint, else the local weights of `model`
    ({"path", "digest"}: the base model, or the merged MedDr), loaded on first use."""
    if settings.backend == "openai":
        return OpenAIGeneralist(settings.base_url, settings.model, api_key_env=settings.api_key_env,
                                timeout_s=settings.timeout_s, max_retries=settings.max_retries,
                                concurrency=settings.concurrency, model_revision=settings.model_revision)
    return LazyGeneralist(model["path"], model["digest"], settings)
