"""The evaluation report's plots: per-dataset bars with CI whiskers, the ranking heatmap, the ablation chart.

Drawn with matplotlib's Agg canvas under matplotlib's default rc settings, so the same frame gives the same PNG bytes
whatever the caller's matplotlib configuration.
"""
from __future__ import annotations

import io
import math

import polars as pl

from tasks.evaluation.report_tables import (ABLATION_METHODS, MISSING, RANKING_COLUMNS, fmt_rank,
                                            headline_rows)

DPI = 100
_PNG_METADATA = {"Software": None}   # keeps the PNG bytes independent of the matplotlib version
_RC = {"text.parse_math": False, "svg.hashsalt": "gsco", "axes.spines.top": False, "axes.spines.right": False}
_FAMILY_COLOURS = {"GSCo": "#d62728", "MedDr": "#1f77b4", "Voting": "#2ca02c", "specialist": "#8c8c8c",
                   "other": "#9467bd"}
_ABLATION_COLOURS = ("#1f77b4", "#ff7f0e", "#9467bd", "#d62728")


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


def bar_png(df: pl.DataFrame, dataset: str, methods: list[str], headline: str) -> bytes:
    head = {r["method"]: r for r in headline_rows(df.filter(pl.col("dataset") == dataset)).iter_rows(named=True)}
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


def ranking_png(rank: pl.DataFrame, title: str) -> bytes:
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
                text = MISSING if math.isnan(v) else (f"{v:.2f}" if j == len(datasets) else fmt_rank(v))
                dark = not math.isnan(v) and abs((v - 1) / (vmax - 1) - 0.5) > 0.35   # deep green / deep red
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.axvline(len(datasets) - 0.5, color="white", linewidth=3)
        ax.set_xticks(range(len(cols)), labels=[*datasets, "average rank"], rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), labels=methods, fontsize=8)
        ax.set_title(title, fontsize=10)
        for s in ax.spines.values():
            s.set_visible(False)

    return _png(draw, (1.8 + 0.6 * len(cols), 0.9 + 0.3 * len(methods)))


def ablation_png(abl: pl.DataFrame) -> bytes:
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


def specialist_vs_gsco_png(tab: pl.DataFrame, specialist: str) -> bytes:
    """Fig. 4(c): one panel per task type (binary, multiclass, multilabel), the best specialist's and GSCo's headline
    metric per dataset side by side; an absent value is a labelled gap, never a bar at 0."""
    groups = [g for g in tab["group"].unique(maintain_order=True).to_list()]
    sizes = [tab.filter(pl.col("group") == g).height for g in groups]
    series = (("specialist", specialist, _FAMILY_COLOURS["specialist"]), ("GSCo", "GSCo", _FAMILY_COLOURS["GSCo"]))

    def draw(fig):
        axes = fig.subplots(1, len(groups), sharey=True, squeeze=False, width_ratios=sizes)[0]
        for ax, g in zip(axes, groups):
            sub = tab.filter(pl.col("group") == g)
            labels = sub["dataset"].to_list()
            for k, (col, name, colour) in enumerate(series):
                vals = sub[col].to_list()
                xs = [i + (k - 0.5) * 0.4 for i in range(len(labels))]
                bars = ax.bar(xs, [0.0 if v is None else v for v in vals], width=0.4, color=colour, label=name)
                for b, v in zip(bars, vals):
                    if v is None:
                        ax.text(b.get_x() + 0.2, 0.01, MISSING, ha="center", va="bottom", fontsize=7)
            ax.set_xticks(range(len(labels)), labels=labels, rotation=30, ha="right", fontsize=8)
            ax.set_ylim(0, 1.05)
            ax.set_title(g, fontsize=9)
        axes[0].set_ylabel("accuracy (binary) / macro-F1", fontsize=8)
        axes[0].legend(fontsize=8, ncols=2, loc="lower left", bbox_to_anchor=(0.0, 1.08), frameon=False)

    return _png(draw, (max(5.0, 1.5 + 0.9 * sum(sizes)), 3.6))
