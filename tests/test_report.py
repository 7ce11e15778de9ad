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
from tasks.evaluation.report_tables import (ABLATION_METHODS, ablation_table, best_specialist, complexity_table,
                                            fig4_ranking, format_estimate, format_p, ranking, seen_departures,
                                            specialist_vs_gsco)
from tasks.evaluation.settings import PAPER_A7_DATASETS
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
                          generated_at=False, a7_datasets=[PNEU, DERM, CHEST])
    assert dict(matplotlib.rcParams) == before   # the caller's matplotlib settings are left alone
    return out, paths


def test_report_files_and_pngs(rendered):
    out, paths = rendered
    pngs = sorted(n for n in paths if n.endswith(".png"))
    assert "report.md" in paths and "report.html" in paths
    # 3 bar charts, a Fig. 4 heatmap per domain, the ablation chart, Fig. 4(c)
    assert len([n for n in pngs if n.startswith("bar_")]) == 3
    assert [n for n in pngs if n.startswith("ranking_")] == ["ranking_00_in-domain.png", "ranking_01_out-of-domain.png"]
    assert "ablation.png" in pngs and "fig4c.png" in pngs
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
                          notes={(CHEST, "CheXbert"): CHEXBERT_WHY}, generated_at=False,
                          a7_datasets=[PNEU, DERM, CHEST])
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


# ------------------------------------------------------------------------------------------- the paper's shapes
# A benchmark with real dataset names: four diagnosis sets, open VQA, multiple choice per modality, reports.
PAPER_DS = {"pcam200": ("in-domain", "binary", "accuracy"), "dermnet": ("in-domain", "multiclass", "macro_f1"),
            "breastmnist": ("out-of-domain", "binary", "accuracy"),
            "fmc_chest": ("out-of-domain", "multilabel", "macro_f1"), "vqa_rad": ("in-domain", "open", "F1"),
            "omnimedvqa": ("out-of-domain", "multiple-choice", "accuracy"), "iu_xray": ("in-domain", "open", "ROUGE-L")}
DIAG_METHODS = ["MedDr", "MedDr+MoED", "MedDr+RAD", "GSCo", "Voting", "specialist:densenet121",
                "specialist:resnet18", "generalist:rival", "MedDr+RAD(MedDr-encoder)"]
DIAG_VALUES = {  # None: no row (the rival generalist was not run on FMC-Chest)
    "pcam200": [0.90, 0.93, 0.92, 0.95, 0.94, 0.91, 0.92, 0.60, 0.91],
    "dermnet": [0.30, 0.58, 0.55, 0.60, 0.50, 0.55, 0.45, 0.20, 0.40],
    "breastmnist": [0.72, 0.90, 0.90, 0.93, 0.88, 0.86, 0.80, 0.70, 0.85],
    "fmc_chest": [0.10, 0.30, 0.32, 0.35, 0.20, 0.33, 0.31, None, 0.30],
}
SPECIALIST_JOBS = [
    {"arch": "densenet121", "dataset": "pcam200", "params_m": 6.96, "gmacs": 2.83, "train_images_per_s": 1300.0},
    {"arch": "densenet121", "dataset": "fmc_chest", "params_m": 6.97, "gmacs": 2.83, "train_images_per_s": 1100.0},
    {"arch": "resnet18", "dataset": "pcam200", "params_m": 11.18, "gmacs": 1.82, "train_images_per_s": None},
]


def _prow(dataset, method, metric, value, pfr=None, p=None, note=None, n=100):
    domain, task_type, headline = PAPER_DS[dataset]
    lo, hi = (None, None) if value is None else (value - 0.01, value + 0.01)
    return {"dataset": dataset, "domain": domain, "task_type": task_type, "method": method, "metric": metric,
            "value": value, "ci_low": lo, "ci_high": hi, "n": n, "parse_failure_rate": pfr, "p_value_vs_best": p,
            "headline": headline, "note": note}


