"""The profile's `rad` section: which specialists' embeddings key the RAD tables, and how they are indexed.

    rad: {retriever: best-validation, ann_min_rows: 20000, index_params: {}}
"""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, Field

from tasks.settings import Settings


def _index_params(v: dict[str, Any]) -> dict[str, Any]:
    from tasks.rad.index import check_index_params

    check_index_params(v)
    return v


def _ann_min_rows(v: int) -> int:
    from tasks.rad.index import check_ann_min_rows

    return check_ann_min_rows(v)


class RadSettings(Settings):
    # the specialist whose embeddings key a dataset's table: "best-validation" (per dataset, the best validation
    # headline metric: tasks/rad/retriever.py), one architecture for every dataset, or null (no RAD)
    retriever: str | None = "best-validation"
    # below: exact search (a BLAS top-k over the table's vectors); from here on a seeded IVF_FLAT index. At 512 dims a
    # 1,000-query batch costs the same both ways at ~10k rows and 4x more exact at 25k (perf/rad_index_scale.py)
    ann_min_rows: Annotated[int, AfterValidator(_ann_min_rows)] = 20_000
    # DEFAULT_INDEX_PARAMS (tasks/rad/index.py) overridden key by key: seed, partition_rows, nprobes, target_recall, ...
    index_params: Annotated[dict[str, Any], AfterValidator(_index_params)] = Field(default_factory=dict)
