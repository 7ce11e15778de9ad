"""Corpus assembly: CLS + MRG + VQA + DGB + DES rows -> Fig. A3 instruction rows -> Parquet shards + manifest.

    result = assemble_corpus(sources, synthesis_dirs, CorpusFiles(out / "corpus"), rows_per_shard=50_000)

A corpus row refers to its image (data_contracts/instructions.py: sample `image_sample_id` of the samples table
<source_dataset>/<split>, content digest `image_digest`) instead of copying its bytes: the paper's ~2M rows draw on a
few hundred thousand images, each seen by several instructions (CLS/VQA/MRG, DGB, DES, collaboration rows).

1. Image digests (`images.parquet`, the image index): one pass over the image column of every samples split the rows
   refer to, a row group at a time per thread (sha256 in C on zero-copy slices); the only place image bytes are
   read. A rebuild reuses the previous corpus's digests of every split whose content digest is unchanged, so images
   are hashed once per samples table content, not once per build.
2. One polars lazy query run by the streaming engine: scan -> render templates with expressions -> join the digests on
   the reference -> drop empty answers -> de-duplicate on a content key (image digest + a hash of instruction and
   answer: the first copy kept, order kept) and on sample id.
3. Its batches are written to the shards as they come, and each batch's columns are fed, straight from their Arrow
   buffers, to the running sha256 of its shard (TableDigest; no Python per row, no read-back pass). The corpus
   digest is taken over the shards' digests in order: the corpus order is the training order.

Memory is bounded by the streaming engine and the de-dup key sets (~50 bytes a row), independent of image size.
Benchmark test splits never enter the corpus: only train and val rows of training datasets are used.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from data_contracts.errors import ContractError
from data_contracts.files import swap_in, temporary_sibling, write_json_atomic
from data_contracts.instructions import INSTRUCTIONS_SCHEMA, REFERENCE, SCHEMA_VERSION, image_digest
from data_contracts.io import split_digests, split_paths
from data_contracts.layout import CorpusFiles, SynthesisFiles
from tasks import prompts
from tasks.cache import stage_key

COLUMNS = INSTRUCTIONS_SCHEMA.names
RENDERED = [c for c in COLUMNS if c != "image_digest"]   # what the templates produce; the digest is joined on
CORPUS_CODE = ("tasks.generalist.corpus", "tasks.prompts", "data_contracts.instructions")
DIGEST_PREFIX = f"gsco:instructions:v{SCHEMA_VERSION}".encode()
IMAGE_BATCH_BYTES = 64 * 1024 * 1024   # image bytes in memory per hashing thread, at most about


@dataclass
class CorpusResult:
    status: str
    cache_key: str
    rows: int
    digest: str
    duplicates_removed: int
    counts: dict = field(default_factory=dict)   # "source_dataset/task_kind/split" -> rows
    path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def template_expr(template: str, **values: pl.Expr) -> pl.Expr:
    """A polars expression rendering a `{name}` template with column expressions (so it streams)."""
    import re

    pieces = re.split(r"\{(\w+)\}", template)
    exprs = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if piece:
                exprs.append(pl.lit(piece))
        else:
            if piece not in values:
                raise KeyError(f"template field {{{piece}}} has no value: {template!r}")
            exprs.append(values[piece])
    return pl.concat_str(exprs)


def _label_set() -> pl.Expr:
    return pl.col("label_set").list.join(prompts.OPTION_SEP)  # the same spelling as the inference prompts


def _evaluation_form(multilabel: bool) -> str:
    """The MedDr arm's diagnosis prompt (Fig. A4, no references) as a {modality}/{label_set} template."""
    return prompts.diagnosis_prompt("{modality}", ["{label_set}"], multilabel, rad=None, moed=None)


def cls_instruction(cls_prompt: str) -> pl.Expr:
    """The CLS rows' instruction: Fig. A3's template ("paper") or the evaluation's own prompt ("evaluation")."""
    values = {"modality": pl.col("modality"), "label_set": _label_set()}
    if cls_prompt == "paper":
        return template_expr(prompts.CLS_TEMPLATE, **values)
    if cls_prompt == "evaluation":
        return (pl.when(pl.col("task_type") == "multilabel").then(template_expr(_evaluation_form(True), **values))
                .otherwise(template_expr(_evaluation_form(False), **values)))
    raise ValueError(f"cls_prompt: expected 'paper' or 'evaluation', got {cls_prompt!r}")


