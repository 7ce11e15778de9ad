"""The evaluation report (SPEC §7, §8): tables, the Fig. 4 ranking and the Table A7 ablation as Markdown, HTML and PNG.

    OMP_NUM_THREADS=1 pytest -q tests/test_report.py

Input is the long metrics frame of the evaluate stage, one row per (dataset, method, metric) with the point value, its
95% bootstrap CI, the test-set size, the method's parse-failure rate, the paired P-value against the best method, and
the dataset's headline metric (binary -> accuracy, otherwise macro-F1). `ranking` and `ablation_table` are pure
functions on that frame; `render_report` writes report.md, a self-contained report.html (plots inlined as base64 PNG)
and the PNGs beside them.

Rules the report keeps: a method with no row for a dataset shows "–"; a metric whose value is null shows why it was not
computed (the row's `note`, else the `notes` given to `render_report`), never 0. Ranks are within a dataset over the
methods that have a headline value there (1 = best, ties share the mean rank, as `tasks.metrics.rank_methods`); a
method's rank sum and average rank are over the datasets it was ranked on, and `datasets_ranked` says how many.
Plots are drawn with matplotlib's Agg canvas under matplotlib's default rc settings, so the same frame gives the same
bytes whatever the caller's matplotlib configuration; the only run-dependent text is the generated-at line, which
`generated_at=False` leaves out.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from data_contracts.errors import ContractError
from tasks.metrics import rank_methods

MISSING = "–"
NO_REASON = "not computed (no reason given)"
ABLATION_METHODS = ("MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo")   # Table A7 columns, in the paper's order
BASELINE = ABLATION_METHODS[0]
AVERAGE = "Average"
DELTA_SUFFIX = "_delta"
LOWER_IS_BETTER = frozenset({"parse_failure_rate"})
DOMAIN_ORDER = ("in-domain", "out-of-domain")

KEY_COLUMNS = ("dataset", "domain", "task_type", "method", "metric", "headline")
FLOAT_COLUMNS = ("value", "ci_low", "ci_high", "parse_failure_rate", "p_value_vs_best")
REQUIRED_COLUMNS = (*KEY_COLUMNS, "value", "ci_low", "ci_high", "n", "parse_failure_rate", "p_value_vs_best")
RANKING_COLUMNS = ("method", "rank_sum", "average_rank", "datasets_ranked")

DPI = 100
_PNG_METADATA = {"Software": None}   # keeps the PNG bytes independent of the matplotlib version
_RC = {"text.parse_math": False, "svg.hashsalt": "gsco", "axes.spines.top": False, "axes.spines.right": False}
_FAMILY_COLOURS = {"GSCo": "#d62728", "MedDr": "#1f77b4", "Voting": "#2ca02c", "specialist": "#8c8c8c",
                   "other": "#9467bd"}
_ABLATION_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#d62728")


# ------------------------------------------------------------------------------------------------------ validation
def _validated(metrics: pl.DataFrame) -> pl.DataFrame:
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


def _ordered_domains(df: pl.DataFrame) -> list[str]:
    seen = df["domain"].unique(maintain_order=True).to_list()
    return [d for d in DOMAIN_ORDER if d in seen] + [d for d in seen if d not in DOMAIN_ORDER]


def _ordered_datasets(df: pl.DataFrame) -> list[str]:
    """Datasets grouped by domain (in-domain first), each group in order of first appearance."""
    first = df.select("dataset", "domain").unique(subset="dataset", maintain_order=True)
    domains = _ordered_domains(df)
    return [r["dataset"] for r in sorted(first.iter_rows(named=True), key=lambda r: domains.index(r["domain"]))]


def _ordered_methods(df: pl.DataFrame) -> list[str]:
    return df["method"].unique(maintain_order=True).to_list()


def _dataset_info(df: pl.DataFrame) -> dict[str, dict]:
    return {r["dataset"]: r for r in
            df.select("dataset", "domain", "task_type", "headline").unique("dataset", maintain_order=True)
            .iter_rows(named=True)}


def _headline_rows(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("metric") == pl.col("headline"))


def _headline_scores(df: pl.DataFrame) -> dict[str, dict[str, float]]:
    """{dataset: {method: headline value}} over rows whose headline value was computed."""
    out: dict[str, dict[str, float]] = {}
    for r in _headline_rows(df).drop_nulls("value").iter_rows(named=True):
        out.setdefault(r["dataset"], {})[r["method"]] = r["value"]
    return out


# ---------------------------------------------------------------------------------------------------- pure tables
def ranking(metrics: pl.DataFrame, domain: str | None = None) -> pl.DataFrame:
    """Rank of each method's headline metric per dataset (1 = best), rank sum and average rank, best first (Fig. 4).

    Columns: method, one Float64 column per dataset (null where the method has no headline value there), rank_sum,
    average_rank, datasets_ranked. `domain` keeps only that domain's datasets (Fig. 4a in-domain, 4b out-of-domain).
    """
    df = _validated(metrics)
    if domain is not None:
        domains = _ordered_domains(df)
        df = df.filter(pl.col("domain") == domain)
        if df.height == 0:
            raise ContractError(f"ranking: no datasets in domain {domain!r}; the frame has domains {domains}")
    datasets, methods, info = _ordered_datasets(df), _ordered_methods(df), _dataset_info(df)
    scores = _headline_scores(df)
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
    df = _validated(metrics)
    info, scores = _dataset_info(df), _headline_scores(df)
    gains = ABLATION_METHODS[1:]
    rows, complete = [], []
    for d in _ordered_datasets(df):
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


def _fmt_rank(r: float | None) -> str:
    if r is None:
        return MISSING
    return f"{r:.0f}" if float(r).is_integer() else f"{r:.2f}".rstrip("0")


def _check_notes(notes: Mapping | None) -> dict:
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


def _reason(notes: dict, dataset: str, method: str, metric: str, row_note: str | None, row_exists: bool) -> str | None:
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


# ---------------------------------------------------------------------------------------------------------- blocks
# The report is a list of blocks rendered twice (Markdown, HTML) so both files always say the same thing.
# ("h", level, text) ("p", text) ("ul", [text]) ("table", header, rows of (text, bold)) ("img", file, alt, caption)
Cell = tuple[str, bool]


def _cell(text: str, bold: bool = False) -> Cell:
    return (text, bold)


def _summary_block(df: pl.DataFrame, datasets: list[str], methods: list[str], info: dict, notes: dict) -> tuple:
    head = {(r["dataset"], r["method"]): r for r in _headline_rows(df).iter_rows(named=True)}
    scores = _headline_scores(df)
    best = {}
    for d, by_m in scores.items():
        pick = min if info[d]["headline"] in LOWER_IS_BETTER else max
        best[d] = pick(by_m.values())
    header = ["Method", *(f"{d} ({info[d]['headline']})" for d in datasets)]
    rows = []
    for m in methods:
        row = [_cell(m)]
        for d in datasets:
            r = head.get((d, m))
            if r is None or r["value"] is None:
                why = _reason(notes, d, m, info[d]["headline"], r["note"] if r else None, r is not None)
                row.append(_cell(why or MISSING))
            else:
                row.append(_cell(format_estimate(r["value"], r["ci_low"], r["ci_high"]), r["value"] == best.get(d)))
        rows.append(row)
    return ("table", header, rows)


def _ranking_block(rank: pl.DataFrame) -> tuple:
    datasets = [c for c in rank.columns if c not in RANKING_COLUMNS]
    header = ["Method", *datasets, "Rank sum", "Average rank", "Datasets ranked"]
    rows = []
    for r in rank.iter_rows(named=True):
        rows.append([_cell(r["method"]), *(_cell(_fmt_rank(r[d])) for d in datasets),
                     _cell(_fmt_rank(r["rank_sum"])),
                     _cell(MISSING if r["average_rank"] is None else f"{r['average_rank']:.2f}"),
                     _cell(str(r["datasets_ranked"]))])
    return ("table", header, rows)


def _ablation_block(abl: pl.DataFrame) -> tuple:
    header = ["Dataset", "Headline", *ABLATION_METHODS]
    rows = []
    for r in abl.iter_rows(named=True):
        vals = [r[m] for m in ABLATION_METHODS]
        top = max((v for v in vals if v is not None), default=None)
        cells = [_cell(r["dataset"], r["dataset"] == AVERAGE), _cell(r["headline"] or "mean")]
        for m, v in zip(ABLATION_METHODS, vals):
            text = MISSING if v is None else f"{v:.4f}"
            if m != BASELINE and v is not None and r[m + DELTA_SUFFIX] is not None:
                text += f" ({r[m + DELTA_SUFFIX]:+.4f})"
            cells.append(_cell(text, v is not None and v == top))
        rows.append(cells)
    return ("table", header, rows)


def _dataset_block(df: pl.DataFrame, dataset: str, methods: list[str], headline: str,
                   notes: dict) -> tuple[tuple, list[str]]:
    """The per-dataset table (every method x every metric, parse failures, P-values) and its footnotes."""
    sub = df.filter(pl.col("dataset") == dataset)
    by_key = {(r["method"], r["metric"]): r for r in sub.iter_rows(named=True)}
    metric_names = sub["metric"].unique(maintain_order=True).to_list()
    for k in notes:   # a metric named only in notes for this dataset still gets its column, showing the reason
        if isinstance(k, tuple) and k[0] == dataset and k[-1] not in metric_names:
            metric_names.append(k[-1])
    metric_names = [headline] + [m for m in metric_names if m != headline]
    with_p = [m for m in metric_names
              if sub.filter((pl.col("metric") == m) & pl.col("p_value_vs_best").is_not_null()).height]
    best = {}
    for m in metric_names:
        vals = [r["value"] for r in sub.filter(pl.col("metric") == m).iter_rows(named=True) if r["value"] is not None]
        if vals:
            best[m] = (min if m in LOWER_IS_BETTER else max)(vals)
    header = ["Method", "n", *(f"{m} (headline)" if m == headline else m for m in metric_names),
              *(f"p vs best ({m})" for m in with_p), "Parse failures"]
    rows, footnotes = [], []
    for method in methods:
        mine = sub.filter(pl.col("method") == method)
        head_row = by_key.get((method, headline))
        n = head_row["n"] if head_row and head_row["n"] is not None else mine["n"].max()
        pfr = mine["parse_failure_rate"].drop_nulls()
        row = [_cell(method), _cell(MISSING if n is None else str(n))]
        if mine.height == 0:   # the method was not run on this dataset: no reason applies to any of its cells
            rows.append(row + [_cell(MISSING)] * (len(header) - 2))
            continue
        for m in metric_names:
            r = by_key.get((method, m))
            if r is not None and r["value"] is not None:
                row.append(_cell(format_estimate(r["value"], r["ci_low"], r["ci_high"])))
                if r["note"]:
                    footnotes.append(f"{method}, {m}: {r['note']}")
            else:
                row.append(_cell(_reason(notes, dataset, method, m, r["note"] if r else None, r is not None)
                                 or MISSING))
        for m in with_p:
            r = by_key.get((method, m))
            if r is None or r["value"] is None:
                row.append(_cell(MISSING))
            elif r["p_value_vs_best"] is None and r["value"] == best.get(m):
                row.append(_cell("best"))
            else:
                row.append(_cell(format_p(r["p_value_vs_best"])))
        row.append(_cell(MISSING if pfr.is_empty() else f"{100 * pfr[0]:.1f}%"))
        rows.append(row)
    return ("table", header, rows), footnotes


# ------------------------------------------------------------------------------------------------------------ plots
def _png(draw, figsize: tuple[float, float]) -> bytes:
    """PNG bytes of a figure drawn by `draw(fig)` on an Agg canvas under matplotlib's default rc settings."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    with matplotlib.rc_context():
        matplotlib.rcdefaults()   # restored when the context exits: the caller's settings stay as they were
        matplotlib.rcParams.update(_RC)
        fig = Figure(figsize=figsize, dpi=DPI)
        FigureCanvasAgg(fig)
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.15, metadata=_PNG_METADATA)
    return buf.getvalue()


