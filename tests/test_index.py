"""RAD index (tasks/rad/index.py): exact and ANN neighbours, recall, labels, rebuild no-ops, unpublished builds,
seeded (reproducible) builds, the exact path against LanceDB's and the cache of open handles.

    OMP_NUM_THREADS=1 pytest -q tests/test_index.py
"""
from __future__ import annotations

import lancedb
import numpy as np
import pytest

from data_contracts.errors import DataError
from tasks.rad.index import (DEFAULT_INDEX_PARAMS, FLAT, HANDLE_CACHE_SIZE, IndexQualityError, build_index,
                             nprobes_ladder, open_handle, open_published, search)


def clustered(n: int, dim: int, n_clusters: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) float32 points around `n_clusters` Gaussian centres, and each point's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    y = rng.integers(0, n_clusters, n)
    return (centres[y] + noise * rng.normal(size=(n, dim))).astype(np.float32), y


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def true_recall(neighbours, x: np.ndarray, ids: list[str], q: np.ndarray, k: int) -> float:
    """Mean share of returned ids whose true cosine distance is within the exact k-th distance (ties count as hits)."""
    row = {s: i for i, s in enumerate(ids)}
    d = 1.0 - unit(q) @ unit(x).T
    kth = np.sort(d, axis=1)[:, k - 1]
    return float(np.mean([sum(d[j, row[n.sample_id]] <= kth[j] + 1e-5 for n in nb) / k
                          for j, nb in enumerate(neighbours)]))


# --- exact search on known geometry -------------------------------------------------------------------------------

def test_planted_neighbours_come_back_in_order(tmp_path):
    dim, rng = 8, np.random.default_rng(1)
    angles = 0.05 + 0.1 * np.arange(10)  # radians from the query direction e0, cos from 0.999 down to 0.58
    planted = np.zeros((10, dim), np.float32)
    planted[:, 0], planted[:, 1] = np.cos(angles), np.sin(angles)
    planted *= rng.uniform(0.5, 5.0, size=(10, 1)).astype(np.float32)  # cosine must ignore the norm
    distractors = rng.normal(size=(300, dim)).astype(np.float32)
    distractors[:, 0] = -np.abs(distractors[:, 0]) - 0.1  # all at cosine < 0 from e0: farther than every planted row
    # ids whose sorted order is not the geometric one, rows inserted shuffled
    planted_ids = [f"p{(7 * i) % 10}" for i in range(10)]
    ids = planted_ids + [f"d{i:03d}" for i in range(300)]
    x = np.vstack([planted, distractors])
    perm = rng.permutation(len(ids))
    labels = [["near"] if s.startswith("p") else ["far"] for s in ids]
    info = build_index(tmp_path, "planted", x[perm], [ids[i] for i in perm], [labels[i] for i in perm],
                       [f"report {ids[i]}" for i in perm], ann_min_rows=1000, index_params={})
    assert (info.index_type, info.rows, info.dim, info.recall_at_k) == (FLAT, 310, dim, None)

    query = np.zeros((2, dim), np.float32)
    query[0, 0], query[1, 0] = 1.0, 30.0  # same direction, different norm: same answer
    for exact in (False, True):
        got = search(tmp_path, "planted", query, k=10, exact=exact)
        for nb in got:
            assert [n.sample_id for n in nb] == planted_ids
            np.testing.assert_allclose([n.distance for n in nb], 1.0 - np.cos(angles), atol=1e-5)
            assert all(n.labels == ["near"] and n.text == f"report {n.sample_id}" for n in nb)
    assert [n.sample_id for n in search(tmp_path, "planted", query[:1], k=3)[0]] == planted_ids[:3]
    # k beyond the table gives every row, nearest first
    everything = search(tmp_path, "planted", query[:1], k=1000)[0]
    assert len(everything) == 310 and [n.sample_id for n in everything[:10]] == planted_ids


