"""The evaluation report's tables as pure functions on the long metrics frame (data_contracts/metrics.py): the
headline summary, the Fig. 4 ranking, the Table A7 ablation, Fig. 4(c) best specialist vs GSCo, the Table A12
specialist complexity, the departures the frame shows, and how numbers are formatted.

    OMP_NUM_THREADS=1 pytest -q tests/test_report.py

Ranks are within a dataset over the methods that have a headline value there (1 = best, ties share the mean rank, as
`tasks.evaluation.metrics.rank_methods`); a method's rank sum and average rank are over the datasets it was ranked
on, and `datasets_ranked` says how many. Fig. 4 (`fig4_ranking`) ranks, on diagnosis datasets only, the methods the
paper ranks (each generalist alone, the specialists, Voting, GSCo) and leaves out a dataset where one of them has no
value, so every ranked method is ranked on the same datasets.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence

import polars as pl

from data_contracts.errors import ContractError
from data_contracts.metrics import FLOAT_COLUMNS, KEY_COLUMNS, REQUIRED_COLUMNS, split_group_metric
from tasks.evaluation.metrics import HEADLINE, rank_methods

MISSING = "–"
NO_REASON = "not computed (no reason given)"
ABLATION_METHODS = ("MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo")   # Table A7 columns, in the paper's order
BASELINE = ABLATION_METHODS[0]
AVERAGE = "Average"
DELTA_SUFFIX = "_delta"
LOWER_IS_BETTER = frozenset({"parse_failure_rate"})
DOMAIN_ORDER = ("in-domain", "out-of-domain")

RANKING_COLUMNS = ("method", "rank_sum", "average_rank", "datasets_ranked")
DIAGNOSIS_TASK_TYPES = tuple(HEADLINE)          # binary, multiclass, multilabel: Fig. 4's datasets
GSCO, VOTING, SPECIALIST_PREFIX, GENERALIST_PREFIX = "GSCo", "Voting", "specialist:", "generalist:"
# rows scored on the whole test set, not on a subgroup (data_contracts/metrics.py group_metric)
WHOLE_SET = ~(pl.col("metric").str.ends_with("]") & pl.col("metric").str.contains("[", literal=True))
PARSE_FAILURE_LIMIT = 0.10                      # above it a method's parse failures are listed as a departure
# Table A12's parameters (M) and GMACs per architecture (tasks/specialists/architectures.py names)
PAPER_A12 = {"vgg16": (138.4, 15.5), "alexnet": (62.3, 0.1), "resnet18": (11.7, 1.8), "densenet121": (8.0, 2.9),
             "efficientnet_b4": (19.3, 3.1), "vit_b16": (86.6, 16.9), "clip_vit_b16": (86.6, 16.9),
             "eva02_vit_b16": (86.3, 16.9), "dino_vit_b16": (85.8, 16.9), "sam_vit_b16": (89.7, 486.4)}


# ------------------------------------------------------------------------------------------------------ validation
def validated(metrics: pl.DataFrame) -> pl.DataFrame:
    """The metrics frame with checked types (NaN values read as null); ContractError naming the row/field otherwise."""
    if not isinstance(metrics, pl.DataFrame):
        raise ContractError(f"metrics: expected a polars DataFrame, got {type(metrics).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in metrics.columns]
    if missing:
        raise ContractError(f"metrics frame lacks column(s) {missing}; expected {list(REQUIRED_COLUMNS)}")
    if metrics.height == 0:
        raise ContractError("metrics frame has no rows: expected one row per (dataset, method, metric)")
    casts = [pl.col(c).cast(pl.String) for c in KEY_COLUMNS] + [pl.col(c).cast(pl.Float64) for c in FLOAT_COLUMNS]
    casts.append(pl.col("n").cast(pl.Int64))
    if "note" in metrics.columns:
        casts.append(pl.col("note").cast(pl.String))
    try:
        df = metrics.with_columns(casts)
    except pl.exceptions.PolarsError as e:
        raise ContractError(f"metrics frame: a column has the wrong type ({e}); expected strings in "
                            f"{list(KEY_COLUMNS)}, numbers in {list(FLOAT_COLUMNS)}, an integer 'n'") from e
    if "note" not in df.columns:
        df = df.with_columns(pl.lit(None, dtype=pl.String).alias("note"))
    df = df.with_columns([pl.col(c).fill_nan(None) for c in FLOAT_COLUMNS]).with_row_index("_row")

    def fail(mask: pl.Expr, field: str, expected: str) -> None:
        bad = df.filter(mask)
        if bad.height:
            r = bad.row(0, named=True)
            raise ContractError(f"metrics row {r['_row']} (dataset {r['dataset']!r}, method {r['method']!r}, "
                                f"metric {r['metric']!r}) field '{field}': expected {expected}, got {r[field]!r}"
                                + (f" ({bad.height} rows like it)" if bad.height > 1 else ""))

    for c in KEY_COLUMNS:
        fail(pl.col(c).is_null() | (pl.col(c).str.strip_chars() == ""), c, "a non-empty string")
    for c in ("value", "ci_low", "ci_high"):
        fail(pl.col(c).is_infinite(), c, "a finite number or null")
    fail(pl.col("ci_low") > pl.col("ci_high"), "ci_low", "ci_low <= ci_high")
    fail(pl.col("ci_low").is_null() != pl.col("ci_high").is_null(), "ci_low", "both CI bounds or neither")
    for c in ("parse_failure_rate", "p_value_vs_best"):
        fail((pl.col(c) < 0) | (pl.col(c) > 1), c, "a probability in [0, 1] or null")
    fail(pl.col("n") < 0, "n", "a non-negative sample count or null")
    dup = df.filter(pl.struct("dataset", "method", "metric").is_duplicated())
    if dup.height:
        r = dup.row(0, named=True)
        raise ContractError(f"metrics rows {dup['_row'].to_list()[:5]}: (dataset {r['dataset']!r}, method "
                            f"{r['method']!r}, metric {r['metric']!r}) appears more than once; expected one row each")
    for c in ("domain", "task_type", "headline"):
        per = df.group_by("dataset", maintain_order=True).agg(pl.col(c).unique(maintain_order=True))
        bad = per.filter(pl.col(c).list.len() > 1)
        if bad.height:
            r = bad.row(0, named=True)
            raise ContractError(f"metrics: dataset {r['dataset']!r} has several values of '{c}' {r[c]}; "
                                "expected one per dataset")
    pfr = (df.filter(WHOLE_SET).drop_nulls("parse_failure_rate").group_by("dataset", "method", maintain_order=True)
           .agg(pl.col("parse_failure_rate").unique(maintain_order=True)))
    bad = pfr.filter(pl.col("parse_failure_rate").list.len() > 1)
    if bad.height:
        r = bad.row(0, named=True)
        raise ContractError(f"metrics: dataset {r['dataset']!r} method {r['method']!r} has several parse-failure "
                            f"rates {r['parse_failure_rate']}; expected one per (dataset, method)")
    clash = sorted(set(df["dataset"].unique().to_list()) & ({AVERAGE} | set(RANKING_COLUMNS)))
    if clash:
        raise ContractError(f"metrics: dataset name(s) {clash} are reserved for report columns/rows; rename them")
    return df.drop("_row")


def checked_notes(notes: Mapping | None) -> dict:
    """The report's `notes` as a dict; ContractError naming a bad key or an empty reason."""
    if notes is None:
        return {}
    if not isinstance(notes, Mapping):
        raise ContractError(f"notes: expected a dict, got {type(notes).__name__}")
    for k, v in notes.items():
        ok_key = isinstance(k, str) or (isinstance(k, tuple) and len(k) in (2, 3)
                                        and all(isinstance(x, str) for x in k))
        if not ok_key:
            raise ContractError(f"notes key {k!r}: expected a string, (dataset, metric) or (dataset, method, metric)")
        if not isinstance(v, str) or not v.strip():
            raise ContractError(f"notes[{k!r}]: expected a non-empty reason string, got {v!r}")
    return dict(notes)