def _family_colour(method: str) -> str:
    if method == "GSCo":
        return _FAMILY_COLOURS["GSCo"]
    if method.startswith("MedDr"):
        return _FAMILY_COLOURS["MedDr"]
    if method == "Voting":
        return _FAMILY_COLOURS["Voting"]
    if method.startswith("specialist"):
        return _FAMILY_COLOURS["specialist"]
    return _FAMILY_COLOURS["other"]


def _bar_png(df: pl.DataFrame, dataset: str, methods: list[str], headline: str) -> bytes:
    head = {r["method"]: r for r in _headline_rows(df.filter(pl.col("dataset") == dataset)).iter_rows(named=True)}
    top = max([1.0] + [v for r in head.values() for v in (r["value"], r["ci_high"]) if v is not None])

    def draw(fig):
        ax = fig.add_subplot()
        ys = list(range(len(methods)))
        for y, m in zip(ys, methods):
            r = head.get(m)
            if r is None or r["value"] is None:
                ax.text(0.005 * top, y, "not computed" if r is not None else MISSING, va="center", fontsize=8,
                        color="#555555")
                continue
            v, lo, hi = r["value"], r["ci_low"], r["ci_high"]
            err = None if lo is None else [[max(v - lo, 0.0)], [max(hi - v, 0.0)]]
            ax.barh(y, v, color=_family_colour(m), xerr=err, capsize=3, error_kw={"elinewidth": 1})
            ax.text(max(v, hi if hi is not None else v) + 0.01 * top, y, f"{v:.3f}", va="center", fontsize=8)
        ax.set_yticks(ys, labels=methods, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.15)
        ax.set_xlabel(f"{headline} (95% bootstrap CI)")
        ax.set_title(dataset, fontsize=10)

    return _png(draw, (7.0, 0.9 + 0.3 * len(methods)))


