"""Specialist training images/s per architecture: the job's data path beside pure compute on the same card.

    python perf/specialist_throughput.py --tiny                 # CPU: tiny archs, the same code path, seconds
    python perf/specialist_throughput.py --gpu                  # CUDA: the ten archs at 224 px, batch 64, bf16
    python perf/specialist_throughput.py --gpu --archs resnet18 vit_b16 --steps 30 --out /tmp/t.json

Columns (images/s of full training steps: forward, loss, backward, AdamW):
  compute   timm/torchvision alone: a random float batch already on the device (how SPEC §9's ceilings were measured)
  device    the job's path with train data cached on the GPU: encoded JPEG bytes -> ImageDataset decoded once by
            --workers DataLoader workers -> CachedImages on the GPU -> DataLoader (one gather per batch) -> train_step
            (uint8 -> normalise on device -> bf16 autocast, channels_last)
  host      the same with the cache in host memory: gather + pin + host-to-device copy per batch
  stream    splits over the cache budgets: per-item decode + resize in --workers DataLoader workers every epoch
  ratio     device / compute (the path train_specialist takes on a GPU when the split fits device_cache_max_bytes)
The synthetic split is --n-images distinct RGB JPEGs of --src-size px (HAM10000/DermNet-like; MedMNIST-224 PNGs decode
faster), resized to the model's input. SPEC §9's H200 anchors are printed beside; compare them only on an H200.
Needs only torch, timm, torchvision, numpy, pillow, safetensors (what the GPU machine has).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

try:
    from tasks.specialists.architectures import ARCHS, ArchSpec, arch_spec
except ModuleNotFoundError:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tasks.specialists.architectures import ARCHS, ArchSpec, arch_spec
from tasks.specialists.data import CachedImages, EpochSampler, ImageDataset, decode_all, make_loader  # noqa: E402
from tasks.specialists.models import create_model, input_stats  # noqa: E402
from tasks.specialists.settings import Recipe  # noqa: E402
from tasks.specialists.training import Runtime, train_step  # noqa: E402

import timm  # noqa: E402
import torchvision  # noqa: E402

# SPEC §9: H200, torch 2.11, bf16 autocast, channels_last, batch 64 at 224, synthetic input (pure compute)
SPEC_H200_IMAGES_PER_S = {"vgg16": 2770, "alexnet": 17742, "resnet18": 9927, "densenet121": 1328,
                          "efficientnet_b4": 915, "vit_b16": 2325, "clip_vit_b16": 2119, "eva02_vit_b16": 1112,
                          "dino_vit_b16": 2307, "sam_vit_b16": 989}
NUM_CLASSES = 10


def synthetic_jpegs(n: int, size: int, seed: int = 0) -> list[bytes]:
    """`n` distinct RGB JPEGs: smooth background, shapes and noise, so they compress and decode like photographs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for i in range(n):
        c = rng.uniform(0.2, 1.0, 3)
        base = (np.stack([xx * c[0], yy * c[1], (1 - xx) * c[2]], -1) * 200).astype(np.float32)
        base += rng.normal(0, 12, base.shape).astype(np.float32)
        im = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
        d = ImageDraw.Draw(im)
        for _ in range(3):
            x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            w = int(rng.integers(size // 8, size // 3))
            d.ellipse([x0, y0, x0 + w, y0 + w], fill=tuple(int(v) for v in rng.integers(0, 255, 3)))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, warmup: int, steps: int, batch: int, device: torch.device) -> float:
    """Images/s over `steps` calls of `step` after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def _forever(loader, sampler=None):
    epoch = 0
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def bench_arch(arch: ArchSpec, args, device: torch.device, cache_host: dict, stream_loader: dict) -> dict:
    """One row: compute-only and data-path images/s of `arch` (the loaders are shared across architectures)."""
    size = arch.img_size or args.img_size
    recipe = Recipe(img_size=size, batch_size=args.batch_size, amp=args.amp, channels_last=args.channels_last)
    row = {"arch": arch.name, "model": arch.full_name, "img_size": size, "batch": args.batch_size}
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = create_model(arch, NUM_CLASSES, size).to(device)
    rt = Runtime(device, recipe, *input_stats(model, arch))
    if rt.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    b = args.batch_size

    # pure compute, as timm/torchvision users measure it: no data path at all
    x = torch.randn(b, 3, size, size, device=device)
    if rt.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (b,), device=device)

    def compute_step():
        with rt.autocast():
            out = model(x)
        loss = F.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    row["compute"] = _timed(compute_step, args.warmup, args.steps, b, device)
    row["setup_s"] = round(time.perf_counter() - t0, 2)
    targets = torch.randint(0, NUM_CLASSES, (args.n_images,), device=device)

    def path_rate(loader, sampler=None) -> float:
        it = _forever(loader, sampler)

        def step():
            xb, idx = next(it)
            train_step(model, optimizer, F.cross_entropy, rt, xb, targets[idx.to(device, non_blocking=True)])

        return _timed(step, args.warmup, args.steps, b, device)

    cached = cache_host[size]
    places = ["host"] + (["device"] if device.type == "cuda" else [])
    for place in places:
        ds = CachedImages(cached.to(device) if place == "device" else cached)
        sampler = EpochSampler(len(ds), 0)
        loader = make_loader(ds, b, sampler, pin_memory=device.type == "cuda", drop_last=True)
        row[place] = path_rate(loader, sampler)
        del ds
    if size in stream_loader:
        try:
            row["stream"] = path_rate(stream_loader[size])
        except Exception as e:  # e.g. a small /dev/shm: keep this row's other numbers
            row["stream_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    best_path = row.get("device", row["host"])
    row["ratio"] = best_path / row["compute"]
    if args.gpu and arch.name in SPEC_H200_IMAGES_PER_S:
        row["spec_h200_compute"] = SPEC_H200_IMAGES_PER_S[arch.name]
    if device.type == "cuda":
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 30, 1)
    del model, optimizer, x
    return row


COLS = [("arch", "{:<16}"), ("img_size", "{:>4}"), ("params_m", "{:>7}"), ("compute", "{:>9.0f}"),
        ("device", "{:>9.0f}"), ("host", "{:>9.0f}"), ("stream", "{:>9.0f}"), ("ratio", "{:>6.2f}"),
        ("spec_h200_compute", "{:>9}"), ("setup_s", "{:>7}"), ("peak_mem_gib", "{:>5}")]
HEAD = ["arch", "px", "Mparam", "compute", "device", "host", "stream", "ratio", "§9 H200", "setup_s", "GiB"]


def fmt_row(row: dict) -> str:
    if "error" in row:
        return f"{row['arch']:<16} ERROR {row['error']}"
    if "stream_error" in row:
        return fmt_row({k: v for k, v in row.items() if k != "stream_error"}) + f"  (stream: {row['stream_error']})"
    cells = []
    for (k, f), h in zip(COLS, HEAD):
        w = len(f.format(0 if "f}" in f else "")) if k != "arch" else 16
        v = row.get(k)
        cells.append(f.format(v) if v is not None else " " * max(w, len(h)))
    return " ".join(cells)


def tiny_arch(name: str) -> ArchSpec:
    """The architecture as the tiny profile (infra/profiles/tiny.yaml) trains it."""
    from infra.profiles import load_profile

    return arch_spec(name, load_profile("tiny").specialists.arch_settings[name])


def header() -> str:
    widths = [16, 4, 7, 9, 9, 9, 9, 6, 9, 7, 5]
    return " ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(HEAD, widths)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gpu", action="store_true", help="CUDA, full archs, 224 px, batch 64, bf16, channels_last")
    ap.add_argument("--tiny", action="store_true", help="the tiny profile's archs; default without --gpu")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS))
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--n-images", type=int, default=None, help="distinct synthetic images in the split")
    ap.add_argument("--src-size", type=int, default=None, help="side of the synthetic JPEGs before resizing")
    ap.add_argument("--workers", type=int, default=None, help="DataLoader decode workers (default: CPU count)")
    ap.add_argument("--no-stream", dest="stream", action="store_false")
    ap.add_argument("--budget-s", type=float, default=None, help="skip the remaining archs after this long")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    gpu = args.gpu
    if gpu and not torch.cuda.is_available():
        print("--gpu given but torch.cuda.is_available() is False", file=sys.stderr)
        return 2
    tiny = args.tiny or not gpu
    d = (dict(img_size=224, batch_size=64, warmup=5, steps=25, n_images=1024, src_size=256, budget_s=240.0)
         if gpu else dict(img_size=32, batch_size=8, warmup=1, steps=2, n_images=32, src_size=48, budget_s=600.0))
    for k, v in d.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.workers is None:
        args.workers = min(16, os.cpu_count() or 1) if gpu else 2
    args.amp = args.channels_last = gpu
    device = torch.device("cuda" if gpu else "cpu")
    if gpu:
        torch.backends.cudnn.benchmark = True
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        print(f"unknown archs {unknown}; expected some of {list(ARCHS)}", file=sys.stderr)
        return 2
    archs = [tiny_arch(a) if tiny else ARCHS[a].model_copy(update={"allow_scratch": True}) for a in args.archs]
    out = args.out or Path(__file__).resolve().parent / "results" / f"specialist_throughput_{'gpu' if gpu else 'cpu'}.json"

    env = {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
           "torchvision": torchvision.__version__, "device": torch.cuda.get_device_name(0) if gpu else platform.processor() or "cpu",
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "archs")} | {"tiny": tiny}
    print(f"# {env}\n# {settings}", flush=True)

    t_all = time.perf_counter()
    images = synthetic_jpegs(args.n_images, args.src_size)
    print(f"# {len(images)} JPEGs of {args.src_size}px, mean {np.mean([len(i) for i in images]) / 1024:.1f} KiB, "
          f"generated in {time.perf_counter() - t_all:.1f}s", flush=True)
    ids = [f"bench-{i}" for i in range(len(images))]
    cache_host, stream_loader, decode = {}, {}, {}
    for size in sorted({a.img_size or args.img_size for a in archs}):
        ds = ImageDataset(images, size, ids, where="bench/train")
        t = time.perf_counter()
        try:
            cache_host[size] = decode_all(ds, args.workers)
        except Exception as e:  # worker processes unusable here (e.g. /dev/shm): decode in-process, say so
            print(f"# decode with {args.workers} workers failed ({type(e).__name__}: {e}); using 0", flush=True)
            args.workers, args.stream = 0, False
            t = time.perf_counter()
            cache_host[size] = decode_all(ds, 0)
        decode[size] = len(images) / (time.perf_counter() - t)
        if args.stream:
            stream_loader[size] = make_loader(ds, args.batch_size, EpochSampler(len(ds), 0), args.workers,
                                                 pin_memory=gpu, drop_last=True)
        print(f"# decode-once cache {tuple(cache_host[size].shape)}: {decode[size]:.0f} images/s with "
              f"{args.workers} workers (includes worker start)", flush=True)

    print(header(), flush=True)
    rows = []
    for arch in archs:
        if time.perf_counter() - t_all > args.budget_s:
            rows.append({"arch": arch.name, "error": f"skipped: --budget-s {args.budget_s} spent"})
            print(fmt_row(rows[-1]), flush=True)
            continue
        try:
            rows.append(bench_arch(arch, args, device, cache_host, stream_loader))
        except Exception as e:  # one architecture failing must not hide the others' numbers
            rows.append({"arch": arch.name, "error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
                         "traceback": traceback.format_exc()[-2000:]})
        finally:
            if gpu:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        print(fmt_row(rows[-1]), flush=True)

    result = {"benchmark": "specialist_throughput", "env": env, "settings": settings,
              "decode_images_per_s": {str(k): v for k, v in decode.items()}, "rows": rows,
              "total_s": time.perf_counter() - t_all,
              "notes": "images/s of full training steps; ratio = device-cached job path / pure compute"}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"# wrote {out} in {result['total_s']:.0f}s total", flush=True)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
