"""The evaluation report on a planted metrics frame: hand-computed ranks and ablation, every cell in Markdown and HTML.

    OMP_NUM_THREADS=1 pytest -q tests/test_report.py
"""
from __future__ import annotations

import base64
import re
from datetime import datetime, timezone
from html.parser import HTMLParser

import matplotlib
import polars as pl
import pytest
from PIL import Image

from data_contracts.errors import ContractError
from tasks.evaluation.report import md_escape, render_report
from tasks.evaluation.report_tables import ABLATION_METHODS, ablation_table, format_estimate, format_p, ranking
from tasks.evaluation.metrics import NOT_COMPUTED_WEIGHTS

PNEU, DERM, CHEST = "pneumonia", "derm<7pt>", "chest & x-ray"   # "<", ">" and "&" must come out escaped
METHODS = ["MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo", "Voting", "specialist:resnet18"]
CHEXBERT_WHY = "not computed: CheXbert weights absent"
# headline values (accuracy for the binary dataset, macro_f1 otherwise); None = no row (Voting skipped CHEST)
HEADLINE_VALUES = {
    PNEU: dict(zip(METHODS, [0.60, 0.80, 0.75, 0.85, 0.80, 0.70])),
    DERM: dict(zip(METHODS, [0.30, 0.55, 0.60, 0.65, 0.50, 0.58])),
    CHEST: dict(zip(METHODS, [0.20, 0.40, 0.45, 0.50, None, 0.42])),
}
DATASETS = {PNEU: ("in-domain", "binary", "accuracy"), DERM: ("out-of-domain", "multiclass", "macro_f1"),
            CHEST: ("out-of-domain", "multilabel", "macro_f1")}


def _row(dataset, method, metric, value, note=None, p=None, pfr=None):
    domain, task_type, headline = DATASETS[dataset]
    lo, hi = (None, None) if value is None else (round(value - 0.05, 3), round(value + 0.04, 3))
    return {"dataset": dataset, "domain": domain, "task_type": task_type, "method": method, "metric": metric,
            "value": value, "ci_low": lo, "ci_high": hi, "n": None if value is None else 200,
            "parse_failure_rate": pfr, "p_value_vs_best": p, "headline": headline, "note": note}


def planted(drop: tuple[str, str] | None = None) -> pl.DataFrame:
    """3 datasets x 6 methods with CIs; `drop` = (dataset, method) whose headline row is left out."""
    rows = []
    for d, by_m in HEADLINE_VALUES.items():
        headline = DATASETS[d][2]
        other = "macro_f1" if headline == "accuracy" else "accuracy"
        best = max(v for v in by_m.values() if v is not None)
        for i, (m, v) in enumerate(by_m.items()):
            if v is None or (d, m) == drop:
                continue
            pfr = 0.01 * i if m.startswith("MedDr") or m == "GSCo" else None   # only the generalist parses text
            p = None if v == best else (0.0004 if v < best - 0.2 else 0.03)
            rows.append(_row(d, m, headline, v, p=p, pfr=pfr))
            rows.append(_row(d, m, other, round(v - 0.1, 3), pfr=pfr))
    rows.append(_row(CHEST, "MedDr", "F1-RadGraph", None, note=NOT_COMPUTED_WEIGHTS))
    return pl.DataFrame(rows, schema_overrides={"note": pl.String, "parse_failure_rate": pl.Float64,
                                                 "p_value_vs_best": pl.Float64, "n": pl.Int64})