def _ranking_png(rank: pl.DataFrame, title: str) -> bytes:
    import numpy as np
    datasets = [c for c in rank.columns if c not in RANKING_COLUMNS]
    methods = rank["method"].to_list()
    cols = [*datasets, "average_rank"]
    grid = np.array([[np.nan if r[c] is None else r[c] for c in cols] for r in rank.iter_rows(named=True)], dtype=float)
    vmax = max(2.0, float(len(methods)))

    def draw(fig):
        import matplotlib
        ax = fig.add_subplot()
        cmap = matplotlib.colormaps["RdYlGn_r"].with_extremes(bad="#e0e0e0")
        ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, vmin=1, vmax=vmax, aspect="auto")
        for i in range(grid.shape[0]):
            for j in range(grid.shape[1]):
                v = grid[i, j]
                text = MISSING if math.isnan(v) else (f"{v:.2f}" if j == len(datasets) else _fmt_rank(v))
                dark = not math.isnan(v) and abs((v - 1) / (vmax - 1) - 0.5) > 0.35   # deep green / deep red
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.axvline(len(datasets) - 0.5, color="white", linewidth=3)
        ax.set_xticks(range(len(cols)), labels=[*datasets, "average rank"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), labels=methods, fontsize=8)
        ax.set_title(title, fontsize=10)
        for s in ax.spines.values():
            s.set_visible(False)

    return _png(draw, (1.8 + 0.6 * len(cols), 0.9 + 0.3 * len(methods)))


