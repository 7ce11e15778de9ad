"""MedDr fine-tuning (SPEC §5): LoRA on an InternVL-family model's language model under DeepSpeed ZeRO-3.

    # GPUs (one node; the same script on every rank):
    python -m deepspeed.launcher.runner --no_local_rank --num_gpus 8 tasks/finetune.py --config run.json
    torchrun --nproc_per_node 8 tasks/finetune.py --config run.json
    # CPU (tiny profile): DS_ACCELERATOR=cpu is set automatically when no GPU is visible; gloo backend
    torchrun --nproc_per_node 1 tasks/finetune.py --config run.json
    OMP_NUM_THREADS=1 pytest -q tests/test_finetune.py

`run.json` holds a FinetuneConfig (fields below; defaults are the paper's recipe). The run reads instruction-row
Parquet shards (data_contracts/instructions.py), checks every training sample's answer survives tokenisation and
truncation (a sample whose answer is masked away entirely fails the run, naming it: InternVL's "tokenization mismatch"
trap trains such samples on zero loss), trains with loss on answer tokens only, and writes into `output_dir`:

    checkpoints/step-000040/     DeepSpeed checkpoint (trainable params + optimizer + scheduler + client state)
    checkpoints/latest.json      atomic marker of the newest complete checkpoint; a rerun resumes from it
    loss.jsonl                   one line per optimizer step: step, loss, lr, tokens, answer_tokens, elapsed_s
    adapter/                     peft adapter (ZeRO-3 partitions gathered; checked not to be empty or all zero)
    merged/                      base + adapter merged (merge_and_unload) with the processor: a plain checkpoint
                                 that tasks/generalist.py loads like any other
    finetune_result.json         what MLflow should log (see `mlflow_payload`)
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # launched as a script by deepspeed/torchrun: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_contracts.errors import ContractError  # noqa: E402

IGNORE_INDEX = -100
LORA_SHORT_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj",
                    "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DS_CONFIG = REPO_ROOT / "infra" / "deepspeed" / "zero3.json"
MARKER = "latest.json"
RESULT = "finetune_result.json"
LOSS_CURVE = "loss.jsonl"


class AnswerMaskedError(ContractError):
    """A training sample would contribute no answer token to the loss (truncated away or not tokenised)."""

    def __init__(self, sample_id: str, reason: str):
        super().__init__(f"sample {sample_id}: answer is masked away entirely ({reason}); it would train on zero "
                         "loss. Raise max_length, shorten the instruction, or drop the sample from the corpus.")
        self.sample_id = sample_id


@dataclass
class FinetuneConfig:
    """One fine-tuning run. Defaults are SPEC §5 (paper + authors' train.sh): global batch 128 = 4 x 16 GPUs x 2."""

    model_path: str
    data_dir: str
    output_dir: str
    deepspeed_config: str = str(DEFAULT_DS_CONFIG)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "gate", "up", "down"])
    num_epochs: float = 2.0
    max_steps: int | None = None          # overrides num_epochs when set
    per_device_batch_size: int = 4
    gradient_accumulation_steps: int = 2
    learning_rate: float = 1e-5
    weight_decay: float = 0.05
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    max_length: int = 2048
    bf16: bool = True
    gradient_checkpointing: bool = True
    save_steps: int = 500
    save_total_limit: int = 2
    seed: int = 0
    eval_max_samples: int = 256           # val rows scored at the end (0: none)
    image_cache_row_groups: int = 8       # Parquet row groups of images kept decoded in memory per rank
    trust_remote_code: bool = False
    local_files_only: bool = True
    merge: bool = True
    stop_after_steps: int | None = None   # operators/tests: SIGKILL this process after that step (a simulated crash)

    # Fields that may differ between a run and its resumption (paths and operational switches).
    RESUMABLE_CHANGES = ("output_dir", "save_steps", "save_total_limit", "stop_after_steps", "merge",
                         "eval_max_samples", "image_cache_row_groups", "deepspeed_config", "data_dir", "model_path")

    def __post_init__(self):
        positive = ("lora_r", "per_device_batch_size", "gradient_accumulation_steps", "max_length", "save_steps")
        for name in positive:
            v = getattr(self, name)
            if not (isinstance(v, int) and v > 0):
                raise ValueError(f"FinetuneConfig.{name}: expected a positive int, got {v!r}")
        if self.max_steps is not None and not (isinstance(self.max_steps, int) and self.max_steps > 0):
            raise ValueError(f"FinetuneConfig.max_steps: expected a positive int or null, got {self.max_steps!r}")
        if self.max_steps is None and not self.num_epochs > 0:
            raise ValueError(f"FinetuneConfig.num_epochs: expected > 0, got {self.num_epochs!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"FinetuneConfig.warmup_ratio: expected in [0, 1), got {self.warmup_ratio!r}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"FinetuneConfig.lora_dropout: expected in [0, 1), got {self.lora_dropout!r}")
        if not self.lora_target_modules:
            raise ValueError("FinetuneConfig.lora_target_modules: expected at least one module name")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, where: str = "finetune config") -> "FinetuneConfig":
        """The config from a dict; unknown or missing keys are an error naming `where`."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; expected keys from {sorted(known)}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"{where}: missing required key(s) {missing}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str | Path) -> "FinetuneConfig":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{p}: expected a JSON object with a finetune config ({type(e).__name__}: {e})") from None
        if not isinstance(d, dict):
            raise ValueError(f"{p}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, where=str(p))

    def training_digest(self) -> str:
        """Digest of the fields that change what is trained; a checkpoint only resumes a run with the same digest."""
        d = {k: v for k, v in self.to_dict().items() if k not in self.RESUMABLE_CHANGES}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Small helpers


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def lora_target_regex(names: list[str]) -> str:
    """A peft `target_modules` regex matching the named projections inside the language model only.

    InternVL's vision tower has q/k/v projections too; a plain name list would put LoRA on them (SPEC §5: the
    vision encoder and projector stay frozen).
    """
    full = [LORA_SHORT_NAMES.get(n, n) for n in names]
    for n in full:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n):
            raise ValueError(f"lora_target_modules: {n!r} is not a module name")
    return r".*\blanguage_model\..*\.(" + "|".join(sorted(set(full))) + r")"


def lora_config(cfg: FinetuneConfig):
    """The peft LoraConfig of the run."""
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=lora_target_regex(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def resolve_deepspeed_config(path: str | Path, cfg: FinetuneConfig, world_size: int) -> dict:
    """The DeepSpeed config of `path` with every "auto" filled from the run config; keys starting with "_" dropped."""
    p = Path(path)
    try:
        ds = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{p}: expected a DeepSpeed JSON config ({type(e).__name__}: {e})") from None
    ds = {k: v for k, v in ds.items() if not k.startswith("_")}
    fills = {
        ("train_micro_batch_size_per_gpu",): cfg.per_device_batch_size,
        ("gradient_accumulation_steps",): cfg.gradient_accumulation_steps,
        ("train_batch_size",): cfg.per_device_batch_size * cfg.gradient_accumulation_steps * world_size,
        ("gradient_clipping",): cfg.max_grad_norm,
        ("bf16", "enabled"): cfg.bf16,
        ("optimizer", "params", "lr"): cfg.learning_rate,
        ("optimizer", "params", "weight_decay"): cfg.weight_decay,
    }
    for keys, value in fills.items():
        node = ds
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if node.get(keys[-1], "auto") == "auto":
            node[keys[-1]] = value
        elif keys[-1] in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size") \
                and node[keys[-1]] != value:
            raise ValueError(f"{p}: {'.'.join(keys)} = {node[keys[-1]]} contradicts the run config ({value}); "
                             "set it to \"auto\"")
    autos = [k for k, v in _walk(ds) if v == "auto"]
    if autos:
        raise ValueError(f"{p}: no run-config value for \"auto\" at {autos}")
    if ds.get("scheduler"):
        raise ValueError(f"{p}: the schedule (warmup + cosine) comes from the run config; remove `scheduler`")
    return ds


def _walk(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _walk(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


# --------------------------------------------------------------------------------------------------------------------
# Data: instruction rows (text held in Arrow, images read lazily from Parquet row groups)


class InstructionData:
    """The instruction rows of every Parquet shard under `data_dir`: text columns in memory, images on demand.

    Images are read one Parquet row group at a time and a few decoded row groups are cached, so memory holds the text
    of the corpus but not its images.
    """

    def __init__(self, data_dir: str | Path, cache_row_groups: int = 8):
        import polars as pl
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        from data_contracts.instructions import COLUMNS, INSTRUCTIONS_SCHEMA, validate_instructions

        root = Path(data_dir)
        self.files = sorted(p for p in root.rglob("*.parquet")
                            if not any(s.startswith(".") for s in p.relative_to(root).parts))
        if not self.files:
            raise FileNotFoundError(f"{root}: no instruction Parquet shards (*.parquet) found")
        text_cols = [c for c in COLUMNS if c != "image"]
        text_schema = pa.schema([INSTRUCTIONS_SCHEMA.field(c) for c in text_cols])
        tables, self._rg_starts, self._file_starts = [], [], []
        offset = 0
        for f in self.files:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise ContractError(f"{f}: instructions shard lacks column(s) {missing}")
            for c in COLUMNS:
                want, got = INSTRUCTIONS_SCHEMA.field(c).type, pf.schema_arrow.field(c).type
                if not (got == want or (pa.types.is_large_string(got) and pa.types.is_string(want))
                        or (pa.types.is_large_binary(got) and pa.types.is_binary(want))
                        or (pa.types.is_string_view(got) and pa.types.is_string(want))
                        or (pa.types.is_binary_view(got) and pa.types.is_binary(want))):
                    raise ContractError(f"{f}: column '{c}' has type {got}, expected {want}")
            t = pf.read(columns=text_cols).cast(text_schema)
            # Images are checked where they are decoded (each batch names a sample whose image does not decode).
            validate_instructions(pl.from_arrow(t), str(f), check_images=False)
            starts, acc = [], 0
            for rg in range(pf.num_row_groups):
                starts.append(acc)
                acc += pf.metadata.row_group(rg).num_rows
            self._rg_starts.append(starts)
            self._file_starts.append(offset)
            offset += t.num_rows
            tables.append(t)
        self.table = pa.concat_tables(tables).combine_chunks()
        ids = self.table.column("sample_id")
        if pc.count_distinct(ids).as_py() != self.table.num_rows:
            import collections

            dup = [k for k, n in collections.Counter(ids.to_pylist()).items() if n > 1][:5]
            raise ContractError(f"{root}: duplicate sample_id across shards: {dup}")
        self._cache: OrderedDict[tuple[int, int], list] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)
        self._pf: dict[int, Any] = {}

    def __len__(self) -> int:
        return self.table.num_rows

    def indices(self, split: str) -> list[int]:
        """Row numbers of `split`, in file order."""
        return [i for i, s in enumerate(self.table.column("split").to_pylist()) if s == split]

    def text(self, i: int) -> dict:
        """sample_id, instruction, answer, source_dataset, task_kind, split of row `i`."""
        return {c: self.table.column(c)[i].as_py() for c in self.table.column_names}

    def image(self, i: int) -> bytes:
        """The encoded image of row `i`."""
        import pyarrow.parquet as pq

        fi = bisect.bisect_right(self._file_starts, i) - 1
        local = i - self._file_starts[fi]
        rg = bisect.bisect_right(self._rg_starts[fi], local) - 1
        key = (fi, rg)
        if key not in self._cache:
            pf = self._pf.setdefault(fi, pq.ParquetFile(self.files[fi]))
            self._cache[key] = pf.read_row_group(rg, columns=["image"]).column(0).to_pylist()
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key][local - self._rg_starts[fi][rg]]


# --------------------------------------------------------------------------------------------------------------------
# Encoding: prompt tokens masked, answer tokens supervised


class SampleEncoder:
    """Token ids and labels of one (instruction, answer) pair in the model's chat format, image tokens expanded.

    The prompt is the chat template's generation prompt (what the model sees at inference), the answer part is the
    rest of the rendered conversation (answer + end-of-turn). Their ids are concatenated, never re-tokenised
    together, so the supervised span is exactly the answer whatever the tokenizer does at the boundary.
    """

    def __init__(self, processor, max_length: int):
        from tasks.generalist import chat_text

        for attr in ("start_image_token", "end_image_token", "image_token", "image_seq_length"):
            if not hasattr(processor, attr):
                raise ValueError(f"{type(processor).__name__} lacks `{attr}`: fine-tuning supports InternVL-family "
                                 "processors (transformers InternVLProcessor)")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_length = max_length
        self._chat_text = chat_text
        # One 448x448 tile per image (paper): a fixed number of image tokens per sample.
        self.image_tokens = (processor.start_image_token + processor.image_token * processor.image_seq_length
                             + processor.end_image_token)

    def texts(self, instruction: str, answer: str, sample_id: str) -> tuple[str, str]:
        """(prompt text with image tokens expanded, answer text incl. end-of-turn)."""
        prompt = self._chat_text(self.processor, instruction)
        full = self._chat_text(self.processor, instruction, answer)
        if not full.startswith(prompt):
            raise AnswerMaskedError(sample_id, "the chat template renders the conversation with a different prefix "
                                               "than the generation prompt, so prompt and answer cannot be split")
        if self.processor.image_token not in prompt:
            raise ValueError(f"sample {sample_id}: the chat prompt has no image placeholder")
        return prompt.replace(self.processor.image_token, self.image_tokens, 1), full[len(prompt):]

    def encode_many(self, rows: list[dict]) -> list[tuple[list[int], list[int]]]:
        """(input_ids, labels) per row; raises AnswerMaskedError naming the first row with no supervised token."""
        pairs = [self.texts(r["instruction"], r["answer"], r["sample_id"]) for r in rows]
        p_ids = self.tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
        a_ids = self.tokenizer([a for _, a in pairs], add_special_tokens=False)["input_ids"]
        out = []
        for r, (_, answer_text), pi, ai in zip(rows, pairs, p_ids, a_ids):
            if not ai:
                raise AnswerMaskedError(r["sample_id"], f"the answer {answer_text!r} tokenises to nothing")
            if len(pi) >= self.max_length:
                raise AnswerMaskedError(r["sample_id"], f"the prompt alone is {len(pi)} tokens (incl. "
                                        f"{self.processor.image_seq_length} image tokens) >= max_length "
                                        f"{self.max_length}: the whole answer is truncated away")
            ids = (pi + ai)[:self.max_length]
            labels = ([IGNORE_INDEX] * len(pi) + ai)[:self.max_length]
            out.append((ids, labels))
        return out

    def check_all(self, data: InstructionData, indices: list[int], chunk: int = 1024) -> dict:
        """Encode every row of `indices` (text only); raises on the first masked answer. Returns token statistics."""
        n_tok = n_ans = truncated = 0
        longest = 0
        for start in range(0, len(indices), chunk):
            rows = [data.text(i) for i in indices[start:start + chunk]]
            for ids, labels in self.encode_many(rows):
                n_tok += len(ids)
                n_sup = sum(1 for x in labels if x != IGNORE_INDEX)
                n_ans += n_sup
                longest = max(longest, len(ids))
                if len(ids) == self.max_length:
                    truncated += 1
        return {"samples": len(indices), "tokens": n_tok, "answer_tokens": n_ans, "longest": longest,
                "truncated_samples": truncated}


def collate(encoded: list[tuple[list[int], list[int]]], pixel_values, pad_id: int) -> dict:
    """A right-padded micro-batch: input_ids, attention_mask, labels (-100 on prompt and padding), pixel_values."""
    import torch

    width = max(len(ids) for ids, _ in encoded)
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, (ids, lab) in enumerate(encoded):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        labels[b, :len(lab)] = torch.tensor(lab)
        attention[b, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "pixel_values": pixel_values}


class Batches:
    """Deterministic micro-batches: batch (step, micro, rank) depends only on the seed, so a resumed run continues
    with exactly the samples the killed run would have seen next."""

    def __init__(self, n_rows: int, per_device: int, accumulation: int, world: int, seed: int):
        self.n, self.per_device, self.accum, self.world, self.seed = n_rows, per_device, accumulation, world, seed
        self.rows_per_step = per_device * accumulation * world
        self.steps_per_epoch = n_rows // self.rows_per_step  # the incomplete tail of an epoch is dropped
        if self.steps_per_epoch == 0:
            raise ValueError(f"{n_rows} training rows are fewer than one optimizer step needs "
                             f"({per_device} per device x {accumulation} accumulation x {world} ranks)")
        self._perm: tuple[int, list[int]] | None = None

    def rows(self, step: int, micro: int, rank: int) -> list[int]:
        """Positions (into the training index list) of one rank's micro-batch."""
        import numpy as np

        epoch, j = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng(self.seed + epoch).permutation(self.n).tolist())
        base = (j * self.accum + micro) * self.world * self.per_device + rank * self.per_device
        return self._perm[1][base:base + self.per_device]


