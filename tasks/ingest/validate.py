"""Check a user's local copy of a dataset against its data card: missing files, row counts, bad rows, and how the
copy compares with what the paper used (which MedMNIST file is read and the paper's 224 px; whether a standard split
file such as R2Gen's IU-Xray annotation.json is there and what happens without it).

    gsco datasets validate ham10000 /data/raw
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from data_contracts.cards import DataCard
from data_contracts.errors import ContractError
from data_contracts.samples import find_problems
from tasks.ingest import loaders
from tasks.ingest.loaders import LoadContext, Reject, medmnist, split_files
from tasks.ingest.loaders.common import collect_warnings
from tasks.ingest.settings import DEFAULT_MAX_IMAGE_PIXELS


@dataclass
class ValidationReport:
    dataset: str
    root: Path
    missing: list[str] = field(default_factory=list)
    fatal: str | None = None
    rows: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    paper: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)      # what ingest will read / do, against what the paper used
    warnings: list[str] = field(default_factory=list)   # what the loader warned about while reading the copy

    @property
    def ok(self) -> bool:
        return not self.missing and self.fatal is None and not self.problems and sum(self.rows.values()) > 0

    def lines(self, show: int = 10) -> list[str]:
        """Human-readable report lines."""
        out = [f"{self.dataset}: local copy under {self.root}"]
        for m in self.missing:
            out.append(f"  MISSING  {m}")
        out += [f"  NOTE     {n}" for n in self.notes]
        # a warning that only repeats a note (same text after "<dataset>: ") is not shown twice
        out += [f"  WARNING  {w}" for w in self.warnings if not any(w.split(": ", 1)[-1] in n for n in self.notes)]
        if self.fatal:
            out.append(f"  ERROR    {self.fatal}")
        for s in ("train", "val", "test"):
            paper = self.paper.get(s)
            if self.rows.get(s) or paper:
                note = f" (paper: {paper:,})" if paper else ""
                out.append(f"  rows     {s}: {self.rows.get(s, 0):,}{note}")
        if self.problems:
            out.append(f"  {len(self.problems)} bad row(s):")
            out += [f"    {p}" for p in self.problems[:show]]
        out.append("  OK" if self.ok else "  NOT OK")
        return out


def validate_local_copy(card: DataCard, path: Path, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
                        ) -> ValidationReport:
    """Validate without writing anything: PATH is a data root holding raw.dir, or the raw.dir folder itself. Bad rows
    are those ingest would reject (the same loaders, duplicate ids and image size limit included)."""
    path = Path(path).resolve()
    if (path / card.raw.dir).is_dir():
        root = path
    else:  # the dataset folder itself: treat its parent as root only through a renamed view of the card
        card = card.model_copy(update={"raw": card.raw.model_copy(update={"dir": path.name})})
        root = path.parent
    rep = ValidationReport(card.name, loaders.dataset_dir(card, root),
                           paper={"train": card.paper_sizes.train, "test": card.paper_sizes.test,
                                  "val": card.paper_sizes.val})
    d = loaders.dataset_dir(card, root)
    rep.missing = [f"{d}/{p} (raw.files)" for p in card.raw.files if not any(d.glob(p))]
    rep.notes = expectations(card, root)
    if not d.is_dir():
        return rep
    rows = []
    try:
        with collect_warnings(log_them=False) as rep.warnings:   # the report shows them
            for item in loaders.iter_dataset(card, root, max_image_pixels):
                if isinstance(item, Reject):
                    rep.problems.append(item.reason)
                else:
                    rep.rows[item["split"]] += 1
                    rows.append(item)
                    if len(rows) >= 2000:
                        rep.problems += _check(rows)
                        rows = []
            rep.problems += _check(rows)
    except ContractError as e:
        rep.fatal = str(e)
    return rep


def expectations(card: DataCard, root: Path) -> list[str]:
    """What ingest will make of the copy where it can differ from the paper: the MedMNIST file (size) it reads, and
    the split file it follows or the fallback it takes without one."""
    root = Path(root).resolve()
    ctx = LoadContext(card=card, data_root=root, dataset_dir=loaders.dataset_dir(card, root))
    notes = []
    if card.raw.format == "medmnist_npz":
        notes.append(medmnist.describe(ctx))
    if card.raw.split.file_content == "json_ids":
        notes.append(split_files.describe_split(ctx))
    return notes


def _check(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    import polars as pl
    import pyarrow as pa

    from data_contracts.samples import SAMPLES_SCHEMA
    return [str(p) for p in find_problems(pl.from_arrow(pa.Table.from_pylist(rows, schema=SAMPLES_SCHEMA)))]
