"""The IVF side of the RAD index (tasks/rad/index.py): seeded partition centroids, the nprobes a build chooses for its
target recall, the exact BLAS top-k, and ANN queries through pylance's dataset.

LanceDB 0.40's own index builders take no seed (Lance's k-means starts at random: two builds of one table answer
differently), so the centroids come from a seeded spherical k-means here and go to pylance's `create_index(...,
ivf_centroids=...)`; everything else (storage, versions, tags, publishing) stays LanceDB's.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

log = logging.getLogger("tasks.rad.index")

VECTOR = "vector"
NPROBES_START = 8  # the first nprobes tried when nprobes is chosen at build time
QUERY_BATCH = 1024
FLAT = "FLAT"
ANN_INDEX_TYPES = ("IVF_FLAT",)  # HNSW graphs are built in parallel with random levels: not reproducible from a seed
MIN_ANN_ROWS = 256  # IVF training wants at least this many rows; below it exact search is faster anyway

# Chosen on 250k x 512 clustered vectors, 2 cores (perf/rad_index_scale.py): ~256 rows per partition keeps a probe
# cheap (977 partitions, 16 probed: ~3 ms per query, recall@10 1.0); k-means on 64 sampled rows per partition,
# 10 iterations, trains in ~10 s; 500 recall queries measure recall to about +-0.005.
DEFAULT_INDEX_PARAMS: dict[str, Any] = {
    "index_type": "IVF_FLAT",
    "num_partitions": None,  # None: rows / partition_rows
    "partition_rows": 256,
    "kmeans_iterations": 10,
    "kmeans_sample": 64,  # k-means training rows per partition (a seeded sample of the table)
    "seed": 0,  # k-means sample and initial centroids, and the recall sample: one seed, one index
    "nprobes": None,  # query time; None: the smallest of 8, 16, 32, ... (up to a quarter of the partitions, or 32)
    "target_recall": 0.98,  # ... whose measured recall@k reaches this
    "recall_k": 10,
    "recall_queries": 500,
    "min_recall": 0.9,  # below it (at the chosen nprobes) the build fails and the old version stays published
}
_BUILD_KEYS = {"index_type", "num_partitions", "partition_rows", "kmeans_iterations", "kmeans_sample", "seed"}
_QUERY_KEYS = {"nprobes", "target_recall"}
_CHECK_KEYS = {"recall_k", "recall_queries", "min_recall"}


def check_index_params(index_params: Mapping[str, Any]) -> dict[str, Any]:
    """DEFAULT_INDEX_PARAMS with `index_params` over them, every key and value checked (errors name the key)."""
    unknown = set(index_params) - _BUILD_KEYS - _QUERY_KEYS - _CHECK_KEYS
    if unknown:
        raise ValueError(f"index_params: unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(_BUILD_KEYS | _QUERY_KEYS | _CHECK_KEYS)}")
    cfg = {**DEFAULT_INDEX_PARAMS, **index_params}
    if cfg["index_type"] not in ANN_INDEX_TYPES:
        raise ValueError(f"index_params['index_type']: expected one of {ANN_INDEX_TYPES}, got {cfg['index_type']!r}")
    for key in ("num_partitions", "nprobes", "partition_rows", "kmeans_iterations", "kmeans_sample", "recall_k",
                "recall_queries", "seed"):
        v, optional = cfg[key], key in ("num_partitions", "nprobes")
        low = 0 if key == "seed" else 1
        if (v is None and not optional) or (v is not None and (not isinstance(v, int) or isinstance(v, bool)
                                                               or v < low)):
            want = "a non-negative integer" if key == "seed" else "a positive integer"
            raise ValueError(f"index_params[{key!r}]: expected {want}{' or None' if optional else ''}, got {v!r}")
    for key in ("target_recall", "min_recall"):
        v = cfg[key]
        if (v is None and key == "target_recall") or (
                v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0)):
            none = " or None" if key == "min_recall" else ""
            raise ValueError(f"index_params[{key!r}]: expected a number in [0, 1]{none}, got {v!r}")
    return cfg


def check_ann_min_rows(ann_min_rows: int) -> int:
    """`ann_min_rows` when it is an integer >= MIN_ANN_ROWS (IVF training needs that many rows)."""
    if not isinstance(ann_min_rows, int) or isinstance(ann_min_rows, bool) or ann_min_rows < MIN_ANN_ROWS:
        raise ValueError(f"ann_min_rows: expected an integer >= {MIN_ANN_ROWS}, got {ann_min_rows!r}")
    return ann_min_rows


def effective_config(n_rows: int, ann_min_rows: int, index_params: Mapping[str, Any]) -> dict[str, Any]:
    """The index config this build uses: {"index_type": "FLAT"} below `ann_min_rows`, else the checked ANN params."""
    check_ann_min_rows(ann_min_rows)
    cfg = check_index_params(index_params)
    if n_rows < ann_min_rows:
        return {"index_type": FLAT}
    return cfg


def num_partitions(n: int, cfg: Mapping[str, Any]) -> int:
    """IVF partitions for n rows: `num_partitions`, else n / `partition_rows`, at least 1 and at most n."""
    p = cfg["num_partitions"] or round(n / cfg["partition_rows"])
    return int(min(max(p, 1), n))


def kmeans(xn: np.ndarray, n_partitions: int, cfg: Mapping[str, Any]) -> np.ndarray:
    """(n_partitions, D) unit centroids of a spherical k-means on a seeded sample of the unit rows `xn`.

    Seeded sample, seeded initial centroids (distinct sample rows), Lloyd iterations with sums in a fixed order and
    empty partitions keeping their centroid: the same rows and seed give the same centroids, bit for bit, on one
    machine and thread count.
    """
    rng = np.random.default_rng(cfg["seed"])
    n = len(xn)
    m = min(n, cfg["kmeans_sample"] * n_partitions)
    sample = xn[np.sort(rng.choice(n, size=m, replace=False))] if m < n else xn
    centroids = sample[np.sort(rng.choice(m, size=n_partitions, replace=False))].copy()
    for _ in range(cfg["kmeans_iterations"]):
        assign = nearest_centroid(sample, centroids)
        order = np.argsort(assign, kind="stable")
        counts = np.bincount(assign, minlength=n_partitions)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        full = counts > 0
        sums = np.add.reduceat(sample[order], starts[full], axis=0)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        ok = norms[:, 0] > 0
        centroids[np.flatnonzero(full)[ok]] = sums[ok] / norms[ok]
    return np.ascontiguousarray(centroids, dtype=np.float32)


def nearest_centroid(x: np.ndarray, centroids: np.ndarray, chunk: int = 16_384) -> np.ndarray:
    return np.concatenate([np.argmax(x[s:s + chunk] @ centroids.T, axis=1) for s in range(0, len(x), chunk)])


def require_pylance() -> None:
    try:
        import lance  # noqa: F401  (pylance: LanceDB 0.40's own index builders cannot take centroids)
    except ImportError as e:
        raise RuntimeError("an IVF_FLAT RAD index needs pylance==13.0.0 (the Lance core of lancedb 0.40.0) for "
                           "seeded centroids and its queries; it is not installed") from e


def create_ivf(table: Any, centroids: np.ndarray) -> None:
    """An IVF_FLAT (cosine) index on the table's vectors with these partition centroids (a new table version)."""
    require_pylance()
    table.to_lance().create_index(VECTOR, "IVF_FLAT", metric="cosine", num_partitions=len(centroids),
                                  ivf_centroids=centroids, replace=True)
    table.checkout_latest()


