"""The RAD index (SPEC §7): one LanceDB table per (dataset, retriever) of train-split embeddings, searched by cosine.

    OMP_NUM_THREADS=1 pytest -q tests/test_index.py
    OMP_NUM_THREADS=1 python perf/index_recall.py          # build s, query/s and recall@10 per index type

    info = build_index(Path("outputs/rad"), "ham10000__resnet18", emb_train, ids_train, labels_train, None,
                       ann_min_rows=50_000, index_params=DEFAULT_INDEX_PARAMS)
    neighbours = search(Path("outputs/rad"), "ham10000__resnet18", emb_test, k=10)   # one list per query, nearest first

Rows are the L2-normalised embeddings (so cosine distance = 1 - dot and scalar quantisation sees unit vectors) with
`sample_id`, `labels` and `text`, stored in sample-id order. Tables with fewer than `ann_min_rows` rows get no ANN
index: exact search over a few tens of thousands of vectors is fast and has nothing to tune. Larger ones get an ANN
index (default IVF_HNSW_SQ with a refine step, so the returned distances are exact cosine distances) whose recall@k
against exact search (`bypass_vector_index`) is measured at build time and stored with the table.

Publishing: LanceDB OSS 0.40 cannot rename a table (`rename_table` raises NotImplementedError), so a build does not
write under a temporary name. Instead every build commits new versions of the one table (data, then index, then a
build record), and only then moves the tag `published` onto the last of them; `search` reads the version that tag
names, never the latest. A build that dies half way leaves unpublished versions that nobody serves, and the previous
published version stays readable (Lance versions are immutable; `optimize(cleanup_older_than=...)` raises rather than
delete a tagged one). Each completed build is also tagged `build-<content digest>-<config digest>` (`IndexInfo.tag`, to
record in lineage): a rebuild whose content and index config match the published build, or any earlier tagged build,
rewrites nothing and (re)publishes that version. To reclaim disk, delete the `build-*` tags no run needs any more
(`table.tags.delete`), then optimize. One writer per table at a time (the flow runs one task per table).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_contracts.errors import DataError
from tasks.cache import stage_key

log = logging.getLogger(__name__)

PUBLISHED_TAG = "published"
FLAT = "FLAT"
ANN_INDEX_TYPES = ("IVF_HNSW_SQ", "IVF_FLAT")
MIN_ANN_ROWS = 256  # IVF training wants at least this many rows; below it exact search is faster anyway
VECTOR = "vector"
DIGEST_VERSION = "gsco-rad-index/v1"  # bump when the digest's byte layout changes

# Measured on 20k x 128 clustered vectors, one thread (perf/index_recall.py): recall@10 ~0.998 with refine 2,
# ~0.975 without it (ef 20: ~0.94); m 16 / ef_construction 150 built in 4-8 s against 10 s for LanceDB's 20 / 300,
# at the same recall. Exact search was faster per query up to ~50k rows at 128 dims, hence ann_min_rows ~50k.
DEFAULT_INDEX_PARAMS: dict[str, Any] = {
    "index_type": "IVF_HNSW_SQ",
    "num_partitions": None,  # None: LanceDB's choice from the row count
    "m": 16,
    "ef_construction": 150,
    "nprobes": None,  # query time; None: LanceDB's default
    "ef": 100,  # query time, HNSW candidate list
    "refine_factor": 2,  # query time: re-rank k * 2 candidates on the full vectors, exact distances out
    "recall_k": 10,
    "recall_queries": 256,
    "min_recall": 0.9,  # below it the build fails and the old version stays published; None: no gate
}
_BUILD_KEYS = {"index_type", "num_partitions", "m", "ef_construction"}
_QUERY_KEYS = {"nprobes", "ef", "refine_factor"}
_CHECK_KEYS = {"recall_k", "recall_queries", "min_recall"}
_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_QUERY_BATCH = 1024

_META_DIGEST = b"gsco.content_digest"
_META_CONFIG = b"gsco.index_config"
_META_BUILD = b"gsco.build"


class IndexQualityError(RuntimeError):
    """An ANN index measured below `min_recall`; the build was not published."""


@dataclass(frozen=True)
class Neighbour:
    """One retrieved training sample: its id, labels, text (None when the table has none) and cosine distance."""

    sample_id: str
    labels: list[str]
    text: str | None
    distance: float


@dataclass(frozen=True)
class IndexInfo:
    """What a build produced (or found already built): enough to record in lineage and to reproduce a search."""

    table_name: str
    uri: str
    rows: int
    dim: int
    index_type: str  # FLAT or one of ANN_INDEX_TYPES
    index_params: dict[str, Any]  # effective build + query + check params ({} for FLAT)
    version: int  # the published LanceDB table version
    tag: str  # LanceDB tag on `version`
    content_digest: str
    recall_at_k: float | None  # ANN vs exact search; None for FLAT
    recall_k: int | None
    reused: bool = field(default=False)  # True: nothing was written, an existing build matched

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for MLflow params / JSON)."""
        return asdict(self)


