"""Report references (the FINDINGS section, MultiMedEval's convention) and the model-based report metrics' refusals.

    OMP_NUM_THREADS=1 pytest -q tests/test_references.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tasks.evaluation.clinical import chexbert_scorer, radgraph_scorer
from tasks.evaluation.references import reference_section

# what the IU-Xray loader writes from the CSV's findings and impression columns (tasks/ingest/loaders/tables.py)
IU = "Findings: There is a small left pleural effusion. Heart size is normal.\nImpression: Small left effusion."
MIMIC = textwrap.dedent("""\
                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with cough

 COMPARISON:  None.

 FINDINGS:
 
 The lungs are clear.  No pleural effusion or pneumothorax.
 The cardiomediastinal silhouette is normal.
 
 IMPRESSION:
 
 No acute cardiopulmonary process.
""")


@pytest.mark.parametrize("text, findings, impression", [
    (IU, "There is a small left pleural effusion. Heart size is normal.", "Small left effusion."),
    (MIMIC, "The lungs are clear. No pleural effusion or pneumothorax. The cardiomediastinal silhouette is normal.",
     "No acute cardiopulmonary process."),
    # inline upper-case headers, a space before the colon
    ("COMPARISON: none. FINDINGS: Heart is enlarged. IMPRESSION : Cardiomegaly.", "Heart is enlarged.",
     "Cardiomegaly."),
    ("findings: lungs clear. impression: normal", "lungs clear.", "normal"),
    # a header word inside a sentence is text, not a header
    ("Findings: No acute findings: see impression. Impression: Normal.", "No acute findings: see impression.",
     "Normal."),
    # a combined header gives both sections
    ("FINDINGS AND IMPRESSION: Normal chest.", "Normal chest.", "Normal chest."),
    # impression only (some IU-Xray reports): no findings section -> None, the caller drops the sample
    ("Impression: No active disease.", None, "No active disease."),
    ("Findings:\nImpression: Mild cardiomegaly.", None, "Mild cardiomegaly."),   # an empty findings section
    ("The heart is normal.", None, None),                                        # no headers at all
])
def test_reference_section(text, findings, impression):
    assert reference_section(text, "findings") == findings
    assert reference_section(text, "impression") == impression


def test_reference_section_full_and_bad_arguments():
    assert reference_section(IU, "full") == " ".join(IU.split())
    assert reference_section("  \n ", "full") is None
    with pytest.raises(ValueError, match="section: expected one of"):
        reference_section(IU, "summary")
    with pytest.raises(TypeError, match="expected a report string"):
        reference_section(None, "findings")


def test_tiny_iu_xray_texts_have_findings_or_are_impression_only():
    """The tiny generator's report rows, joined as the loader joins them, split into the expected sections."""
    import csv
    import io

    import numpy as np

    from data_contracts.cards import get_card
    from tasks.ingest.loaders.tables import _text
    from tasks.ingest.tiny_texts import build_iu_xray
    card = get_card("iu_xray")
    files = build_iu_xray(card, np.random.default_rng(0), {}, 1.0)
    rows = list(csv.DictReader(io.StringIO(files[card.raw.table].decode())))
    texts = [_text(r, card.raw.text_columns) for r in rows]
    got = [reference_section(t, "findings") for t in texts]
    assert [g is None for g in got] == [not r["findings"].strip() for r in rows]
    assert [g for g in got if g] == [" ".join(r["findings"].split()) for r in rows if r["findings"].strip()]
    assert all(reference_section(t, "impression") == r["impression"] for t, r in zip(texts, rows))


# ----------------------------------------------------------------------------------------- model-based metrics
def test_model_metrics_without_weights_are_not_computed_with_the_reason(tmp_path):
    assert radgraph_scorer(None) == (None, "not computed: no local weights configured "
                                           "(evaluation.report_metrics.radgraph)")
    assert chexbert_scorer(None) == (None, "not computed: no local weights configured "
                                           "(evaluation.report_metrics.chexbert)")
    scorer, why = radgraph_scorer(str(tmp_path / "radgraph-xl"))
    assert scorer is None and why.startswith("not computed: RadGraph model folder") and "weights.th" in why
    scorer, why = chexbert_scorer(str(tmp_path))
    assert scorer is None and why == f"not computed: no CheXbert checkpoint chexbert.pth at {tmp_path}"


def test_radgraph_refused_under_transformers_without_encode_plus(tmp_path):
    folder = tmp_path / "radgraph"
    (folder / "vocabulary").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "weights.th").write_bytes(b"")
    scorer, why = radgraph_scorer(str(folder))
    assert scorer is None
    try:
        import radgraph  # noqa: F401
    except ImportError:
        assert why == ("not computed: radgraph not installed (radgraph==0.1.18 conflicts with transformers 5.x: "
                       "it calls tokenizer.encode_plus, which transformers 5 removed)")
    else:
        assert "encode_plus" in why


# A tiny stand-in for bert-base-uncased in a private Hugging Face cache, and a CheXbert checkpoint of f1chexbert's
# own labeler built on it: the whole local-weights path, run offline in a fresh interpreter (the cache location is
# read when huggingface_hub is imported).
_CHEXBERT_RUN = """
import json, sys, torch
from f1chexbert.f1chexbert import bert_labeler
from tasks.evaluation.clinical import chexbert_scorer
from transformers import BertTokenizer
torch.manual_seed(0)
weights = sys.argv[1]
labeler = bert_labeler(inference=True).eval()
with torch.no_grad():       # far from the initialisation, so that an unloaded checkpoint shows
    for p in labeler.parameters():
        p.add_(torch.randn_like(p))
torch.save({"model_state_dict": {"module." + k: v for k, v in labeler.state_dict().items()}},
           weights + "/chexbert.pth")
scorer, why = chexbert_scorer(weights, device="cpu")      # builds its own labeler: equal only if the file is loaded
assert why is None, why
hyps, refs = ["no effusion", "large left pleural effusion", ""], ["no effusion", "no effusion", "no effusion"]
tok = BertTokenizer.from_pretrained("bert-base-uncased")
with torch.no_grad():
    cls = lambda t: labeler.bert(**tok(t, return_tensors="pt", padding=True))[0][:, 0]
    want = torch.nn.functional.cosine_similarity(cls(hyps), cls(refs), dim=1)
print(json.dumps([[float(x) for x in scorer(hyps, refs)], want.tolist()]))
"""


def _fake_hub_cache(root: Path) -> None:
    snap = root / "models--bert-base-uncased" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (root / "models--bert-base-uncased" / "refs").mkdir()
    (root / "models--bert-base-uncased" / "refs" / "main").write_text("0" * 40)
    (snap / "config.json").write_text(json.dumps({
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 32, "hidden_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 512}))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "no", "effusion", "large", "left", "pleural"]
    (snap / "vocab.txt").write_text("\n".join(vocab + [f"w{i}" for i in range(32 - len(vocab))]) + "\n")
    (snap / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True}))


def test_chexbert_vector_similarity_from_local_weights_only(tmp_path):
    pytest.importorskip("f1chexbert")
    cache, weights = tmp_path / "hub", tmp_path / "chexbert"
    _fake_hub_cache(cache)
    weights.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", _CHEXBERT_RUN, str(weights)], env=env, capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    got, want = json.loads(run.stdout.strip().splitlines()[-1])
    assert got == pytest.approx(want, abs=1e-5)              # the checkpoint's labeler, [CLS] cosine per pair
    same, different, empty = got
    assert same == pytest.approx(1.0, abs=1e-6)              # identical reports
    assert different < same - 0.01 and empty < same - 0.01
