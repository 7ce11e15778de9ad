"""MedDr LoRA fine-tuning tokens/s and MFU: the DeepSpeed ZeRO-3 recipe beside a plain torch + peft loop.

    python perf/finetune_throughput.py                       # CPU: tiny profile, the real script end to end
    python perf/finetune_throughput.py --gpu                 # CUDA: InternVL3-2B-shaped model, both arms
    python perf/finetune_throughput.py --gpu --size tiny     # the GPU code path at a tiny shape (runs on CPU)
    python perf/finetune_throughput.py --gpu --steps 20 --arms torch deepspeed --out /tmp/ft.json

Arms (same random-initialised model shape, same batch, same LoRA, gradient checkpointing, bf16 on CUDA):
  torch      the model in bf16 on the device, peft LoRA, torch AdamW (fused on CUDA) over the LoRA parameters
  deepspeed  the fine-tuning recipe (tasks/generalist/finetune/config.py): its LoRA config,
             infra/deepspeed/zero3.json resolved by resolve_deepspeed_config, deepspeed.initialize, engine.backward/step (ZeRO-3 on one GPU: every layer's
             weights are gathered before use and released after, so this arm measures ZeRO-3's own overhead)
  tiny       (no --gpu) recipes/finetune.py launched by torchrun on a tiny model and corpus; its tokens_per_s_this_run

Shape (--size 2b): InternViT-300M-like vision (1024 wide, 24 layers, 448 px, patch 14) + Qwen2-1.5B-like LM (1536 wide,
28 layers, 12 heads / 2 KV heads, MLP 8960, vocab 151,674, tied embeddings), pixel shuffle 0.5 -> 256 image tokens per
448 px tile; ~1.86B parameters. Batch: --batch 4 sequences of --seq 2048 tokens (256 image tokens + text), loss on the
last --answer-tokens of each; LoRA r16 / alpha 32 / dropout 0.05 on q,k,v,o,gate,up,down of the LM (SPEC §5).

FLOPs per step (stated, not measured): model FLOPs = 6 * (N_lm * T_lm + N_vis * T_vis), with N_lm the parameters of
the language model + projector, T_lm = batch * seq, N_vis the vision tower's parameters and T_vis = batch * 1025
(patches + class token). 6 = forward (2) + backward (4) as if every weight were trained; the frozen base skips its
weight gradients (~2NT less) while gradient checkpointing recomputes the forward (~2NT more), so 6NT is also close to
the work actually done. Attention score FLOPs are left out (under 10% at seq 2048 for these widths). MFU = model
FLOPs/s / peak: the datasheet dense bf16 peak (H100/H200 SXM 989 TFLOP/s) and the peak of a bf16 matmul measured
first on the same card (SPEC §9 quotes MFU against such a measured ~790 TFLOP/s on an H200).

Every arm is timed with CUDA synchronisation over --steps steps after --warmup steps and printed as soon as it ends;
an arm that fails is reported with its error and the others still run. Results go to --out as JSON after every arm.
The GPU path needs only torch, transformers, peft and deepspeed (no polars/pyarrow/pandera).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(REPO))

DATASHEET_BF16_TFLOPS = {"H100": 989.4, "H200": 989.4, "A100": 312.0}
SPEC_ANCHOR = "SPEC §9 (H200): LoRA r16 on a 6.7B Llama-shaped LM, seq 2048 x 4, plain torch + peft: 6,764 tokens/s"

SHAPES = {
    "2b": {"vision": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          image_size=448, patch_size=14),
           "text": dict(vocab_size=151674, hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                        num_key_value_heads=2, intermediate_size=8960, max_position_embeddings=32768,
                        tie_word_embeddings=True),
           "image_token_id": 151667, "tie": True},
    "tiny": {"vision": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            image_size=56, patch_size=14),
             "text": dict(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, intermediate_size=128, max_position_embeddings=1024,
                          tie_word_embeddings=True),
             "image_token_id": 500, "tie": True},
}


def log(msg: str) -> None:
    print(msg, flush=True)


def build_model(shape: str, device, dtype):
    """A random-initialised InternVLForConditionalGeneration of `shape`, built directly on `device` in `dtype`."""
    import torch
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLVisionConfig, Qwen2Config

    s = SHAPES[shape]
    vision = InternVLVisionConfig(**s["vision"])
    grid = s["vision"]["image_size"] // s["vision"]["patch_size"]
    cfg = InternVLConfig(vision_config=vision, text_config=Qwen2Config(**s["text"]),
                         image_token_id=s["image_token_id"], image_seq_length=(grid // 2) ** 2,
                         downsample_ratio=0.5, tie_word_embeddings=s["tie"])
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are created in bf16: no fp32 copy of the model ever exists
    try:
        with torch.device(device):
            model = InternVLForConditionalGeneration(cfg)
    finally:
        torch.set_default_dtype(previous)
    model.config.use_cache = False
    return model, cfg


def param_counts(model) -> dict:
    """Parameters of the vision tower and of everything else (language model, projector, head)."""
    seen, vis, rest = set(), 0, 0
    for n, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        if "vision_tower" in n:
            vis += p.numel()
        else:
            rest += p.numel()
    return {"vision": vis, "lm": rest, "total": vis + rest}


def make_batch(cfg, batch: int, seq: int, answer_tokens: int, device, dtype, seed: int = 0):
    """input_ids with one image's placeholder run after the first token, labels on the last `answer_tokens`."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n_img = cfg.image_seq_length
    vocab = cfg.text_config.vocab_size
    if seq <= n_img + 2 + answer_tokens:
        raise ValueError(f"--seq {seq} leaves no room for {n_img} image tokens and {answer_tokens} answer tokens")
    ids = torch.randint(0, min(vocab, cfg.image_token_id), (batch, seq), generator=g)
    ids[:, 1:1 + n_img] = cfg.image_token_id
    labels = torch.full_like(ids, -100)
    labels[:, -answer_tokens:] = ids[:, -answer_tokens:]
    size = cfg.vision_config.image_size[0]
    pixels = torch.randn(batch, 3, size, size, generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device),
            "labels": labels.to(device), "pixel_values": pixels.to(device=device, dtype=dtype)}