def _where(table_name: str) -> str:
    return f"LanceDB table '{table_name}'"


def _check_table_name(table_name: str) -> None:
    if not isinstance(table_name, str) or not _TABLE_NAME.match(table_name):
        raise ValueError(f"table name {table_name!r}: expected letters, digits, '_', '-' or '.' only")


def _check_vectors(x: Any, table_name: str, what: str, ids: Sequence[str] | None = None,
                   dim: int | None = None) -> np.ndarray:
    """`x` as float32 (n, D), after checking shape, dtype, finiteness and non-zero norms; errors name the row."""
    where = _where(table_name)
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", type(x).__name__)
        raise DataError(where, f"a 2-D array (rows, dim), got {shape}", field=what)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(where, f"floating-point values, got dtype {x.dtype}", field=what)
    if x.shape[1] == 0:
        raise DataError(where, "at least one dimension, got 0", field=what)
    if dim is not None and x.shape[1] != dim:
        raise DataError(where, f"dimension {dim} (the table's), got {x.shape[1]}", field=what)
    if ids is not None and len(ids) != x.shape[0]:
        raise DataError(where, f"one sample id per row ({x.shape[0]} rows), got {len(ids)}", field="sample_ids")
    x = np.ascontiguousarray(x, dtype=np.float32)
    name = (lambda i: ids[i]) if ids is not None else (lambda i: i)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise DataError(where, f"finite values, got NaN/inf ({bad.size} rows bad)", row=name(int(bad[0])), field=what)
    zero = np.flatnonzero(np.linalg.norm(x, axis=1) == 0)
    if zero.size:
        raise DataError(where, f"a non-zero vector (cosine is undefined for 0; {zero.size} rows)",
                        row=name(int(zero[0])), field=what)
    return x


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _check_rows(table_name: str, n: int, sample_ids: Sequence[str], labels: Sequence[Sequence[str]],
                texts: Sequence[str | None] | None) -> None:
    where = _where(table_name)
    for what, seq in (("sample_ids", sample_ids), ("labels", labels), ("texts", texts)):
        if seq is not None and len(seq) != n:
            raise DataError(where, f"{n} entries (one per embedding row), got {len(seq)}", field=what)
    seen: set[str] = set()
    for i, sid in enumerate(sample_ids):
        if not isinstance(sid, str) or not sid:
            raise DataError(where, f"a non-empty string sample id, got {sid!r}", row=i, field="sample_ids")
        if sid in seen:
            raise DataError(where, "unique sample ids, got a duplicate", row=sid, field="sample_ids")
        seen.add(sid)
    for sid, labs in zip(sample_ids, labels):
        if isinstance(labs, str) or not isinstance(labs, Sequence) or not all(isinstance(s, str) for s in labs):
            raise DataError(where, f"a list of label names, got {labs!r}", row=sid, field="labels")
    if texts is not None:
        for sid, t in zip(sample_ids, texts):
            if t is not None and not isinstance(t, str):
                raise DataError(where, f"a string or None, got {type(t).__name__}", row=sid, field="texts")


