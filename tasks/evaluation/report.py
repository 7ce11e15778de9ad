"""The evaluation report (SPEC §7, §8) in the paper's shapes, as Markdown, HTML and PNG: headline summary, Fig. 4(a)/(b)
rankings with rank sums, Fig. 4(c) best specialist vs GSCo, the Table A7 ablation, OmniMedVQA per modality (Table
A6), specialist complexity (Table A12), per-dataset tables (Tables A1-A5, A8) and the departures from the paper.

    render_report(metrics, out_dir, "GSCo benchmark", notes, generated_at=False, a7_datasets=[...],
                  specialists=[{"arch": "resnet18", "dataset": "ham10000", "params_m": 11.2, "gmacs": 1.8,
                                "train_images_per_s": 950.0}], departures=["MedDr is InternVL3-2B, not 40B"])
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
from data_contracts.metrics import group_metric
from tasks.evaluation.report_plots import ablation_png, bar_png, ranking_png, specialist_vs_gsco_png
from tasks.evaluation.report_tables import (ABLATION_METHODS, AVERAGE, BASELINE, DELTA_SUFFIX, GSCO,
                                            LOWER_IS_BETTER, MISSING, NO_REASON, RANKING_COLUMNS, WHOLE_SET,
                                            ablation_table, best_specialist, cell_reason, checked_notes,
                                            complexity_table, dataset_info, diagnosis_datasets, fig4_ranking,
                                            fmt_rank, format_estimate, format_p, grouped_metrics, headline_rows,
                                            headline_scores, is_ranked_method, ordered_datasets, ordered_methods,
                                            provenance_blocks,
                                            seen_departures, specialist_vs_gsco, validated)
from tasks.evaluation.settings import PAPER_A7_DATASETS


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
                why = cell_reason(notes, d, m, info[d]["headline"], r["note"] if r else None, r is not None)
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


_FIG4_LABELS = {"in-domain": "Fig. 4(a): in-domain", "out-of-domain": "Fig. 4(b): out-of-domain"}
Section = tuple[list[tuple], dict[str, bytes], list[str]]   # blocks, images, departures


def _rank_sum_block(sums: dict[str, dict[str, float | None]]) -> tuple:
    methods = list(dict.fromkeys(m for by_m in sums.values() for m in by_m))
    rows = []
    for m in methods:
        vals = [sums[label].get(m) for label in sums]
        total = None if any(v is None for v in vals) else sum(vals)
        rows.append((total is None, total or 0.0, [_cell(m), *(_cell(fmt_rank(v)) for v in vals),
                                                    _cell(fmt_rank(total))]))
    rows.sort(key=lambda t: t[:2])
    return ("table", ["Method", *(f"Rank sum, {label}" for label in sums), "Total"], [r[2] for r in rows])


def _ranking_section(df: pl.DataFrame) -> Section:
    blocks: list[tuple] = [("h", 2, "Ranking (Fig. 4)")]
    diag = diagnosis_datasets(df)
    if not diag:
        return blocks + [("p", f"{MISSING} (no diagnosis datasets; VQA and report datasets are not ranked)")], {}, []
    info = dataset_info(df)
    excluded = [m for m in ordered_methods(df.filter(pl.col("dataset").is_in(diag))) if not is_ranked_method(m)]
    blocks.append(("p", "Rank of the headline metric within each diagnosis dataset (1 = best, ties share the mean "
                        "rank) of each generalist alone, each specialist, Voting and GSCo; rank sum and average rank "
                        "over the datasets. VQA and report datasets are not ranked; a dataset where a ranked method "
                        "has no value is left out." + (f" Not ranked (ablation arms, Tables A7 and A9): "
                                                       f"{', '.join(excluded)}." if excluded else "")))
    images, departures, sums = {}, [], {}
    domains = list(dict.fromkeys(info[d]["domain"] for d in diag))
    for i, domain in enumerate(domains):
        label = _FIG4_LABELS.get(domain, f"Ranking: {domain}")
        rank, left_out = fig4_ranking(df, domain)
        blocks.append(("h", 3, label))
        gaps = [f"{d} (no value for {', '.join(missing)})" for d, missing in left_out.items()]
        departures += [f"{label}: {g} left out of the ranking" for g in gaps]
        if gaps:
            blocks.append(("p", "Left out: " + "; ".join(gaps) + "."))
        if len(rank.columns) == len(RANKING_COLUMNS):
            blocks.append(("p", f"{MISSING} (no dataset of this domain has a value for every ranked method)"))
            continue
        name = f"ranking_{i:02d}_{_slug(domain)}.png"
        images[name] = ranking_png(rank, label)
        blocks += [("img", name, f"Ranking heatmap, {label}", f"Rank per dataset and average rank ({label})."),
                   _ranking_block(rank)]
        sums[label] = dict(zip(rank["method"].to_list(), rank["rank_sum"].to_list()))
    if len(sums) > 1:
        blocks += [("h", 3, "Sum of ranks"), _rank_sum_block(sums)]
    return blocks, images, departures


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


def _ablation_section(df: pl.DataFrame, a7: list[str]) -> Section:
    blocks: list[tuple] = [("h", 2, "Ablation (Table A7)")]
    whose = f"the {'paper' if a7 == PAPER_A7_DATASETS else 'profile'}'s {len(a7)}"
    seen = set(df["dataset"].to_list())
    present, missing = [d for d in a7 if d in seen], [d for d in a7 if d not in seen]
    blocks.append(("p", f"Datasets ({whose}): {', '.join(a7)}. Evaluated in this run: {len(present)} of "
                        f"{len(a7)}" + (f" ({', '.join(present)})." if present else ".")))
    departures = [f"Table A7: {len(missing)} of {whose} datasets not evaluated: {', '.join(missing)}"] if missing \
        else []
    abl = ablation_table(df, a7)
    if abl.height == 0:
        return blocks + [("p", f"{MISSING} (no results for any of {', '.join(ABLATION_METHODS)} on these "
                               "datasets)")], {}, departures
    complete, partial = [], []
    for r in abl.iter_rows(named=True):
        absent = [m for m in ABLATION_METHODS if r[m] is None]
        if r["dataset"] != AVERAGE:
            (partial if absent else complete).append(r["dataset"])
            if absent:
                departures.append(f"Table A7: {r['dataset']} has no {', '.join(absent)}: left out of the average")
    avg = (f"Average over {len(complete)} of {whose} datasets: {', '.join(complete)} (those with all four methods)."
           if complete else "No dataset has all four methods: no average.")
    blocks += [("p", f"Headline metric; improvement over MedDr in parentheses; best per row in bold. {avg}"),
               _ablation_block(abl),
               ("img", "ablation.png", "Ablation bar chart", "MedDr, +MoED, +RAD and GSCo per dataset.")]
    return blocks, {"ablation.png": ablation_png(abl)}, departures


def _fig4c_section(df: pl.DataFrame) -> Section:
    blocks: list[tuple] = [("h", 2, "Best specialist vs GSCo (Fig. 4(c))")]
    best, avg, common = best_specialist(df)
    if best is None:
        why = "no diagnosis dataset has a value for every specialist"
        return blocks + [("p", f"{MISSING} ({why})")], {}, [f"Fig. 4(c): not drawn: {why}"] if diagnosis_datasets(
            df) else []
    fmt = lambda v: MISSING if v is None else f"{v:.4f}"   # noqa: E731
    ranked = sorted(avg, key=lambda s: (-avg[s], s))
    blocks.append(("p", f"Best specialist: {best} (best average headline metric over the {len(common)} diagnosis "
                        "dataset(s) where every specialist has a value; the paper's is DenseNet-121). Averages: "
                        + ", ".join(f"{s} {avg[s]:.4f}" for s in ranked) + ". Accuracy for binary tasks, macro-F1 "
                        "otherwise."))
    tab = specialist_vs_gsco(df, best)
    rows = []
    for r in tab.iter_rows(named=True):
        top = max((v for v in (r["specialist"], r[GSCO]) if v is not None), default=None)
        rows.append([_cell(r["group"]), _cell(r["dataset"]), _cell(r["domain"]), _cell(r["headline"]),
                     _cell(fmt(r["specialist"]), r["specialist"] == top), _cell(fmt(r[GSCO]), r[GSCO] == top),
                     _cell(MISSING if r["gain"] is None else f"{r['gain']:+.4f}")])
    blocks += [("table", ["Task type", "Dataset", "Domain", "Metric", best, GSCO, "GSCo gain"], rows),
               ("img", "fig4c.png", "Best specialist vs GSCo", f"{best} vs GSCo per dataset, by task type.")]
    return blocks, {"fig4c.png": specialist_vs_gsco_png(tab, best)}, []


def _groups_section(df: pl.DataFrame) -> Section:
    groups = grouped_metrics(df)
    if not groups:
        return [], {}, []
    blocks: list[tuple] = [("h", 2, "Multiple choice per modality (Table A6, Fig. 3(b))"),
                           ("p", "Headline metric with 95% CI per question modality and overall, and the share of "
                                 "answers naming no option ('unparsed', counted as wrong).")]
    for d, gs in groups.items():
        sub = df.filter(pl.col("dataset") == d)
        head = sub["headline"][0]
        by_key = {(r["method"], r["metric"]): r for r in sub.iter_rows(named=True)}
        metrics = [group_metric(head, g) for g in gs] + [head]
        ns = {m: next((r["n"] for r in sub.filter(pl.col("metric") == m).iter_rows(named=True)), None)
              for m in metrics}
        rows = []
        for method in ordered_methods(sub):
            row = [_cell(method)]
            for m in metrics:
                r = by_key.get((method, m))
                if r is None or r["value"] is None:
                    row.append(_cell(MISSING if r is None else r["note"] or NO_REASON))
                    continue
                pf = "" if r["parse_failure_rate"] is None else f", {100 * r['parse_failure_rate']:.1f}% unparsed"
                row.append(_cell(format_estimate(r["value"], r["ci_low"], r["ci_high"]) + pf))
            rows.append(row)
        header = ["Method", *(f"{g} (n={ns[m]})" for g, m in zip(gs, metrics)), f"Overall (n={ns[head]})"]
        blocks += [("h", 3, f"{d}: {head} per modality"), ("table", header, rows)]
    return blocks, {}, []


def _complexity_section(specialists: list[dict] | None) -> Section:
    if specialists is None:
        return [], {}, []
    tab = complexity_table(specialists)
    blocks: list[tuple] = [("h", 2, "Specialist complexity (Table A12)"),
                           ("p", "Parameters (M) and GMACs per image at each job's input size (torch FlopCounterMode, "
                                 "MACs = FLOPs / 2; a range when the classifier head differs between datasets), "
                                 "median training images/s over the jobs (the paper gives seconds per epoch on "
                                 "PneumoniaMNIST instead), and the paper's parameters and GMACs (SAM ViT-B/16's at "
                                 "its native 1024 px).")]
    if tab.height == 0:
        return blocks + [("p", f"{MISSING} (no specialist jobs)")], {}, []

    def span(lo, hi, digits=1):
        if lo is None:
            return "not recorded"
        return f"{lo:.{digits}f}" if f"{lo:.{digits}f}" == f"{hi:.{digits}f}" else f"{lo:.{digits}f}-{hi:.{digits}f}"

    rows = [[_cell(r["arch"]), _cell(span(r["params_m_min"], r["params_m_max"], 2)),
             _cell(span(r["gmacs_min"], r["gmacs_max"], 2)),
             _cell("not recorded" if r["train_images_per_s"] is None else f"{r['train_images_per_s']:.0f}"),
             _cell(str(r["jobs"])), _cell(format_estimate(r["paper_params_m"], digits=1)),
             _cell(format_estimate(r["paper_gmacs"], digits=1))] for r in tab.iter_rows(named=True)]
    header = ["Architecture", "Parameters (M)", "GMACs", "Training images/s", "Jobs", "Paper parameters (M)",
              "Paper GMACs"]
    return blocks + [("table", header, rows)], {}, []


def _dataset_block(df: pl.DataFrame, dataset: str, methods: list[str], headline: str,
                   notes: dict) -> tuple[tuple, list[str]]:
    """The per-dataset table (every method x every metric, parse failures, P-values) and its footnotes."""
    sub = df.filter((pl.col("dataset") == dataset) & WHOLE_SET)   # per-modality rows: their own table (A6)
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
        pfr = (mine["parse_failure_rate"] if head_row is None or head_row["parse_failure_rate"] is None
               else pl.Series([head_row["parse_failure_rate"]])).drop_nulls()
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
                row.append(_cell(cell_reason(notes, dataset, method, m, r["note"] if r else None, r is not None)
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
        elif kind == "kv":
            out.append("\n".join(f"- {md_escape(k)}: " + (f"[{md_escape(v)}]({url})" if url else f"`{v}`")
                                 for k, v, url in b[1]))
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
        elif kind == "kv":
            out.append('<ul class="meta">' + "".join(
                f"<li>{e(k)}: " + (f'<a href="{e(url)}">{e(v)}</a>' if url else f"<code>{e(v)}</code>") + "</li>"
                for k, v, url in b[1]) + "</ul>")
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


def _checked_list(value, name: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ContractError(f"{name}: expected a list of non-empty strings, got {value!r}")
    return list(value)


def _per_dataset_section(df: pl.DataFrame, methods: list[str], notes: dict) -> Section:
    blocks: list[tuple] = [("h", 2, "Per-dataset results")]
    images, info = {}, dataset_info(df)
    for i, d in enumerate(ordered_datasets(df)):
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
    return blocks, images, []


def render_report(metrics: pl.DataFrame, out_dir: Path, title: str, notes: dict | None = None, *,
                  generated_at: datetime | bool = True, a7_datasets: list[str] | None = None,
                  specialists: list[dict] | None = None, departures: list[str] | None = None,
                  n_boot: int | None = None, provenance: dict | None = None) -> dict[str, Path]:
    """{file name: path} of report.md, report.html (plots inlined) and the PNG plots written under `out_dir`.

    `notes` keys: (dataset, method, metric) or (dataset, metric) give the reason a metric is absent there (and add the
    metric's column to that dataset's table); a plain string key is a report-wide note, and also the reason for any
    row of that metric name whose value is null. Every note is listed in the report. `generated_at`: True stamps the
    current UTC time, a datetime stamps that time, False leaves the line out (byte-identical reruns).
    `a7_datasets`: Table A7's datasets (None: the paper's nine). `specialists`: one row per specialist job, {arch,
    dataset, params_m, gmacs, train_images_per_s} (None: no Table A12 section). `departures`: the caller's list of
    where the run departs from the paper and why; the report adds what it sees itself (A7 datasets not evaluated,
    datasets left out of the ranking, metrics not computed, parse-failure rates above 10%). `n_boot`: the bootstrap
    resamples behind the CIs, stated in the report (None: not stated). `provenance`: what the numbers rest on, the
    report's header ({"fields": [(label, value, link or None)], "tables": [(title, header, rows of text)]}: the run
    that wrote it, commit, date, input digests; tasks/evaluation/stage.provenance builds it).
    """
    df = validated(metrics)
    notes = checked_notes(notes)
    departures = _checked_list(departures, "departures")
    a7 = _checked_list(PAPER_A7_DATASETS if a7_datasets is None else a7_datasets, "a7_datasets")
    if not isinstance(title, str) or not title.strip():
        raise ContractError(f"title: expected a non-empty string, got {title!r}")
    if n_boot is not None and (isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0):
        raise ContractError(f"n_boot: expected a non-negative number of resamples or None, got {n_boot!r}")
    if specialists is not None and (isinstance(specialists, (str, dict)) or not isinstance(specialists, list)):
        raise ContractError(f"specialists: expected a list of job rows, got {type(specialists).__name__}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    datasets, methods = ordered_datasets(df), ordered_methods(df)
    head: list[tuple] = [("h", 1, title), *provenance_blocks(provenance)]
    if generated_at is not False:
        stamp = datetime.now(timezone.utc) if generated_at is True else generated_at
        head.append(("p", f"Generated at {stamp.isoformat(timespec='seconds')}."))
    ci = ("point estimates only (no bootstrap resamples: no CIs or P-values)" if n_boot == 0 else
          "the point estimate with its 95% bootstrap CI" + ("" if n_boot is None else f" ({n_boot:,} resamples)"))
    head.append(("p", f"{len(datasets)} datasets, {len(methods)} methods. Each value is {ci}. "
                      "Headline metric: accuracy for binary tasks and multiple "
                      "choice, macro-F1 for other diagnosis tasks, token F1 for VQA, ROUGE-L for reports (SPEC §8). "
                      "'–' means the method has no result on that dataset."))
    if notes:
        head += [("h", 2, "Notes"), ("ul", [_note_text(k, v) for k, v in notes.items()])]
    summary = ([("h", 2, "Headline metric"), ("p", "Best value per dataset in bold."),
                _summary_block(df, datasets, methods, dataset_info(df), notes)], {}, [])
    sections = [summary, _ranking_section(df), _fig4c_section(df), _ablation_section(df, a7), _groups_section(df),
                _complexity_section(specialists), _per_dataset_section(df, methods, notes)]
    seen = [x for _, _, dep in sections for x in dep] + seen_departures(df)
    head += [("h", 2, "Departures from the paper"),
             ("ul", departures + seen) if departures or seen else ("p", "None recorded.")]
    blocks = head + [b for blocks_, _, _ in sections for b in blocks_]
    images = {name: data for _, imgs, _ in sections for name, data in imgs.items()}

    paths: dict[str, Path] = {}
    for name, data in images.items():
        write_bytes_atomic(out_dir / name, data)
        paths[name] = out_dir / name
    for name, text in ((REPORT_MD, _to_markdown(blocks)), (REPORT_HTML, _to_html(blocks, title, images))):
        write_bytes_atomic(out_dir / name, text.encode("utf-8"))
        paths[name] = out_dir / name
    return paths