def _ablation_png(abl: pl.DataFrame) -> bytes:
    labels = abl["dataset"].to_list()
    width = 0.8 / len(ABLATION_METHODS)

    def draw(fig):
        ax = fig.add_subplot()
        for k, (m, colour) in enumerate(zip(ABLATION_METHODS, _ABLATION_COLOURS)):
            xs = [i + (k - 1.5) * width for i in range(len(labels))]
            ys = [0.0 if v is None else v for v in abl[m].to_list()]
            bars = ax.bar(xs, ys, width=width, color=colour, label=m)
            for b, v in zip(bars, abl[m].to_list()):
                if v is None:   # an absent method: a labelled gap, never a bar at 0
                    ax.text(b.get_x() + width / 2, 0.01, MISSING, ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("headline metric (accuracy if binary, else macro-F1)", fontsize=8)
        ax.set_title("Ablation (Table A7)", fontsize=10)
        ax.legend(fontsize=8, ncols=4, loc="lower center", bbox_to_anchor=(0.5, 1.06), frameon=False)

    return _png(draw, (max(5.0, 1.0 + 0.9 * len(labels)), 3.6))


# -------------------------------------------------------------------------------------------------------- rendering
_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#])")
_MD_EDGE_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md_escape(text: str) -> str:
    """`text` safe inside Markdown (and table cells): markup characters backslash-escaped, newlines as spaces."""
    text = " ".join(str(text).splitlines())
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_EDGE_UNDERSCORE.sub(r"\\_", text)   # intra-word underscores (macro_f1) never start emphasis


def _to_markdown(blocks: list[tuple]) -> str:
    out = []
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append("#" * b[1] + " " + md_escape(b[2]))
        elif kind == "p":
            out.append(md_escape(b[1]))
        elif kind == "ul":
            out.append("\n".join("- " + md_escape(t) for t in b[1]))
        elif kind == "table":
            _, header, rows = b
            lines = ["| " + " | ".join(md_escape(h) for h in header) + " |",
                     "|" + "|".join(" --- " for _ in header) + "|"]
            for row in rows:
                lines.append("| " + " | ".join(f"**{md_escape(t)}**" if bold else md_escape(t) for t, bold in row)
                             + " |")
            out.append("\n".join(lines))
        elif kind == "img":
            _, name, alt, caption = b
            out.append(f"![{md_escape(alt)}]({name})\n\n*{md_escape(caption)}*")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.5rem 0 1.5rem;font-size:0.85rem}