# --------------------------------------------------------------------------------------------------------------------
# Model


def load_processor(cfg: FinetuneConfig):
    """The checkpoint's processor (tokenizer, image processor, chat template)."""
    from transformers import AutoProcessor

    from tasks.generalist import resolve_checkpoint

    source, _ = resolve_checkpoint(cfg.model_path, cfg.local_files_only, None)
    return AutoProcessor.from_pretrained(source, trust_remote_code=cfg.trust_remote_code,
                                         local_files_only=cfg.local_files_only)


def load_training_model(cfg: FinetuneConfig):
    """(peft model with LoRA on the language model only, processor, trainable / total parameter counts)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoConfig, AutoModelForImageTextToText, InternVLForConditionalGeneration

    from tasks.generalist import resolve_checkpoint

    source, _ = resolve_checkpoint(cfg.model_path, cfg.local_files_only, None)
    kw = dict(trust_remote_code=cfg.trust_remote_code, local_files_only=cfg.local_files_only)
    mconf = AutoConfig.from_pretrained(source, **kw)
    cls = InternVLForConditionalGeneration if mconf.model_type == "internvl" else AutoModelForImageTextToText
    model = cls.from_pretrained(source, config=mconf, dtype=torch.bfloat16 if cfg.bf16 else torch.float32, **kw)
    model.config.use_cache = False
    processor = load_processor(cfg)
    model.requires_grad_(False)
    if cfg.gradient_checkpointing:
        # Non-reentrant checkpointing needs no grad on the (frozen) inputs and works with ZeRO-3 parameter fetching.
        enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.2x name
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, lora_config(cfg))
    outside = [n for n, p in model.named_parameters() if p.requires_grad
               and ("lora_" not in n or "language_model" not in n)]
    if outside:
        raise RuntimeError(f"trainable parameters outside the language model's LoRA layers: {outside[:5]}")
    trainable = sum(_numel(p) for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise RuntimeError(f"LoRA matched no module of {cfg.model_path} with targets {cfg.lora_target_modules}")
    total = sum(_numel(p) for p in model.parameters())
    return model, processor, trainable, total


def _numel(p) -> int:
    return int(getattr(p, "ds_numel", 0) or p.numel())


def pixel_values_for(processor, images: list[bytes], sample_ids: list[str]):
    """The single-tile pixel values of a micro-batch's images, shape (B, 3, H, W)."""
    from tasks.generalist import decode_image

    pil = [decode_image(b, f"sample {sid}: image") for b, sid in zip(images, sample_ids)]
    return processor.image_processor(pil, crop_to_patches=False, return_tensors="pt")["pixel_values"]


