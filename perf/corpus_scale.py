"""Corpus assembly at the paper's scale, by reference: the project's `assemble_corpus` against a plain polars
scan -> concat -> sink of the same rows, in one run, each arm in a subprocess of its own (wall time, peak RSS).

    OMP_NUM_THREADS=1 python perf/corpus_scale.py                               # 2M rows over 200k 16 KiB images
    OMP_NUM_THREADS=1 python perf/corpus_scale.py --images 20000 --out /tmp/c.json   # a quick check (200k rows)

Inputs, generated under a temporary folder (`--work`) and removed afterwards unless `--keep`:
  samples table  perfcls/train: `--images` rows, each image `--image-kib` KiB (random bytes behind a PNG signature:
                 assembly never decodes them), 1,000-row row groups and 256 MiB shards as ingest writes them; 1% of
                 the samples hold a copy of an earlier sample's image and label (planted duplicates);
  DGB output     one generated report per sample (the synthesis table's own image column holds a placeholder: the
                 corpus no longer reads it);
  collaboration  `--rows-per-image` - 2 GSCo-format rows per sample (arm x paraphrase).
So the corpus has images x rows-per-image rows (default 200k x 10 = 2M) referring to `--images` images: several
instructions per image, as CLS, DGB and collaboration rows have.

Arms (same machine, same files, page cache warm from generation, `--repeats` each, alternating; the best is kept):
  project   tasks.generalist.corpus.assemble_corpus: image digests (sha256 of every image of the split), rendered
            rows joined to them, content-key de-duplication, shards written with their digests, manifest;
  baseline  plain polars: scan every source, render the same columns (templates as expressions), concat, sink one
            Parquet folder with the streaming engine. No digests, no de-duplication, no manifest.
Prints a table; writes JSON with `peak_rss_gib` (project), `ratio_vs_baseline` (project time / baseline time).
Exits 1 when the project's de-duplication did not remove exactly the planted duplicates.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASET, SPLIT = "perfcls", "train"
LABELS = ["normal", "pneumonia", "effusion", "nodule", "atelectasis", "cardiomegaly"]
ARMS = ("MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo")
DUPLICATE_EVERY = 100          # every 100th sample copies an earlier sample's image and label


# ------------------------------------------------------------------------------------------------------ inputs
def generate(work: Path, n_images: int, image_kib: int, rows_per_image: int) -> dict:
    """Write the samples table, the DGB output and the collaboration rows; returns what the arms need."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from data_contracts.instructions import INSTRUCTIONS_SCHEMA, image_digest
    from data_contracts.io import TARGET_SHARD_BYTES
    from data_contracts.samples import SAMPLES_SCHEMA
    from data_contracts.synthesis import SYNTHESIS_SCHEMA
    from tasks import prompts

    rng = np.random.default_rng(0)
    size = image_kib * 1024
    per_shard = max(1000, TARGET_SHARD_BYTES // size // 1000 * 1000)
    split_dir = work / "tables" / DATASET / SPLIT
    split_dir.mkdir(parents=True)
    shards, digests, labels, dup_of = [], [], [], {}
    keep: dict[int, bytes] = {}
    for start in range(0, n_images, per_shard):
        name = f"part-{len(shards):05d}.parquet"
        with pq.ParquetWriter(split_dir / name, SAMPLES_SCHEMA, compression="zstd") as w:
            for g in range(start, min(n_images, start + per_shard), 1000):
                rows = []
                for i in range(g, min(n_images, start + per_shard, g + 1000)):
                    if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1:
                        src = i - DUPLICATE_EVERY // 2   # an earlier sample of this or the previous row group
                        image, label = keep[src], labels[src]
                        dup_of[i] = src
                    else:
                        image = b"\x89PNG\r\n\x1a\n" + rng.bytes(size - 8)
                        label = LABELS[int(rng.integers(len(LABELS)))]
                    keep[i] = image
                    keep.pop(i - DUPLICATE_EVERY, None)
                    digests.append(image_digest(image))
                    labels.append(label)
                    rows.append({"sample_id": f"{DATASET}:{i:07d}", "dataset": DATASET, "split": SPLIT,
                                 "task_kind": "diagnosis", "task_type": "multiclass", "modality": "chest x-ray",
                                 "image": image, "image_format": "PNG", "image_width": 64, "image_height": 64,
                                 "labels": [label], "label_set": LABELS, "question": None, "answer": None,
                                 "answer_type": None, "text": None, "source_path": f"images/{i:07d}.png"})
                w.write_table(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA))
        shards.append({"file": name, "rows": min(n_images, start + per_shard) - start})
    (work / "tables" / DATASET / "_dataset.json").write_text(json.dumps({
        "dataset": DATASET, "contract": "samples", "schema_version": 1, "rejects": None, "meta": {},
        "splits": {SPLIT: {"rows": n_images, "digest": f"{n_images:032x}", "shards": shards}}}))

    reports = ["The heart size is normal. The lungs are clear without focal consolidation, effusion or "
               "pneumothorax. There is no acute osseous abnormality. Impression: " + label + "." for label in LABELS]
    dgb_dir = work / "synthesis" / "dgb" / "parts"
    dgb_dir.mkdir(parents=True)
    for start in range(0, n_images, 100_000):
        ids = range(start, min(n_images, start + 100_000))
        pq.write_table(pa.Table.from_pylist([{
            "sample_id": f"dgb:{DATASET}:{i:07d}", "source_sample_id": f"{DATASET}:{i:07d}", "dataset": DATASET,
            "split": SPLIT, "kind": "dgb", "modality": "chest x-ray", "image": b"\x89PNG", "image_format": "PNG",
            "prompt": "p", "raw_output": reports[LABELS.index(labels[i])], "output": reports[LABELS.index(labels[i])],
            "removals": 0, "removed_kinds": [], "generalist": "perf", "settings": "{}"} for i in ids],
            schema=SYNTHESIS_SCHEMA), dgb_dir / f"part-{start:08d}.parquet", compression="zstd")
    (work / "synthesis" / "dgb" / "_synthesis.json").write_text(json.dumps({"rows": n_images}))

    per_sample = rows_per_image - 2
    collab = work / "collaboration.parquet"
    with pq.ParquetWriter(collab, INSTRUCTIONS_SCHEMA, compression="zstd") as w:
        for start in range(0, n_images, 20_000):
            rows = []
            for i in range(start, min(n_images, start + 20_000)):
                src = dup_of.get(i, i)   # a planted duplicate gets its original's references: identical rows
                for j in range(per_sample):
                    arm, paraphrase = ARMS[j % len(ARMS)], j // len(ARMS)
                    refs = [LABELS[(src + k) % len(LABELS)] for k in range(5)]
                    text = prompts.diagnosis_prompt("chest x-ray", LABELS, False,
                                                    rad=refs if "RAD" in arm or arm == "GSCo" else None,
                                                    moed=refs[:2] if "MoED" in arm or arm == "GSCo" else None,
                                                    paraphrase=paraphrase % 4)
                    rows.append({"sample_id": f"collaboration:{arm}:{paraphrase}:{DATASET}:{i:07d}",
                                 "image_sample_id": f"{DATASET}:{i:07d}", "image_digest": digests[i],
                                 "instruction": text, "answer": labels[i], "source_dataset": DATASET,
                                 "task_kind": "collaboration", "split": SPLIT})
            w.write_table(pa.Table.from_pylist(rows, schema=INSTRUCTIONS_SCHEMA))
    return {"rows_in": n_images * rows_per_image, "planted_duplicates": len(dup_of) * rows_per_image,
            "images": n_images, "distinct_images": n_images - len(dup_of),
            "samples_bytes": sum(p.stat().st_size for p in split_dir.iterdir())}