def cell_reason(notes: dict, dataset: str, method: str, metric: str, row_note: str | None,
                row_exists: bool) -> str | None:
    """Why a cell has no value: the row's own note, then the most specific `notes` entry; None when none applies.

    A plain-metric key only explains rows that exist with a null value: a method with no row at all was not run.
    """
    if row_note:
        return row_note
    for key in ((dataset, method, metric), (dataset, metric)):
        if key in notes:
            return notes[key]
    if row_exists:
        return notes.get(metric, NO_REASON)
    return None


def ordered_domains(df: pl.DataFrame) -> list[str]:
    seen = df["domain"].unique(maintain_order=True).to_list()
    return [d for d in DOMAIN_ORDER if d in seen] + [d for d in seen if d not in DOMAIN_ORDER]


def ordered_datasets(df: pl.DataFrame) -> list[str]:
    """Datasets grouped by domain (in-domain first), each group in order of first appearance."""
    first = df.select("dataset", "domain").unique(subset="dataset", maintain_order=True)
    domains = ordered_domains(df)
    return [r["dataset"] for r in sorted(first.iter_rows(named=True), key=lambda r: domains.index(r["domain"]))]


def ordered_methods(df: pl.DataFrame) -> list[str]:
    return df["method"].unique(maintain_order=True).to_list()


