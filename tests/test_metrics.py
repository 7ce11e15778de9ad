"""Metrics on hand-computed cases and against scikit-learn / sacrebleu / rouge-score / torchmetrics directly.

    OMP_NUM_THREADS=1 pytest -q tests/test_metrics.py
"""
from __future__ import annotations

import math

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


def test_macro_f1_multilabel_with_no_finding_by_hand():
    y_true = [["effusion"], ["mass", "effusion"], ["No finding"], ["No finding"]]
    y_pred = [["effusion"], ["mass"], ["No finding"], ["effusion"]]
    s = metrics.diagnosis_scores(y_true, y_pred, CHEST, multilabel=True, n=0)
    # effusion tp1 fp1 fn1 -> 1/2; mass tp1 -> 1; No finding tp1 fn1 -> 2/3
    assert s["macro_f1"].point == pytest.approx((0.5 + 1 + 2 / 3) / 3)
    assert s["micro_f1"].point == pytest.approx(6 / 9)          # tp 3, fp 1, fn 2
    assert s["accuracy"].point == pytest.approx(0.5)            # exact label sets: samples 0 and 2

    from sklearn.metrics import accuracy_score, f1_score
    t = metrics.label_indicator(y_true, CHEST, True)
    p = metrics.label_indicator(y_pred, CHEST, True)
    assert s["macro_f1"].point == pytest.approx(f1_score(t, p, average="macro"))
    assert s["micro_f1"].point == pytest.approx(f1_score(t, p, average="micro"))
    assert s["accuracy"].point == pytest.approx(accuracy_score(t, p))


def test_parse_failures_are_wrong_and_reported():
    labels = ["a", "b", "c"]
    y_true, y_pred, failed = ["a", "b", "c", "a"], [["a"], [], ["c"], ["b"]], [False, True, False, False]
    s = metrics.diagnosis_scores(y_true, y_pred, labels, multilabel=False, failed=failed, n=0)
    from sklearn.metrics import f1_score
    as_str = ["a", "<unparsed>", "c", "b"]
    assert s["macro_f1"].point == pytest.approx(f1_score(y_true, as_str, labels=labels, average="macro"))
    assert s["macro_f1"].point == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert s["accuracy"].point == pytest.approx(0.5)
    assert s["parse_failure_rate"].point == pytest.approx(0.25)


def test_count_metrics_match_sklearn_on_random_data():
    from sklearn.metrics import accuracy_score, f1_score
    rng = np.random.default_rng(1)
    labels = ["c0", "c1", "c2", "c3", "c4"]
    truth = rng.choice(4, size=300)                            # c4 never occurs: left out of the macro average
    pred = np.where(rng.random(300) < 0.6, truth, rng.choice(4, size=300))
    yt, yp = [labels[i] for i in truth], [labels[i] for i in pred]
    s = metrics.diagnosis_scores(yt, yp, labels, multilabel=False, n=0)
    assert s["macro_f1"].point == pytest.approx(f1_score(yt, yp, average="macro"))
    assert s["micro_f1"].point == pytest.approx(f1_score(yt, yp, average="micro"))
    assert s["accuracy"].point == pytest.approx(accuracy_score(yt, yp))

    t = rng.random((300, 6)) < 0.3
    p = np.where(rng.random((300, 6)) < 0.7, t, ~t)
    assert bootstrap.MACRO_F1(t, p) == pytest.approx(f1_score(t, p, average="macro"))
    assert bootstrap.MICRO_F1(t, p) == pytest.approx(f1_score(t, p, average="micro"))


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