def check_index_params(index_params: Mapping[str, Any]) -> dict[str, Any]:
    """DEFAULT_INDEX_PARAMS with `index_params` over them, every key and value checked (errors name the key)."""
    unknown = set(index_params) - _BUILD_KEYS - _QUERY_KEYS - _CHECK_KEYS
    if unknown:
        raise ValueError(f"index_params: unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(_BUILD_KEYS | _QUERY_KEYS | _CHECK_KEYS)}")
    cfg = {**DEFAULT_INDEX_PARAMS, **index_params}
    if cfg["index_type"] not in ANN_INDEX_TYPES:
        raise ValueError(f"index_params['index_type']: expected one of {ANN_INDEX_TYPES}, got {cfg['index_type']!r}")
    for key in ("num_partitions", "m", "ef_construction", "nprobes", "ef", "refine_factor"):
        v = cfg[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ValueError(f"index_params[{key!r}]: expected a positive integer or None, got {v!r}")
    for key in ("recall_k", "recall_queries"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ValueError(f"index_params[{key!r}]: expected a positive integer, got {cfg[key]!r}")
    mr = cfg["min_recall"]
    if mr is not None and not (isinstance(mr, (int, float)) and 0.0 <= mr <= 1.0):
        raise ValueError(f"index_params['min_recall']: expected a number in [0, 1] or None, got {mr!r}")
    return cfg


def check_ann_min_rows(ann_min_rows: int) -> int:
    """`ann_min_rows` when it is an integer >= MIN_ANN_ROWS (IVF training needs that many rows)."""
    if not isinstance(ann_min_rows, int) or isinstance(ann_min_rows, bool) or ann_min_rows < MIN_ANN_ROWS:
        raise ValueError(f"ann_min_rows: expected an integer >= {MIN_ANN_ROWS}, got {ann_min_rows!r}")
    return ann_min_rows


def _effective_config(n_rows: int, ann_min_rows: int, index_params: Mapping[str, Any]) -> dict[str, Any]:
    """The index config this build uses: {"index_type": "FLAT"} below `ann_min_rows`, else the checked ANN params."""
    check_ann_min_rows(ann_min_rows)
    cfg = check_index_params(index_params)
    if n_rows < ann_min_rows:
        return {"index_type": FLAT}
    if cfg["index_type"] == "IVF_FLAT":  # HNSW-only knobs would only make equal configs look different
        cfg = {k: v for k, v in cfg.items() if k not in ("m", "ef_construction", "ef")}
    return cfg


def _digest(ids: list[str], x: np.ndarray, labels: list[list[str]], texts: list[str | None]) -> str:
    """sha256 over the rows in sample-id order: ids, raw float32 embeddings, labels, texts (all self-delimiting)."""
    h = hashlib.sha256()
    h.update(f"{DIGEST_VERSION}\n{x.shape[0]} {x.shape[1]}\n".encode())
    h.update(json.dumps(ids, ensure_ascii=False).encode())
    h.update(x.astype("<f4", copy=False).tobytes())
    h.update(json.dumps(labels, ensure_ascii=False).encode())
    h.update(json.dumps(texts, ensure_ascii=False).encode())
    return h.hexdigest()


def _build_tag(content_digest: str, cfg: Mapping[str, Any]) -> str:
    """The tag of a completed build: its content digest and the stage key of its config and this module's code."""
    return f"build-{content_digest[:16]}-{stage_key('rad-index', {}, dict(cfg), ['tasks.rad.index'])[:8]}"


def _read_build(table: Any) -> dict[str, Any] | None:
    """The build record of the checked-out version (digest, config, rows, dim, recall), None if it lacks one."""
    schema = table.schema
    meta = schema.metadata or {}
    vmeta = (schema.field(VECTOR).metadata or {}) if VECTOR in schema.names else {}
    if _META_DIGEST not in meta or _META_CONFIG not in meta or _META_BUILD not in vmeta:
        return None
    rec = json.loads(vmeta[_META_BUILD])
    rec["content_digest"] = meta[_META_DIGEST].decode()
    rec["config"] = json.loads(meta[_META_CONFIG])
    return rec


def _info(table_name: str, uri: str, rec: Mapping[str, Any], version: int, tag: str, reused: bool) -> IndexInfo:
    cfg = dict(rec["config"])
    index_type = cfg.pop("index_type")
    return IndexInfo(table_name=table_name, uri=uri, rows=rec["rows"], dim=rec["dim"], index_type=index_type,
                     index_params=cfg, version=version, tag=tag, content_digest=rec["content_digest"],
                     recall_at_k=rec["recall_at_k"], recall_k=rec["recall_k"], reused=reused)


def _publish(table: Any, tag: str, version: int) -> None:
    tags = table.tags.list()
    for name in (tag, PUBLISHED_TAG):
        if name not in tags:
            table.tags.create(name, version)
        elif tags[name]["version"] != version:
            table.tags.update(name, version)


def _has_table(db: Any, table_name: str) -> bool:
    page = db.list_tables()
    while True:
        if table_name in page.tables:
            return True
        if not page.page_token:
            return False
        page = db.list_tables(page_token=page.page_token)


def _find_existing(db: Any, table_name: str, tag: str, digest: str,
                   cfg: Mapping[str, Any]) -> tuple[Any, int, dict[str, Any]] | None:
    """(table, version, build record) of an earlier complete build with this content and config, if one is tagged."""
    if not _has_table(db, table_name):
        return None
    table = db.open_table(table_name)
    tags = table.tags.list()
    if tag not in tags:
        return None
    version = tags[tag]["version"]
    table.checkout(version)
    rec = _read_build(table)
    table.checkout_latest()
    if rec is None or rec["content_digest"] != digest or rec["config"] != dict(cfg):
        log.warning("%s: tag %s names version %d whose build record does not match; rebuilding",
                    _where(table_name), tag, version)
        return None
    return table, version, rec


def build_index(db_dir: Path, table_name: str, embeddings: np.ndarray, sample_ids: list[str],
                labels: list[list[str]], texts: list[str | None] | None, *, ann_min_rows: int,
                index_params: Mapping[str, Any]) -> IndexInfo:
    """The published index for these train-split rows: built, or found already built with equal content and config.

    `embeddings` (N, D) float, one row per `sample_ids` entry; `labels` one list of label names per row; `texts` one
    string (or None) per row, or None for a table without texts. Rows are stored L2-normalised in sample-id order.
    `index_params` overrides `DEFAULT_INDEX_PARAMS` (build, query and recall-check keys); it only matters when
    N >= `ann_min_rows`. Raises DataError on bad input (naming the table, row and field), IndexQualityError when the ANN
    index measures below `min_recall` (nothing is published then).
    """
    _check_table_name(table_name)
    x = _check_vectors(embeddings, table_name, "embeddings", ids=sample_ids)
    n, dim = x.shape
    _check_rows(table_name, n, sample_ids, labels, texts)
    cfg = _effective_config(n, ann_min_rows, index_params)

    order = sorted(range(n), key=sample_ids.__getitem__)
    ids = [sample_ids[i] for i in order]
    x = x[order]
    labs = [list(labels[i]) for i in order]
    txts = [texts[i] for i in order] if texts is not None else [None] * n
    digest = _digest(ids, x, labs, txts)
    tag = _build_tag(digest, cfg)

    import lancedb

    uri = str(db_dir)
    Path(db_dir).mkdir(parents=True, exist_ok=True)
    db = lancedb.connect(uri)
    found = _find_existing(db, table_name, tag, digest, cfg)
    if found is not None:
        table, version, rec = found
        _publish(table, tag, version)
        log.info("%s: content %s already built as version %d; nothing rewritten", _where(table_name), digest[:12],
                 version)
        return _info(table_name, uri, rec, version, tag, reused=True)

    xn = _normalise(x)
    schema = pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("labels", pa.list_(pa.string()), nullable=False),
        pa.field("text", pa.string()),
        pa.field(VECTOR, pa.list_(pa.float32(), dim), nullable=False),
    ], metadata={_META_DIGEST: digest.encode(), _META_CONFIG: json.dumps(cfg, sort_keys=True).encode()})
    data = pa.table({
        "sample_id": pa.array(ids, pa.string()),
        "labels": pa.array(labs, pa.list_(pa.string())),
        "text": pa.array(txts, pa.string()),
        VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(xn.ravel(), pa.float32()), dim),
    }, schema=schema)
    try:
        # new versions of the same table; readers keep seeing the `published` version until _publish below
        table = db.create_table(table_name, data=data, mode="overwrite")
        recall = recall_k = None
        if cfg["index_type"] != FLAT:
            table.create_index(VECTOR, config=_index_config(cfg), replace=True)
            recall_k = min(cfg["recall_k"], n - 1)
            recall = _measure_recall(table, ids, xn, cfg, recall_k, cfg["recall_queries"])
            if cfg["min_recall"] is not None and recall < cfg["min_recall"]:
                raise IndexQualityError(
                    f"{_where(table_name)}: {cfg['index_type']} recall@{recall_k} {recall:.3f} is below min_recall "
                    f"{cfg['min_recall']} with {cfg}; not published (raise ef / nprobes / refine_factor)")
        rec = {"rows": n, "dim": dim, "recall_at_k": recall, "recall_k": recall_k}
        # the build record lands last: a version carrying it is complete
        table.update_field_metadata({"path": VECTOR, "metadata": {_META_BUILD.decode(): json.dumps(rec)}})
        version = table.version
        _publish(table, tag, version)
    except IndexQualityError:
        raise
    except Exception as e:
        raise RuntimeError(f"{_where(table_name)} in {uri}: build failed ({type(e).__name__}: {e}); the previously "
                           f"published version, if any, is still the one served") from e
    log.info("%s: published version %d (%s, %d rows, recall@%s %s)", _where(table_name), version,
             cfg["index_type"], n, recall_k, recall)
    rec = {**rec, "content_digest": digest, "config": cfg}
    return _info(table_name, uri, rec, version, tag, reused=False)


