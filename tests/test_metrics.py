"""Metrics on hand-computed cases and against scikit-learn / sacrebleu / rouge-score / torchmetrics directly.

    OMP_NUM_THREADS=1 pytest -q tests/test_metrics.py
"""
from __future__ import annotations

import math
import shutil

import numpy as np
import pytest

from tasks.evaluation import bootstrap, metrics
from tasks.evaluation.bootstrap import Estimate


# ------------------------------------------------------------------------------------------------------------ VQA
@pytest.mark.parametrize("raw, clean", [
    ("Yes!", "yes"),
    ("The answer is Two.", "answer is 2"),
    ("An MRI", "mri"),
    ("x-ray", "x ray"),                 # a mark inside a word separates words
    ("left - lung", "left lung"),       # a mark next to a space is deleted
    ("1,000 cells", "1000 cells"),
    ("2.5 cm.", "2.5 cm"),              # a decimal point survives, a full stop does not
    ("none", "0"),
    ("dont know", "don't know"),        # contractions get their apostrophe back
    ("well defined", "well defined"),   # ...but English words that look like one stay
    ("Is it (left)?", "is it left"),
])
def test_vqa_clean_str(raw, clean):
    assert metrics.clean_str(raw) == clean


VQA_CASES = [  # (prediction, ground truth)
    ("Yes, it is.", "yes"),                       # closed, right
    ("There is not any fracture", "no"),          # closed: "no" also accepts "not" -> recall 1/2 >= 0.5, right
    ("yes", "no"),                                # closed, wrong
    ("the left lung", "Left lung"),               # open, recall 1, right
    ("right lobe", "right upper lobe"),           # open, recall 2/3 < 0.75, wrong
    ("4 nodules", "four"),                        # open, recall 1, precision 1/2, right
]


