"""What the benchmark runs: which stage groups a request means, which datasets each stage takes, and each stage's
status from the status of its units. Plain functions (no Prefect, no I/O beyond the data cards).

    groups = stage_groups(["evaluation"])             # {"evaluation", "generalist", "specialists", "ingest"}
    specialist_datasets(ingested, profile.specialists)
    stages, recomputed = summarize({"ingest": {"ham10000": "cached"}, ...})
"""
from __future__ import annotations

from data_contracts.cards import get_card

STAGE_GROUPS = ("ingest", "generalist", "specialists", "evaluation")
# unit statuses that mean no work was done: served from cache, a finished job skipped, an external model used, or
# nothing to do
DONE_STATUSES = ("cached", "skipped", "external", "empty")


def stage_groups(requested: list[str] | None, collaboration: bool = False) -> set[str]:
    """The stage groups a run executes: the requested ones (all when None) and what they read (evaluation reads the
    generalist's and the specialists' outputs; a corpus with collaboration rows reads the specialists'; every group
    reads the ingested tables)."""
    groups = set(requested or STAGE_GROUPS)
    unknown = groups - set(STAGE_GROUPS)
    if unknown:
        raise ValueError(f"stages: unknown group(s) {sorted(unknown)}; expected some of {STAGE_GROUPS}")
    if "evaluation" in groups:
        groups |= {"generalist", "specialists"}
    if collaboration and "generalist" in groups:
        groups |= {"specialists"}
    return groups | {"ingest"}


def _select(names: list[str], kinds: tuple[str, ...], role: str, wanted: list[str] | None) -> list[str]:
    return [n for n in names if get_card(n).task_kind in kinds and role in get_card(n).roles
            and (wanted is None or n in wanted)]


def specialist_datasets(ingested: list[str], wanted: list[str] | None) -> list[str]:
    """The benchmark's diagnosis sets among the ingested ones (and among `wanted` when the profile lists some)."""
    return _select(ingested, ("diagnosis",), "benchmark", wanted)


def jobs_by_dataset(jobs: list[dict]) -> dict[str, dict[str, dict]]:
    """Finished specialist job summaries as dataset -> arch -> summary (in the order the jobs were planned)."""
    out: dict[str, dict[str, dict]] = {}
    for j in jobs:
        out.setdefault(j["dataset"], {})[j["arch"]] = j
    return out


def retriever_choices(jobs: dict[str, dict[str, dict]], setting: str | None) -> dict[str, dict]:
    """Per dataset with finished jobs, the RAD retriever chosen by `setting` (tasks/rad/retriever.py); {} when null."""
    from tasks.rad.retriever import choose_retriever

    if setting is None:
        return {}
    return {d: choose_retriever(by_arch, get_card(d).task_type, setting) for d, by_arch in jobs.items() if by_arch}


def evaluation_datasets(ingested: list[str], wanted: list[str] | None) -> list[str]:
    """The benchmark's diagnosis, VQA and report sets among the ingested ones (and `wanted`)."""
    return _select(ingested, ("diagnosis", "vqa", "report"), "benchmark", wanted)


def stage_status(statuses: list[str]) -> str:
    """'cached' when every unit of a stage did no work (cache hit, skipped, external, empty), else 'computed'."""
    return "cached" if statuses and all(s in DONE_STATUSES for s in statuses) else "computed"


def summarize(units: dict[str, dict[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """({stage: status}, {stage: the units it recomputed, sorted}) from {stage: {unit: status}}."""
    stages = {stage: stage_status(list(u.values())) for stage, u in units.items()}
    recomputed = {stage: sorted(n for n, s in u.items() if s not in DONE_STATUSES) for stage, u in units.items()}
    return stages, recomputed