# ---------------------------------------------------------------------------------------------------- pure tables
def test_ranking_hand_computed():
    rank = ranking(planted())
    # pneumonia: GSCo .85=1, MoED .80 and Voting .80 tie=2.5, RAD .75=4, specialist .70=5, MedDr .60=6
    # derm: GSCo 1, RAD 2, specialist 3, MoED 4, Voting 5, MedDr 6
    # chest (no Voting): GSCo 1, RAD 2, specialist 3, MoED 4, MedDr 5
    expected = {  # method: (pneu, derm, chest, rank_sum, datasets_ranked)
        "GSCo": (1, 1, 1, 3, 3), "MedDr+RAD": (4, 2, 2, 8, 3), "MedDr+MoED": (2.5, 4, 4, 10.5, 3),
        "specialist:resnet18": (5, 3, 3, 11, 3), "Voting": (2.5, 5, None, 7.5, 2), "MedDr": (6, 6, 5, 17, 3),
    }
    assert rank.columns == ["method", PNEU, DERM, CHEST, "rank_sum", "average_rank", "datasets_ranked"]
    assert rank["method"].to_list() == ["GSCo", "MedDr+RAD", "MedDr+MoED", "specialist:resnet18", "Voting", "MedDr"]
    for r in rank.iter_rows(named=True):
        pn, de, ch, total, k = expected[r["method"]]
        assert (r[PNEU], r[DERM], r[CHEST], r["rank_sum"], r["datasets_ranked"]) == (pn, de, ch, total, k)
        assert r["average_rank"] == pytest.approx(total / k)

    ood = ranking(planted(), domain="out-of-domain")
    assert ood.columns[1:3] == [DERM, CHEST]
    assert dict(zip(ood["method"], ood["average_rank"]))["Voting"] == 5.0
    assert dict(zip(ood["method"], ood["average_rank"]))["MedDr"] == 5.5
    with pytest.raises(ContractError, match="no datasets in domain 'elsewhere'"):
        ranking(planted(), domain="elsewhere")


def test_ablation_hand_computed():
    abl = ablation_table(planted())
    assert abl["dataset"].to_list() == [PNEU, DERM, CHEST, "Average"]
    assert abl["headline"].to_list() == ["accuracy", "macro_f1", "macro_f1", None]
    got = {r["dataset"]: r for r in abl.iter_rows(named=True)}
    assert [got[DERM][m] for m in ABLATION_METHODS] == [0.30, 0.55, 0.60, 0.65]
    assert got[PNEU]["GSCo_delta"] == pytest.approx(0.25)
    assert got[DERM]["MedDr+RAD_delta"] == pytest.approx(0.30)
    avg = got["Average"]   # (0.6+0.3+0.2)/3, (0.8+0.55+0.4)/3, (0.75+0.6+0.45)/3, (0.85+0.65+0.5)/3
    assert [avg[m] for m in ABLATION_METHODS] == pytest.approx([1.1 / 3, 1.75 / 3, 0.6, 2 / 3])
    assert [avg[m + "_delta"] for m in ABLATION_METHODS[1:]] == pytest.approx([0.65 / 3, 0.7 / 3, 0.3])

    # RAD missing on chest: its row keeps a gap (no delta) and the average covers the two complete datasets only
    part = {r["dataset"]: r for r in ablation_table(planted(drop=(CHEST, "MedDr+RAD"))).iter_rows(named=True)}
    assert part[CHEST]["MedDr+RAD"] is None and part[CHEST]["MedDr+RAD_delta"] is None
    assert part[CHEST]["GSCo_delta"] == pytest.approx(0.30)
    assert [part["Average"][m] for m in ABLATION_METHODS] == pytest.approx([0.45, 0.675, 0.675, 0.75])


def test_formatting():
    assert format_estimate(0.8124, 0.7712, 0.85) == "0.812 (0.771-0.850)"
    assert format_estimate(0.8124) == "0.812"
    assert format_estimate(None) == "–"
    assert format_p(0.0004) == "<0.001" and format_p(0.0312) == "0.031" and format_p(None) == "–"
    assert md_escape("a<b>|c_ macro_f1 *x*") == r"a\<b\>\|c\_ macro_f1 \*x\*"