def paper_like() -> pl.DataFrame:
    rows = []
    for d, values in DIAG_VALUES.items():
        for m, v in zip(DIAG_METHODS, values):
            if v is not None:
                pfr = (0.25 if (d, m) == ("dermnet", "MedDr") else 0.02) if m.startswith(("MedDr", "GSCo")) else None
                rows.append(_prow(d, m, PAPER_DS[d][2], v, pfr=pfr))
    rows += [_prow("vqa_rad", "MedDr", "F1", 0.61), _prow("vqa_rad", "generalist:rival", "F1", 0.57, p=0.02),
             _prow("iu_xray", "MedDr", "ROUGE-L", 0.22),
             _prow("iu_xray", "MedDr", "F1-RadGraph", None, note=NOT_COMPUTED_WEIGHTS),
             _prow("iu_xray", "generalist:rival", "ROUGE-L", 0.18, p=0.001),
             _prow("iu_xray", "generalist:rival", "F1-RadGraph", None, note=NOT_COMPUTED_WEIGHTS)]
    for m, (overall, ct, mri) in {"MedDr": (0.63, 0.615, 0.636), "generalist:rival": (0.55, 0.5, 0.57)}.items():
        rows += [_prow("omnimedvqa", m, "accuracy", overall, pfr=0.02, n=300),
                 _prow("omnimedvqa", m, "accuracy[CT]", ct, pfr=0.0, n=100),
                 _prow("omnimedvqa", m, "accuracy[MRI]", mri, pfr=0.03, n=200)]
    return pl.DataFrame(rows, schema_overrides={"note": pl.String, "parse_failure_rate": pl.Float64,
                                                 "p_value_vs_best": pl.Float64, "n": pl.Int64, "value": pl.Float64,
                                                 "ci_low": pl.Float64, "ci_high": pl.Float64})


def test_fig4_ranks_diagnosis_sets_and_paper_methods_only():
    a, left_a = fig4_ranking(paper_like(), "in-domain")
    # pcam200: GSCo .95, Voting .94, resnet18 .92, densenet121 .91, MedDr .90, rival .60
    # dermnet: GSCo .60, densenet121 .55, Voting .50, resnet18 .45, MedDr .30, rival .20
    assert a.columns == ["method", "pcam200", "dermnet", "rank_sum", "average_rank", "datasets_ranked"]  # no vqa_rad
    got = {r["method"]: (r["pcam200"], r["dermnet"], r["rank_sum"]) for r in a.iter_rows(named=True)}
    assert got == {"GSCo": (1, 1, 2), "Voting": (2, 3, 5), "specialist:densenet121": (4, 2, 6),
                   "specialist:resnet18": (3, 4, 7), "MedDr": (5, 5, 10), "generalist:rival": (6, 6, 12)}
    assert left_a == {}
    b, left_b = fig4_ranking(paper_like(), "out-of-domain")
    # FMC-Chest has no rival result: left out (with the reason), not ranked on the others' values; no OmniMedVQA
    assert b.columns == ["method", "breastmnist", "rank_sum", "average_rank", "datasets_ranked"]
    assert left_b == {"fmc_chest": ["generalist:rival"]}
    assert b["method"].to_list() == ["GSCo", "Voting", "specialist:densenet121", "specialist:resnet18", "MedDr",
                                     "generalist:rival"]


def test_a7_average_over_the_present_subset():
    abl = {r["dataset"]: r for r in ablation_table(paper_like(), PAPER_A7_DATASETS).iter_rows(named=True)}
    assert list(abl) == ["pcam200", "dermnet", "breastmnist", "Average"]   # fmc_chest is not one of the nine
    assert [abl["Average"][m] for m in ABLATION_METHODS] == pytest.approx([1.92 / 3, 2.41 / 3, 2.37 / 3, 2.48 / 3])


def test_fig4c_best_specialist_by_average():
    best, avg, common = best_specialist(paper_like())
    # densenet121 (.91+.55+.86+.33)/4 beats resnet18 (.92+.45+.80+.31)/4 although resnet18 wins on pcam200
    assert best == "specialist:densenet121" and common == ["pcam200", "dermnet", "breastmnist", "fmc_chest"]
    assert avg == pytest.approx({"specialist:densenet121": 0.6625, "specialist:resnet18": 0.62})
    tab = specialist_vs_gsco(paper_like(), best)
    assert tab.select("group", "dataset").rows() == [("binary", "pcam200"), ("binary", "breastmnist"),
                                                     ("multiclass", "dermnet"), ("multilabel", "fmc_chest")]
    assert tab["gain"].to_list() == pytest.approx([0.04, 0.07, 0.05, 0.02])


def test_a12_complexity_rows():
    tab = {r["arch"]: r for r in complexity_table(SPECIALIST_JOBS).iter_rows(named=True)}
    assert tab["densenet121"] == {"arch": "densenet121", "params_m_min": 6.96, "params_m_max": 6.97,
                                  "gmacs_min": 2.83, "gmacs_max": 2.83, "train_images_per_s": 1200.0, "jobs": 2,
                                  "paper_params_m": 8.0, "paper_gmacs": 2.9}
    assert tab["resnet18"]["train_images_per_s"] is None and tab["resnet18"]["paper_gmacs"] == 1.8
    with pytest.raises(ContractError, match=r"specialists\[0\] \(arch 'x'\) field 'gmacs'"):
        complexity_table([{"arch": "x", "gmacs": "big"}])