def test_vqa_per_sample_and_thresholds_by_hand():
    per = metrics.vqa_per_sample(*zip(*VQA_CASES))
    np.testing.assert_array_equal(per["closed"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(per["recall"], [1, 0, 0, 1, 2 / 3, 1])
    np.testing.assert_allclose(per["precision"], [1 / 3, 0, 0, 1, 1, 1 / 2])
    np.testing.assert_allclose(per["f1"], [0.5, 0, 0, 1, 0.8, 2 / 3])
    np.testing.assert_array_equal(per["closed_correct"], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(per["open_correct"], [0, 0, 0, 1, 0, 1])
    # BLEU-1 with brevity penalty: "right lobe" vs "right upper lobe" -> precision 1, BP exp(1 - 3/2)
    assert per["bleu1"][4] == pytest.approx(math.exp(-0.5))
    assert per["bleu1"][5] == pytest.approx(0.5)
    assert per["bleu1"][3] == pytest.approx(1.0)

    scores = metrics.vqa_scores(*zip(*VQA_CASES), n=0)
    assert scores["ClosedAcc"].point == pytest.approx(2 / 3)
    assert scores["OpenAcc"].point == pytest.approx(2 / 3)
    assert scores["OpenRecall"].point == pytest.approx((1 + 2 / 3 + 1) / 3)
    assert scores["Recall"].point == pytest.approx((1 + 0 + 0 + 1 + 2 / 3 + 1) / 6)
    assert scores["F1"].point == pytest.approx((0.5 + 0 + 0 + 1 + 0.8 + 2 / 3) / 6)
    assert list(scores) == ["BLEU-1", "ClosedAcc", "OpenRecall", "Recall", "OpenAcc", "F1"]

    # the thresholds are the rule: at 0.6 the "not" answer to a "no" question is wrong; at 0.6 open "right lobe" right
    strict = metrics.vqa_per_sample(*zip(*VQA_CASES), closed_threshold=0.6, open_threshold=0.6)
    np.testing.assert_array_equal(strict["closed_correct"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(strict["open_correct"], [0, 0, 0, 1, 1, 1])


def test_vqa_bleu1_agrees_with_torchmetrics():
    from torchmetrics.text import BLEUScore
    bleu = BLEUScore(n_gram=1)
    per = metrics.vqa_per_sample(*zip(*VQA_CASES))
    for (pred, ans), got in zip(VQA_CASES, per["bleu1"]):
        assert got == pytest.approx(bleu([metrics.clean_str(pred)], [[metrics.clean_str(ans)]]).item(), abs=1e-6)


def test_vqa_alternatives_and_absent_question_types():
    per = metrics.vqa_per_sample(["the thorax"], [["chest", "thorax"]])
    assert per["recall"][0] == 1.0
    only_open = metrics.vqa_scores(["lung"], ["lung"], n=50)
    assert only_open["ClosedAcc"] == Estimate(None, note=bootstrap.UNDEFINED)    # undefined, never 0
    assert only_open["OpenAcc"].point == 1.0


# ------------------------------------------------------------------------------------------------------ diagnosis
CHEST = ["effusion", "mass", "No finding"]


def _tm(x) -> "torch.Tensor":
    import torch
    return torch.as_tensor(np.asarray(x, dtype=np.int64))


def test_macro_f1_multilabel_with_no_finding_by_hand():
    y_true = [["effusion"], ["mass", "effusion"], ["No finding"], ["No finding"]]
    y_pred = [["effusion"], ["mass"], ["No finding"], ["effusion"]]
    s = metrics.diagnosis_scores(y_true, y_pred, CHEST, multilabel=True, n=0)
    # effusion tp1 fp1 fn1 -> 1/2; mass tp1 -> 1; No finding tp1 fn1 -> 2/3
    assert s["macro_f1"].point == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert s["micro_f1"].point == pytest.approx(6 / 9)          # tp 3, fp 1, fn 2
    assert s["accuracy"].point == pytest.approx(0.5)            # exact label sets: samples 0 and 2


ML_LABELS = ["a", "b", "c", "d"]                    # "d" is in neither truth nor prediction
ML_TRUE = [["a"], ["a", "b"], [], ["b"]]
ML_PRED = [["a"], [], ["c"], ["b"]]                 # sample 1: a parse failure (no label)


def test_multilabel_convention_is_torchmetrics_absent_label_counts_zero():
    from torchmetrics.functional.classification import multilabel_exact_match, multilabel_f1_score
    s = metrics.diagnosis_scores(ML_TRUE, ML_PRED, ML_LABELS, multilabel=True, n=0)
    # a: tp1 fn1 -> 2/3; b: tp1 fn1 -> 2/3; c: fp1 -> 0; d: absent everywhere -> 0, still averaged (torchmetrics)
    assert s["macro_f1"].point == pytest.approx(1 / 3)
    assert s["micro_f1"].point == pytest.approx(4 / 7)          # tp 2, fp 1, fn 2: the failure adds no fp
    assert s["accuracy"].point == pytest.approx(0.5)
    t = metrics.label_indicator(ML_TRUE, ML_LABELS, True)
    p = metrics.label_indicator(ML_PRED, ML_LABELS, True)
    kw = {"num_labels": len(ML_LABELS)}
    assert s["macro_f1"].point == pytest.approx(multilabel_f1_score(_tm(p), _tm(t), average="macro", **kw).item())
    assert s["micro_f1"].point == pytest.approx(multilabel_f1_score(_tm(p), _tm(t), average="micro", **kw).item())
    assert s["accuracy"].point == pytest.approx(multilabel_exact_match(_tm(p), _tm(t), **kw).item())


MC_LABELS = ["a", "b", "c", "d"]                    # "d" is in neither truth nor prediction
MC_TRUE = ["a", "a", "b", "c", "b"]
MC_PRED = [["a"], ["b"], [], ["c"], ["b"]]          # sample 2: a parse failure


def test_multiclass_convention_is_torchmetrics_absent_class_left_out():
    from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_f1_score,
                                                        multiclass_stat_scores)
    from torchmetrics.functional.classification.f_beta import _fbeta_reduce
    s = metrics.diagnosis_scores(MC_TRUE, MC_PRED, MC_LABELS, multilabel=False, n=0)
    # a: tp1 fn1 -> 2/3; b: tp1 fp1 fn1 -> 1/2; c: tp1 -> 1; d absent everywhere: left out of the average
    assert s["macro_f1"].point == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert s["micro_f1"].point == pytest.approx(2 / 3)          # tp 3, fp 1, fn 2: the failure is an fn only
    assert s["accuracy"].point == pytest.approx(3 / 5)
    # the failure as torchmetrics sees it: an extra "no answer" class 4 whose row is dropped (bootstrap.MacroF1)
    index = {k: i for i, k in enumerate(MC_LABELS)}
    target = _tm([index[y] for y in MC_TRUE])
    preds = _tm([index[p[0]] if p else len(MC_LABELS) for p in MC_PRED])
    stats = multiclass_stat_scores(preds, target, num_classes=len(MC_LABELS) + 1, average=None)[:len(MC_LABELS)]
    tp, fp, tn, fn = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    assert s["macro_f1"].point == pytest.approx(_fbeta_reduce(tp, fp, tn, fn, 1.0, "macro").item())
    assert s["micro_f1"].point == pytest.approx(_fbeta_reduce(tp, fp, tn, fn, 1.0, "micro").item())
    accuracy = multiclass_accuracy(preds, target, num_classes=5, average="micro").item()
    assert s["accuracy"].point == pytest.approx(accuracy)
    # without the failure, the public API directly: MulticlassF1Score(macro) leaves the absent "d" out
    answered = [["a"], ["b"], ["a"], ["c"], ["b"]]
    s2 = metrics.diagnosis_scores(MC_TRUE, answered, MC_LABELS, multilabel=False, n=0)
    preds2 = _tm([index[p[0]] for p in answered])
    for avg in ("macro", "micro"):
        want = multiclass_f1_score(preds2, target, num_classes=len(MC_LABELS), average=avg).item()
        assert s2[f"{avg}_f1"].point == pytest.approx(want)
    assert s2["macro_f1"].point == pytest.approx((1 / 2 + 1 / 2 + 1) / 3)   # a tp1 fp1 fn1, b tp1 fp1 fn1, c 1


def test_parse_failures_are_wrong_and_reported():
    labels = ["a", "b", "c"]
    y_true, y_pred, failed = ["a", "b", "c", "a"], [["a"], [], ["c"], ["b"]], [False, True, False, False]
    s = metrics.diagnosis_scores(y_true, y_pred, labels, multilabel=False, failed=failed, n=0)
    assert s["macro_f1"].point == pytest.approx((2 / 3 + 0 + 1) / 3)     # b: fp1 fn1 -> 0, still present
    assert s["accuracy"].point == pytest.approx(0.5)
    assert s["parse_failure_rate"].point == pytest.approx(0.25)


def test_count_metrics_match_torchmetrics_on_random_data():
    from torchmetrics.functional.classification import (multiclass_accuracy, multiclass_f1_score,
                                                        multilabel_exact_match, multilabel_f1_score)
    rng = np.random.default_rng(1)
    labels = ["c0", "c1", "c2", "c3", "c4"]
    truth = rng.choice(4, size=300)                            # c4 never occurs: left out of the macro average
    pred = np.where(rng.random(300) < 0.6, truth, rng.choice(4, size=300))
    s = metrics.diagnosis_scores([labels[i] for i in truth], [[labels[i]] for i in pred], labels, False, n=0)
    for avg in ("macro", "micro"):
        assert s[f"{avg}_f1"].point == pytest.approx(multiclass_f1_score(_tm(pred), _tm(truth), 5, average=avg).item())
    assert s["accuracy"].point == pytest.approx(multiclass_accuracy(_tm(pred), _tm(truth), 5, average="micro").item())

    t = rng.random((300, 6)) < 0.3
    t[:, 5] = False                                             # a label never true...
    p = np.where(rng.random((300, 6)) < 0.7, t, ~t)
    p[:, 4] = False                                             # ...one never predicted, and one in neither
    p[:, 5] = False
    p[:20] = False                                              # twenty parse failures
    for avg, fn in (("macro", bootstrap.MULTILABEL_MACRO_F1), ("micro", bootstrap.MICRO_F1)):
        assert fn(t, p) == pytest.approx(multilabel_f1_score(_tm(p), _tm(t), 6, average=avg).item())
    assert bootstrap.ACCURACY(t, p) == pytest.approx(multilabel_exact_match(_tm(p), _tm(t), 6).item())
    assert bootstrap.diagnosis_metrics(True)["macro_f1"] is bootstrap.MULTILABEL_MACRO_F1
    assert bootstrap.diagnosis_metrics(False)["macro_f1"] is bootstrap.MACRO_F1


def test_diagnosis_bad_input_names_the_row():
    with pytest.raises(ValueError, match=r"y_pred\[1\].*'melanoma'"):
        metrics.diagnosis_scores(["a", "b"], [["a"], ["melanoma"]], ["a", "b"], multilabel=False, n=0)
    with pytest.raises(ValueError, match=r"y_true\[0\]"):
        metrics.diagnosis_scores([["a", "b"]], [["a"]], ["a", "b"], multilabel=False, n=0)
    with pytest.raises(ValueError, match="samples"):
        metrics.diagnosis_scores(["a"], [["a"], ["b"]], ["a", "b"], multilabel=False, n=0)


# -------------------------------------------------------------------------------------------------------- reports
HYPS = ["The heart is normal in size. No pleural effusion.", "Mild cardiomegaly, with small left effusion.",
        "Lungs are clear.", ""]
REFS = ["Heart size is normal. No effusion or pneumothorax.", "Cardiomegaly. Small left pleural effusion.",
        "The lungs are clear without focal consolidation.", "No acute cardiopulmonary process."]
# METEOR 1.5 cases: (hypothesis, reference)
SYNONYM = ("the heart is large", "the heart is big")          # WordNet synonyms
UNRELATED = ("the heart is blue", "the heart is big")
PARAPHRASE = ("in addition there is no pneumothorax", "also there is no pneumothorax")   # paraphrase table
PROTOCOL = ("a|||b\nc", "a b c")      # METEOR's field separator and a line break must not break its line protocol
METEOR_CASES = [SYNONYM, UNRELATED, PARAPHRASE, PROTOCOL]


@pytest.fixture(scope="module")
def reports():
    """The report and METEOR cases scored on one java process (report_per_sample, then meteor_per_sample again)."""
    if shutil.which("java") is None:
        pytest.skip("METEOR 1.5 needs java on PATH (README setup notes)")
    hyps, refs = HYPS + [h for h, _ in METEOR_CASES], REFS + [r for _, r in METEOR_CASES]
    with metrics.MeteorSession() as session:
        scores = metrics.report_per_sample(hyps, refs, meteor=session)
        again, why = metrics.meteor_per_sample([SYNONYM[0]], [SYNONYM[1]], session)
        proc = session._meteor.meteor_p
    assert why is None and again[0] == scores.per_sample["METEOR"][len(HYPS)]     # the same process, reused
    assert proc.returncode is not None                                            # ...and stopped on exit
    assert session.score(["a"], ["a"]) == (None, "not computed: METEOR session is closed")
    return scores


def test_bleu_and_rouge_agree_with_sacrebleu_and_rouge_score(reports):
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU
    k = len(HYPS)
    for order in (1, 4):
        bleu = BLEU(max_ngram_order=order, smooth_method="none", lowercase=True)
        want = [bleu.corpus_score([h], [[r]]).score / 100 if h else 0.0 for h, r in zip(HYPS, REFS)]
        np.testing.assert_allclose(reports.per_sample[f"BLEU-{order}"][:k], want)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    for name, key in (("ROUGE-1", "rouge1"), ("ROUGE-L", "rougeL")):
        np.testing.assert_allclose(reports.per_sample[name][:k], [scorer.score(r, h)[key].fmeasure
                                                                 for h, r in zip(HYPS, REFS)])
    assert reports.per_sample["BLEU-1"][0] > 0.3 and reports.per_sample["BLEU-1"][3] == 0.0
    assert metrics.sentence_bleu("the lungs are clear", "the lungs are clear", 4) == pytest.approx(1.0)


def _nltk_exact_stem(hyp: str, ref: str) -> float:
    """nltk's METEOR with its synonym stage matching nothing: exact + Porter-stem matching only."""
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.meteor_score import single_meteor_score

    class NoSynonyms:
        def synsets(self, word):
            return []
    return single_meteor_score(wordpunct_tokenize(ref), wordpunct_tokenize(hyp), wordnet=NoSynonyms())


def test_meteor_is_meteor_15_with_synonyms_and_paraphrases(reports):
    meteor = dict(zip(METEOR_CASES, reports.per_sample["METEOR"][len(HYPS):]))
    assert "METEOR" not in reports.not_computed and "METEOR" not in reports.notes
    # "large" ~ "big" (synonym) scores far above an unrelated word in the same place...
    assert meteor[SYNONYM] > meteor[UNRELATED] + 0.5
    # ...and above exact+stem matching, which cannot match it (nltk without WordNet: 3 of 4 words, one chunk)
    assert _nltk_exact_stem(*SYNONYM) == pytest.approx(0.7361, abs=1e-4)
    assert meteor[SYNONYM] > _nltk_exact_stem(*SYNONYM) + 0.15
    assert meteor[PARAPHRASE] > _nltk_exact_stem(*PARAPHRASE) + 0.05
    # the jar's own numbers (-l en -norm), pinned
    assert meteor[SYNONYM] == pytest.approx(0.9250, abs=1e-4)
    assert meteor[UNRELATED] == pytest.approx(0.3240, abs=1e-4)
    assert meteor[PARAPHRASE] == pytest.approx(0.9259, abs=1e-4)
    assert meteor[PROTOCOL] == pytest.approx(1.0)
    assert reports.per_sample["METEOR"][3] == 0.0                   # empty hypothesis


def test_without_java_meteor_is_not_computed_and_model_metrics_carry_their_reason(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))                       # no java here
    s = metrics.report_scores(HYPS, REFS, n=20, radgraph_note="not computed: radgraph not installed")
    assert s["METEOR"] == Estimate(None, note=metrics.NO_JAVA)       # never 0, never another METEOR
    assert s["F1-RadGraph"] == Estimate(None, note="not computed: radgraph not installed")
    assert s["CheXbert"] == Estimate(None, note=metrics.NOT_COMPUTED_WEIGHTS)
    assert s["BLEU-4"].point == pytest.approx(metrics.report_per_sample(HYPS, REFS).per_sample["BLEU-4"].mean())
    given = metrics.report_scores(HYPS, REFS, n=0, radgraph=lambda h, r: [0.5] * len(h))
    assert given["F1-RadGraph"].point == 0.5 and given["CheXbert"].point is None
    with pytest.raises(ValueError, match=r"CheXbert scorer: non-finite scores for samples \[1\]"):
        metrics.report_per_sample(HYPS, REFS, chexbert=lambda h, r: [0.5, math.nan, 0.5, 0.5])


# -------------------------------------------------------------------------------------------------- multiple choice
# ------------------------------------------------------------------------------------------------------ bootstrap
def test_bootstrap_ci_contains_point_and_narrows_with_more_samples():
    rng = np.random.default_rng(0)
    widths = []
    for size in (100, 10_000):
        x = (rng.random(size) < 0.7).astype(float)
        point, lo, hi = bootstrap.bootstrap_ci(bootstrap.MEAN, x, n=1000, seed=0)
        assert lo <= point <= hi
        assert point == pytest.approx(x.mean())
        widths.append(hi - lo)
        # the percentile CI of a proportion is close to the normal approximation
        assert hi - lo == pytest.approx(2 * 1.96 * math.sqrt(x.mean() * (1 - x.mean()) / size), rel=0.15)
    assert widths[1] < widths[0] / 5


def test_bootstrap_is_seeded_and_the_vectorised_path_equals_torchmetrics_per_resample():
    from torchmetrics.functional.classification import multiclass_f1_score, multilabel_f1_score
    rng = np.random.default_rng(2)
    t = rng.random((300, 4)) < 0.3
    t[:, 3] = False
    t[:2, 3] = True                                     # a rare label: absent from many resamples
    p = np.where(rng.random((300, 4)) < 0.8, t, ~t)
    p[:, 3] = t[:, 3]
    ml = bootstrap.MULTILABEL_MACRO_F1
    fast = bootstrap.bootstrap_ci(ml, t, p, n=200, seed=7)
    slow = bootstrap.bootstrap_ci(lambda a, b: ml(a, b), t, p, n=200, seed=7)   # not a CountMetric: one call each
    assert fast == pytest.approx(slow)
    assert bootstrap.bootstrap_ci(ml, t, p, n=200, seed=7) == fast
    assert bootstrap.bootstrap_ci(ml, t, p, n=200, seed=8) != fast
    # the macro metric is recomputed per resample in torchmetrics' convention, absent labels included
    tm = bootstrap.bootstrap_ci(lambda a, b: multilabel_f1_score(_tm(b), _tm(a), 4, average="macro").item(),
                                t, p, n=200, seed=7)
    assert tm == pytest.approx(fast)
    absent = bootstrap.bootstrap_distribution(lambda a, b: float(not a[:, 3].any()), t, p, n=200, seed=7)
    assert absent.sum() > 20                            # the rare label really is missing from some resamples

    truth = rng.choice(4, size=120, p=[0.5, 0.3, 0.18, 0.02])
    pred = np.where(rng.random(120) < 0.7, truth, rng.choice(3, size=120))
    onehot = np.eye(4, dtype=bool)
    fast = bootstrap.bootstrap_ci(bootstrap.MACRO_F1, onehot[truth], onehot[pred], n=200, seed=3)
    tm = bootstrap.bootstrap_ci(lambda a, b: multiclass_f1_score(_tm(b), _tm(a), 4, average="macro").item(),
                                truth, pred, n=200, seed=3)
    assert tm == pytest.approx(fast)


def test_paired_pvalue_small_for_a_clearly_better_arm_and_large_for_identical_arms():
    rng = np.random.default_rng(3)
    n_samples, labels = 500, ["a", "b", "c"]
    truth = rng.choice(3, size=n_samples)
    good = np.where(rng.random(n_samples) < 0.9, truth, (truth + 1) % 3)
    poor = np.where(rng.random(n_samples) < 0.6, truth, (truth + 1) % 3)

    def onehot(idx):
        return metrics.label_indicator([labels[i] for i in idx], labels, multilabel=False)
    t = onehot(truth)
    assert bootstrap.paired_bootstrap_pvalue(bootstrap.MACRO_F1, (t, onehot(good)), (t, onehot(poor))) < 0.01
    assert bootstrap.paired_bootstrap_pvalue(bootstrap.MACRO_F1, (t, onehot(good)), (t, onehot(good))) == 1.0
    one_off = good.copy()
    one_off[np.flatnonzero(good == truth)[0]] = (truth[np.flatnonzero(good == truth)[0]] + 1) % 3
    assert bootstrap.paired_bootstrap_pvalue(bootstrap.ACCURACY, (t, onehot(good)), (t, onehot(one_off))) > 0.3

    best, pvalues = bootstrap.compare_to_best(bootstrap.ACCURACY, {"poor": (t, onehot(poor)), "good": (t, onehot(good)),
                                                   "same": (t, onehot(good))})
    assert best in ("good", "same") and set(pvalues) == {"poor", "good", "same"} - {best}
    assert pvalues["poor"] < 0.01


# -------------------------------------------------------------------------------------------------------- ranking
def test_rank_methods_average_rank():
    r = metrics.rank_methods({"d1": {"A": 0.9, "B": 0.8, "C": 0.8}, "d2": {"A": 0.5, "B": 0.7, "C": 0.6}})
    assert r.per_dataset["d1"] == {"A": 1.0, "B": 2.5, "C": 2.5}
    assert r.per_dataset["d2"] == {"A": 3.0, "B": 1.0, "C": 2.0}
    assert r.average == {"B": 1.75, "A": 2.0, "C": 2.25} and list(r.average) == ["B", "A", "C"]
    assert metrics.rank_methods({"d": {"A": 1.0, "B": 2.0}}, higher_is_better=False).per_dataset["d"]["A"] == 1.0
    with pytest.raises(ValueError, match="every method"):
        metrics.rank_methods({"d1": {"A": 1.0, "B": 0.5}, "d2": {"A": 1.0}})
    with pytest.raises(ValueError, match="no score"):
        metrics.rank_methods({"d1": {"A": 1.0, "B": None}})