def test_flat_table_below_threshold_is_exact(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    ids = [f"s{i:05d}" for i in range(3000)]
    info = build_index(tmp_path, "flat", x, ids, [["a"]] * 3000, None, ann_min_rows=5000,
                       index_params=DEFAULT_INDEX_PARAMS)
    assert info.index_type == FLAT and info.index_params == {} and info.recall_at_k is None
    table, _ = open_published(tmp_path, "flat")
    assert table.list_indices() == []

    q = rng.normal(size=(50, 32)).astype(np.float32)
    got = search(tmp_path, "flat", q, k=5)
    assert got == search(tmp_path, "flat", q, k=5, exact=True)
    assert true_recall(got, x, ids, q, 5) == 1.0
    want = np.sort(1.0 - unit(q) @ unit(x).T, axis=1)[:, :5]
    np.testing.assert_allclose([[n.distance for n in nb] for nb in got], want, atol=1e-5)
    assert all(n.text is None for nb in got for n in nb)


# --- ANN index on a 20k-row clustered set -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ann_set(tmp_path_factory):
    x, y = clustered(20_200, 128, n_clusters=100, noise=1.5, seed=0)
    db = tmp_path_factory.mktemp("rad")
    ids = [f"img{i:05d}" for i in range(20_000)]
    info = build_index(db, "ds__retriever", x[:20_000], ids, [[f"c{c}"] for c in y[:20_000]], None,
                       ann_min_rows=10_000, index_params=DEFAULT_INDEX_PARAMS)
    return db, info, x[:20_000], y[:20_000], ids, x[20_000:], y[20_000:]  # last 200 rows: held-out queries


def test_ann_index_keeps_recall(ann_set):
    db, info, x, _, ids, q, _ = ann_set
    assert (info.index_type, info.rows, info.dim, info.recall_k) == ("IVF_FLAT", 20_000, 128, 10)
    assert info.recall_at_k >= 0.98, info  # target_recall, reached at the chosen nprobes
    assert info.index_params["num_partitions"] == 78 and info.index_params["nprobes"] in (8, 16)
    table, rec = open_published(db, "ds__retriever")
    assert table.version == info.version and rec["recall_at_k"] == info.recall_at_k
    assert [i.index_type for i in table.list_indices()] == ["IvfFlat"]

    ann = search(db, "ds__retriever", q, k=10)
    exact = search(db, "ds__retriever", q, k=10, exact=True)
    assert all(len(nb) == 10 for nb in ann)
    assert true_recall(exact, x, ids, q, 10) == 1.0
    assert true_recall(ann, x, ids, q, 10) >= 0.95
    want = np.sort(1.0 - unit(q) @ unit(x).T, axis=1)[:, :10]
    np.testing.assert_allclose([[n.distance for n in nb] for nb in exact], want, atol=1e-5)


def test_neighbour_labels_match_the_query_cluster(ann_set):
    db, _, _, _, _, q, yq = ann_set
    got = search(db, "ds__retriever", q, k=10)
    same = np.mean([[n.labels == [f"c{c}"] for n in nb] for nb, c in zip(got, yq)])
    assert same > 0.8 > 50 * (1 / 100)  # chance is 1 in 100 clusters


# --- rebuilds, digests, publishing --------------------------------------------------------------------------------

def test_rebuild_same_content_is_a_no_op_and_changes_are_not(tmp_path):
    x, y = clustered(500, 16, n_clusters=5, noise=0.5, seed=3)
    ids = [f"s{i:03d}" for i in range(500)]
    labels = [[f"c{c}"] for c in y]
    first = build_index(tmp_path, "t", x, ids, labels, None, ann_min_rows=1000, index_params={})
    assert not first.reused and len(first.content_digest) == 64 and first.tag.startswith("build-")
    n_versions = len(lancedb.connect(str(tmp_path)).open_table("t").list_versions())

    perm = np.random.default_rng(0).permutation(500)  # same rows, other order: same content
    again = build_index(tmp_path, "t", x[perm], [ids[i] for i in perm], [labels[i] for i in perm], None,
                        ann_min_rows=1000, index_params={})
    assert again.reused and again.version == first.version and again.content_digest == first.content_digest
    assert len(lancedb.connect(str(tmp_path)).open_table("t").list_versions()) == n_versions
    # equal content in another database gives the equal digest
    elsewhere = build_index(tmp_path / "other", "t", x, ids, labels, None, ann_min_rows=1000, index_params={})
    assert elsewhere.content_digest == first.content_digest and not elsewhere.reused

    changed = [list(lab) for lab in labels]
    changed[7] = ["relabelled"]
    second = build_index(tmp_path, "t", x, ids, changed, None, ann_min_rows=1000, index_params={})
    assert not second.reused and second.content_digest != first.content_digest and second.version > first.version
    assert search(tmp_path, "t", x[7:8], k=1)[0][0].labels == ["relabelled"]
    # the old build is served again (by its tag) without rewriting
    back = build_index(tmp_path, "t", x, ids, labels, None, ann_min_rows=1000, index_params={})
    assert back.reused and back.version == first.version
    assert search(tmp_path, "t", x[7:8], k=1)[0][0].labels == labels[7]
    # a recorded version stays searchable
    assert search(tmp_path, "t", x[7:8], k=1, version=second.version)[0][0].labels == ["relabelled"]

    x2 = x.copy()
    x2[0, 0] += 1e-3
    assert build_index(tmp_path, "t", x2, ids, labels, None, ann_min_rows=1000,
                       index_params={}).content_digest != first.content_digest


def test_index_params_change_rebuilds_same_content(tmp_path):
    x, y = clustered(400, 16, n_clusters=4, noise=0.5, seed=4)
    ids, labels = [f"s{i}" for i in range(400)], [[f"c{c}"] for c in y]
    a = build_index(tmp_path, "ann", x, ids, labels, None, ann_min_rows=256, index_params={})
    assert a.index_type == "IVF_FLAT" and a.recall_at_k >= 0.95
    b = build_index(tmp_path, "ann", x, ids, labels, None, ann_min_rows=256, index_params={"seed": 7})
    assert not b.reused and b.content_digest == a.content_digest and b.tag != a.tag and b.index_params["seed"] == 7
    c = build_index(tmp_path, "ann", x, ids, labels, None, ann_min_rows=256, index_params={"seed": 7})
    assert c.reused and c.version == b.version


def test_failed_build_is_not_served(tmp_path, monkeypatch):
    x, y = clustered(400, 16, n_clusters=4, noise=0.5, seed=5)
    ids, labels = [f"s{i}" for i in range(400)], [[f"c{c}"] for c in y]
    good = build_index(tmp_path, "t", x, ids, labels, None, ann_min_rows=256, index_params={})

    def disk_full(self, *args, **kwargs):
        raise OSError("No space left on device")

    import lance  # pylance: the IVF build goes through it

    monkeypatch.setattr(lance.LanceDataset, "create_index", disk_full)
    changed = [["new"]] * 400
    with pytest.raises(RuntimeError, match="'t'.*still the one served"):
        build_index(tmp_path, "t", x, ids, changed, None, ann_min_rows=256, index_params={})
    # the new rows were committed, but search still reads the published build
    assert lancedb.connect(str(tmp_path)).open_table("t").version > good.version
    assert search(tmp_path, "t", x[:1], k=1)[0][0].labels == labels[0]
    with pytest.raises(RuntimeError):
        build_index(tmp_path, "fresh", x, ids, labels, None, ann_min_rows=256, index_params={})
    with pytest.raises(LookupError, match="no build of it completed"):
        search(tmp_path, "fresh", x[:1], k=1)


def test_recall_below_gate_is_not_published(tmp_path):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2000, 32)).astype(np.float32)  # isotropic: one probe of 64 partitions misses most neighbours
    params = {"index_type": "IVF_FLAT", "num_partitions": 64, "nprobes": 1, "min_recall": 0.9}
    with pytest.raises(IndexQualityError, match=r"'gate'.*recall@10 0\.\d+ is below min_recall 0.9"):
        build_index(tmp_path, "gate", x, [f"s{i}" for i in range(2000)], [["a"]] * 2000, None, ann_min_rows=1000,
                    index_params=params)
    with pytest.raises(LookupError):
        search(tmp_path, "gate", x[:1], k=1)