def render_samples(lf: pl.LazyFrame, task_kind: str, cls_prompt: str = "paper") -> pl.LazyFrame:
    """Instruction rows (RENDERED columns) from a samples scan of one task kind (diagnosis -> CLS, vqa -> VQA,
    report -> MRG); each refers to its own sample's image."""
    if task_kind == "diagnosis":
        instruction = cls_instruction(cls_prompt)
        answer = pl.col("labels").list.join(prompts.OPTION_SEP)
    elif task_kind == "vqa":
        instruction = template_expr(prompts.VQA_TEMPLATE, question=pl.col("question"))
        answer = pl.col("answer")
    elif task_kind == "report":
        instruction = pl.lit(prompts.MRG_TEMPLATE)
        answer = pl.col("text")
    else:
        raise ValueError(f"no corpus template for samples of task kind {task_kind!r}")
    return lf.select(
        pl.concat_str([pl.lit(task_kind + ":"), pl.col("sample_id")]).alias("sample_id"),
        pl.col("sample_id").alias("image_sample_id"), instruction.alias("instruction"), answer.alias("answer"),
        pl.col("dataset").alias("source_dataset"), pl.lit(task_kind).alias("task_kind"), pl.col("split"))


def render_synthesis(lf: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """Instruction rows (RENDERED columns) from DGB / DES outputs (template by kind, answer = the filtered output);
    each refers to the image of the sample it was generated from."""
    template = {"dgb": prompts.DGB_TEMPLATE, "des": prompts.DES_TEMPLATE}[kind]
    return lf.select(
        pl.col("sample_id"), pl.col("source_sample_id").alias("image_sample_id"),
        template_expr(template, modality=pl.col("modality")).alias("instruction"),
        pl.col("output").alias("answer"), pl.col("dataset").alias("source_dataset"), pl.lit(kind).alias("task_kind"),
        pl.col("split"))


@dataclass(frozen=True)
class SampleSource:
    """A samples table (dataset + split) to draw corpus rows from."""
    tables_root: Path
    dataset: str
    split: str
    task_kind: str
    digest: str


def corpus_key(sources: list[SampleSource], synthesis: dict[str, tuple[Path, str]], settings: dict,
               extra: dict[str, tuple[Path, str]] | None = None, images: dict[str, str] | None = None) -> str:
    """Cache key of the corpus: input digests (`images`: "dataset/split" -> digest of every samples split the rows
    refer to), settings and the template code."""
    inputs = {f"{s.dataset}/{s.split}": s.digest for s in sources}
    inputs.update({f"synthesis/{k}": d for k, (_, d) in synthesis.items()})
    inputs.update({f"extra/{k}": d for k, (_, d) in (extra or {}).items()})
    inputs.update({f"images/{k}": d for k, d in (images or {}).items()})
    return stage_key("corpus", inputs, settings, CORPUS_CODE)


def read_manifest(files: CorpusFiles) -> dict | None:
    """The manifest of a finished corpus, or None."""
    return json.loads(files.manifest.read_text()) if files.manifest.exists() else None


# ------------------------------------------------------------------------------------------------- image digests
def binary_digests(arr: pa.Array) -> list[str]:
    """image_digest() of every value of a binary Arrow array, hashed in place (no copy of the bytes)."""
    offsets, data = _string_buffers(arr)
    return [image_digest(data[a:b]) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]


def _shard_digests(path: Path) -> tuple[list[str], list[str]]:
    """(sample ids, image digests) of one samples shard: a row group of images in memory at a time, or record
    batches of about IMAGE_BATCH_BYTES where a row group is larger than that."""
    pf = pq.ParquetFile(path, memory_map=True)
    image_col = pf.schema_arrow.get_field_index("image")
    ids, digests = [], []
    for rg in range(pf.num_row_groups):
        meta = pf.metadata.row_group(rg)
        size = meta.column(image_col).total_uncompressed_size
        if size <= IMAGE_BATCH_BYTES:
            batches = pf.read_row_group(rg, columns=["sample_id", "image"]).to_batches()
        else:
            rows = max(1, IMAGE_BATCH_BYTES * meta.num_rows // size)
            batches = pf.iter_batches(batch_size=rows, row_groups=[rg], columns=["sample_id", "image"],
                                      use_threads=False)
        for batch in batches:
            ids += batch.column(0).to_pylist()
            digests += binary_digests(batch.column(1))
    return ids, digests


def image_index(tables_root: Path, splits: list[tuple[str, str]], workers: int | None = None) -> pl.DataFrame:
    """(source_dataset, split, image_sample_id, image_digest) of every sample of the given samples splits.

    Shards are hashed by `workers` threads (default: one per CPU; hashlib releases the GIL on image-sized buffers),
    each holding one record batch of images."""
    from concurrent.futures import ThreadPoolExecutor

    jobs = [(d, s, p) for d, s in splits for p in split_paths(tables_root, d, s)]
    with ThreadPoolExecutor(max(1, min(workers or os.cpu_count() or 1, len(jobs) or 1))) as pool:
        results = list(pool.map(_shard_digests, [p for _, _, p in jobs]))
    frames = [pl.DataFrame({"source_dataset": d, "split": s, "image_sample_id": ids, "image_digest": digests},
                           schema={c: pl.String for c in (*REFERENCE, "image_digest")})
              for (d, s, _), (ids, digests) in zip(jobs, results)]
    return pl.concat([pl.DataFrame(schema={c: pl.String for c in (*REFERENCE, "image_digest")}), *frames])


# --------------------------------------------------------------------------------------------------------- query
def _scans(sources: list[SampleSource], synthesis: dict[str, tuple[Path, str]], cls_prompt: str,
           extra: dict[str, tuple[Path, str]] | None) -> list[pl.LazyFrame]:
    """One lazy frame of RENDERED columns per input, in corpus order: samples sources, extra rows, synthesis."""
    lfs = []
    for s in sources:
        if s.split not in ("train", "val"):
            raise ValueError(f"corpus source {s.dataset}/{s.split}: only train and val splits may enter the corpus")
        scan = pl.scan_parquet([str(p) for p in split_paths(s.tables_root, s.dataset, s.split)])
        lfs.append(render_samples(scan, s.task_kind, cls_prompt))
    for _, (path, _) in sorted((extra or {}).items()):   # instruction rows prepared elsewhere (collaboration)
        scan = pl.scan_parquet(str(path))
        if set(scan.collect_schema().names()) != set(COLUMNS):
            raise ValueError(f"{path}: expected instruction columns {COLUMNS}, got {scan.collect_schema().names()}")
        lfs.append(scan.filter(pl.col("split").is_in(["train", "val"])).select(RENDERED))
    for kind, (d, _) in sorted(synthesis.items()):
        parts = sorted(str(p) for p in SynthesisFiles(Path(d)).parts.glob("part-*.parquet"))
        if parts:
            scan = pl.scan_parquet(parts).filter(pl.col("split").is_in(["train", "val"]))
            lfs.append(render_synthesis(scan, kind))
    if not lfs:
        raise ValueError("corpus has no sources: no training datasets or synthesis outputs were given")
    return lfs


def referenced_splits(lfs: list[pl.LazyFrame]) -> list[tuple[str, str]]:
    """The (dataset, split) samples tables the rows refer to, sorted."""
    pairs = pl.concat([lf.select(*REFERENCE[:2]).unique() for lf in lfs]).unique().sort(*REFERENCE[:2])
    return [tuple(r) for r in pairs.collect(engine="streaming").iter_rows()]


def content_key() -> pl.Expr:
    """The de-duplication key of a row besides its image digest: a 64-bit polars hash of instruction and answer (a
    key, not a digest: it lives only within one assembly; with the image's 128-bit content digest beside it, two
    distinct rows collide only if they share the image and the 64-bit hash)."""
    return pl.struct("instruction", "answer").hash(seed=1).alias("_text_key")


def corpus_query(lfs: list[pl.LazyFrame], index: pl.DataFrame) -> pl.LazyFrame:
    """The corpus (COLUMNS): rendered rows with their image digests joined, non-empty answers, de-duplicated on
    the content key and then on sample id, the first copy kept, in input order. A row whose image is not in
    `index` keeps a null digest (the writer refuses it, naming it)."""
    return (pl.concat(lfs, how="vertical")
            .join(index.lazy(), on=list(REFERENCE), how="left", maintain_order="left")
            .filter(pl.col("answer").str.strip_chars().str.len_chars() > 0)
            .with_columns(content_key())
            .unique(subset=["image_digest", "_text_key"], keep="first", maintain_order=True)
            .unique(subset=["sample_id"], keep="first", maintain_order=True)
            .select(COLUMNS))


# ------------------------------------------------------------------------------------------------ digests, writer
class TableDigest:
    """sha256 of instruction rows in order, fed an Arrow table at a time: per column, the stream of its values' byte
    lengths (uint64 little-endian) and the stream of its values' bytes, each hashed straight from the Arrow buffers.
    Any batching of the same rows gives the same digest; lengths pin the value boundaries."""

    def __init__(self):
        self._lengths = {c: hashlib.sha256() for c in COLUMNS}
        self._values = {c: hashlib.sha256() for c in COLUMNS}

    def update(self, table: pa.Table) -> None:
        for c in COLUMNS:
            for chunk in table.column(c).chunks:
                offsets, data = _string_buffers(chunk)
                self._lengths[c].update(np.diff(offsets).astype("<u8").tobytes())
                self._values[c].update(data[offsets[0]:offsets[-1]])

    def hexdigest(self) -> str:
        h = hashlib.sha256(DIGEST_PREFIX)
        for c in COLUMNS:
            h.update(c.encode() + b"\0" + self._lengths[c].digest() + self._values[c].digest())
        return h.hexdigest()[:32]


def _string_buffers(arr: pa.Array) -> tuple[np.ndarray, memoryview]:
    """(offsets, data) of a string/binary Arrow array without nulls, the offsets sliced to the array."""
    if arr.null_count:
        raise ValueError("a column of the instructions table holds nulls")
    large = pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type)
    _, offsets_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if large else np.int32)[arr.offset:arr.offset + len(arr) + 1]
    return offsets, memoryview(data_buf) if data_buf is not None else memoryview(b"")