def test_departures_seen_in_the_frame():
    seen = seen_departures(paper_like())
    assert seen == ["F1-RadGraph not computed on iu_xray (2 method(s)): " + NOT_COMPUTED_WEIGHTS,
                    "MedDr on dermnet: 25.0% of answers map to no valid answer (counted as wrong; above 10%)"]


@pytest.fixture(scope="module")
def paper_report(tmp_path_factory):
    paths = render_report(paper_like(), tmp_path_factory.mktemp("paper"), "GSCo", generated_at=False,
                          specialists=SPECIALIST_JOBS, departures=["MedDr is a 2B model, not the paper's 40B"],
                          n_boot=300)
    return paths["report.md"].read_text()


def _section(md: str, heading: str) -> str:
    return md.split(heading + "\n", 1)[1].split("\n## ", 1)[0]


def test_report_sections_in_the_papers_shapes(paper_report):
    md = paper_report
    assert "Each value is the point estimate with its 95% bootstrap CI (300 resamples)." in md
    departures = _section(md, "## Departures from the paper").strip().splitlines()
    assert departures == [
        "- MedDr is a 2B model, not the paper's 40B",
        "- Fig. 4(b): out-of-domain: fmc_chest (no value for generalist:rival) left out of the ranking",
        "- Table A7: 6 of the paper's 9 datasets not evaluated: ham10000, retinal_oct_c8, vindr_spinexr, "
        "pneumoniamnist, cbis_ddsm_calc, pathmnist",
        "- F1-RadGraph not computed on iu_xray (2 method(s)): " + md_escape(NOT_COMPUTED_WEIGHTS),
        "- MedDr on dermnet: 25.0% of answers map to no valid answer (counted as wrong; above 10%)"]
    ranking_md = _section(md, "## Ranking (Fig. 4)")
    assert "Not ranked (ablation arms, Tables A7 and A9): MedDr+MoED, MedDr+RAD, MedDr+RAD(MedDr-encoder)." \
        in ranking_md
    assert "vqa" not in ranking_md and "omnimedvqa" not in ranking_md and "iu" not in ranking_md
    assert "| GSCo | 2 | 1 | 3 |" in ranking_md and "| generalist:rival | 12 | 6 | 18 |" in ranking_md
    a7 = _section(md, "## Ablation (Table A7)")
    assert "Evaluated in this run: 3 of 9 (pcam200, dermnet, breastmnist)." in a7
    assert "Average over 3 of the paper's 9 datasets: pcam200, dermnet, breastmnist (those with all four" in a7
    fig4c = _section(md, "## Best specialist vs GSCo (Fig. 4(c))")
    assert "Best specialist: specialist:densenet121 (" in fig4c
    assert "| multilabel | fmc_chest | out-of-domain | macro_f1 | 0.3300 | **0.3500** | +0.0200 |" in fig4c
    a6 = _section(md, "## Multiple choice per modality (Table A6, Fig. 3(b))")
    assert "| Method | CT (n=100) | MRI (n=200) | Overall (n=300) |" in a6
    assert ("| MedDr | 0.615 (0.605-0.625), 0.0% unparsed | 0.636 (0.626-0.646), 3.0% unparsed | "
            "0.630 (0.620-0.640), 2.0% unparsed |") in a6
    a12 = _section(md, "## Specialist complexity (Table A12)")
    assert "| densenet121 | 6.96-6.97 | 2.83 | 1200 | 2 | 8.0 | 2.9 |" in a12
    assert "| resnet18 | 11.18 | 1.82 | not recorded | 1 | 11.7 | 1.8 |" in a12
    per_dataset = _section(md, "## Per-dataset results")
    assert "accuracy\\[CT\\]" not in per_dataset   # per-modality rows live in the A6 table only
    vqa = per_dataset.split("### vqa_rad", 1)[1].split("### ", 1)[0]
    assert "| generalist:rival | 100 | 0.570 (0.560-0.580) | 0.020 | – |" in vqa


def test_bad_departures(tmp_path):
    with pytest.raises(ContractError, match="departures: expected a list of non-empty strings"):
        render_report(planted(), tmp_path, "t", generated_at=False, departures="MedDr is small")
