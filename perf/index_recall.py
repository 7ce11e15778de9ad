"""RAD index benchmark: build time, query throughput and recall@10 against exact search, per table size and index type.

    OMP_NUM_THREADS=1 python perf/index_recall.py                       # 5k, 20k, 50k rows x 128 dims
    python perf/index_recall.py --rows 20000,100000 --dim 768 --out /tmp/index_recall_768.json

Data: clustered Gaussian vectors (100 centres, noise 1.5 x the centre scale), the shape of specialist embeddings of a
multiclass dataset; queries are held-out points from the same clusters. Each index type goes through the public API
(`tasks.rad.index.build_index` / `search`); "FLAT" is the exact baseline (no ANN index). recall@10 counts a returned
neighbour as a hit when its true cosine distance is within the exact 10th distance (ties are hits); `build recall` is
the figure build_index measured and stored (sampled table rows, self excluded). query/s includes opening the
published version and building the Python result objects, as the evaluate step would see it.

At 250k x 512 and for the seeded index's determinism, see perf/rad_index_scale.py. Measured before the seeded IVF_FLAT
index and the exact numpy path replaced IVF_HNSW_SQ and LanceDB's flat scan (index_type IVF_HNSW_SQ is no longer
accepted), on 2 shared CPU cores, OMP_NUM_THREADS=1, 128 dims, 1000 queries (build s / query/s / recall@10):
     20k  FLAT 0.3 / 1422 / 1.0     IVF_FLAT 1.3 / 354 / 1.0      IVF_HNSW_SQ  6.2 / 402 / 0.998
     50k  FLAT 0.5 /  310 / 1.0     IVF_FLAT 2.0 / 296 / 1.0      IVF_HNSW_SQ 18.2 / 194 / 0.996
    100k  FLAT 1.2 /  180 / 1.0     IVF_FLAT 4.8 / 174 / 0.9995   IVF_HNSW_SQ 23.7 / 299 / 0.995
so exact search wins below ~50k rows here (IVF_FLAT's default partition count is small, nearly all get probed).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_contracts.files import write_json_atomic  # noqa: E402

from tasks.rad.index import DEFAULT_INDEX_PARAMS, FLAT, build_index, search  # noqa: E402

K = 10


def clustered(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(100, dim))
    y = rng.integers(0, 100, n)
    return (centres[y] + 1.5 * rng.normal(size=(n, dim))).astype(np.float32), y


def recall_vs_exact(ann, exact, x: np.ndarray, row: dict[str, int], q: np.ndarray) -> float:
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    hits = []
    for j, (a, e) in enumerate(zip(ann, exact)):
        kth = max(n.distance for n in e)
        d = 1.0 - xn[[row[n.sample_id] for n in a]] @ qn[j]
        hits.append(np.sum(d <= kth + 1e-5) / K)
    return float(np.mean(hits))


def run(rows: int, dim: int, n_queries: int, index_type: str, db: Path) -> dict:
    x, y = clustered(rows + n_queries, dim, seed=0)
    x, q = x[:rows], x[rows:]
    ids = [f"s{i:07d}" for i in range(rows)]
    flat = index_type == FLAT
    params = {} if flat else {**DEFAULT_INDEX_PARAMS, "index_type": index_type, "min_recall": None}
    t0 = time.perf_counter()
    info = build_index(db, f"bench_{rows}_{index_type.lower()}", x, ids, [[f"c{c}"] for c in y[:rows]], None,
                       ann_min_rows=10 ** 12 if flat else 256, index_params=params)
    build_s = time.perf_counter() - t0
    search(db, info.table_name, q[:8], K)  # warm the index cache, as a long-running evaluate step would have it
    t0 = time.perf_counter()
    ann = search(db, info.table_name, q, K)
    query_s = time.perf_counter() - t0
    exact = search(db, info.table_name, q, K, exact=True)
    row = {s: i for i, s in enumerate(ids)}
    return {"rows": rows, "dim": dim, "index_type": info.index_type, "index_params": info.index_params,
            "build_s": round(build_s, 3), "queries": n_queries, "query_per_s": round(n_queries / query_s, 1),
            f"recall@{K}_vs_exact": round(recall_vs_exact(ann, exact, x, row, q), 4),
            "build_recall": info.recall_at_k}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="5000,20000,50000", help="comma-separated table sizes")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--types", default="FLAT,IVF_FLAT")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "index_recall.json")
    args = ap.parse_args()

    results = []
    print(f"{'rows':>8} {'index type':<12} {'build s':>8} {'query/s':>9} {'recall@10':>10} {'build recall':>13}")
    with tempfile.TemporaryDirectory(prefix="gsco-index-bench-") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            for index_type in args.types.split(","):
                r = run(rows, args.dim, args.queries, index_type, Path(tmp))
                results.append(r)
                br = "-" if r["build_recall"] is None else f"{r['build_recall']:.4f}"
                print(f"{r['rows']:>8} {r['index_type']:<12} {r['build_s']:>8.2f} {r['query_per_s']:>9.0f} "
                      f"{r[f'recall@{K}_vs_exact']:>10.4f} {br:>13}", flush=True)

    import lancedb  # for the version only

    record = {"benchmark": "index_recall", "k": K, "dim": args.dim, "queries": args.queries,
              "lancedb": lancedb.__version__, "numpy": np.__version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "results": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
