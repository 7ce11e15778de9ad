"""The report's departures from the paper: the tiny profile names every shortcut, the full profile none of them."""
from infra.profiles import load_profile
from tasks.evaluation.departures import ingest_warnings, profile_departures


def test_tiny_profile_names_its_departures():
    lines = profile_departures(load_profile("tiny"))
    text = "\n".join(lines)
    assert lines[0].startswith("Data: generated look-alikes")
    assert "tiny random-initialised InternVL" in text and "steps at learning rate" in text
    assert "collaboration instructions (MedDr, MedDr+MoED, MedDr+RAD, GSCo" in text and "training-free" in text
    assert "not out-of-domain for the tiny MedDr" in text
    assert "ChestMNIST" in text and "evaluation's diagnosis prompt" in text
    assert "Specialists trained from random initialisation" in text
    assert "RAD retrieves" not in text            # k = 5, the paper's
    assert "Table A7" not in text     # the paper's nine by default; the report says which of them ran


def test_full_profile_keeps_the_papers_protocol():
    full = load_profile("full")
    assert (full.evaluation.rad_k, full.rad.retriever) == (5, "best-validation")
    assert full.evaluation.generation.report.max_new_tokens >= 512 > full.evaluation.generation.diagnosis.max_new_tokens
    assert full.evaluation.a7_datasets == ["pcam200", "dermnet", "ham10000", "retinal_oct_c8", "vindr_spinexr",
                                           "pneumoniamnist", "breastmnist", "cbis_ddsm_calc", "pathmnist"]
    assert not full.corpus.collaboration.enabled and full.corpus.cls_prompt == "paper"
    text = "\n".join(profile_departures(full))
    assert "Corpus:" not in text and "RAD" not in text and "bootstrap" not in text and "Table A7" not in text


def test_loader_warnings_become_departures():
    results = [{"dataset": "pneumoniamnist", "warnings": ["pneumoniamnist: read pneumoniamnist.npz (28 px); ..."]},
               {"dataset": "slake"}]
    assert ingest_warnings(results) == ["Data: pneumoniamnist: read pneumoniamnist.npz (28 px); ..."]