def recipe_config(args):
    """The run config the deepspeed arm resolves: SPEC §5 values, the benchmark's batch and length."""
    from tasks.generalist.finetune.config import FinetuneConfig

    return FinetuneConfig(model_path="<random-init>", data_dir="<synthetic>", tables_dir="<synthetic>",
                          output_dir="<none>",
                          deepspeed_config=str(args.ds_config), per_device_batch_size=args.batch,
                          gradient_accumulation_steps=1, max_length=args.seq, bf16=args.dtype == "bfloat16",
                          gradient_checkpointing=True)


def apply_lora(model, cfg):
    """peft LoRA with the fine-tuning config (language model only); returns the peft model."""
    from peft import get_peft_model

    from tasks.generalist.finetune.config import lora_config

    model.requires_grad_(False)
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return get_peft_model(model, lora_config(cfg))


def timed_steps(step_fn, warmup: int, steps: int, device, budget_s: float) -> tuple[list[float], list[float]]:
    """(per-step seconds, losses) of `steps` timed steps after `warmup`; stops early past `budget_s`."""
    import torch

    def sync():
        if str(device).startswith("cuda"):
            torch.cuda.synchronize()

    t_begin = time.perf_counter()
    for _ in range(warmup):
        step_fn()
    sync()
    times, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = step_fn()
        sync()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
        if time.perf_counter() - t_begin > budget_s:
            break
    return times, losses


def arm_torch(args, device, dtype) -> dict:
    import torch

    t0 = time.perf_counter()
    model, cfg = build_model(args.size, device, dtype)
    counts = param_counts(model)
    model = apply_lora(model, recipe_config(args))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.05, fused=str(device).startswith("cuda"))
    batch = make_batch(cfg, args.batch, args.seq, args.answer_tokens, device, dtype)
    setup = time.perf_counter() - t0

    def step():
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    times, losses = timed_steps(step, args.warmup, args.steps, device, args.arm_budget_s)
    out = {"trainable": sum(p.numel() for p in params), **counts, "setup_s": round(setup, 1)}
    return finish(out, times, losses, cfg, args)


