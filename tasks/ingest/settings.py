"""The profile's `data` section: where the raw datasets lie, which to ingest, what to do with bad rows, how large an
image may be.

    data: {root: /data/gsco/raw, datasets: null, policy: fail, policies: {ham10000: quarantine},
           max_image_pixels: 67108864}
"""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from tasks.settings import Settings

Policy = Literal["fail", "quarantine"]
# 8192 x 8192 pixels: room for the largest images of the paper's datasets (full-field mammograms of CBIS-DDSM and
# VinDr-Mammo, fundus photographs: a few thousand px a side), below PIL's decompression-bomb warning (89.5 M pixels);
# one such image decoded as RGB takes 200 MB. A larger image is a row-level reject, read from the header, not decoded.
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192


def known_datasets(names):
    """`names` (a list, or the keys of a mapping) when every one has a data card; None passes ("every dataset")."""
    if names is None:
        return None
    from data_contracts.cards import registry

    unknown = [n for n in names if n not in registry()]
    if unknown:
        raise ValueError(f"unknown dataset(s) {unknown}; known: {', '.join(sorted(registry()))}")
    return names


DatasetNames = Annotated[list[str] | None, AfterValidator(known_datasets)]


class TinyBenchmarkSettings(Settings):
    """The tiny benchmark generator (tasks/ingest/tiny_benchmark.py): its seed and size multiplier."""
    seed: int = 0
    scale: float = Field(1.0, gt=0)


class DataSettings(Settings):
    root: str | None = None                       # null: <outputs>/data (where the tiny benchmark is generated)
    tiny_benchmark: TinyBenchmarkSettings | None = None   # set: generate the tiny benchmark into the data root first
    datasets: DatasetNames = None                 # null: every registered dataset present under the root
    policy: Policy = "fail"                       # fail | quarantine (bad rows to a rejects table)
    policies: Annotated[dict[str, Policy], AfterValidator(known_datasets)] = Field(default_factory=dict)
    max_image_pixels: int = Field(DEFAULT_MAX_IMAGE_PIXELS, gt=0)   # width x height; a larger image is a bad row
