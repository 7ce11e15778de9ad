"""The evaluation report (SPEC §7, §8): tables, the Fig. 4 ranking and the Table A7 ablation as Markdown, HTML and PNG.

    OMP_NUM_THREADS=1 pytest -q tests/test_report.py

Input is the long metrics frame of the evaluate stage, one row per (dataset, method, metric) with the point value, its
95% bootstrap CI, the test-set size, the method's parse-failure rate, the paired P-value against the best method, and
the dataset's headline metric (binary -> accuracy, otherwise macro-F1). Its tables are pure functions on that frame
(tasks/evaluation/report_tables.py), its plots tasks/evaluation/report_plots.py; `render_report` writes report.md, a
self-contained report.html (plots inlined as base64 PNG) and the PNGs beside them.

Rules the report keeps: a method with no row for a dataset shows "–"; a metric whose value is null shows why it was not
computed (the row's `note`, else the `notes` given to `render_report`), never 0. The same frame gives the same bytes
whatever the caller's matplotlib configuration; the only run-dependent text is the generated-at line, which
`generated_at=False` leaves out.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import polars as pl

from data_contracts.errors import ContractError
from data_contracts.files import write_bytes_atomic
from data_contracts.layout import REPORT_HTML, REPORT_MD
from tasks.evaluation.report_plots import ablation_png, bar_png, ranking_png
from tasks.evaluation.report_tables import (ABLATION_METHODS, AVERAGE, BASELINE, DELTA_SUFFIX, LOWER_IS_BETTER,
                                            MISSING, NO_REASON, RANKING_COLUMNS, ablation_table, dataset_info,
                                            fmt_rank, format_estimate, format_p, headline_rows, headline_scores,
                                            ordered_datasets, ordered_domains, ordered_methods, ranking, validated)


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
    head = {(r["dataset"], r["method"]): r for r in headline_rows(df).iter_rows(named=True)}
    scores = headline_scores(df)
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
        rows.append([_cell(r["method"]), *(_cell(fmt_rank(r[d])) for d in datasets),
                     _cell(fmt_rank(r["rank_sum"])),
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
    df = validated(metrics)
    notes = _check_notes(notes)
    if not isinstance(title, str) or not title.strip():
        raise ContractError(f"title: expected a non-empty string, got {title!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets, methods, info = ordered_datasets(df), ordered_methods(df), dataset_info(df)
    domains = ordered_domains(df)
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
        images[name] = ranking_png(rank, f"Ranking: {label}")
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
        images["ablation.png"] = ablation_png(abl)
        blocks += [_ablation_block(abl),
                   ("img", "ablation.png", "Ablation bar chart", "MedDr, +MoED, +RAD and GSCo per dataset.")]

    blocks.append(("h", 2, "Per-dataset results"))
    for i, d in enumerate(datasets):
        meta = info[d]
        name = f"bar_{i:02d}_{_slug(d)}.png"
        images[name] = bar_png(df, d, methods, meta["headline"])
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
        write_bytes_atomic(out_dir / name, data)
        paths[name] = out_dir / name
    for name, text in ((REPORT_MD, _to_markdown(blocks)), (REPORT_HTML, _to_html(blocks, title, images))):
        write_bytes_atomic(out_dir / name, text.encode("utf-8"))
        paths[name] = out_dir / name
    return paths