# --------------------------------------------------------------------------------------------------------------------
# Checkpoints, adapter, merge


def read_marker(output_dir: str | Path) -> dict | None:
    """The newest complete checkpoint {"tag", "step", "training_digest", "world_size"}, or None."""
    p = Path(output_dir) / "checkpoints" / MARKER
    return json.loads(p.read_text()) if p.exists() else None


def _prune_checkpoints(ckpt_dir: Path, keep: int, current: str) -> None:
    tags = sorted(d.name for d in ckpt_dir.iterdir() if d.is_dir() and d.name.startswith("step-"))
    for t in tags[:-keep] if keep > 0 else []:
        if t != current:
            shutil.rmtree(ckpt_dir / t, ignore_errors=True)


def gather_trainable_state(model) -> dict:
    """{name: full CPU tensor} of every trainable parameter, gathered from ZeRO-3 partitions (collective call)."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        for n, p in named:
            out[n] = p.detach().to("cpu", copy=True).float()
    return out


def check_adapter(adapter_dir: str | Path, trained: bool = True) -> dict:
    """Statistics of a saved adapter; raises if a tensor is empty, non-finite, or (after training) all zero.

    Empty or all-zero LoRA tensors are what an adapter saved from ZeRO-3 partitions without gathering looks like.
    """
    import torch
    from safetensors.torch import load_file

    p = Path(adapter_dir) / "adapter_model.safetensors"
    if not p.is_file():
        raise FileNotFoundError(f"{p}: adapter weights missing")
    sd = load_file(str(p))
    if not sd:
        raise RuntimeError(f"{p}: adapter holds no tensors")
    empty = [k for k, v in sd.items() if v.numel() == 0]
    if empty:
        raise RuntimeError(f"{p}: {len(empty)} empty tensor(s), e.g. {empty[0]} (ZeRO-3 partitions not gathered)")
    bad = [k for k, v in sd.items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise RuntimeError(f"{p}: non-finite values in {bad[:3]}")
    a_norm = sum(float(v.float().norm()) for k, v in sd.items() if "lora_A" in k)
    b_norm = sum(float(v.float().norm()) for k, v in sd.items() if "lora_B" in k)
    if a_norm == 0:
        raise RuntimeError(f"{p}: every lora_A tensor is zero (weights were not gathered before saving)")
    if trained and b_norm == 0:
        raise RuntimeError(f"{p}: every lora_B tensor is zero after training: the adapter is a no-op")
    h = hashlib.sha256(p.read_bytes()).hexdigest()[:16]
    return {"tensors": len(sd), "params": sum(v.numel() for v in sd.values()), "lora_A_norm": a_norm,
            "lora_B_norm": b_norm, "digest": h}


def merge_adapter(base_path: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, bf16: bool = False,
                  trust_remote_code: bool = False, local_files_only: bool = True) -> dict:
    """Merge the adapter into a fresh copy of the base (merge_and_unload) and save it with the processor.

    Returns {"path", "merged_max_abs_delta"}; raises if merging changed no weight (an unmerged save). Needs the
    whole base in host memory (about 2 bytes per parameter in bf16).
    """
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor, InternVLForConditionalGeneration

    from tasks.generalist import resolve_checkpoint

    source, _ = resolve_checkpoint(str(base_path), local_files_only, None)
    kw = dict(trust_remote_code=trust_remote_code, local_files_only=local_files_only)
    mconf = AutoConfig.from_pretrained(source, **kw)
    cls = InternVLForConditionalGeneration if mconf.model_type == "internvl" else AutoModelForImageTextToText
    base = cls.from_pretrained(source, config=mconf, dtype=torch.bfloat16 if bf16 else torch.float32, **kw)
    # A few projection weights are enough to see whether merging changed anything (a full copy would double RAM).
    probes = itertools.islice(((n, p) for n, p in base.named_parameters()
                               if "language_model" in n and n.endswith("proj.weight")), 8)
    before = {n: p.detach().clone() for n, p in probes}
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    after = dict(merged.named_parameters())
    delta = max(float((after[n].detach().float() - w.float()).abs().max()) for n, w in before.items() if n in after)
    if delta == 0:
        raise RuntimeError(f"merging {adapter_dir} into {base_path} changed no weight: the adapter is a no-op or "
                           "was not applied")
    processor = AutoProcessor.from_pretrained(source, **kw)
    out = Path(out_dir)
    tmp = out.parent / f".tmp-{out.name}-{uuid.uuid4().hex[:8]}"
    try:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(out), "merged_max_abs_delta": delta}


# --------------------------------------------------------------------------------------------------------------------
# The run


def _dist_env() -> tuple[int, int, int]:
    """(rank, local rank, world size); a plain `python tasks/finetune.py` is a world of one."""
    if "RANK" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"])


def train(cfg: FinetuneConfig) -> dict:
    """Run (or resume) fine-tuning on this rank; returns the result dict (also written to finetune_result.json)."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # before deepspeed is imported
    rank, local_rank, world = _dist_env()
    import deepspeed
    import torch.distributed as dist
    from transformers import get_cosine_schedule_with_warmup
    from transformers.integrations import HfDeepSpeedConfig, unset_hf_deepspeed_config

    t_start = time.time()
    out = Path(cfg.output_dir)
    ckpt_dir = out / "checkpoints"
    ds_config = resolve_deepspeed_config(cfg.deepspeed_config, cfg, world)
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local_rank)
    torch.manual_seed(cfg.seed)

    # Data first: a bad corpus or a masked answer fails in seconds, before any model is loaded or partitioned.
    data = InstructionData(cfg.data_dir, cfg.image_cache_row_groups)
    train_idx, val_idx = data.indices("train"), data.indices("val")
    if not train_idx:
        raise ContractError(f"{cfg.data_dir}: no rows with split 'train'")
    processor = load_processor(cfg)
    encoder = SampleEncoder(processor, cfg.max_length)
    stats = encoder.check_all(data, train_idx + val_idx[:cfg.eval_max_samples])
    pad_id = processor.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = processor.tokenizer.eos_token_id

    if not on_gpu and world == 1:
        # DeepSpeed's shared-memory op only speeds up all-reduce between CPU processes; a world of one has nothing
        # to reduce, and building the op is a C++ compile of about a minute on first use.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if on_gpu else "gloo")
    # With ZeRO-3 this makes from_pretrained partition weights while loading (no full copy per rank in host RAM).
    hf_ds = HfDeepSpeedConfig(ds_config) if ds_config.get("zero_optimization", {}).get("stage") == 3 else None
    model, _, n_trainable, n_total = load_training_model(cfg)

    batches = Batches(len(train_idx), cfg.per_device_batch_size, cfg.gradient_accumulation_steps, world, cfg.seed)
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * batches.steps_per_epoch))
    warmup = math.ceil(cfg.warmup_ratio * total_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=[p for p in model.parameters() if p.requires_grad], config=ds_config,
        lr_scheduler=lambda opt: get_cosine_schedule_with_warmup(opt, warmup, total_steps))

    digest = cfg.training_digest()
    start_step, resumed_from = 0, None
    marker = read_marker(out)
    if marker is not None:
        if marker.get("training_digest") != digest:
            raise RuntimeError(f"{out}: holds checkpoints of a different training config "
                               f"({marker.get('training_digest')} != {digest}); use a new output_dir")
        if marker.get("world_size") != world:
            # ZeRO partitions and the per-rank batch order both depend on the number of ranks.
            raise RuntimeError(f"{out}: checkpoint was written by {marker.get('world_size')} ranks, this run has "
                               f"{world}; resume with the same number of ranks")
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=marker["tag"], load_module_strict=False)
        if client is None or client.get("step") != marker["step"]:
            raise RuntimeError(f"{ckpt_dir / marker['tag']}: checkpoint does not load as step {marker['step']}")
        start_step = resumed_from = marker["step"]
    curve = out / LOSS_CURVE
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        ckpt_dir.mkdir(exist_ok=True)
        _write_json_atomic(out / "ds_config.json", ds_config)
        kept = [ln for ln in curve.read_text().splitlines() if ln and json.loads(ln)["step"] <= start_step] \
            if curve.exists() else []
        tmp = curve.with_name(f".{curve.name}.tmp")
        tmp.write_text("".join(ln + "\n" for ln in kept))
        os.replace(tmp, curve)  # steps after the last checkpoint are retrained, so their lines go
    dist.barrier()

    device = engine.device
    dtype = torch.bfloat16 if cfg.bf16 else torch.float32
    tokens_total = 0
    train_time = 0.0
    engine.train()
    for step in range(start_step, total_steps):
        t0 = time.time()
        lr = scheduler.get_last_lr()[0]  # the rate this step's update uses
        loss_sum = torch.zeros(3, dtype=torch.float64)  # loss sum, tokens, answer tokens
        for micro in range(cfg.gradient_accumulation_steps):
            idx = [train_idx[i] for i in batches.rows(step, micro, rank)]
            rows = [data.text(i) for i in idx]
            encoded = encoder.encode_many(rows)
            pix = pixel_values_for(processor, [data.image(i) for i in idx], [r["sample_id"] for r in rows])
            batch = collate(encoded, pix, pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
            loss = engine(**batch).loss
            engine.backward(loss)
            engine.step()
            loss_sum += torch.tensor([float(loss.detach()), float(batch["attention_mask"].sum()),
                                      float((batch["labels"] != IGNORE_INDEX).sum())], dtype=torch.float64)
        reduced = loss_sum.to(device)
        dist.all_reduce(reduced)
        reduced = reduced.cpu()
        step_loss = float(reduced[0]) / (cfg.gradient_accumulation_steps * world)
        tokens_total += int(reduced[1])
        train_time += time.time() - t0
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"step {step + 1}: loss is {step_loss}")
        if rank == 0:
            with open(curve, "a") as f:
                f.write(json.dumps({"step": step + 1, "loss": step_loss, "lr": lr,
                                    "tokens": int(reduced[1]), "answer_tokens": int(reduced[2]),
                                    "elapsed_s": round(time.time() - t_start, 3)}) + "\n")
        done = step + 1
        if done % cfg.save_steps == 0 and done < total_steps:
            _save_checkpoint(engine, ckpt_dir, done, digest, rank, cfg.save_total_limit)
        if cfg.stop_after_steps is not None and done >= cfg.stop_after_steps:
            dist.barrier()
            os.kill(os.getpid(), signal.SIGKILL)  # a crash, not a clean exit: nothing after this step is written

    val_loss = _evaluate(engine, data, val_idx, encoder, processor, pad_id, cfg, rank, world, device, dtype)
    if start_step < total_steps:
        _save_checkpoint(engine, ckpt_dir, total_steps, digest, rank, cfg.save_total_limit)

    state = gather_trainable_state(engine.module)
    result: dict[str, Any] = {}
    if rank == 0:
        adapter_dir = out / "adapter"
        tmp = out / f".tmp-adapter-{uuid.uuid4().hex[:8]}"
        engine.module.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        os.replace(tmp, adapter_dir)
        adapter_stats = check_adapter(adapter_dir, trained=total_steps > 0)
        curve_rows = [json.loads(ln) for ln in curve.read_text().splitlines() if ln]
        result = {"status": "finished", "total_steps": total_steps, "start_step": start_step,
                  "resumed_from_step": resumed_from, "world_size": world, "trainable_params": n_trainable,
                  "total_params": n_total, "trainable_fraction": n_trainable / max(n_total, 1),
                  "train_rows": len(train_idx), "val_rows": len(val_idx), "data_check": stats,
                  "steps_per_epoch": batches.steps_per_epoch, "warmup_steps": warmup,
                  "first_loss": curve_rows[0]["loss"] if curve_rows else None,
                  "final_loss": curve_rows[-1]["loss"] if curve_rows else None, "val_loss": val_loss,
                  "tokens_this_run": tokens_total,
                  "tokens_per_s_this_run": tokens_total / train_time if train_time else None,
                  "adapter": {"path": str(adapter_dir), **adapter_stats}, "training_digest": digest,
                  "config": cfg.to_dict(), "deepspeed_config": ds_config}
    dist.barrier()
    del engine, model, state
    if hf_ds is not None:
        del hf_ds
        unset_hf_deepspeed_config()  # the merge below loads a plain, unpartitioned model
    dist.destroy_process_group()
    if rank == 0:
        if cfg.merge:
            result["merged"] = merge_adapter(cfg.model_path, out / "adapter", out / "merged", bf16=cfg.bf16,
                                             trust_remote_code=cfg.trust_remote_code,
                                             local_files_only=cfg.local_files_only)
        result["wall_s"] = round(time.time() - t_start, 3)
        _write_json_atomic(out / RESULT, result)
    return result