# --- reproducible builds, the exact path, open handles -------------------------------------------------------------

HARD = {"index_type": "IVF_FLAT", "num_partitions": 32, "nprobes": 2, "min_recall": None}  # recall well below 1


def _isotropic(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    return np.random.default_rng(seed).normal(size=(n, 32)).astype(np.float32), [f"s{i:05d}" for i in range(n)]


def test_one_seed_builds_one_index(tmp_path):
    # isotropic points, 2 of 32 partitions probed: which neighbours come back depends on every centroid, so two
    # builds answer alike only if their partitions are identical (LanceDB's own k-means starts at random)
    x, ids = _isotropic(3000, 8)
    q = np.random.default_rng(9).normal(size=(200, 32)).astype(np.float32)
    def build_and_ask(name: str, params: dict):
        info = build_index(tmp_path / name, "t", x, ids, [["a"]] * 3000, None, ann_min_rows=256, index_params=params)
        return info, [[(n.sample_id, n.distance) for n in nb] for nb in search(tmp_path / name, "t", q, k=10)]

    (a, got_a), (b, got_b) = build_and_ask("a", HARD), build_and_ask("b", HARD)
    assert not b.reused and a.tag == b.tag
    assert got_a == got_b
    assert a.recall_at_k == b.recall_at_k < 0.9
    assert true_recall(search(tmp_path / "a", "t", q, k=10), x, ids, q, 10) < 0.9   # not exact: the test can tell
    c, got_c = build_and_ask("c", {**HARD, "seed": 1})
    assert got_c != got_a and c.tag != a.tag   # the seed is what fixes the partitions


def test_nprobes_is_chosen_for_the_target_recall(tmp_path):
    x, _ = clustered(8000, 32, n_clusters=200, noise=1.0, seed=10)
    ids = [f"s{i}" for i in range(8000)]
    auto = {"partition_rows": 64, "target_recall": 0.93, "min_recall": None}
    info = build_index(tmp_path, "t", x, ids, [["a"]] * 8000, None, ann_min_rows=256, index_params=auto)
    # 125 partitions: 8 probes measure ~0.90, so the build goes on to 16 (~0.95)
    assert (info.index_params["num_partitions"], info.index_params["nprobes"]) == (125, 16)
    assert info.recall_at_k >= 0.93
    fixed = build_index(tmp_path, "t", x, ids, [["a"]] * 8000, None, ann_min_rows=256,
                        index_params={**auto, "nprobes": 8})
    assert fixed.index_params["nprobes"] == 8 and fixed.recall_at_k < 0.93
    assert nprobes_ladder(DEFAULT_INDEX_PARAMS, 977) == [8, 16, 32, 64, 128, 244]  # up to a quarter
    assert nprobes_ladder(DEFAULT_INDEX_PARAMS, 20) == [8, 16, 20] and nprobes_ladder({"nprobes": 50}, 20) == [20]
    # the ladder stops at 32 of 125 partitions: a recall that needs more is a real loss, and fails every time
    with pytest.raises(IndexQualityError, match=r"recall@10 0\.9\d+ is below min_recall 0.999 at nprobes 32 of 125"):
        build_index(tmp_path, "t", x, ids, [["a"]] * 8000, None, ann_min_rows=256,
                    index_params={**auto, "target_recall": 0.999, "min_recall": 0.999})


def test_exact_path_equals_lancedb_exact_search(tmp_path):
    x, ids = _isotropic(3000, 11)
    q = np.random.default_rng(12).normal(size=(64, 32)).astype(np.float32)
    build_index(tmp_path, "flat", x, ids, [[s] for s in ids], None, ann_min_rows=5000, index_params={})
    build_index(tmp_path, "ann", x, ids, [[s] for s in ids], None, ann_min_rows=256, index_params=HARD)
    for name in ("flat", "ann"):
        table, _ = open_published(tmp_path, name)
        want = (table.search(list(unit(q)), vector_column_name="vector").distance_type("cosine").limit(10)
                .select(["sample_id", "_distance"]).bypass_vector_index().to_arrow().to_pylist())
        got = search(tmp_path, name, q, k=10, exact=True)
        assert [[n.sample_id for n in nb] for nb in got] == [
            [r["sample_id"] for r in sorted((r for r in want if r["query_index"] == j), key=lambda r: r["_distance"])]
            for j in range(64)]
        np.testing.assert_allclose([[n.distance for n in nb] for nb in got],
                                   np.sort(1.0 - unit(q) @ unit(x).T, axis=1)[:, :10], atol=1e-5)
    assert search(tmp_path, "flat", q, k=10) == search(tmp_path, "flat", q, k=10, exact=True)


def test_open_handles_are_reused_per_version(tmp_path):
    x, ids = _isotropic(400, 13)
    first = build_index(tmp_path, "t", x, ids, [["a"]] * 400, None, ann_min_rows=1000, index_params={})
    h = open_handle(tmp_path, "t")
    search(tmp_path, "t", x[:3], k=2)
    assert open_handle(tmp_path, "t") is h and open_handle(tmp_path, "t", first.version) is h
    assert h.version == first.version and h.columns()[0].shape == (400, 32)
    loaded = h.columns()
    assert h.columns() is loaded  # read once per handle

    second = build_index(tmp_path, "t", x, ids, [["b"]] * 400, None, ann_min_rows=1000, index_params={})
    h2 = open_handle(tmp_path, "t")
    assert h2 is not h and h2.version == second.version   # the tag moved: the new build is served at once
    assert search(tmp_path, "t", x[:1], k=1)[0][0].labels == ["b"]
    assert search(tmp_path, "t", x[:1], k=1, version=first.version)[0][0].labels == ["a"]
    assert open_handle(tmp_path, "t", first.version) is h

    # bounded: after HANDLE_CACHE_SIZE other handles, the first one is opened afresh
    for i in range(HANDLE_CACHE_SIZE):
        build_index(tmp_path, f"u{i}", x, ids, [["a"]] * 400, None, ann_min_rows=1000, index_params={})
        open_handle(tmp_path, f"u{i}")
    assert open_handle(tmp_path, "t", first.version) is not h


# --- bad input ----------------------------------------------------------------------------------------------------

def test_bad_input_names_table_row_and_field(tmp_path):
    x = np.random.default_rng(7).normal(size=(300, 16)).astype(np.float32)
    ids, labels = [f"s{i}" for i in range(300)], [["a"]] * 300

    def build(emb=x, sid=ids, labs=labels, texts=None, **kw):
        kw = {"ann_min_rows": 1000, "index_params": {}, **kw}
        return build_index(tmp_path, "bad", emb, sid, labs, texts, **kw)

    nan = x.copy()
    nan[12, 3] = np.nan
    with pytest.raises(DataError, match=r"table 'bad' row s12 field 'embeddings': expected finite"):
        build(emb=nan)
    zero = x.copy()
    zero[5] = 0
    with pytest.raises(DataError, match=r"row s5 .*non-zero"):
        build(emb=zero)
    with pytest.raises(DataError, match=r"'bad'.*2-D array"):
        build(emb=x[0])
    with pytest.raises(DataError, match=r"'bad'.*floating-point"):
        build(emb=x.astype(np.int64))
    with pytest.raises(DataError, match=r"'bad'.*one sample id per row"):
        build(sid=ids[:-1])
    with pytest.raises(DataError, match=r"row s1 field 'sample_ids'.*unique"):
        build(sid=["s1"] + ids[1:299] + ["s1"])
    with pytest.raises(DataError, match=r"row s0 field 'labels'"):
        build(labs=["a"] + labels[1:])
    with pytest.raises(DataError, match=r"field 'texts'.*300 entries"):
        build(texts=["t"] * 10)
    with pytest.raises(ValueError, match="unknown keys"):
        build(index_params={"efs": 10})
    with pytest.raises(ValueError, match="ann_min_rows"):
        build(ann_min_rows=10)
    with pytest.raises(ValueError, match="table name"):
        build_index(tmp_path, "../escape", x, ids, labels, None, ann_min_rows=1000, index_params={})

    build()
    with pytest.raises(DataError, match=r"table 'bad' field 'queries': expected dimension 16 .*got 8"):
        search(tmp_path, "bad", x[:2, :8], k=3)
    bad_q = x[:2].copy()
    bad_q[1, 0] = np.inf
    with pytest.raises(DataError, match=r"'bad' row 1 field 'queries': expected finite"):
        search(tmp_path, "bad", bad_q, k=3)
    with pytest.raises(LookupError, match="'missing' not found"):
        search(tmp_path, "missing", x[:2], k=3)
    with pytest.raises(ValueError, match="k: expected a positive integer"):
        search(tmp_path, "bad", x[:2], k=0)