def dataset_info(df: pl.DataFrame) -> dict[str, dict]:
    return {r["dataset"]: r for r in
            df.select("dataset", "domain", "task_type", "headline").unique("dataset", maintain_order=True)
            .iter_rows(named=True)}


def headline_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("metric") == pl.col("headline"))


def headline_scores(df: pl.DataFrame) -> dict[str, dict[str, float]]:
    """{dataset: {method: headline value}} over rows whose headline value was computed."""
    out: dict[str, dict[str, float]] = {}
    for r in headline_rows(df).drop_nulls("value").iter_rows(named=True):
        out.setdefault(r["dataset"], {})[r["method"]] = r["value"]
    return out


# ---------------------------------------------------------------------------------------------------- pure tables
def ranking(metrics: pl.DataFrame, domain: str | None = None) -> pl.DataFrame:
    """Rank of each method's headline metric per dataset (1 = best), rank sum and average rank, best first (Fig. 4).

    Columns: method, one Float64 column per dataset (null where the method has no headline value there), rank_sum,
    average_rank, datasets_ranked. `domain` keeps only that domain's datasets (Fig. 4a in-domain, 4b out-of-domain).
    """
    df = validated(metrics)
    if domain is not None:
        domains = ordered_domains(df)
        df = df.filter(pl.col("domain") == domain)
        if df.height == 0:
            raise ContractError(f"ranking: no datasets in domain {domain!r}; the frame has domains {domains}")
    datasets, methods, info = ordered_datasets(df), ordered_methods(df), dataset_info(df)
    scores = headline_scores(df)
    ranks: dict[str, dict[str, float]] = {}
    for d in datasets:
        if scores.get(d):
            higher = info[d]["headline"] not in LOWER_IS_BETTER
            ranks[d] = rank_methods({d: scores[d]}, higher_is_better=higher).per_dataset[d]
    rows = []
    for m in methods:
        per = [ranks.get(d, {}).get(m) for d in datasets]
        got = [r for r in per if r is not None]
        rows.append([m, *per, float(sum(got)) if got else None, sum(got) / len(got) if got else None, len(got)])
    schema = {"method": pl.String, **{d: pl.Float64 for d in datasets}, "rank_sum": pl.Float64,
              "average_rank": pl.Float64, "datasets_ranked": pl.Int64}
    out = pl.DataFrame(rows, schema=schema, orient="row")
    return out.sort("average_rank", nulls_last=True, maintain_order=True)


def ablation_table(metrics: pl.DataFrame, datasets: Sequence[str] | None = None) -> pl.DataFrame:
    """Table A7: headline metric of MedDr, MedDr+MoED, MedDr+RAD, GSCo per dataset, gains over MedDr, an Average row.

    Columns: dataset, headline, the four methods, and `<method>_delta` (method - MedDr) for the three others.
    `datasets`: the table's datasets in that order (the profile's `a7_datasets`), those absent from the frame left
    out; None: every dataset of the frame. Datasets with none of the four methods are left out. The Average row
    (dataset "Average", headline null) averages over the datasets where all four have a value, so its deltas equal
    the differences of its averages (as in the paper); it is absent when no dataset has all four.
    """
    df = validated(metrics)
    info, scores = dataset_info(df), headline_scores(df)
    order = ordered_datasets(df) if datasets is None else [d for d in datasets if d in info]
    gains = ABLATION_METHODS[1:]
    rows, complete = [], []
    for d in order:
        vals = [scores.get(d, {}).get(m) for m in ABLATION_METHODS]
        if all(v is None for v in vals):
            continue
        base = vals[0]
        deltas = [v - base if v is not None and base is not None else None for v in vals[1:]]
        rows.append([d, info[d]["headline"], *vals, *deltas])
        if all(v is not None for v in vals):
            complete.append(vals)
    if complete:
        means = [sum(col) / len(complete) for col in zip(*complete)]
        rows.append([AVERAGE, None, *means, *(m - means[0] for m in means[1:])])
    schema = {"dataset": pl.String, "headline": pl.String, **{m: pl.Float64 for m in ABLATION_METHODS},
              **{m + DELTA_SUFFIX: pl.Float64 for m in gains}}
    return pl.DataFrame(rows, schema=schema, orient="row")