class _ShardWriter:
    """Writes batches into part-NNNNN.parquet shards of `rows_per_shard` rows (cut points depend on the rows only,
    never on batching), each shard's digest (TableDigest) computed from the batches as they are written."""

    def __init__(self, shards_dir: Path, rows_per_shard: int):
        self.dir, self.max_rows = shards_dir, rows_per_shard
        self.dir.mkdir(parents=True)
        self.shards: list[dict] = []
        self._writer: pq.ParquetWriter | None = None
        self._digest: TableDigest | None = None
        self._rows = 0

    def write(self, df: pl.DataFrame) -> None:
        table = df.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(INSTRUCTIONS_SCHEMA)
        done = 0
        while done < table.num_rows:
            if self._writer is None:
                name = f"part-{len(self.shards):05d}.parquet"
                self.shards.append({"file": f"{self.dir.name}/{name}"})
                self._writer = pq.ParquetWriter(self.dir / name, INSTRUCTIONS_SCHEMA, compression="zstd")
                self._digest, self._rows = TableDigest(), 0
            part = table.slice(done, min(self.max_rows - self._rows, table.num_rows - done))
            self._digest.update(part)
            self._writer.write_table(part)
            self._rows += part.num_rows
            done += part.num_rows
            if self._rows >= self.max_rows:
                self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self.shards[-1].update(rows=self._rows, digest=self._digest.hexdigest())
            self._writer = None

    @property
    def digest(self) -> str:
        """The corpus digest: over the shards' row counts and digests, in order."""
        h = hashlib.sha256(DIGEST_PREFIX)
        for s in self.shards:
            h.update(f"{s['rows']}:{s['digest']};".encode())
        return h.hexdigest()[:32]