def _index_config(cfg: Mapping[str, Any]) -> Any:
    import lancedb

    common = {"distance_type": "cosine", "num_partitions": cfg["num_partitions"]}
    if cfg["index_type"] == "IVF_HNSW_SQ":
        return lancedb.index.IvfHnswSq(**common, m=cfg["m"], ef_construction=cfg["ef_construction"])
    return lancedb.index.IvfFlat(**common)


def _query(table: Any, queries: np.ndarray, k: int, exact: bool, cfg: Mapping[str, Any],
           columns: list[str]) -> list[pa.Table]:
    """One arrow table per query (its k nearest rows with `_distance`, nearest first), querying in batches."""
    out: list[pa.Table] = []
    for start in range(0, len(queries), _QUERY_BATCH):
        batch = queries[start:start + _QUERY_BATCH]
        q = table.search(list(batch), vector_column_name=VECTOR).distance_type("cosine").limit(k).select(columns)
        if exact:
            q = q.bypass_vector_index()
        elif cfg.get("index_type", FLAT) != FLAT:
            if cfg.get("nprobes") is not None:
                q = q.nprobes(cfg["nprobes"])
            if cfg.get("ef") is not None:
                q = q.ef(cfg["ef"])
            if cfg.get("refine_factor") is not None:
                q = q.refine_factor(cfg["refine_factor"])
        res = q.to_arrow()
        qi = (res["query_index"].to_numpy() if "query_index" in res.column_names
              else np.zeros(res.num_rows, np.int64))
        dist = res["_distance"].to_numpy()
        # group by query, nearest first; lexsort is stable, so ties keep LanceDB's order
        perm = np.lexsort((dist, qi))
        res, qi = res.take(pa.array(perm)), qi[perm]
        bounds = np.searchsorted(qi, np.arange(len(batch) + 1))
        out.extend(res.slice(bounds[j], bounds[j + 1] - bounds[j]) for j in range(len(batch)))
    return out


