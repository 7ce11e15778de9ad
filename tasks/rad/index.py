"""The RAD index (SPEC §7): one LanceDB table per (dataset, retriever) of train-split embeddings, searched by cosine.

    OMP_NUM_THREADS=1 pytest -q tests/test_index.py
    OMP_NUM_THREADS=1 python perf/index_recall.py          # build s, query/s and recall@10 per index type
    OMP_NUM_THREADS=2 python perf/rad_index_scale.py       # 250k x 512: 5 seeded builds vs numpy brute force

    info = build_index(Path("outputs/rad"), "ham10000__resnet18", emb_train, ids_train, labels_train, None,
                       ann_min_rows=20_000, index_params=DEFAULT_INDEX_PARAMS)
    neighbours = search(Path("outputs/rad"), "ham10000__resnet18", emb_test, k=10)   # one list per query, nearest first

Rows are the L2-normalised embeddings (so cosine distance = 1 - dot) with `sample_id`, `labels` and `text`, stored in
sample-id order. Tables with fewer than `ann_min_rows` rows get no ANN index and are searched exactly: a BLAS top-k
over the table's vectors, loaded once per open handle (11x faster than LanceDB's flat scan at 250k x 512). Larger ones
get an IVF_FLAT index whose partitions are the centroids of a seeded k-means (numpy, here), handed to Lance through
pylance's `ivf_centroids`: LanceDB 0.40's own index builders take no seed, and two builds on the same rows answer
differently. One seed gives one index, one recall and one set of answers. IVF_FLAT keeps the full vectors, so the
returned distances are exact and there is nothing to refine; `nprobes` is chosen at build time (the smallest of 8, 16,
32, ... whose recall@k against exact search, on a seeded sample of the table's rows, reaches `target_recall`) and stored
with the build; below `min_recall` at the chosen `nprobes` the build fails (deterministically: a real recall loss).
Measured at 250k x 512 on 2 shared cores (perf/rad_index_scale.py, perf/measured/rad_index_250k_cpu.json): recall@10
1.0 in 5 of 5 seeds (977 partitions, 16 probed), 2.7-3.8 ms p50 per query on an open handle, a 1,000-query batch
0.44-0.77 s against 10.2 s for numpy brute force; the exact path beats the index only below ~10-20k rows at 512 dims.

Open handles are cached per (database, table, version) (`open_handle`, at most HANDLE_CACHE_SIZE): a version is
immutable, so a handle (and the vectors the exact path loaded into it) never goes stale; only the tag is looked up on
each call, so a newly published build is picked up at once.

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
import os
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from data_contracts.errors import DataError
from tasks.cache import stage_key
from tasks.rad.ivf import (ANN_INDEX_TYPES, DEFAULT_INDEX_PARAMS, FLAT, MIN_ANN_ROWS, VECTOR,  # noqa: F401 (API)
                           ann_query, check_ann_min_rows, check_index_params, choose_nprobes, create_ivf,
                           effective_config, exact_topk, kmeans, nprobes_ladder, num_partitions, require_pylance)

log = logging.getLogger(__name__)

PUBLISHED_TAG = "published"
DIGEST_VERSION = "gsco-rad-index/v1"  # bump when the digest's byte layout changes
HANDLE_CACHE_SIZE = 8  # open (table, version) handles kept per process; each may hold its table's vectors

_TABLE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

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
    """The tag of a completed build: its content digest and the stage key of its config and the index code."""
    code = stage_key("rad-index", {}, dict(cfg), ["tasks.rad.index", "tasks.rad.ivf"])
    return f"build-{content_digest[:16]}-{code[:8]}"


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
    cfg = {**rec["config"], **rec.get("query", {})}  # with the chosen nprobes and partition count
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
    cfg = effective_config(n, ann_min_rows, index_params)

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
    rec, version = _write_build(db, uri, table_name, tag, digest, cfg, ids, labs, txts, xn)
    log.info("%s: published version %d (%s, %d rows, recall@%s %s, %s)", _where(table_name), version,
             cfg["index_type"], n, rec["recall_k"], rec["recall_at_k"], rec["query"])
    rec = {**rec, "content_digest": digest, "config": cfg}
    return _info(table_name, uri, rec, version, tag, reused=False)


def _write_build(db: Any, uri: str, table_name: str, tag: str, digest: str, cfg: Mapping[str, Any], ids: list[str],
                 labs: list[list[str]], txts: list[str | None], xn: np.ndarray) -> tuple[dict[str, Any], int]:
    """Write the rows (new versions of the table), index and check them, then publish: (build record, version)."""
    n, dim = xn.shape
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
        query: dict[str, Any] = {}
        if cfg["index_type"] != FLAT:
            centroids = kmeans(xn, num_partitions(n, cfg), cfg)
            create_ivf(table, centroids)
            recall_k = min(cfg["recall_k"], n - 1)
            nprobes, recall = choose_nprobes(table, ids, xn, cfg, len(centroids), recall_k)
            query = {"nprobes": nprobes, "num_partitions": len(centroids)}
            if cfg["min_recall"] is not None and recall < cfg["min_recall"]:
                raise IndexQualityError(
                    f"{_where(table_name)}: {cfg['index_type']} recall@{recall_k} {recall:.3f} is below min_recall "
                    f"{cfg['min_recall']} at nprobes {nprobes} of {len(centroids)} partitions with {cfg}; not "
                    f"published (raise nprobes or lower partition_rows)")
        rec = {"rows": n, "dim": dim, "recall_at_k": recall, "recall_k": recall_k, "query": query}
        # the build record lands last: a version carrying it is complete
        table.update_field_metadata({"path": VECTOR, "metadata": {_META_BUILD.decode(): json.dumps(rec)}})
        version = table.version
        _publish(table, tag, version)
    except IndexQualityError:
        raise
    except Exception as e:
        raise RuntimeError(f"{_where(table_name)} in {uri}: build failed ({type(e).__name__}: {e}); the previously "
                           f"published version, if any, is still the one served") from e
    return rec, version


class Handle:
    """An open LanceDB table checked out at one completed build (`version`), with its build record; the exact path
    loads the table's vectors and columns into it once. Versions are immutable, so a handle never goes stale."""

    def __init__(self, table: Any, rec: dict[str, Any], version: int) -> None:
        self.table, self.rec, self.version = table, rec, version
        self._lock = threading.Lock()
        self._loaded: tuple[np.ndarray, list[str], list[list[str]], list[str | None]] | None = None
        self._dataset: Any = None

    def dataset(self) -> Any:
        """The Lance dataset (pylance) of this version, for ANN queries; opened once."""
        with self._lock:
            if self._dataset is None:
                require_pylance()
                self._dataset = self.table.to_lance()
            return self._dataset

    def columns(self) -> tuple[np.ndarray, list[str], list[list[str]], list[str | None]]:
        """(unit vectors (N, D) float32, sample ids, labels, texts) in table order, read once."""
        with self._lock:
            if self._loaded is None:
                t = self.table.to_arrow()
                vec = t[VECTOR].combine_chunks()
                x = vec.flatten().to_numpy(zero_copy_only=False).reshape(len(vec), self.rec["dim"])
                self._loaded = (np.ascontiguousarray(x, dtype=np.float32), t["sample_id"].to_pylist(),
                                t["labels"].to_pylist(), t["text"].to_pylist())
            return self._loaded