def _unresolved(df: pl.DataFrame, tables_root: Path) -> ContractError:
    r = df.filter(pl.col("image_digest").is_null()).row(0, named=True)
    return ContractError(f"corpus row {r['sample_id']}: its image, sample {r['image_sample_id']!r} of "
                         f"{r['source_dataset']}/{r['split']}, is not in the samples tables under {tables_root}")


def write_corpus(corpus: pl.LazyFrame, shards_dir: Path, tables_root: Path, rows_per_shard: int,
                 batch_rows: int = 50_000) -> tuple[list[dict], str, dict[str, int]]:
    """Stream the corpus query into shards; (shard entries with rows and digests, corpus digest, counts)."""
    writer = _ShardWriter(shards_dir, rows_per_shard)
    counts: Counter = Counter()
    try:
        for df in corpus.collect_batches(chunk_size=batch_rows, engine="streaming"):
            if df["image_digest"].null_count():
                raise _unresolved(df, tables_root)
            for ds, kind, split, n in df.group_by("source_dataset", "task_kind", "split").len().iter_rows():
                counts[f"{ds}/{kind}/{split}"] += n
            writer.write(df)
    finally:
        writer.close()
    return writer.shards, writer.digest, dict(sorted(counts.items()))


def assemble_corpus(sources: list[SampleSource], synthesis: dict[str, tuple[Path, str]], files: CorpusFiles,
                    rows_per_shard: int = 50_000, cls_prompt: str = "paper",
                    extra: dict[str, tuple[Path, str]] | None = None, tables_root: Path | None = None) -> CorpusResult:
    """Build (or serve from cache) the instruction corpus; `synthesis` maps kind -> (output dir, digest), `extra`
    name -> (an instructions Parquet file, its digest) for rows rendered elsewhere. Images are referred to in the
    samples tables under `tables_root` (default: the sources')."""
    roots = {Path(s.tables_root) for s in sources}
    if tables_root is None and len(roots) != 1:
        raise ValueError(f"corpus: pass tables_root (the samples tables the rows refer to); sources give {roots}")
    tables_root = Path(tables_root) if tables_root is not None else roots.pop()
    settings = {"rows_per_shard": rows_per_shard, "cls_prompt": cls_prompt}
    lfs = _scans(sources, synthesis, cls_prompt, extra)
    splits = referenced_splits(lfs)
    images = {f"{d}/{s}": _split_digest(tables_root, d, s) for d, s in splits}
    key = corpus_key(sources, synthesis, settings, extra, images)
    m = read_manifest(files)
    if m and m.get("cache_key") == key:
        return CorpusResult("cached", key, m["rows"], m["digest"], m["duplicates_removed"], m["counts"],
                            str(files.dir))
    total_in = pl.concat([lf.select(pl.len()) for lf in lfs]).select(pl.col("len").sum()).collect().item()
    index = _image_index(files, m, tables_root, splits, images)
    tmp = CorpusFiles(temporary_sibling(files.dir))
    try:
        tmp.dir.mkdir(parents=True)
        index.write_parquet(tmp.images, compression="zstd")
        query = corpus_query(lfs, index)
        shards, digest, counts = write_corpus(query, tmp.shards, tables_root, rows_per_shard)
        rows = sum(s["rows"] for s in shards)
        write_json_atomic(tmp.manifest, {
            "cache_key": key, "schema_version": SCHEMA_VERSION, "rows": rows, "digest": digest,
            "duplicates_removed": total_in - rows, "counts": counts, "shards": shards, "settings": settings,
            "sources": [{"dataset": s.dataset, "split": s.split, "digest": s.digest} for s in sources],
            "synthesis": {k: d for k, (_, d) in synthesis.items()},
            "extra": {k: d for k, (_, d) in (extra or {}).items()}, "images": images})
        swap_in(tmp.dir, files.dir)
    finally:
        shutil.rmtree(tmp.dir, ignore_errors=True)
    return CorpusResult("written", key, rows, digest, total_in - rows, counts, str(files.dir))