def _measure_recall(table: Any, ids: list[str], xn: np.ndarray, cfg: Mapping[str, Any], k: int,
                    n_queries: int) -> float:
    """Mean recall@k of the ANN search against exact search, for a seeded sample of the table's own rows.

    Each sampled row is its own nearest neighbour, so both searches ask for k + 1 and drop the query row. A returned
    row counts as a hit when its true distance (from `xn`, not the possibly quantised `_distance`) is within the exact
    k-th distance, so ties at the boundary do not count as misses.
    """
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(xn), size=min(n_queries, len(xn)), replace=False))
    queries = xn[pick]
    ann = _query(table, queries, k + 1, False, cfg, ["sample_id"])
    exact = _query(table, queries, k + 1, True, cfg, ["sample_id"])
    row_of = {s: i for i, s in enumerate(ids)}
    hits = []
    for j, row in enumerate(pick):
        own = ids[row]
        ex_ids = [s for s in exact[j].column("sample_id").to_pylist() if s != own][:k]
        ex_d = 1.0 - xn[[row_of[s] for s in ex_ids]] @ queries[j]
        an_ids = [s for s in ann[j].column("sample_id").to_pylist() if s != own][:k]
        an_d = 1.0 - xn[[row_of[s] for s in an_ids]] @ queries[j] if an_ids else np.empty(0)
        hits.append(np.sum(an_d <= ex_d.max() + 1e-5) / k)
    return float(np.mean(hits))