_handles: OrderedDict[tuple[str, str, int], Handle] = OrderedDict()
_roots: dict[tuple[str, str], Any] = {}
_cache_lock = threading.Lock()


def _root(uri: str, table_name: str, fresh: bool = False) -> Any:
    """The table opened at its latest version (to read tags), cached per (database, table)."""
    key = (uri, table_name)
    with _cache_lock:
        root = None if fresh else _roots.get(key)
    if root is None:
        import lancedb

        db = lancedb.connect(uri)
        if not _has_table(db, table_name):
            raise LookupError(f"{_where(table_name)} not found in {uri}; run build_index first")
        root = db.open_table(table_name)
        with _cache_lock:
            _roots.pop(key, None)
            _roots[key] = root
            while len(_roots) > 8 * HANDLE_CACHE_SIZE:
                del _roots[next(iter(_roots))]
    return root


def open_handle(db_dir: Path, table_name: str, version: int | str = PUBLISHED_TAG) -> Handle:
    """The open table at `version` (a version number or tag; default the published one), cached per (database,
    table, version): the same object while that version is asked for, a new one when the tag moves."""
    _check_table_name(table_name)
    uri = os.path.abspath(db_dir)
    if isinstance(version, str):
        try:
            tags = _root(uri, table_name).tags.list()
        except LookupError:
            raise
        except Exception:  # the cached root went away (table dropped and made again): open it afresh
            tags = _root(uri, table_name, fresh=True).tags.list()
        if version not in tags:
            raise LookupError(f"{_where(table_name)} in {db_dir} has no tag {version!r}: no build of it completed")
        number = int(tags[version]["version"])
    else:
        _root(uri, table_name)  # LookupError for a missing table, as for a tag
        number = int(version)
    key = (uri, table_name, number)
    with _cache_lock:
        handle = _handles.get(key)
        if handle is not None:
            _handles.move_to_end(key)
            return handle
    import lancedb

    table = lancedb.connect(uri).open_table(table_name)  # its own object: checkout must not move the root
    table.checkout(number)
    rec = _read_build(table)
    if rec is None:
        raise LookupError(f"{_where(table_name)} version {number} in {db_dir} is not a completed build")
    handle = Handle(table, rec, number)
    with _cache_lock:
        handle = _handles.setdefault(key, handle)
        _handles.move_to_end(key)
        while len(_handles) > HANDLE_CACHE_SIZE:
            _handles.popitem(last=False)
    return handle