def _image_index(files: CorpusFiles, manifest: dict | None, tables_root: Path, splits: list[tuple[str, str]],
                 digests: dict[str, str]) -> pl.DataFrame:
    """The image index of `splits`: the previous corpus's entries for the splits whose content digest it recorded
    unchanged, image_index() for the others (images are hashed once per samples table content, not per build)."""
    recorded = (manifest or {}).get("images", {})
    same = [f"{d}/{s}" for d, s in splits if recorded.get(f"{d}/{s}") == digests[f"{d}/{s}"]]
    reused = None
    if same and files.images.exists():
        reused = (pl.scan_parquet(files.images)
                  .filter(pl.concat_str(pl.col("source_dataset"), pl.lit("/"), pl.col("split")).is_in(same))
                  .select(*REFERENCE, "image_digest").collect())
    todo = [(d, s) for d, s in splits if reused is None or f"{d}/{s}" not in same]
    fresh = image_index(tables_root, todo)
    return fresh if reused is None else pl.concat([reused, fresh])


def _split_digest(tables_root: Path, dataset: str, split: str) -> str:
    digests = split_digests(tables_root, dataset)
    if split not in digests:
        raise FileNotFoundError(f"{Path(tables_root) / dataset}: no samples table for split {split!r}, which "
                                "corpus rows refer to")
    return digests[split]