def nprobes_ladder(cfg: Mapping[str, Any], n_partitions: int) -> list[int]:
    """The nprobes values a build tries, in order: the configured one, or 8, 16, 32, ... up to a quarter of the
    partitions (a probe that scans more is no longer much cheaper than exact search), or up to 32 of few partitions."""
    if cfg["nprobes"] is not None:
        return [min(cfg["nprobes"], n_partitions)]
    top = max(n_partitions // 4, min(n_partitions, 32))
    ladder, p = [min(NPROBES_START, top)], NPROBES_START
    while p < top:
        p *= 2
        ladder.append(min(p, top))
    return ladder


def choose_nprobes(table: Any, ids: list[str], xn: np.ndarray, cfg: Mapping[str, Any], n_partitions: int,
                    k: int) -> tuple[int, float]:
    """(nprobes, its recall@k): the first of the ladder whose recall reaches `target_recall`, else the last."""
    rng = np.random.default_rng(cfg["seed"])
    pick = np.sort(rng.choice(len(xn), size=min(cfg["recall_queries"], len(xn)), replace=False))
    queries = xn[pick]
    ex_idx, ex_dist = exact_topk(xn, queries, k + 1)
    # each sampled row is its own nearest neighbour: compare the k nearest *other* rows
    kth = np.array([d[i != row][:k].max() for i, d, row in zip(ex_idx, ex_dist, pick)])
    row_of = {s: i for i, s in enumerate(ids)}
    nprobes = recall = None
    dataset = table.to_lance()
    for nprobes in nprobes_ladder(cfg, n_partitions):
        recall = measure_recall(dataset, queries, pick, kth, xn, row_of, ids, k, nprobes)
        log.info("%s: nprobes %d of %d partitions: recall@%d %.4f", f"LanceDB table {table.name!r}", nprobes, n_partitions, k,
                 recall)
        if recall >= cfg["target_recall"]:
            break
    return nprobes, recall


def measure_recall(dataset: Any, queries: np.ndarray, pick: np.ndarray, kth: np.ndarray, xn: np.ndarray,
                    row_of: dict[str, int], ids: list[str], k: int, nprobes: int) -> float:
    """Mean recall@k of the ANN search at `nprobes` for table rows `pick` (self excluded) against exact search.

    A returned row counts as a hit when its true distance (from `xn`) is within the exact k-th distance `kth`, so ties
    at the boundary do not count as misses.
    """
    ann = ann_query(dataset, queries, k + 1, {"nprobes": nprobes}, ["sample_id"])
    hits = []
    for j, row in enumerate(pick):
        own = ids[row]
        rows = [row_of[s] for s in ann[j].column("sample_id").to_pylist() if s != own][:k]
        d = 1.0 - xn[rows] @ queries[j] if rows else np.empty(0)
        hits.append(np.sum(d <= kth[j] + 1e-5) / k)
    return float(np.mean(hits))


_EXACT_CHUNK = 1 << 25  # score-matrix elements per block (128 MiB of float32)


def exact_topk(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row indices, cosine distances) of each unit query's k nearest unit rows, nearest first; ties: lower row first.

    A BLAS matmul and an argpartition per block of queries (the exact path; what numpy brute force does)."""
    n = len(vectors)
    k = min(k, n)
    idx = np.empty((len(queries), k), np.int64)
    dist = np.empty((len(queries), k), np.float32)
    step = max(1, _EXACT_CHUNK // max(n, 1))
    for s in range(0, len(queries), step):
        scores = queries[s:s + step] @ vectors.T
        part = np.argpartition(scores, n - k, axis=1)[:, n - k:] if k < n else np.tile(np.arange(n), (len(scores), 1))
        top = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -top), axis=1)
        idx[s:s + step] = np.take_along_axis(part, order, axis=1)
        dist[s:s + step] = np.clip(1.0 - np.take_along_axis(top, order, axis=1), 0.0, 2.0)
    return idx, dist


def ann_query(dataset: Any, queries: np.ndarray, k: int, query: Mapping[str, Any],
               columns: list[str]) -> list[pa.Table]:
    """One arrow table per query (its k nearest rows by the ANN index, with `_distance`, nearest first), in batches.

    Through pylance's dataset (the table's Lance dataset at the handle's version): the same Lance search as
    LanceDB's, with half its fixed cost per call (1.6 against 3.3 ms for one query here)."""
    out: list[pa.Table] = []
    for start in range(0, len(queries), QUERY_BATCH):
        batch = queries[start:start + QUERY_BATCH]
        nearest = {"column": VECTOR, "q": batch[0] if len(batch) == 1 else batch, "k": k, "metric": "cosine"}
        # nprobes (IVF); ef / refine_factor only for versions built by older code (IVF_HNSW_SQ)
        nearest.update({key: query[key] for key in ("nprobes", "ef", "refine_factor") if query.get(key) is not None})
        res = dataset.to_table(columns=columns, nearest=nearest)
        qi = (res["query_index"].to_numpy() if "query_index" in res.column_names
              else np.zeros(res.num_rows, np.int64))
        dist = res["_distance"].to_numpy()
        # group by query, nearest first; lexsort is stable, so ties keep Lance's order
        perm = np.lexsort((dist, qi))
        res, qi = res.take(pa.array(perm)), qi[perm]
        bounds = np.searchsorted(qi, np.arange(len(batch) + 1))
        out.extend(res.slice(bounds[j], bounds[j + 1] - bounds[j]) for j in range(len(batch)))
    return out