def is_ranked_method(method: str) -> bool:
    """Whether Fig. 4 ranks `method`: a generalist alone, a specialist, Voting or GSCo (not the ablation arms)."""
    return (method in (BASELINE, VOTING, GSCO) or method.startswith(GENERALIST_PREFIX)
            or method.startswith(SPECIALIST_PREFIX))


def diagnosis_datasets(df: pl.DataFrame) -> list[str]:
    info = dataset_info(df)
    return [d for d in ordered_datasets(df) if info[d]["task_type"] in DIAGNOSIS_TASK_TYPES]


def fig4_ranking(metrics: pl.DataFrame, domain: str | None = None) -> tuple[pl.DataFrame, dict[str, list[str]]]:
    """Fig. 4(a)/(b): (`ranking` of the ranked methods on the domain's diagnosis datasets, {dataset left out: the
    ranked methods with no headline value there}).

    The ranked methods are those of `is_ranked_method` found on any diagnosis dataset of the frame (whatever the
    domain), so (a) and (b) rank the same methods; VQA and report datasets never enter. A table with no dataset left
    has only the RANKING_COLUMNS (rank sums null).
    """
    df = validated(metrics)
    diag = diagnosis_datasets(df)
    info, scores = dataset_info(df), headline_scores(df)
    methods = [m for m in ordered_methods(df.filter(pl.col("dataset").is_in(diag))) if is_ranked_method(m)]
    kept, left_out = [], {}
    for d in diag:
        if domain is not None and info[d]["domain"] != domain:
            continue
        missing = [m for m in methods if m not in scores.get(d, {})]
        if missing:
            left_out[d] = missing
        else:
            kept.append(d)
    if not kept or not methods:
        empty = pl.DataFrame({"method": methods}, schema={"method": pl.String})
        return empty.with_columns(pl.lit(None, dtype=pl.Float64).alias("rank_sum"),
                                  pl.lit(None, dtype=pl.Float64).alias("average_rank"),
                                  pl.lit(0, dtype=pl.Int64).alias("datasets_ranked")), left_out
    sub = df.filter(pl.col("dataset").is_in(kept) & pl.col("method").is_in(methods))
    return ranking(sub), left_out


def best_specialist(metrics: pl.DataFrame) -> tuple[str | None, dict[str, float], list[str]]:
    """(the specialist with the best average headline metric, {specialist: average}, the datasets averaged over).

    Averages are over the diagnosis datasets where every specialist has a value (the same datasets for each); ties go
    to the first name in sort order. (None, {}, []) when there is no specialist or no such dataset.
    """
    df = validated(metrics)
    scores = headline_scores(df)
    diag = diagnosis_datasets(df)
    specs = sorted({m for m in ordered_methods(df.filter(pl.col("dataset").is_in(diag)))
                    if m.startswith(SPECIALIST_PREFIX)})
    common = [d for d in diag if specs and all(s in scores.get(d, {}) for s in specs)]
    if not common:
        return None, {}, []
    avg = {s: sum(scores[d][s] for d in common) / len(common) for s in specs}
    best = min(specs, key=lambda s: (-avg[s], s))
    return best, avg, common