# ---------------------------------------------------------------------------------------------------- the report
class _Text(HTMLParser):
    """Text content and tag names of an HTML document."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.tags = [], set()

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, data):
        self.text.append(data)


def _md_row(md: str, section: str, method: str) -> list[str]:
    """Cells of `method`'s row in the first table after heading `section`."""
    part = md.split(f"### {section}\n", 1)[1].split("\n### ", 1)[0]
    line = next(ln for ln in part.splitlines() if ln.startswith(f"| {md_escape(method)} |"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    before = dict(matplotlib.rcParams)
    paths = render_report(planted(), out, "GSCo <tiny> report", notes={(CHEST, "CheXbert"): CHEXBERT_WHY},
                            generated_at=False)
    assert dict(matplotlib.rcParams) == before   # the caller's matplotlib settings are left alone
    return out, paths


def test_report_files_and_pngs(rendered):
    out, paths = rendered
    pngs = sorted(n for n in paths if n.endswith(".png"))
    assert "report.md" in paths and "report.html" in paths
    # 3 bar charts, a heatmap per domain plus one over all datasets, the ablation chart
    assert len([n for n in pngs if n.startswith("bar_")]) == 3
    assert len([n for n in pngs if n.startswith("ranking_")]) == 3
    assert "ablation.png" in pngs
    html_text = paths["report.html"].read_text()
    for name in pngs:
        assert paths[name].parent == out
        with Image.open(paths[name]) as im:
            im.verify()
        with Image.open(paths[name]) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100
        # self-contained HTML: each plot is inlined byte for byte
        assert base64.b64encode(paths[name].read_bytes()).decode() in html_text
    assert not list(out.glob(".*tmp*"))


def test_every_method_dataset_and_ci_in_markdown_and_html(rendered):
    _, paths = rendered
    md, raw_html = paths["report.md"].read_text(), paths["report.html"].read_text()
    parser = _Text()
    parser.feed(raw_html)
    text = "".join(parser.text)
    for d, by_m in HEADLINE_VALUES.items():
        assert md_escape(d) in md and d in text
        for m, v in by_m.items():
            assert md_escape(m) in md and m in text
            if v is not None:
                ci = format_estimate(v, round(v - 0.05, 3), round(v + 0.04, 3))
                assert ci in md and ci in text, (d, m, ci)
    # best per dataset in bold in the summary table
    assert "**0.850 (0.800-0.890)**" in md and "<strong>0.650 (0.600-0.690)</strong>" in raw_html
    # the ablation table: value with its gain over MedDr, the average row
    assert "0.6500 (+0.3500)" in md and "0.6667 (+0.3000)" in md
    # P-values and parse-failure rates of the per-dataset table
    derm_meddr = _md_row(md, md_escape(DERM), "MedDr")
    assert derm_meddr[1] == "200" and derm_meddr[-1] == "0.0%"
    assert "\\<0.001" in derm_meddr and _md_row(md, md_escape(DERM), "GSCo")[-2] == "best"
    assert _md_row(md, md_escape(DERM), "MedDr+RAD")[-1] == "2.0%"


def test_not_computed_and_missing_cells(rendered):
    _, paths = rendered
    md = paths["report.md"].read_text()
    header = _md_row(md, md_escape(CHEST), "Method")
    cells = dict(zip(header, _md_row(md, md_escape(CHEST), "MedDr")))
    assert cells["F1-RadGraph"] == md_escape(NOT_COMPUTED_WEIGHTS)
    assert cells["CheXbert"] == md_escape(CHEXBERT_WHY)   # a metric named only in notes still gets its column
    voting = _md_row(md, md_escape(CHEST), "Voting")
    assert set(voting[1:]) == {"–"}   # a method with no result on a dataset: dashes, never a number
    assert not any(re.fullmatch(r"0(\.0+)?", c) for c in voting + list(cells.values()))
    assert NOT_COMPUTED_WEIGHTS in paths["report.html"].read_text()
    assert f"{CHEST} / CheXbert: {CHEXBERT_WHY}".replace("&", "&amp;") in paths["report.html"].read_text()


def test_html_escapes_labels(rendered):
    _, paths = rendered
    raw = paths["report.html"].read_text()
    assert "<7pt>" not in raw and "<tiny>" not in raw and "chest & x-ray" not in raw
    assert "derm&lt;7pt&gt;" in raw and "GSCo &lt;tiny&gt; report" in raw and "chest &amp; x-ray" in raw
    parser = _Text()
    parser.feed(raw)
    assert parser.tags <= {"html", "head", "meta", "title", "style", "body", "h1", "h2", "h3", "p", "ul", "li",
                           "table", "thead", "tbody", "tr", "th", "td", "strong", "figure", "img", "figcaption"}
    md = paths["report.md"].read_text()
    assert "derm\\<7pt\\>" in md and "<7pt>" not in md


def test_deterministic_and_generated_at(rendered, tmp_path):
    out, paths = rendered
    again = render_report(planted(), tmp_path / "a", "GSCo <tiny> report",
                            notes={(CHEST, "CheXbert"): CHEXBERT_WHY}, generated_at=False)
    assert sorted(again) == sorted(paths)
    for name in paths:
        assert again[name].read_bytes() == paths[name].read_bytes(), name
    stamp = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    stamped = render_report(planted(), tmp_path / "b", "t", generated_at=stamp)
    assert "Generated at 2026-01-02T03:04:05+00:00." in stamped["report.md"].read_text()
    assert "Generated at" not in paths["report.md"].read_text()


def test_nan_headline_is_not_computed(tmp_path):
    """A NaN or null headline is 'not computed': left out of the ranking, its reason shown, never drawn as 0."""
    why = "not computed: specialist checkpoint absent"
    df = planted().with_columns(
        pl.when((pl.col("dataset") == PNEU) & (pl.col("method") == "specialist:resnet18")
                & (pl.col("metric") == "accuracy")).then(float("nan")).otherwise("value").alias("value"),
        pl.when((pl.col("dataset") == PNEU) & (pl.col("method") == "specialist:resnet18")
                & (pl.col("metric") == "accuracy")).then(pl.lit(why)).otherwise("note").alias("note"))
    rank = {r["method"]: r for r in ranking(df).iter_rows(named=True)}
    assert rank["specialist:resnet18"][PNEU] is None and rank["specialist:resnet18"]["datasets_ranked"] == 2
    assert rank["MedDr"][PNEU] == 5.0   # five methods ranked on pneumonia now
    md = render_report(df, tmp_path, "t", generated_at=False)["report.md"].read_text()
    summary = md.split("## Headline metric", 1)[1].split("## Ranking", 1)[0]
    spec = next(ln for ln in summary.splitlines() if ln.startswith("| specialist:resnet18 |"))
    assert spec.split(" | ")[1] == why
    assert _md_row(md, PNEU, "specialist:resnet18")[2] == why


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop("ci_low"), r"lacks column\(s\) \['ci_low'\]"),
    (lambda df: pl.concat([df, df.head(1)]), "appears more than once"),
    (lambda df: df.with_columns(pl.when(pl.col("method") == "GSCo").then(pl.lit("f1")).otherwise("headline")
                                .alias("headline")), "several values of 'headline'"),
    (lambda df: df.with_columns(pl.when(pl.col("method") == "GSCo").then(0.99).otherwise("ci_low").alias("ci_low")),
     r"field 'ci_low': expected ci_low <= ci_high"),
    (lambda df: df.with_columns(pl.lit(1.5).alias("p_value_vs_best")), r"field 'p_value_vs_best'"),
    (lambda df: df.with_columns(pl.when(pl.col("dataset") == PNEU).then(pl.lit("Average")).otherwise("dataset")
                                .alias("dataset")), "reserved"),
    (lambda df: df.head(0), "no rows"),
])
def test_bad_input_is_named(change, message):
    with pytest.raises(ContractError, match=message):
        ranking(change(planted()))


def test_bad_notes(tmp_path):
    with pytest.raises(ContractError, match="notes key"):
        render_report(planted(), tmp_path, "t", notes={(CHEST,): "why"}, generated_at=False)
    with pytest.raises(ContractError, match="non-empty reason"):
        render_report(planted(), tmp_path, "t", notes={"CheXbert": ""}, generated_at=False)
