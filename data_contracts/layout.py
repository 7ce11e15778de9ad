"""Every path a run writes, in one place: the outputs folder of a profile (`outputs.dir`, or `gsco run --out`).

    layout = RunLayout(Path("outputs/tiny"))
    layout.tables                                   # outputs/tiny/tables (canonical tables, see data_contracts/io.py)
    layout.job("ham10000", "resnet18").done         # outputs/tiny/specialists/ham10000/resnet18/done.json

    <out>/data/                                     tiny profile: the generated raw files (its data root)
    <out>/tables/<dataset>/...                      canonical samples tables (data_contracts/io.py)
    <out>/models/generalist-base/                   the base generalist (tiny profile: built from the profile; its
                                                    build key beside it, generalist-base.build.json)
    <out>/synthesis/{dgb,des}/                      parts/part-*.parquet, _synthesis.json    (SynthesisFiles)
    <out>/corpus/                                   shards/part-*.parquet, images.parquet, _corpus.json (CorpusFiles)
    <out>/corpus_internvl/                          InternVL's fine-tuning format (images/, *.jsonl, meta.json)
    <out>/corpus_inputs/collaboration.parquet       GSCo-format instruction rows (corpus.collaboration option)
    <out>/finetune/                                 checkpoints, loss curve, adapter/, merged/ (FinetuneFiles)
    <out>/specialists/<dataset>/<arch>/             one specialist job                        (JobFiles)
    <out>/lancedb/                                  RAD tables, one per (dataset, retriever)
    <out>/evaluation/                               predictions/<dataset>.parquet, metrics.parquet, report/
    <out>/benchmark_result.json                     the last run: stage statuses, report path, MLflow parent run
    <out>/.gsco-run.lock                            held by the run writing the folder (pid, start time, MLflow run)
    <out>/mlflow.db, <out>/mlartifacts/             the local MLflow store (unless tracking.uri points elsewhere)
    <out>/.prefect/                                 the Prefect home of local runs
    <out>/.cache/                                   memos that only save work (raw file hashes)
    <out>/.device-locks/                            one lock file per device slot of the specialist jobs
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "val", "test")   # the splits of every canonical table (data_contracts/samples.py)
REPORT_MD, REPORT_HTML = "report.md", "report.html"   # the report's two documents (plots beside them)


@dataclass(frozen=True)
class SynthesisFiles:
    """One synthesis kind's outputs: a part per finished batch, the manifest written last."""
    dir: Path

    @property
    def parts(self) -> Path:
        return self.dir / "parts"

    @property
    def manifest(self) -> Path:
        return self.dir / "_synthesis.json"

    @property
    def in_progress(self) -> Path:
        return self.dir / "_inprogress.json"


@dataclass(frozen=True)
class CorpusFiles:
    """The instruction corpus: Parquet shards, the image index and the manifest (counts, digests, cache key)."""
    dir: Path

    @property
    def shards(self) -> Path:
        return self.dir / "shards"

    @property
    def manifest(self) -> Path:
        return self.dir / "_corpus.json"

    @property
    def images(self) -> Path:          # content digest of every image of the samples splits the rows refer to
        return self.dir / "images.parquet"


@dataclass(frozen=True)
class FinetuneFiles:
    """One fine-tuning run (recipes/finetune.py writes all but `inputs`, `run_config` and `launcher_log`)."""
    dir: Path

    @property
    def inputs(self) -> Path:          # the stage's cache key of the run in this folder
        return self.dir / "_gsco_inputs.json"

    @property
    def run_config(self) -> Path:      # the FinetuneConfig the launched script reads
        return self.dir / "run.json"

    @property
    def run_lock(self) -> Path:        # held by rank 0 of the fine-tuning run writing this folder
        return self.dir / ".finetune.lock"

    @property
    def launcher_log(self) -> Path:
        return self.dir / "launcher.log"

    @property
    def checkpoints(self) -> Path:
        return self.dir / "checkpoints"

    @property
    def latest(self) -> Path:          # marker of the newest complete checkpoint
        return self.checkpoints / "latest.json"

    @property
    def loss_curve(self) -> Path:
        return self.dir / "loss.jsonl"

    @property
    def deepspeed_config(self) -> Path:  # the resolved DeepSpeed config the run used
        return self.dir / "ds_config.json"

    @property
    def adapter(self) -> Path:
        return self.dir / "adapter"

    @property
    def merged(self) -> Path:
        return self.dir / "merged"

    @property
    def result(self) -> Path:
        return self.dir / "finetune_result.json"


