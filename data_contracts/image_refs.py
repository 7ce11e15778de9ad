"""Images by reference: the encoded bytes of a samples-table row found from (dataset, split, sample id).

    images = SampleImages(tables_root)
    files, rows = images.locate(refs)              # refs: source_dataset, split, image_sample_id (+ sample_id)
    data = images.read(files[i], rows[i])           # one row group's image column cached at a time, a few kept
    for sample_id, data in images.scan("ham10000", "train"):   # every image of a split, one record batch at a time

How instruction rows (data_contracts/instructions.py) are resolved by the fine-tuning loader and the InternVL export.
`locate` reads only the `sample_id` column of the splits referred to (an index of (file, row) per reference, ints);
image bytes are read a Parquet row group at a time, so memory holds a few row groups of images whatever the corpus
size. The samples tables are read through data_contracts/io.py's manifest (the split's shards in order).
"""
from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from data_contracts.errors import ContractError
from data_contracts.instructions import REFERENCE
from data_contracts.io import split_paths


class SampleImages:
    """The image column of the samples tables under `tables_root`, read by (file, row) with a row-group cache."""

    def __init__(self, tables_root: str | Path, cache_row_groups: int = 8):
        self.root = Path(tables_root)
        self.files: list[Path] = []
        self._rg_starts: list[list[int]] = []
        self._cache: OrderedDict[tuple[int, int], object] = OrderedDict()
        self._cache_size = max(1, cache_row_groups)
        self._pf: dict[int, pq.ParquetFile] = {}

    def _add(self, path: Path) -> tuple[int, pl.Series]:
        """(file number, its sample ids) of one samples shard, registered for `read`."""
        pf = pq.ParquetFile(path)
        starts, acc = [], 0
        for rg in range(pf.num_row_groups):
            starts.append(acc)
            acc += pf.metadata.row_group(rg).num_rows
        self.files.append(path)
        self._rg_starts.append(starts)
        return len(self.files) - 1, pl.from_arrow(pf.read(columns=["sample_id"]).column(0))

    def locate(self, refs: pl.DataFrame, where: str = "<rows>") -> tuple[np.ndarray, np.ndarray]:
        """(file number, row in file) of every reference in `refs` (columns source_dataset, split, image_sample_id;
        sample_id, when present, names a row in errors), in order. Raises ContractError naming the first row whose
        image is not in the tables, FileNotFoundError for a split that was never ingested."""
        index = []
        for dataset, split in refs.select(*REFERENCE[:2]).unique().sort(*REFERENCE[:2]).iter_rows():
            for path in split_paths(self.root, dataset, split):
                fi, ids = self._add(path)
                index.append(pl.DataFrame({"image_sample_id": ids, "_file": pl.repeat(fi, len(ids), dtype=pl.Int32,
                                                                                      eager=True),
                                           "_row": pl.int_range(len(ids), dtype=pl.Int64, eager=True)})
                             .with_columns(source_dataset=pl.lit(dataset), split=pl.lit(split)))
        table = pl.concat(index) if index else pl.DataFrame(
            schema={"image_sample_id": pl.String, "_file": pl.Int32, "_row": pl.Int64, "source_dataset": pl.String,
                    "split": pl.String})
        located = refs.join(table, on=list(REFERENCE), how="left", maintain_order="left")
        if located.height != refs.height:
            raise ContractError(f"{self.root}: a sample id occurs twice in one samples split; references are ambiguous")
        missing = located.with_row_index("_i").filter(pl.col("_file").is_null())
        if missing.height:
            r = missing.row(0, named=True)
            name = f" (sample {r['sample_id']})" if "sample_id" in r else ""
            raise ContractError(f"{where}: row {r['_i']}{name}: field 'image_sample_id': expected a sample of "
                                f"{self.root / r['source_dataset'] / r['split']}, got {r['image_sample_id']!r} "
                                f"({missing.height} unresolved reference(s))")
        return located["_file"].to_numpy(), located["_row"].to_numpy()

    def read(self, file: int, row: int) -> bytes:
        """The encoded image at row `row` of registered file `file`."""
        rg = bisect.bisect_right(self._rg_starts[file], row) - 1
        key = (file, rg)
        if key not in self._cache:
            pf = self._pf.setdefault(file, pq.ParquetFile(self.files[file]))
            self._cache[key] = pf.read_row_group(rg, columns=["image"]).column(0)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key][row - self._rg_starts[file][rg]].as_py()

    def where(self, file: int, row: int) -> str:
        """`<shard path> row <n>`: where a located image is, for messages."""
        return f"{self.files[file]} row {row}"

    def scan(self, dataset: str, split: str, batch_rows: int = 256) -> Iterator[tuple[str, bytes]]:
        """(sample id, encoded image) of every row of one samples split, in table order, a record batch at a time."""
        for path in split_paths(self.root, dataset, split):
            for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows, columns=["sample_id", "image"]):
                yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist())
