"""All tiny-profile specialist jobs (10 architectures x 5 diagnosis sets) on CPU: seconds and test score vs chance.

    OMP_NUM_THREADS=2 python perf/tiny_specialists.py                       # all 50 jobs, torch 2 threads
    python perf/tiny_specialists.py --archs resnet18 vgg16 --datasets ham10000 --recipe '{"lr": 0.003}'
    python perf/tiny_specialists.py --tables /tmp/tune/out/tables --out /tmp/tiny_specialists.json

Data: the canonical tables of `--tables` (e.g. what `gsco run --profile tiny` wrote), or, by default, the tiny
benchmark (tasks.ingest.tiny_benchmark, seed 0) generated and ingested into a temporary folder first. Each job is the real
`train_specialist` with the tiny profile's architecture settings and recipe (infra/profiles/tiny.yaml `specialists`),
writing its outputs under `--work` (a temporary folder by default), so a job's seconds include decoding, every epoch's
validation, the final evaluation of all splits and the writes.

Columns per (arch, dataset): seconds, epochs run, the test score (accuracy for single-label sets, macro-F1 for
ChestMNIST's multi-label task) and the chance level (`constant_baseline`: the best constant predictor); `margin` is
score - chance, and the jobs under MARGIN are listed. The JSON (--out, default perf/results/tiny_specialists.json)
holds every job, the recipe and each architecture's spec. Jobs run one after another with --threads torch threads; on
a shared 2-core machine 1 thread is the steadier choice (two spinning OpenMP threads slow down many-fold when another
process takes a core), which is what the tiny profile's cpu_slots x threads: 1 does.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

try:
    from infra.profiles import load_profile
except ModuleNotFoundError:  # run as a script from a checkout that is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from infra.profiles import load_profile
from tasks.specialists.architectures import ARCHS, ArchSpec, arch_spec  # noqa: E402
from data_contracts.layout import SPLITS  # noqa: E402
from tasks.specialists.data import SpecialistData, data_from_samples  # noqa: E402
from tasks.specialists.outputs import constant_baseline  # noqa: E402
from tasks.specialists.settings import Recipe  # noqa: E402
from tasks.specialists.training import train_specialist  # noqa: E402

import torch  # noqa: E402

DIAGNOSIS_SETS = ("chestmnist", "pneumoniamnist", "breastmnist", "dermnet", "ham10000")
MARGIN = 0.15  # the bar a job's test score must clear over chance


def build_tables(root: Path, datasets, seed: int = 0) -> Path:
    """The tiny benchmark generated under `root` and ingested; returns the tables root."""
    from data_contracts.cards import get_card
    from tasks.ingest.dataset import ingest_dataset
    from tasks.ingest.tiny_benchmark import generate_tiny_benchmark

    generate_tiny_benchmark(root / "data", seed=seed)
    for ds in datasets:
        ingest_dataset(get_card(ds), root / "data", root / "tables")
    return root / "tables"


def load_data(tables: Path, dataset: str) -> SpecialistData:
    """SpecialistData of one dataset from its canonical tables."""
    from data_contracts.io import read_samples

    return data_from_samples(*[read_samples(tables, dataset, s) for s in SPLITS])


def score_of(task_type: str, metrics: dict) -> tuple[str, float]:
    """(name, value) of the headline test score: macro-F1 for multi-label, else accuracy."""
    key = "macro_f1" if task_type == "multilabel" else "accuracy"
    return key, float(metrics[f"test_{key}"])


def run_job(data: SpecialistData, arch: ArchSpec, recipe: Recipe, out_dir: Path) -> dict:
    """Train one job from scratch (any earlier output removed) and return its row."""
    for f in out_dir.glob("*") if out_dir.exists() else []:
        f.unlink()
    t0, c0 = time.perf_counter(), time.process_time()
    r = train_specialist(data, arch, recipe, out_dir)
    seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    key, score = score_of(data.task_type, r.metrics)
    chance = constant_baseline(data.task_type, data.test.targets, data.num_classes)
    return {"dataset": data.dataset, "arch": arch.name, "seconds": round(seconds, 2), "cpu_s": round(cpu_s, 2),
            "epochs": r.epochs_run, "best_epoch": r.best_epoch, "metric": key, "score": round(score, 4),
            "chance": round(chance, 4), "margin": round(score - chance, 4), "test_auc": r.metrics.get("test_auc"),
            "train_s": round(r.metrics["train_s"], 2)}


def print_table(rows: list[dict], archs, datasets) -> None:
    by = {(r["arch"], r["dataset"]): r for r in rows}
    w = 20
    print(f"{'arch':16s}" + "".join(f"{d[:w]:>{w}s}" for d in datasets) + f"{'seconds':>10s}")
    for a in archs:
        cells, total = [], 0.0
        for d in datasets:
            r = by.get((a, d))
            if r is None:
                cells.append(f"{'-':>{w}s}")
                continue
            total += r["seconds"]
            cells.append(f"{r['seconds']:5.1f}s {r['score']:.2f}/{r['chance']:.2f}".rjust(w))
        print(f"{a:16s}" + "".join(cells) + f"{total:10.1f}")
    per_ds = [sum(r["seconds"] for r in rows if r["dataset"] == d) for d in datasets]
    print(f"{'seconds':16s}" + "".join(f"{s:{w}.1f}" for s in per_ds) + f"{sum(per_ds):10.1f}")
    print("cell: job seconds, test score / chance (accuracy; chestmnist macro-F1)")
    short = [f"{r['arch']}/{r['dataset']} {r['score']:.2f} (chance {r['chance']:.2f}, AUC {r['test_auc'] or 0:.2f})"
             for r in rows if r["margin"] < MARGIN]
    print(f"{len(rows) - len(short)}/{len(rows)} jobs at least {MARGIN} above chance" +
          ("; below: " + "; ".join(short) if short else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tables", type=Path, default=None, help="canonical tables root (default: generate + ingest)")
    ap.add_argument("--work", type=Path, default=None, help="job output folder (default: temporary)")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS))
    ap.add_argument("--datasets", nargs="*", default=list(DIAGNOSIS_SETS))
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    ap.add_argument("--recipe", type=json.loads, default={}, help="JSON changes to the tiny profile's recipe")
    ap.add_argument("--arch-overrides", type=json.loads, default={},
                    help="JSON {arch: {overrides: {...}, img_size: N}} replacing the tiny profile's arch settings")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    # DermNet's tiny set holds 5 of its 23 classes: sklearn warns on every epoch that their AUC is undefined
    warnings.filterwarnings("ignore", message="Only one class is present", module="sklearn")
    tiny = load_profile("tiny").specialists
    recipe = tiny.recipe.model_copy(update=args.recipe)
    archs = {a: arch_spec(a, tiny.arch_settings[a]).model_copy(update=args.arch_overrides.get(a, {}))
             for a in args.archs}
    with tempfile.TemporaryDirectory(prefix="tiny_specialists_") as tmp:
        tables = args.tables or build_tables(Path(tmp), args.datasets)
        work = args.work or Path(tmp) / "jobs"
        rows = []
        t_all = time.perf_counter()
        for d in args.datasets:
            data = load_data(tables, d)
            for name, arch in archs.items():
                row = run_job(data, arch, recipe, work / d / name)
                rows.append(row)
                print(f"{d:15s} {name:16s} {row['seconds']:6.1f}s (cpu {row['cpu_s']:5.1f}s)  "
                      f"epochs {row['epochs']:2d}  "
                      f"{row['metric']} {row['score']:.3f}  chance {row['chance']:.3f}", flush=True)
        total = time.perf_counter() - t_all
    print()
    print_table(rows, list(archs), args.datasets)
    print(f"total wall seconds (incl. data loading): {total:.1f}; torch threads {args.threads}")
    result = {"benchmark": "tiny_specialists", "total_s": round(total, 1),
              "jobs_s": round(sum(r["seconds"] for r in rows), 1),
              "threads": args.threads, "host": platform.node(), "cpu_count": os.cpu_count(),
              "torch": torch.__version__, "recipe": recipe.model_dump(),
              "archs": {a: s.to_dict() for a, s in archs.items()}, "jobs": rows}
    out = args.out or Path(__file__).resolve().parent / "results" / "tiny_specialists.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(f".{out.name}.tmp")
    tmp_out.write_text(json.dumps(result, indent=1))
    os.replace(tmp_out, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
