"""Does collaboration work on the tiny profile? Reads a finished run's metrics and predictions and checks what the
evaluation-protocol issue asks of `make tiny`: parse failures <= 10% for every generalist arm on every diagnosis set,
MedDr alone above chance on at least three of them, GSCo >= MedDr alone on at least four.

    make tiny && python perf/tiny_mechanism.py                    # outputs/tiny
    python perf/tiny_mechanism.py --out outputs/tiny --json perf/measured/tiny_mechanism_cpu.json

Chance is tasks/evaluation/chance.py's: the better of the best constant answer and uniform random guessing, scored
with the report's metric. Prints one row per diagnosis set and exits 1 when a check fails.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_contracts.cards import get_card  # noqa: E402
from data_contracts.layout import RunLayout  # noqa: E402
from tasks.evaluation.chance import chance_level  # noqa: E402
from tasks.evaluation.settings import GENERALIST_ARMS  # noqa: E402

MAX_PARSE_FAILURES = 0.10


def dataset_rows(layout: RunLayout) -> list[dict]:
    """Per diagnosis set: chance, each arm's headline and parse-failure rate, the best specialist and Voting."""
    metrics = pl.read_parquet(layout.metrics)
    head = metrics.filter((pl.col("metric") == pl.col("headline")) &
                          pl.col("task_type").is_in(["binary", "multiclass", "multilabel"]))
    out = []
    for dataset in sorted(head["dataset"].unique().to_list()):
        card = get_card(dataset)
        d = head.filter(pl.col("dataset") == dataset)
        by = {r["method"]: r for r in d.to_dicts()}
        preds = pl.read_parquet(layout.predictions(dataset)).filter(pl.col("method") == "MedDr")
        spec = {m: r["value"] for m, r in by.items() if m.startswith("specialist:")}
        out.append({"dataset": dataset, "metric": d["headline"][0],
                    "chance": chance_level(preds["truth"].to_list(), card.labels, card.task_type),
                    "arms": {a: by[a]["value"] for a in GENERALIST_ARMS if a in by},
                    "parse_failures": {a: by[a]["parse_failure_rate"] for a in GENERALIST_ARMS if a in by},
                    "best_specialist": max(spec.values()) if spec else None,
                    "voting": by["Voting"]["value"] if "Voting" in by else None})
    return out


def checks(rows: list[dict]) -> dict:
    worst = max(max(r["parse_failures"].values()) for r in rows)
    above = [r["dataset"] for r in rows if r["arms"].get("MedDr", 0) > r["chance"]]
    gsco = [r["dataset"] for r in rows if r["arms"].get("GSCo", -1) >= r["arms"].get("MedDr", 0)]
    return {"max_parse_failure_rate": worst, "parse_failures_ok": worst <= MAX_PARSE_FAILURES,
            "meddr_above_chance": above, "meddr_above_chance_ok": len(above) >= 3,
            "gsco_at_least_meddr": gsco, "gsco_at_least_meddr_ok": len(gsco) >= 4}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="outputs/tiny", help="the run's outputs folder")
    ap.add_argument("--json", default=None, help="also write the rows and checks here")
    args = ap.parse_args()
    rows = dataset_rows(RunLayout(Path(args.out)))
    arms = list(GENERALIST_ARMS)
    print(f"{'dataset':16} {'metric':9} {'chance':>7} " + " ".join(f"{a:>11}" for a in arms) +
          f" {'best spec':>9} {'Voting':>7}   parse failures")
    for r in rows:
        vals = " ".join(f"{r['arms'].get(a, float('nan')):11.3f}" for a in arms)
        pf = " ".join(f"{r['parse_failures'].get(a, float('nan')):.2f}" for a in arms)
        print(f"{r['dataset']:16} {r['metric']:9} {r['chance']:7.3f} {vals} {r['best_specialist']:9.3f} "
              f"{r['voting']:7.3f}   {pf}")
    result = checks(rows)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "checks": result}, indent=1) + "\n")
    return 0 if all(v for k, v in result.items() if k.endswith("_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