def test_bleu_and_rouge_agree_with_sacrebleu_and_rouge_score():
    from rouge_score import rouge_scorer
    from sacrebleu.metrics import BLEU
    scores = metrics.report_per_sample(HYPS, REFS, wordnet=None)
    for order in (1, 4):
        bleu = BLEU(max_ngram_order=order, smooth_method="none", lowercase=True)
        want = [bleu.corpus_score([h], [[r]]).score / 100 if h else 0.0 for h, r in zip(HYPS, REFS)]
        np.testing.assert_allclose(scores.per_sample[f"BLEU-{order}"], want)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"])
    np.testing.assert_allclose(scores.per_sample["ROUGE-1"], [scorer.score(r, h)["rouge1"].fmeasure
                                                             for h, r in zip(HYPS, REFS)])
    np.testing.assert_allclose(scores.per_sample["ROUGE-L"], [scorer.score(r, h)["rougeL"].fmeasure
                                                             for h, r in zip(HYPS, REFS)])
    assert scores.per_sample["BLEU-1"][0] > 0.3 and scores.per_sample["BLEU-1"][3] == 0.0
    assert metrics.sentence_bleu("the lungs are clear", "the lungs are clear", 4) == pytest.approx(1.0)


def test_meteor_without_wordnet_is_exact_plus_stem_and_named_so():
    scores, name = metrics.meteor_per_sample(["the hearts are normal"], ["heart size is normal"], wordnet=None)
    assert name == metrics.METEOR_NO_SYNONYMS
    # exact "normal" + stem "hearts"~"heart": P = R = 1/2, Fmean 1/2, 2 chunks of 2 matches -> penalty 1/2
    assert scores[0] == pytest.approx(0.25)
    auto = metrics.report_scores(["the hearts are normal"], ["heart size is normal"], n=0)
    expected_name = metrics.METEOR_FULL if metrics.local_wordnet() is not None else metrics.METEOR_NO_SYNONYMS
    assert expected_name in auto
    if expected_name == metrics.METEOR_NO_SYNONYMS:
        assert "no WordNet synonyms" in auto[expected_name].note


def test_meteor_uses_a_wordnet_reader_when_given():
    class Lemma:
        def __init__(self, name):
            self._name = name

        def name(self):
            return self._name

    class Synset:
        def lemmas(self):
            return [Lemma("cardiac"), Lemma("heart")]

    class TinyWordNet:      # the reader interface nltk's METEOR calls: synsets(word) -> synsets with lemmas
        def synsets(self, word):
            return [Synset()] if word in ("cardiac", "heart") else []

    no_syn, _ = metrics.meteor_per_sample(["cardiac silhouette"], ["heart silhouette"], wordnet=None)
    with_syn, name = metrics.meteor_per_sample(["cardiac silhouette"], ["heart silhouette"], wordnet=TinyWordNet())
    assert name == metrics.METEOR_FULL and with_syn[0] > no_syn[0]


def test_radgraph_and_chexbert_are_not_computed_without_weights():
    s = metrics.report_scores(HYPS, REFS, wordnet=None, n=20)
    for name in ("F1-RadGraph", "CheXbert"):
        assert s[name] == Estimate(None, note="not computed: weights absent")
    assert s["BLEU-4"].point == pytest.approx(metrics.report_per_sample(HYPS, REFS, wordnet=None).per_sample["BLEU-4"].mean())
    given = metrics.report_scores(HYPS, REFS, wordnet=None, n=0, radgraph=lambda h, r: [0.5] * len(h))
    assert given["F1-RadGraph"].point == 0.5 and given["CheXbert"].point is None


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


def test_bootstrap_is_seeded_and_the_vectorised_path_equals_the_plain_one():
    rng = np.random.default_rng(2)
    t = rng.random((300, 4)) < 0.3
    p = np.where(rng.random((300, 4)) < 0.8, t, ~t)
    fast = bootstrap.bootstrap_ci(bootstrap.MACRO_F1, t, p, n=200, seed=7)
    slow = bootstrap.bootstrap_ci(lambda a, b: bootstrap.MACRO_F1(a, b), t, p, n=200, seed=7)   # not a CountMetric: one call each
    assert fast == pytest.approx(slow)
    assert bootstrap.bootstrap_ci(bootstrap.MACRO_F1, t, p, n=200, seed=7) == fast
    assert bootstrap.bootstrap_ci(bootstrap.MACRO_F1, t, p, n=200, seed=8) != fast
    # the macro metric is recomputed per resample: the spread matches sklearn run on each resample
    from sklearn.metrics import f1_score
    sk = bootstrap.bootstrap_ci(lambda a, b: f1_score(a, b, average="macro"), t, p, n=200, seed=7)
    assert sk == pytest.approx(fast)


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