# -------------------------------------------------------------------------------------------------------- arms
def _sources(work: Path):
    from tasks.generalist.corpus import SampleSource

    sources = [SampleSource(work / "tables", DATASET, SPLIT, "diagnosis", "0" * 32)]
    return sources, {"dgb": (work / "synthesis" / "dgb", "1" * 32)}, {"collaboration": (work / "collaboration.parquet",
                                                                                        "2" * 32)}


def arm_project(work: Path, out: Path, cls_prompt: str = "paper") -> dict:
    from data_contracts.layout import CorpusFiles
    from tasks.generalist.corpus import assemble_corpus

    sources, synthesis, extra = _sources(work)
    res = assemble_corpus(sources, synthesis, CorpusFiles(out), extra=extra, cls_prompt=cls_prompt)
    return {"rows": res.rows, "duplicates_removed": res.duplicates_removed,
            "bytes_written": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


def arm_cold(work: Path) -> dict:
    """A first build: nothing to reuse, every image of the samples table is hashed."""
    shutil.rmtree(work / "project", ignore_errors=True)
    return arm_project(work, work / "project")


def prepare_warm(work: Path) -> dict:
    """The corpus before a rebuild: the same sources, CLS rows in the evaluation's words."""
    shutil.rmtree(work / "project-warm", ignore_errors=True)
    return arm_project(work, work / "project-warm", cls_prompt="evaluation")


def arm_warm(work: Path) -> dict:
    """A rebuild (another CLS prompt; a new DGB output or collaboration rows alike): the samples table is
    unchanged, so the previous corpus's image digests are reused and no image is read."""
    return arm_project(work, work / "project-warm")


def arm_baseline(work: Path) -> dict:
    import polars as pl

    from data_contracts.io import split_paths
    from data_contracts.layout import SynthesisFiles
    from tasks.generalist.corpus import RENDERED, render_samples, render_synthesis

    sources, synthesis, extra = _sources(work)
    out = work / "baseline"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    lfs = [render_samples(pl.scan_parquet([str(p) for p in split_paths(s.tables_root, s.dataset, s.split)]),
                          s.task_kind, "paper") for s in sources]
    lfs += [pl.scan_parquet(str(p)).select(RENDERED) for p, _ in extra.values()]
    lfs += [render_synthesis(pl.scan_parquet(sorted(str(p) for p in SynthesisFiles(d).parts.glob("*.parquet"))), k)
            for k, (d, _) in synthesis.items()]
    pl.concat(lfs).sink_parquet(pl.PartitionBy(str(out), max_rows_per_file=50_000), engine="streaming")
    return {"rows": pl.scan_parquet(str(out / "**" / "*.parquet")).select(pl.len()).collect().item(),
            "bytes_written": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}


CHILDREN = {"baseline": arm_baseline, "project": arm_cold, "prepare-warm": prepare_warm,
            "project-warm": arm_warm}


def child(arm: str, work: Path) -> None:
    t = time.perf_counter()
    result = CHILDREN[arm](work)
    result["seconds"] = round(time.perf_counter() - t, 2)
    result["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)
    print("RESULT " + json.dumps(result), flush=True)


def run_arm(arm: str, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, __file__, "--child", arm, "--work", str(work)], env=env, capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise SystemExit(f"{arm} arm failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("RESULT "))[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200_000, help="samples (images) in the samples table")
    ap.add_argument("--image-kib", type=int, default=16)
    ap.add_argument("--rows-per-image", type=int, default=10, help="instruction rows per image (>= 3)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each arm, alternating; the fastest is kept")
    ap.add_argument("--work", type=Path, default=None, help="folder for the generated inputs (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the generated inputs")
    ap.add_argument("--out", type=Path, default=REPO / "perf" / "measured" / "corpus_scale_cpu.json")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.work)
        return 0
    if args.rows_per_image < 3:
        ap.error("--rows-per-image must be at least 3 (CLS + DGB + one collaboration row)")
    work = args.work or Path(tempfile.mkdtemp(prefix="gsco-corpus-scale-"))
    try:
        t = time.perf_counter()
        inputs = generate(work, args.images, args.image_kib, args.rows_per_image)
        inputs["generate_seconds"] = round(time.perf_counter() - t, 1)
        runs = {"baseline": [], "project": [], "project-warm": []}
        for _ in range(args.repeats):
            for arm in ("baseline", "project", "prepare-warm", "project-warm"):
                r = run_arm(arm, work)
                if arm in runs:
                    runs[arm].append(r)
                    print(f"  {arm:12s} {r}", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    best = {arm: min(r, key=lambda x: x["seconds"]) for arm, r in runs.items()}
    b, p, w = best["baseline"], best["project"], best["project-warm"]
    ratio, ratio_warm = round(p["seconds"] / b["seconds"], 3), round(w["seconds"] / b["seconds"], 3)
    peak = max(p["peak_rss_gib"], w["peak_rss_gib"])
    dedup_ok = p["duplicates_removed"] == w["duplicates_removed"] == inputs["planted_duplicates"]
    print(f"\ncorpus by reference: {inputs['rows_in']:,} instruction rows over {inputs['images']:,} images of "
          f"{args.image_kib} KiB ({inputs['samples_bytes'] / 2 ** 30:.2f} GiB of samples tables)")
    print(f"{'arm':13s} {'seconds':>8s} {'x baseline':>11s} {'peak RSS GiB':>13s} {'rows out':>10s} "
          f"{'MiB written':>12s}")
    for arm, r in (("baseline", b), ("project", p), ("project-warm", w)):
        print(f"{arm:13s} {r['seconds']:8.2f} {r['seconds'] / b['seconds']:11.2f} {r['peak_rss_gib']:13.3f} "
              f"{r['rows']:10,d} {r['bytes_written'] / 2 ** 20:12.1f}")
    print(f"project / baseline time: {ratio} first build, {ratio_warm} rebuild (goal <= 1.5); project peak RSS "
          f"{peak} GiB (goal <= 2); duplicates removed {p['duplicates_removed']:,} (planted "
          f"{inputs['planted_duplicates']:,})")
    report = {"benchmark": "corpus_scale", "host": platform.node(), "cpu_count": os.cpu_count(),
              "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "settings": {"images": args.images, "image_kib": args.image_kib, "rows_per_image": args.rows_per_image,
                           "repeats": args.repeats},
              "inputs": inputs, "runs": runs, "baseline": b, "project": p, "project_warm": w,
              "peak_rss_gib": peak, "ratio_vs_baseline": ratio, "ratio_vs_baseline_warm": ratio_warm,
              "goals": {"peak_rss_gib": 2.0, "ratio_vs_baseline": 1.5},
              "pass": {"peak_rss_gib": peak <= 2.0, "ratio_vs_baseline": ratio <= 1.5,
                       "ratio_vs_baseline_warm": ratio_warm <= 1.5, "duplicates_removed": dedup_ok}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if dedup_ok else 1


if __name__ == "__main__":
    sys.exit(main())