def _save_checkpoint(engine, ckpt_dir: Path, step: int, digest: str, rank: int, keep: int) -> None:
    """Save a DeepSpeed checkpoint tagged by step, then (after every rank finished) move the marker atomically."""
    import torch.distributed as dist

    tag = f"step-{step:06d}"
    engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state={"step": step, "training_digest": digest},
                           save_latest=False, exclude_frozen_parameters=True)
    dist.barrier()  # a marker must never point at a checkpoint some rank is still writing
    if rank == 0:
        _write_json_atomic(ckpt_dir / MARKER, {"tag": tag, "step": step, "training_digest": digest,
                                               "world_size": dist.get_world_size()})
        _prune_checkpoints(ckpt_dir, keep, tag)
    dist.barrier()


def _evaluate(engine, data, val_idx, encoder, processor, pad_id, cfg, rank, world, device, dtype) -> float | None:
    """Mean answer-token loss over up to `eval_max_samples` val rows (every rank runs the same number of batches)."""
    import torch
    import torch.distributed as dist

    per = cfg.per_device_batch_size * world
    n = min(len(val_idx), cfg.eval_max_samples) // per * per
    if n == 0:
        return None
    engine.eval()
    acc = torch.zeros(2, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n, per):
            idx = val_idx[start + rank * cfg.per_device_batch_size: start + (rank + 1) * cfg.per_device_batch_size]
            rows = [data.text(i) for i in idx]
            pix = pixel_values_for(processor, [data.image(i) for i in idx], [r["sample_id"] for r in rows])
            batch = {k: v.to(device) for k, v in collate(encoder.encode_many(rows), pix, pad_id).items()}
            batch["pixel_values"] = batch["pixel_values"].to(dtype)
            n_sup = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
            acc += torch.tensor([float(engine(**batch).loss) * n_sup, n_sup], dtype=torch.float64)
    acc = acc.to(device)
    dist.all_reduce(acc)
    engine.train()
    return float(acc[0] / acc[1]) if float(acc[1]) else None