def open_published(db_dir: Path, table_name: str, version: int | str = PUBLISHED_TAG) -> tuple[Any, dict[str, Any]]:
    """(LanceDB table checked out at `version` (a version number or tag; default the published one), build record)."""
    import lancedb

    _check_table_name(table_name)
    db = lancedb.connect(str(db_dir))
    if not _has_table(db, table_name):
        raise LookupError(f"{_where(table_name)} not found in {db_dir}; run build_index first")
    table = db.open_table(table_name)
    if isinstance(version, str) and version not in table.tags.list():
        raise LookupError(f"{_where(table_name)} in {db_dir} has no tag {version!r}: no build of it completed")
    table.checkout(version)
    rec = _read_build(table)
    if rec is None:
        raise LookupError(f"{_where(table_name)} version {table.version} in {db_dir} is not a completed build")
    return table, rec


def search(db_dir: Path, table_name: str, queries: np.ndarray, k: int, exact: bool = False, *,
           version: int | str = PUBLISHED_TAG) -> list[list[Neighbour]]:
    """The k nearest training samples of each query by cosine distance, nearest first (fewer if the table is smaller).

    Reads the published version (or `version`: a table version or tag recorded in lineage). `exact=True` scans every
    row (`bypass_vector_index`); otherwise an ANN table is searched with the query params stored at build time.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    table, rec = open_published(db_dir, table_name, version)
    q = _normalise(_check_vectors(queries, table_name, "queries", dim=rec["dim"]))
    if len(q) == 0:
        return []
    results = _query(table, q, k, exact, rec["config"], ["sample_id", "labels", "text"])
    return [[Neighbour(sample_id=r["sample_id"], labels=list(r["labels"]), text=r["text"],
                       distance=float(max(r["_distance"], 0.0)))
             for r in res.to_pylist()] for res in results]
