"""The evaluation report's tables as pure functions on the long metrics frame (data_contracts/metrics.py): the
headline summary, the Fig. 4 ranking and the Table A7 ablation, and how numbers are formatted.

    OMP_NUM_THREADS=1 pytest -q tests/test_report.py

Ranks are within a dataset over the methods that have a headline value there (1 = best, ties share the mean rank, as
`tasks.evaluation.metrics.rank_methods`); a method's rank sum and average rank are over the datasets it was ranked
on, and `datasets_ranked` says how many.
"""
from __future__ import annotations


import polars as pl

from data_contracts.errors import ContractError
from data_contracts.metrics import FLOAT_COLUMNS, KEY_COLUMNS, REQUIRED_COLUMNS
from tasks.evaluation.metrics import rank_methods

MISSING = "–"
NO_REASON = "not computed (no reason given)"
ABLATION_METHODS = ("MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo")   # Table A7 columns, in the paper's order
BASELINE = ABLATION_METHODS[0]
AVERAGE = "Average"
DELTA_SUFFIX = "_delta"
LOWER_IS_BETTER = frozenset({"parse_failure_rate"})
DOMAIN_ORDER = ("in-domain", "out-of-domain")

RANKING_COLUMNS = ("method", "rank_sum", "average_rank", "datasets_ranked")


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
    pfr = (df.drop_nulls("parse_failure_rate").group_by("dataset", "method", maintain_order=True)
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


def ablation_table(metrics: pl.DataFrame) -> pl.DataFrame:
    """Table A7: headline metric of MedDr, MedDr+MoED, MedDr+RAD, GSCo per dataset, gains over MedDr, an Average row.

    Columns: dataset, headline, the four methods, and `<method>_delta` (method - MedDr) for the three others. Datasets
    with none of the four methods are left out. The Average row (dataset "Average", headline null) averages over the
    datasets where all four have a value, so its deltas equal the differences of its averages (as in the paper); it is
    absent when no dataset has all four.
    """
    df = validated(metrics)
    info, scores = dataset_info(df), headline_scores(df)
    gains = ABLATION_METHODS[1:]
    rows, complete = [], []
    for d in ordered_datasets(df):
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
