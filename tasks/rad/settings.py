"""The profile's `rad` section: which specialists' embeddings key the RAD tables, and how they are indexed.

    rad: {retriever: best-validation, ann_min_rows: 50000, index_params: {}}
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
    ann_min_rows: Annotated[int, AfterValidator(_ann_min_rows)] = 50_000   # below: exact (flat) search
    index_params: Annotated[dict[str, Any], AfterValidator(_index_params)] = Field(default_factory=dict)