def arm_deepspeed(args, device, dtype) -> dict:
    if not str(device).startswith("cuda"):
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    import deepspeed

    from tasks.generalist.finetune.config import resolve_deepspeed_config

    t0 = time.perf_counter()
    run_cfg = recipe_config(args)
    ds_config = resolve_deepspeed_config(args.ds_config, run_cfg, world_size=1)
    if not str(device).startswith("cuda"):
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # as the training loop does: a world of one
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend="nccl" if str(device).startswith("cuda") else "gloo")
    model, cfg = build_model(args.size, device, dtype)
    counts = param_counts(model)
    model = apply_lora(model, run_cfg)
    engine, _, _, _ = deepspeed.initialize(model=model, config=ds_config,
                                           model_parameters=[p for p in model.parameters() if p.requires_grad])
    engine.train()
    batch = make_batch(cfg, args.batch, args.seq, args.answer_tokens, engine.device, dtype)
    trainable = sum(int(getattr(p, "ds_numel", 0) or p.numel()) for p in engine.module.parameters() if p.requires_grad)
    setup = time.perf_counter() - t0

    def step():
        loss = engine(**batch).loss
        engine.backward(loss)
        engine.step()
        return loss.detach()

    times, losses = timed_steps(step, args.warmup, args.steps, device, args.arm_budget_s)
    out = {"trainable": trainable, **counts, "setup_s": round(setup, 1),
           "zero_stage": ds_config["zero_optimization"]["stage"]}
    if hasattr(engine, "destroy"):
        engine.destroy()
    return finish(out, times, losses, cfg, args)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finish(out: dict, times: list[float], losses: list[float], cfg, args) -> dict:
    """Add tokens/s, model FLOPs, MFU and memory to an arm's result."""
    import torch

    if not times:
        raise RuntimeError("no step finished inside the time budget")
    med = sorted(times)[len(times) // 2]
    tokens = args.batch * args.seq
    grid = cfg.vision_config.image_size[0] // cfg.vision_config.patch_size[0]
    flops = 6 * (out["lm"] * tokens + out["vision"] * args.batch * (grid * grid + 1))
    out.update(steps=len(times), step_s_median=round(med, 4), tokens_per_step=tokens,
               tokens_per_s=round(tokens / med, 1), model_tflops_per_step=round(flops / 1e12, 2),
               achieved_tflops=round(flops / med / 1e12, 1), first_loss=round(losses[0], 4),
               last_loss=round(losses[-1], 4))
    if not all(math.isfinite(x) for x in losses):
        out["warning"] = "non-finite loss"
    if args.peak_tflops:
        out["mfu_datasheet"] = round(flops / med / 1e12 / args.peak_tflops, 4)
    if args.measured_tflops:
        out["mfu_measured_peak"] = round(flops / med / 1e12 / args.measured_tflops, 4)
    if torch.cuda.is_available():
        out["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 1)
    return out


def measure_matmul_tflops(device, dtype, n: int = 8192, reps: int = 20) -> float | None:
    """bf16 dense matmul TFLOP/s of this card (the practical peak MFU is also quoted against)."""
    import torch

    if not str(device).startswith("cuda"):
        return None
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return round(2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e12, 1)


def arm_tiny_script(args) -> dict:
    """recipes/finetune.py under torchrun on the tiny model and a generated corpus: the real job, end to end."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    import polars as pl

    from data_contracts.instructions import INSTRUCTIONS_SCHEMA, image_digest
    from data_contracts.io import DatasetWriter
    from data_contracts.samples import SAMPLES_SCHEMA
    from infra.profiles import load_profile
    from tasks.generalist.tiny_internvl import build_tiny_internvl

    labels = ["normal", "pneumonia", "effusion", "nodule"]
    instruction = ("You are a helpful medical assistant. Your task is disease diagnosis. You are given a chest x-ray "
                   "image. The possible diagnoses are: " + ", ".join(labels) + ".")
    with tempfile.TemporaryDirectory(prefix="gsco-ft-bench-") as tmp:
        root = Path(tmp)
        rows, samples = [], []
        for i in range(64):
            b = io.BytesIO()
            Image.new("RGB", (32, 32), ((i * 53) % 256, (i * 97) % 256, (i * 31) % 256)).save(b, "PNG")
            samples.append({"sample_id": f"bench:{i}", "dataset": "bench", "split": "train", "task_kind": "diagnosis",
                            "task_type": "multiclass", "modality": "chest x-ray", "image": b.getvalue(),
                            "image_format": "PNG", "image_width": 32, "image_height": 32, "labels": [labels[i % 4]],
                            "label_set": labels, "question": None, "answer": None, "answer_type": None, "text": None,
                            "source_path": f"{i}.png"})
            rows.append({"sample_id": f"bench:{i}", "image_sample_id": f"bench:{i}",
                         "image_digest": image_digest(b.getvalue()), "instruction": instruction,
                         "answer": labels[i % 4], "source_dataset": "bench", "task_kind": "diagnosis",
                         "split": "train"})
        with DatasetWriter(root / "tables", "bench") as w:   # the samples table the corpus rows refer to
            w.write_split("train", pl.from_arrow(pa.Table.from_pylist(samples, schema=SAMPLES_SCHEMA)))
        (root / "corpus").mkdir()
        pq.write_table(pa.Table.from_pylist(rows, schema=INSTRUCTIONS_SCHEMA), root / "corpus" / "part-0.parquet")
        model = build_tiny_internvl(root / "model", [instruction, *labels],
                                    load_profile("tiny").generalist.tiny_model)
        cfg = {"model_path": str(model), "data_dir": str(root / "corpus"), "tables_dir": str(root / "tables"),
               "output_dir": str(root / "out"),
               "deepspeed_config": str(REPO / "infra" / "deepspeed" / "zero3_cpu.json"), "lora_r": 16,
               "lora_alpha": 32, "max_steps": args.warmup + args.steps, "per_device_batch_size": args.batch,
               "gradient_accumulation_steps": 1, "learning_rate": 1e-3, "max_length": 512, "bf16": False,
               "save_steps": 10 ** 6, "eval_max_samples": 0, "merge": False}
        (root / "run.json").write_text(json.dumps(cfg))
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                            "-m", "recipes.finetune", "--config", str(root / "run.json")],
                           env=env, capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"recipes/finetune.py failed ({p.returncode}): {p.stderr[-1500:]}")
        r = json.loads((root / "out" / "finetune_result.json").read_text())
        curve = [json.loads(x) for x in (root / "out" / "loss.jsonl").read_text().splitlines() if x]
        return {"tokens_per_s": round(r["tokens_per_s_this_run"], 1), "steps": r["total_steps"],
                "tokens_per_step": curve[0]["tokens"], "trainable": r["trainable_params"], "total": r["total_params"],
                "first_loss": round(r["first_loss"], 4), "last_loss": round(r["final_loss"], 4),
                "wall_s": round(time.perf_counter() - t0, 1)}


COLUMNS = [("arm", "arm", "{:<10}"), ("tokens_per_s", "tokens/s", "{:>10}"), ("step_s_median", "step_s", "{:>8}"),
           ("achieved_tflops", "TFLOP/s", "{:>8}"), ("mfu_datasheet", "MFU(ds)", "{:>8}"),
           ("mfu_measured_peak", "MFU(mm)", "{:>8}"), ("trainable", "trainable", "{:>11}"),
           ("total", "params", "{:>14}"), ("peak_mem_gib", "mem_GiB", "{:>8}"), ("first_loss", "loss0", "{:>8}"),
           ("last_loss", "lossN", "{:>8}")]


def print_table(rows: list[dict]) -> None:
    log(" ".join(fmt.format(header) for _, header, fmt in COLUMNS))
    for r in rows:
        if "error" in r:
            log(f"{r['arm']:<10} ERROR {r['error']}")
            continue
        log(" ".join(fmt.format("" if r.get(key) is None else r.get(key)) for key, _, fmt in COLUMNS))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="the torch and deepspeed arms on a random-initialised model")
    ap.add_argument("--size", choices=sorted(SHAPES), default="2b")
    ap.add_argument("--arms", nargs="+", choices=["torch", "deepspeed"], default=["torch", "deepspeed"])
    ap.add_argument("--batch", type=int, default=None, help="per-device sequences (default 4; tiny CPU run: 8)")
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--answer-tokens", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--arm-budget-s", type=float, default=120.0, help="stop timing an arm after this many seconds")
    ap.add_argument("--ds-config", type=Path, default=None, help="default: infra/deepspeed/zero3.json on CUDA, "
                                                                  "zero3_cpu.json otherwise")
    ap.add_argument("--peak-tflops", type=float, default=None, help="default: datasheet dense bf16 of the card")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available()
    device = torch.device("cuda:0") if (args.gpu and cuda) else torch.device("cpu")
    if args.gpu and not cuda and args.size != "tiny":
        log("--gpu needs CUDA for --size 2b; use --size tiny to run the GPU code path on CPU")
        return 2
    args.dtype = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, args.dtype)
    args.batch = args.batch or (4 if args.gpu else 8)
    if args.size == "tiny":
        args.seq = min(args.seq, 256)
        args.answer_tokens = min(args.answer_tokens, 64)
    args.ds_config = args.ds_config or REPO / "infra" / "deepspeed" / ("zero3.json" if device.type == "cuda"
                                                                      else "zero3_cpu.json")
    name = torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu"
    if args.peak_tflops is None and device.type == "cuda":
        args.peak_tflops = next((v for k, v in DATASHEET_BF16_TFLOPS.items() if k in name), None)
    args.measured_tflops = None
    out = args.out or REPO / "perf" / "results" / f"finetune_throughput_{'gpu' if args.gpu else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"device": name, "torch": torch.__version__, "python": platform.python_version(),
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "flops_formula": "6 * (N_lm * batch * seq + N_vision * batch * (patches + 1)) per step",
              "spec_anchor": SPEC_ANCHOR, "arms": []}
    try:
        import transformers

        result["transformers"] = transformers.__version__
    except Exception:
        pass

    def save():
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=1))
        os.replace(tmp, out)

    log(f"device: {name}; torch {torch.__version__}; out: {out}")
    if args.gpu:
        try:
            args.measured_tflops = measure_matmul_tflops(device, dtype)
            result["measured_matmul_tflops"] = args.measured_tflops
            if args.measured_tflops:
                log(f"measured bf16 matmul peak: {args.measured_tflops} TFLOP/s; datasheet: {args.peak_tflops}")
        except Exception as e:  # the arms still run; MFU is then quoted against the datasheet only
            log(f"matmul peak measurement failed: {type(e).__name__}: {e}")
        arms = {"torch": arm_torch, "deepspeed": arm_deepspeed}
        for arm in args.arms:
            log(f"--- arm {arm}: size {args.size}, batch {args.batch} x seq {args.seq}, {args.steps} steps")
            try:
                row = {"arm": arm, **arms[arm](args, device, dtype)}
            except BaseException as e:  # noqa: BLE001 - an arm's failure (OOM, missing deepspeed) must not lose others
                if isinstance(e, KeyboardInterrupt):
                    raise
                row = {"arm": arm, "error": f"{type(e).__name__}: {e}"[:500]}
                traceback.print_exc()
            finally:
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
            result["arms"].append(row)
            log(json.dumps(row))
            save()
    else:
        log("--- arm tiny: recipes/finetune.py under torchrun, tiny InternVL, CPU")
        try:
            row = {"arm": "tiny", **arm_tiny_script(args)}
        except Exception as e:  # noqa: BLE001
            row = {"arm": "tiny", "error": f"{type(e).__name__}: {e}"[:1500]}
        result["arms"].append(row)
        log(json.dumps(row))
        save()
    print_table(result["arms"])
    log(SPEC_ANCHOR + " (compare only on an H200)")
    return 0 if all("error" not in r for r in result["arms"]) else 1


if __name__ == "__main__":
    sys.exit(main())
