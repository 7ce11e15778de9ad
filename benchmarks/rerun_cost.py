"""Cost of an unchanged rerun of the main job, as a fraction of the first run (every stage served from cache).

    python benchmarks/rerun_cost.py                      # tiny profile, fresh outputs folder
    python benchmarks/rerun_cost.py --profile micro --out /tmp/rerun

Runs `gsco run --profile P` twice on the same outputs folder (the first from scratch), prints a table of wall times
and per-stage statuses, and writes JSON (default benchmarks/results/rerun_cost.json).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_once(profile: str, out: Path) -> tuple[float, dict]:
    gsco = Path(sys.executable).parent / "gsco"
    t = time.perf_counter()
    subprocess.run([str(gsco), "run", "--profile", profile, "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, json.loads((out / "benchmark_result.json").read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="tiny")
    ap.add_argument("--out", type=Path, default=None, help="outputs folder (emptied first)")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "rerun_cost.json")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gsco-rerun-"))
    shutil.rmtree(out, ignore_errors=True)
    first_s, first = run_once(args.profile, out)
    second_s, second = run_once(args.profile, out)
    print(f"{'run':8s} {'wall s':>8s}  stages")
    print(f"{'first':8s} {first_s:8.1f}  {first['stages']}")
    print(f"{'rerun':8s} {second_s:8.1f}  {second['stages']}")
    print(f"rerun / first = {second_s / first_s:.3f}")
    result = {"profile": args.profile, "first_s": first_s, "rerun_s": second_s, "ratio": second_s / first_s,
              "first_stages": first["stages"], "rerun_stages": second["stages"],
              "all_cached": set(second["stages"].values()) == {"cached"}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["all_cached"] else 1


if __name__ == "__main__":
    sys.exit(main())