def corpus_shards(files: CorpusFiles) -> list[Path]:
    """The corpus Parquet shards in order."""
    m = read_manifest(files)
    if m is None:
        raise FileNotFoundError(f"{files.dir}: no corpus ({files.manifest.name} missing)")
    return [files.dir / s["file"] for s in m["shards"]]


def export_internvl(files: CorpusFiles, export_dir: Path, tables_root: Path, name: str = "gsco_corpus") -> Path:
    """Write the corpus in InternVL's fine-tuning format: images/, <name>.jsonl, meta.json; returns meta.json.

    images/ holds each distinct image once, named by its content digest, copied from the samples tables under
    `tables_root` split by split in table order (a bytes mismatch with the corpus's digest fails, naming the row)."""
    from data_contracts.image_refs import SampleImages

    export_dir = Path(export_dir)
    images = export_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    shards = [str(p) for p in corpus_shards(files)]
    refs = (pl.scan_parquet(shards).select(*REFERENCE, "image_digest").unique().collect(engine="streaming")
            .sort(*REFERENCE))
    store, names = SampleImages(tables_root), {}
    for (dataset, split), group in refs.group_by(*REFERENCE[:2], maintain_order=True):
        want = dict(zip(group["image_sample_id"].to_list(), group["image_digest"].to_list()))
        for sid, data in store.scan(dataset, split):
            digest = want.pop(sid, None)
            if digest is None:
                continue
            if image_digest(data) != digest:
                raise ContractError(f"{Path(tables_root) / dataset / split}: sample {sid}: image digest "
                                    f"{image_digest(data)}, the corpus recorded {digest}: the table changed after the "
                                    "corpus was built; rebuild the corpus")
            names[digest] = digest + (".png" if data[:4] == b"\x89PNG" else ".jpg")
            ip = images / names[digest]
            if not ip.exists():
                ip.write_bytes(data)
        if want:
            sid = next(iter(want))
            raise ContractError(f"{files.dir}: image_sample_id {sid!r} of {dataset}/{split} is not in the samples "
                                f"tables under {tables_root}")
    jsonl = export_dir / f"{name}.jsonl"
    tmp = temporary_sibling(jsonl)
    n = 0
    with open(tmp, "w") as f:
        for shard in shards:
            for batch in pq.ParquetFile(shard).iter_batches(batch_size=4096,
                                                            columns=["image_digest", "instruction", "answer"]):
                for digest, instruction, answer in zip(*(c.to_pylist() for c in batch.columns)):
                    f.write(json.dumps({"id": n, "image": names[digest], "conversations": [
                        {"from": "human", "value": "<image>\n" + instruction},
                        {"from": "gpt", "value": answer}]}) + "\n")
                    n += 1
    tmp.replace(jsonl)
    meta = export_dir / "meta.json"
    write_json_atomic(meta, {name: {"root": str(images.resolve()), "annotation": str(jsonl.resolve()),
                                    "data_augment": False, "repeat_time": 1, "length": n}})
    return meta