th,td{border:1px solid #ccc;padding:0.25rem 0.5rem;text-align:left;vertical-align:top}
thead th{background:#f2f2f2}figure{margin:0.5rem 0 1.5rem}img{max-width:100%}
figcaption{font-size:0.85rem;color:#555}.meta{color:#555;font-size:0.85rem}"""


def _to_html(blocks: list[tuple], title: str, images: Mapping[str, bytes]) -> str:
    e = lambda s: html.escape(str(s), quote=True)   # noqa: E731
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    for b in blocks:
        kind = b[0]
        if kind == "h":
            out.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif kind == "p":
            out.append(f"<p>{e(b[1])}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(t)}</li>" for t in b[1]) + "</ul>")
        elif kind == "table":
            _, header, rows = b
            out.append("<table><thead><tr>" + "".join(f'<th scope="col">{e(h)}</th>' for h in header)
                       + "</tr></thead><tbody>")
            for row in rows:
                cells = []
                for j, (t, bold) in enumerate(row):
                    inner = f"<strong>{e(t)}</strong>" if bold else e(t)
                    cells.append(f'<th scope="row">{inner}</th>' if j == 0 else f"<td>{inner}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        elif kind == "img":
            _, name, alt, caption = b
            data = base64.b64encode(images[name]).decode("ascii")
            out.append(f'<figure><img alt="{e(alt)}" src="data:image/png;base64,{data}">'
                       f"<figcaption>{e(caption)}</figcaption></figure>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.")[:60] or "x"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _note_text(key, reason: str) -> str:
    return f"{' / '.join(key) if isinstance(key, tuple) else key}: {reason}"


def render_report(metrics: pl.DataFrame, out_dir: Path, title: str, notes: dict | None = None, *,
                  generated_at: datetime | bool = True) -> dict[str, Path]:
    """{file name: path} of report.md, report.html (plots inlined) and the PNG plots written under `out_dir`.

    `notes` keys: (dataset, method, metric) or (dataset, metric) give the reason a metric is absent there (and add the
    metric's column to that dataset's table); a plain string key is a report-wide note, and also the reason for any
    row of that metric name whose value is null. Every note is listed in the report. `generated_at`: True stamps the
    current UTC time, a datetime stamps that time, False leaves the line out (byte-identical reruns).
    """
    df = _validated(metrics)
    notes = _check_notes(notes)
    if not isinstance(title, str) or not title.strip():
        raise ContractError(f"title: expected a non-empty string, got {title!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets, methods, info = _ordered_datasets(df), _ordered_methods(df), _dataset_info(df)
    domains = _ordered_domains(df)
    images: dict[str, bytes] = {}
    blocks: list[tuple] = [("h", 1, title)]
    if generated_at is not False:
        stamp = datetime.now(timezone.utc) if generated_at is True else generated_at
        blocks.append(("p", f"Generated at {stamp.isoformat(timespec='seconds')}."))
    blocks.append(("p", f"{len(datasets)} datasets, {len(methods)} methods. Each value is the point estimate with its "
                        "95% bootstrap CI (1,000 resamples). Headline metric: accuracy for binary tasks, macro-F1 "
                        "otherwise (SPEC §8). '–' means the method has no result on that dataset."))
    if notes:
        blocks += [("h", 2, "Notes"), ("ul", [_note_text(k, v) for k, v in notes.items()])]

    blocks += [("h", 2, "Headline metric"),
               ("p", "Best value per dataset in bold."),
               _summary_block(df, datasets, methods, info, notes)]

    blocks.append(("h", 2, "Ranking (Fig. 4)"))
    blocks.append(("p", "Rank of the headline metric within each dataset (1 = best, ties share the mean rank); rank "
                        "sum and average over the datasets a method was ranked on."))
    groups = [(d, d) for d in domains] + ([("all datasets", None)] if len(domains) > 1 else [])
    for i, (label, domain) in enumerate(groups):
        rank = ranking(df, domain=domain)
        name = f"ranking_{i:02d}_{_slug(label)}.png"
        images[name] = _ranking_png(rank, f"Ranking: {label}")
        blocks += [("h", 3, f"Ranking: {label}"),
                   ("img", name, f"Ranking heatmap, {label}", f"Rank per dataset and average rank ({label})."),
                   _ranking_block(rank)]

    blocks.append(("h", 2, "Ablation (Table A7)"))
    abl = ablation_table(df)
    if abl.height == 0:
        blocks.append(("p", f"{MISSING} (no results for any of {', '.join(ABLATION_METHODS)})"))
    else:
        n_avg = sum(all(r[m] is not None for m in ABLATION_METHODS) for r in abl.iter_rows(named=True)
                    if r["dataset"] != AVERAGE)
        blocks.append(("p", "Headline metric; improvement over MedDr in parentheses; best per row in bold. "
                            f"Average over the {n_avg} dataset(s) with all four methods."))
        images["ablation.png"] = _ablation_png(abl)
        blocks += [_ablation_block(abl),
                   ("img", "ablation.png", "Ablation bar chart", "MedDr, +MoED, +RAD and GSCo per dataset.")]

    blocks.append(("h", 2, "Per-dataset results"))
    for i, d in enumerate(datasets):
        meta = info[d]
        name = f"bar_{i:02d}_{_slug(d)}.png"
        images[name] = _bar_png(df, d, methods, meta["headline"])
        table, footnotes = _dataset_block(df, d, methods, meta["headline"], notes)
        blocks += [("h", 3, d),
                   ("p", f"Domain: {meta['domain']}. Task: {meta['task_type']}. Headline metric: {meta['headline']}. "
                         "P-values: paired test of the best method against each other method on the same samples."),
                   ("img", name, f"{d}: {meta['headline']} per method",
                    f"{meta['headline']} per method with 95% CI whiskers."),
                   table]
        if footnotes:
            blocks.append(("ul", footnotes))

    paths: dict[str, Path] = {}
    for name, data in images.items():
        _write_atomic(out_dir / name, data)
        paths[name] = out_dir / name
    for name, text in (("report.md", _to_markdown(blocks)), ("report.html", _to_html(blocks, title, images))):
        _write_atomic(out_dir / name, text.encode("utf-8"))
        paths[name] = out_dir / name
    return paths
