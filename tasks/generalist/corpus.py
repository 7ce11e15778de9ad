"""Corpus assembly: CLS + MRG + VQA + DGB + DES rows -> Fig. A3 instruction rows -> Parquet shards + manifest.

    result = assemble_corpus(sources, synthesis_dirs, CorpusFiles(out / "corpus"), rows_per_shard=50_000)

The whole assembly is one polars lazy query sunk to Parquet with the streaming engine (scan -> render templates with
expressions -> dedupe -> partitioned sink), so memory stays bounded at the paper's ~2M rows with images inline.
Benchmark test splits never enter the corpus: only train and val rows of training datasets are used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from data_contracts.files import swap_in, temporary_sibling, write_json_atomic
from data_contracts.instructions import INSTRUCTIONS_SCHEMA
from data_contracts.io import digest_of_hashes, row_hashes, split_paths
from data_contracts.layout import CorpusFiles, SynthesisFiles
from tasks import prompts
from tasks.cache import stage_key

COLUMNS = INSTRUCTIONS_SCHEMA.names
CORPUS_CODE = ("tasks.generalist.corpus", "tasks.prompts", "data_contracts.instructions")


@dataclass
class CorpusResult:
    status: str
    cache_key: str
    rows: int
    digest: str
    duplicates_removed: int
    counts: dict = field(default_factory=dict)   # "source_dataset/task_kind" -> rows
    path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def template_expr(template: str, **values: pl.Expr) -> pl.Expr:
    """A polars expression rendering a `{name}` template with column expressions (so it streams)."""
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
    """Instruction rows from a samples scan of one task kind (diagnosis -> CLS, vqa -> VQA, report -> MRG)."""
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
        pl.col("image"), instruction.alias("instruction"), answer.alias("answer"),
        pl.col("dataset").alias("source_dataset"), pl.lit(task_kind).alias("task_kind"), pl.col("split"))


def render_synthesis(lf: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    """Instruction rows from DGB / DES outputs (template by kind, answer = the filtered output)."""
    template = {"dgb": prompts.DGB_TEMPLATE, "des": prompts.DES_TEMPLATE}[kind]
    return lf.select(
        pl.col("sample_id"), pl.col("image"),
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
               extra: dict[str, tuple[Path, str]] | None = None) -> str:
    """Cache key of the corpus: input digests, settings and the template code."""
    inputs = {f"{s.dataset}/{s.split}": s.digest for s in sources}
    inputs.update({f"synthesis/{k}": d for k, (_, d) in synthesis.items()})
    inputs.update({f"extra/{k}": d for k, (_, d) in (extra or {}).items()})
    return stage_key("corpus", inputs, settings, CORPUS_CODE)


def read_manifest(files: CorpusFiles) -> dict | None:
    """The manifest of a finished corpus, or None."""
    return json.loads(files.manifest.read_text()) if files.manifest.exists() else None


def _query(sources: list[SampleSource], synthesis: dict[str, tuple[Path, str]], cls_prompt: str = "paper",
           extra: dict[str, tuple[Path, str]] | None = None) -> tuple[pl.LazyFrame, int]:
    """(the lazy corpus query: rendered, non-empty, de-duplicated rows; the number of rows going in)."""
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
        lfs.append(scan.filter(pl.col("split").is_in(["train", "val"])).select(COLUMNS))
    for kind, (d, _) in sorted(synthesis.items()):
        parts = sorted(str(p) for p in SynthesisFiles(Path(d)).parts.glob("part-*.parquet"))
        if parts:
            scan = pl.scan_parquet(parts).filter(pl.col("split").is_in(["train", "val"]))
            lfs.append(render_synthesis(scan, kind))
    if not lfs:
        raise ValueError("corpus has no sources: no training datasets or synthesis outputs were given")
    total_in = pl.concat([lf.select(pl.len()) for lf in lfs]).select(pl.col("len").sum()).collect().item()
    corpus = (pl.concat(lfs, how="vertical")
              .filter(pl.col("answer").str.strip_chars().str.len_chars() > 0)
              .unique(subset=["image", "instruction", "answer"], keep="first", maintain_order=True)
              .unique(subset=["sample_id"], keep="first", maintain_order=True))
    return corpus, total_in


def _sink_shards(corpus: pl.LazyFrame, shards_dir: Path, rows_per_shard: int,
                 bytes_per_shard: int) -> tuple[list[dict], list[bytes]]:
    """Stream the corpus into part-NNNNN.parquet shards; (shard entries, row hashes)."""
    shards_dir.mkdir(parents=True)
    corpus.sink_parquet(pl.PartitionBy(str(shards_dir), max_rows_per_file=rows_per_shard,
                                       approximate_bytes_per_file=bytes_per_shard), engine="streaming")
    shards, hashes = [], []
    for i, p in enumerate(sorted(shards_dir.rglob("*.parquet"))):
        name = f"part-{i:05d}.parquet"
        os.replace(p, shards_dir / name)
        df = pl.read_parquet(shards_dir / name)
        h = row_hashes(df, COLUMNS)
        hashes.extend(h)
        shards.append({"file": f"{shards_dir.name}/{name}", "rows": df.height,
                       "digest": digest_of_hashes(h, "instructions")})
    for d in [d for d in shards_dir.iterdir() if d.is_dir()]:
        shutil.rmtree(d)
    return shards, hashes


def assemble_corpus(sources: list[SampleSource], synthesis: dict[str, tuple[Path, str]], files: CorpusFiles,
                    rows_per_shard: int = 50_000, bytes_per_shard: int = 256 * 1024 * 1024,
                    cls_prompt: str = "paper", extra: dict[str, tuple[Path, str]] | None = None) -> CorpusResult:
    """Build (or serve from cache) the instruction corpus; `synthesis` maps kind -> (output dir, digest), `extra`
    name -> (an instructions Parquet file, its digest) for rows rendered elsewhere."""
    settings = {"rows_per_shard": rows_per_shard, "bytes_per_shard": bytes_per_shard, "cls_prompt": cls_prompt}
    key = corpus_key(sources, synthesis, settings, extra)
    m = read_manifest(files)
    if m and m.get("cache_key") == key:
        return CorpusResult("cached", key, m["rows"], m["digest"], m["duplicates_removed"], m["counts"],
                            str(files.dir))
    corpus, total_in = _query(sources, synthesis, cls_prompt, extra)
    tmp = CorpusFiles(temporary_sibling(files.dir))
    try:
        shards, hashes = _sink_shards(corpus, tmp.shards, rows_per_shard, bytes_per_shard)
        rows = sum(s["rows"] for s in shards)
        counts_df = (pl.scan_parquet(str(tmp.shards / "*.parquet")).group_by("source_dataset", "task_kind", "split")
                     .agg(pl.len().alias("rows")).sort("source_dataset", "task_kind", "split").collect())
        counts = {f"{r['source_dataset']}/{r['task_kind']}/{r['split']}": r["rows"] for r in counts_df.to_dicts()}
        digest = digest_of_hashes(hashes, "instructions")
        write_json_atomic(tmp.manifest, {
            "cache_key": key, "rows": rows, "digest": digest, "duplicates_removed": total_in - rows, "counts": counts,
            "shards": shards, "settings": settings,
            "sources": [{"dataset": s.dataset, "split": s.split, "digest": s.digest} for s in sources],
            "synthesis": {k: d for k, (_, d) in synthesis.items()},
            "extra": {k: d for k, (_, d) in (extra or {}).items()}})
        swap_in(tmp.dir, files.dir)
    finally:
        shutil.rmtree(tmp.dir, ignore_errors=True)
    return CorpusResult("written", key, rows, digest, total_in - rows, counts, str(files.dir))


def corpus_shards(files: CorpusFiles) -> list[Path]:
    """The corpus Parquet shards in order."""
    m = read_manifest(files)
    if m is None:
        raise FileNotFoundError(f"{files.dir}: no corpus ({files.manifest.name} missing)")
    return [files.dir / s["file"] for s in m["shards"]]


def export_internvl(files: CorpusFiles, export_dir: Path, name: str = "gsco_corpus") -> Path:
    """Write the corpus in InternVL's fine-tuning format: images/, <name>.jsonl, meta.json; returns meta.json."""
    export_dir = Path(export_dir)
    images = export_dir / "images"
    images.mkdir(parents=True, exist_ok=True)
    jsonl = export_dir / f"{name}.jsonl"
    tmp = temporary_sibling(jsonl)
    n = 0
    with open(tmp, "w") as f:
        for shard in corpus_shards(files):
            pf = pq.ParquetFile(shard)
            for batch in pf.iter_batches(batch_size=1024):
                for r in batch.to_pylist():
                    ext = "png" if r["image"][:4] == b"\x89PNG" else "jpg"
                    fname = hashlib.sha1(r["image"]).hexdigest()[:20] + f".{ext}"
                    ip = images / fname
                    if not ip.exists():
                        ip.write_bytes(r["image"])
                    f.write(json.dumps({"id": n, "image": fname, "conversations": [
                        {"from": "human", "value": "<image>\n" + r["instruction"]},
                        {"from": "gpt", "value": r["answer"]}]}) + "\n")
                    n += 1
    os.replace(tmp, jsonl)
    meta = export_dir / "meta.json"
    write_json_atomic(meta, {name: {"root": str(images.resolve()), "annotation": str(jsonl.resolve()),
                                    "data_augment": False, "repeat_time": 1, "length": n}})
    return meta
