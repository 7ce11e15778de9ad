"""The LoRA adapter of a fine-tuning run: gathered from ZeRO-3 partitions, saved, checked (empty, non-finite and
all-zero adapters are the known failure modes of SPEC §5), and merged into the base as a plain checkpoint (MedDr).
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

from data_contracts.files import file_sha256, swap_in, temporary_sibling


def gather_trainable_state(model) -> dict:
    """{name: full CPU tensor} of every trainable parameter, gathered from ZeRO-3 partitions (collective call)."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out = {}
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        for n, p in named:
            out[n] = p.detach().to("cpu", copy=True).float()
    return out


def save_adapter(peft_model, state: dict, adapter_dir: Path) -> None:
    """Save the adapter (the gathered trainable `state`) as safetensors, swapped into `adapter_dir` whole."""
    tmp = temporary_sibling(adapter_dir)
    try:
        peft_model.save_pretrained(str(tmp), state_dict=state, safe_serialization=True)
        swap_in(tmp, adapter_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    h = file_sha256(p)[:16]
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

    from tasks.generalist.backends import resolve_checkpoint

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
    tmp = temporary_sibling(out)
    try:
        merged.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"path": str(out), "merged_max_abs_delta": delta}
