"""Cost of rerunning the main job: unchanged (every stage from cache) and after one dataset changed, each as a
fraction of the first run, with what each run recomputed.

    python perf/rerun_cost.py                      # tiny profile, fresh temporary folder
    python perf/rerun_cost.py --profile micro --out /tmp/rerun --changed pneumoniamnist

Generates the tiny benchmark's raw files once into `<out>/userdata` and runs `gsco run --profile P` three times on
the same outputs folder, reading the data from there as a user's data root (`data.root`, no tiny benchmark generated):
  first      from scratch;
  unchanged  nothing changed: every stage must be served from cache;
  changed    one test image of the `--changed` MedMNIST set rewritten (inverted): only the units that read that
             dataset (its ingest, its specialist jobs, its index, its evaluation) may recompute.
Prints a table of wall times, ratios and recomputed units, and writes JSON (default
perf/results/rerun_cost.json). Exits 1 when the unchanged rerun recomputed anything, or the changed run
recomputed a unit of another dataset.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def run_once(profile: str, out: Path, data_root: Path, log: Path) -> tuple[float, dict]:
    gsco = Path(sys.executable).parent / "gsco"
    cmd = [str(gsco), "run", "--profile", profile, "--out", str(out),
           "--set", f"data.root={data_root}", "--set", "data.tiny_benchmark=null"]
    t = time.perf_counter()
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}); see {log}")
    return seconds, json.loads((out / "benchmark_result.json").read_text())


def change_one_test_image(data_root: Path, dataset: str) -> str:
    """Invert the first test image of a MedMNIST npz in place (written to a temporary name, then renamed)."""
    path = data_root / "medmnist" / f"{dataset}.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["test_images"] = arrays["test_images"].copy()
    arrays["test_images"][0] = 255 - arrays["test_images"][0]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return f"{path.relative_to(data_root)}: test image 0 inverted"


def foreign_units(recomputed: dict[str, list[str]], dataset: str) -> dict[str, list[str]]:
    """Recomputed units that belong to another dataset (or to no dataset: the generalist stages, the report aside)."""
    out = {}
    for stage, units in recomputed.items():
        bad = [u for u in units if u.split("/")[0] != dataset and not (stage == "evaluation" and u == "report")]
        if bad:
            out[stage] = bad
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--out", type=Path, default=None, help="work folder (emptied first)")
    ap.add_argument("--changed", default="breastmnist", help="the MedMNIST set whose test image is changed")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "rerun_cost.json")
    args = ap.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="gsco-rerun-"))
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    from tasks.ingest.tiny_benchmark import generate_tiny_benchmark

    data_root, out = work / "userdata", work / "out"
    generate_tiny_benchmark(data_root, seed=0)
    runs = {}
    for name in ("first", "unchanged", "changed"):
        change = change_one_test_image(data_root, args.changed) if name == "changed" else None
        seconds, res = run_once(args.profile, out, data_root, work / f"{name}.log")
        runs[name] = {"seconds": round(seconds, 1), "stages": res["stages"], "recomputed": res["recomputed"],
                      "change": change, "mlflow_run_id": res["mlflow_run_id"]}
        print(f"{name}: {seconds:.1f} s", flush=True)

    first = runs["first"]["seconds"]
    print(f"\n{'run':10s} {'wall s':>8s} {'/ first':>8s}  recomputed units")
    for name, r in runs.items():
        units = "; ".join(f"{s}: {', '.join(u)}" for s, u in r["recomputed"].items() if u) or "none"
        if name == "first":
            units = f"{sum(len(u) for u in r['recomputed'].values())} units (everything)"
        print(f"{name:10s} {r['seconds']:8.1f} {r['seconds'] / first:8.3f}  {units}")
    unchanged_ok = set(runs["unchanged"]["stages"].values()) == {"cached"} and \
        not any(runs["unchanged"]["recomputed"].values())
    foreign = foreign_units(runs["changed"]["recomputed"], args.changed)
    print(f"unchanged rerun all cached: {unchanged_ok}; changed run touched only {args.changed}: {not foreign}"
          + (f" (also {foreign})" if foreign else ""))
    result = {"benchmark": "rerun_cost", "profile": args.profile, "host": platform.node(), "cpu_count": os.cpu_count(),
              "runs": runs, "unchanged_ratio": runs["unchanged"]["seconds"] / first,
              "changed_ratio": runs["changed"]["seconds"] / first, "changed_dataset": args.changed,
              "unchanged_all_cached": unchanged_ok, "changed_foreign_units": foreign}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, args.json)
    print(f"wrote {args.json}")
    return 0 if unchanged_ok and not foreign else 1


if __name__ == "__main__":
    sys.exit(main())