def open_published(db_dir: Path, table_name: str, version: int | str = PUBLISHED_TAG) -> tuple[Any, dict[str, Any]]:
    """(LanceDB table checked out at `version` (a version number or tag; default the published one), build record)."""
    handle = open_handle(db_dir, table_name, version)
    return handle.table, handle.rec


def search(db_dir: Path, table_name: str, queries: np.ndarray, k: int, exact: bool = False, *,
           version: int | str = PUBLISHED_TAG) -> list[list[Neighbour]]:
    """The k nearest training samples of each query by cosine distance, nearest first (fewer if the table is smaller).

    Reads the published version (or `version`: a table version or tag recorded in lineage) through a cached open
    handle. Flat tables, and `exact=True`, take the exact path (a BLAS top-k over the table's vectors, loaded once per
    handle); an ANN table is searched by its index with the nprobes chosen at build time. Pass every query at once:
    a batch is answered in one pass.
    """
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    handle = open_handle(db_dir, table_name, version)
    rec = handle.rec
    q = _normalise(_check_vectors(queries, table_name, "queries", dim=rec["dim"]))
    if len(q) == 0:
        return []
    if exact or rec["config"]["index_type"] == FLAT:
        x, ids, labels, texts = handle.columns()
        idx, dist = exact_topk(x, q, k)
        return [[Neighbour(sample_id=ids[i], labels=list(labels[i]), text=texts[i], distance=float(d))
                 for i, d in zip(row_i, row_d)] for row_i, row_d in zip(idx.tolist(), dist.tolist())]
    query = rec.get("query") or rec["config"]  # older builds kept their query settings in the config
    results = ann_query(handle.dataset(), q, k, query, ["sample_id", "labels", "text"])
    return [[Neighbour(sample_id=r["sample_id"], labels=list(r["labels"]), text=r["text"],
                       distance=float(max(r["_distance"], 0.0)))
             for r in res.to_pylist()] for res in results]