@dataclass(frozen=True)
class JobFiles:
    """One (dataset, architecture) specialist job. `done` is written last: a folder with it is a finished job."""
    dir: Path

    @property
    def done(self) -> Path:
        return self.dir / "done.json"

    @property
    def best(self) -> Path:            # best-by-validation-loss weights, model card in the metadata
        return self.dir / "best.safetensors"

    @property
    def last(self) -> Path:            # per-epoch training state a killed job resumes from
        return self.dir / "last.pt"

    @property
    def history(self) -> Path:
        return self.dir / "history.json"

    @property
    def metrics(self) -> Path:
        return self.dir / "metrics.json"

    @property
    def test_predictions(self) -> Path:
        return self.dir / "test_predictions.jsonl"

    def predictions(self, split: str) -> Path:    # per-sample predicted label names of a split
        return self.test_predictions if split == "test" else self.dir / f"{split}_predictions.jsonl"

    @property
    def probs_test(self) -> Path:
        return self.dir / "probs_test.npy"

    def embeddings(self, split: str) -> Path:
        return self.dir / f"emb_{split}.npy"

    def ids(self, split: str) -> Path:
        return self.dir / f"ids_{split}.json"

    @property
    def spec(self) -> Path:            # what a subprocess-isolated job reads
        return self.dir / "job.json"

    @property
    def mlflow_run(self) -> Path:      # the MLflow run and model that recorded this job
        return self.dir / "mlflow_run.json"

    @property
    def outputs(self) -> tuple[Path, ...]:
        """Every file a training run writes (cleared before a job starts over)."""
        return (self.done, self.best, self.last, self.history, self.metrics, self.test_predictions, self.probs_test,
                *(self.embeddings(s) for s in SPLITS), *(self.ids(s) for s in SPLITS))


@dataclass(frozen=True)
class RunLayout:
    """The outputs folder of one profile: every path a run writes is a property here."""
    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root).resolve())

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    def file_hash_memo(self, dataset: str) -> Path:  # one per dataset: concurrent ingest tasks never share a file
        return self.root / ".cache" / f"filehash-{dataset}.json"

    @property
    def generalist_base(self) -> Path:
        return self.root / "models" / "generalist-base"

    @property
    def generalist_base_key(self) -> Path:  # the tiny base model's build key (outside the folder its digest reads)
        return self.root / "models" / "generalist-base.build.json"

    def synthesis(self, kind: str) -> SynthesisFiles:
        return SynthesisFiles(self.root / "synthesis" / kind)

    @property
    def corpus(self) -> CorpusFiles:
        return CorpusFiles(self.root / "corpus")

    @property
    def corpus_internvl(self) -> Path:
        return self.root / "corpus_internvl"

    @property
    def collaboration(self) -> Path:
        return self.root / "corpus_inputs" / "collaboration.parquet"

    @property
    def collaboration_key(self) -> Path:
        return self.root / "corpus_inputs" / "_collaboration.json"

    @property
    def finetune(self) -> FinetuneFiles:
        return FinetuneFiles(self.root / "finetune")

    @property
    def specialists(self) -> Path:
        return self.root / "specialists"

    def job(self, dataset: str, arch: str) -> JobFiles:
        return JobFiles(self.specialists / dataset / arch)

    @property
    def device_locks(self) -> Path:  # one lock file per device slot (tasks/specialists/stage.py DevicePool)
        return self.root / ".device-locks"

    @property
    def lancedb(self) -> Path:
        return self.root / "lancedb"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def predictions_dir(self) -> Path:
        return self.evaluation / "predictions"

    def predictions(self, dataset: str) -> Path:
        return self.predictions_dir / f"{dataset}.parquet"

    def predictions_key(self, dataset: str) -> Path:
        return self.predictions_dir / f"{dataset}.key.json"

    @property
    def metrics(self) -> Path:
        return self.evaluation / "metrics.parquet"

    @property
    def report(self) -> Path:
        return self.evaluation / "report"

    @property
    def report_key(self) -> Path:
        return self.report / "_gsco_report.json"

    @property
    def report_md(self) -> Path:
        return self.report / REPORT_MD

    @property
    def report_html(self) -> Path:
        return self.report / REPORT_HTML

    @property
    def benchmark_result(self) -> Path:
        return self.root / "benchmark_result.json"

    @property
    def run_lock(self) -> Path:        # held (flock) by the one run writing this folder; names it
        return self.root / ".gsco-run.lock"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlartifacts(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / ".prefect"