def specialist_vs_gsco(metrics: pl.DataFrame, specialist: str) -> pl.DataFrame:
    """Fig. 4(c): per diagnosis dataset, grouped by task type (binary, multiclass, multilabel), the specialist's and
    GSCo's headline metric and GSCo's gain (null where either is absent)."""
    df = validated(metrics)
    info, scores = dataset_info(df), headline_scores(df)
    rows = []
    for group in DIAGNOSIS_TASK_TYPES:
        for d in diagnosis_datasets(df):
            if info[d]["task_type"] != group:
                continue
            s, g = scores.get(d, {}).get(specialist), scores.get(d, {}).get(GSCO)
            rows.append([group, d, info[d]["domain"], info[d]["headline"], s, g,
                         None if s is None or g is None else g - s])
    schema = {"group": pl.String, "dataset": pl.String, "domain": pl.String, "headline": pl.String,
              "specialist": pl.Float64, GSCO: pl.Float64, "gain": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _number(row: Mapping, key: str, i: int) -> float | None:
    v = row.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ContractError(f"specialists[{i}] (arch {row.get('arch')!r}) field '{key}': expected a non-negative "
                            f"number or null, got {v!r}")
    return float(v)


def complexity_table(specialists: Sequence[Mapping]) -> pl.DataFrame:
    """Table A12 per architecture from job rows {arch, dataset, params_m, gmacs, train_images_per_s} (null: not
    recorded): parameters and GMACs (min and max over the jobs: the head depends on the label set), median training
    images/s, the number of jobs, and the paper's parameters and GMACs."""
    per: dict[str, list[tuple]] = {}
    for i, r in enumerate(specialists):
        if not isinstance(r, Mapping) or not isinstance(r.get("arch"), str) or not r["arch"]:
            raise ContractError(f"specialists[{i}]: expected a dict with a non-empty 'arch', got {r!r}")
        per.setdefault(r["arch"], []).append(tuple(_number(r, k, i) for k in ("params_m", "gmacs",
                                                                               "train_images_per_s")))
    rows = []
    for arch in sorted(per):
        cols = [[v for v in col if v is not None] for col in zip(*per[arch])]
        paper = PAPER_A12.get(arch, (None, None))
        rows.append([arch, min(cols[0], default=None), max(cols[0], default=None), min(cols[1], default=None),
                     max(cols[1], default=None), statistics.median(cols[2]) if cols[2] else None, len(per[arch]),
                     *paper])
    schema = {"arch": pl.String, "params_m_min": pl.Float64, "params_m_max": pl.Float64, "gmacs_min": pl.Float64,
              "gmacs_max": pl.Float64, "train_images_per_s": pl.Float64, "jobs": pl.Int64,
              "paper_params_m": pl.Float64, "paper_gmacs": pl.Float64}
    return pl.DataFrame(rows, schema=schema, orient="row")


def grouped_metrics(df: pl.DataFrame) -> dict[str, list[str]]:
    """{dataset: its subgroups in order of first appearance} for datasets with per-subgroup rows (OmniMedVQA)."""
    out: dict[str, list[str]] = {}
    for d, metric in df.select("dataset", "metric").iter_rows():
        group = split_group_metric(metric)[1]
        if group is not None and group not in out.setdefault(d, []):
            out[d].append(group)
    return {d: g for d, g in out.items() if g}


def seen_departures(metrics: pl.DataFrame) -> list[str]:
    """What the frame itself shows of departures from the paper: metrics not computed or computed as a variant
    (grouped by metric and reason), and methods whose parse-failure rate exceeds PARSE_FAILURE_LIMIT."""
    df = validated(metrics).filter(WHOLE_SET)
    out = []
    noted = df.filter(pl.col("note").is_not_null() | pl.col("value").is_null())
    groups = (noted.with_columns(pl.col("note").fill_null(NO_REASON), pl.col("value").is_null().alias("absent"))
              .group_by("metric", "note", "absent", maintain_order=True)
              .agg(pl.col("dataset").unique(maintain_order=True), pl.col("method").n_unique().alias("methods")))
    for r in groups.iter_rows(named=True):
        what = "not computed" if r["absent"] else "computed as a variant"
        out.append(f"{r['metric']} {what} on {', '.join(r['dataset'])} ({r['methods']} method(s)): {r['note']}")
    pfr = (df.drop_nulls("parse_failure_rate").unique(["dataset", "method"], maintain_order=True)
           .filter(pl.col("parse_failure_rate") > PARSE_FAILURE_LIMIT))
    for r in pfr.iter_rows(named=True):
        out.append(f"{r['method']} on {r['dataset']}: {100 * r['parse_failure_rate']:.1f}% of answers map to no "
                   f"valid answer (counted as wrong; above {100 * PARSE_FAILURE_LIMIT:.0f}%)")
    return out


# ------------------------------------------------------------------------------------------------------ formatting
def format_estimate(value: float | None, lo: float | None = None, hi: float | None = None, digits: int = 3) -> str:
    """'0.812 (0.771-0.850)'; the bare value when there is no CI; '–' when there is no value."""
    if value is None:
        return MISSING
    if lo is None or hi is None:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({lo:.{digits}f}-{hi:.{digits}f})"


def format_p(p: float | None) -> str:
    """A P-value as '<0.001' or with three decimals; '–' when absent."""
    if p is None:
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def fmt_rank(r: float | None) -> str:
    if r is None:
        return MISSING
    return f"{r:.0f}" if float(r).is_integer() else f"{r:.2f}".rstrip("0")


def provenance_blocks(provenance: dict | None) -> list[tuple]:
    """The report's header blocks naming what its numbers rest on: ("kv", fields), then one titled table per input
    kind (render_report's `provenance`; tasks/evaluation/stage.provenance builds it)."""
    if not provenance:
        return []
    fields = [(str(k), str(v), u) for k, v, u in provenance.get("fields", [])]
    blocks: list[tuple] = [("h", 2, "Provenance"), ("kv", fields)]
    for title, header, rows in provenance.get("tables", []):
        if rows:
            blocks += [("p", title), ("table", list(header), [[(str(c), False) for c in row] for row in rows])]
    return blocks