# --------------------------------------------------------------------------------------------------------------------
# What MLflow should log


def mlflow_payload(output_dir: str | Path) -> dict:
    """{"params", "metrics", "metric_history", "artifacts", "tags"} of a finished run, for the flow to log."""
    out = Path(output_dir)
    p = out / RESULT
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no finished fine-tuning run in {out}")
    r = json.loads(p.read_text())
    cfg = r["config"]
    params = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v) for k, v in cfg.items()
              if k not in ("output_dir", "stop_after_steps")}
    params.update(world_size=r["world_size"], total_steps=r["total_steps"], warmup_steps=r["warmup_steps"],
                  zero_stage=r["deepspeed_config"].get("zero_optimization", {}).get("stage"))
    metrics = {k: r[k] for k in ("first_loss", "final_loss", "val_loss", "trainable_params", "total_params",
                                 "trainable_fraction", "tokens_per_s_this_run", "wall_s") if r.get(k) is not None}
    metrics["answer_tokens_checked"] = r["data_check"]["answer_tokens"]
    metrics["truncated_samples"] = r["data_check"]["truncated_samples"]
    if r.get("merged"):
        metrics["merged_max_abs_delta"] = r["merged"]["merged_max_abs_delta"]
    history = []
    for ln in (out / LOSS_CURVE).read_text().splitlines():
        if ln:
            row = json.loads(ln)
            history += [{"key": k, "value": row[k], "step": row["step"]} for k in ("loss", "lr", "tokens")]
    artifacts = {"adapter": r["adapter"]["path"], "loss_curve": str(out / LOSS_CURVE),
                 "deepspeed_config": str(out / "ds_config.json"), "result": str(p)}
    if r.get("merged"):
        artifacts["merged"] = r["merged"]["path"]
    tags = {"adapter_digest": r["adapter"]["digest"], "training_digest": r["training_digest"],
            "resumed_from_step": str(r["resumed_from_step"])}
    return {"params": params, "metrics": metrics, "metric_history": history, "artifacts": artifacts, "tags": tags}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="run config JSON (FinetuneConfig fields)")
    ap.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # older launchers pass it
    args = ap.parse_args(argv)
    cfg = FinetuneConfig.from_json(args.config)
    result = train(cfg)
    if result:
        print(json.dumps({k: result[k] for k in ("status", "start_step", "total_steps", "final_loss", "val_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
