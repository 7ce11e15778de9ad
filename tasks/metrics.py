"""Diagnosis, VQA, multiple-choice and report metrics with 95% bootstrap CIs, paired P-values and rankings (SPEC §8).

    OMP_NUM_THREADS=1 pytest -q tests/test_metrics.py

Every number is a function of per-sample arrays, so a bootstrap resample is a re-weighting of samples. Metrics that
are ratios of per-sample counts (accuracy, macro/micro-F1 from TP/FP/FN, means) are `CountMetric`s: all 1,000
resamples are one matrix product of resample counts with the per-sample statistics, macro-F1 recomputed per resample.
scikit-learn's f1_score gives the same point values (tests check it) but costs one call per resample. Any other
callable is bootstrapped by calling it on each resample; both paths draw the same resamples from the same seed.

Library choices: BLEU is sacrebleu's, ROUGE is rouge-score's, METEOR is nltk's. nltk's METEOR wants WordNet data,
which no PyPI package ships in a form nltk reads offline; when `nltk.data` finds no local WordNet, METEOR runs with
exact + Porter-stem matching only and is reported under its own name, METEOR_NO_SYNONYMS. F1-RadGraph and CheXbert
need model weights: without a scorer they are reported as not computed, never as 0.
"""
from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np

from tasks.parsing import parse_choice

ALPHA = 0.05
N_BOOT = 1000
HEADLINE = {"binary": "accuracy", "multiclass": "macro_f1", "multilabel": "macro_f1"}   # SPEC §8
NOT_COMPUTED_WEIGHTS = "not computed: weights absent"
UNDEFINED = "undefined: no samples this metric applies to"
METEOR_FULL = "METEOR"
METEOR_NO_SYNONYMS = "METEOR-exact-stem"
METEOR_NO_SYNONYMS_NOTE = "METEOR (exact+stem, no WordNet synonyms): no WordNet data found by nltk.data on this machine"
_RESAMPLE_CELLS = 4_000_000   # resample-count matrix entries per chunk (~32 MB of float64)


@dataclass(frozen=True)
class Estimate:
    """A metric's point value with its bootstrap CI; None (with `note` saying why) when it is undefined or absent."""
    point: float | None
    lo: float | None = None
    hi: float | None = None
    note: str | None = None

    def as_dict(self) -> dict:
        """The estimate as a plain dict (for JSON reports and MLflow tags)."""
        return asdict(self)


def _none_if_nan(x: float) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)


# ---------------------------------------------------------------------------------------------------------- counts
class CountMetric:
    """A metric that is a function of per-sample statistics summed over samples (so resamples are weighted sums)."""

    def stats(self, *arrays) -> np.ndarray:
        """Per-sample statistics, shape (N, K)."""
        raise NotImplementedError

    def from_totals(self, totals: np.ndarray) -> np.ndarray:
        """The metric from summed statistics, shape (..., K) -> (...)."""
        raise NotImplementedError

    def __call__(self, *arrays) -> float:
        """The metric on all samples."""
        return float(self.from_totals(self.stats(*arrays).sum(axis=0)))


def _indicators(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if t.ndim != 2 or t.shape != p.shape:
        raise ValueError(f"expected y_true and y_pred as (samples, labels) indicator arrays of one shape, "
                         f"got {t.shape} and {p.shape}")
    return t, p


class ExactMatch(CountMetric):
    """Accuracy: a sample is right when its predicted label set equals the true one (subset accuracy if multilabel)."""

    def stats(self, y_true, y_pred):
        t, p = _indicators(y_true, y_pred)
        return np.stack([(t == p).all(axis=1), np.ones(len(t), dtype=bool)], axis=1).astype(float)

    def from_totals(self, totals):
        return _safe_div(totals[..., 0], totals[..., 1])


class MacroF1(CountMetric):
    """Mean per-label F1 over the labels that occur in the truth or the predictions (sklearn's multiclass default)."""

    def stats(self, y_true, y_pred):
        t, p = _indicators(y_true, y_pred)
        return np.concatenate([t & p, ~t & p, t & ~p], axis=1).astype(float)

    def from_totals(self, totals):
        tp, fp, fn = np.split(totals, 3, axis=-1)
        denom = 2 * tp + fp + fn
        present = denom > 0
        f1 = np.divide(2 * tp, denom, out=np.zeros_like(denom), where=present)
        return _safe_div(f1.sum(axis=-1), present.sum(axis=-1))


class MicroF1(CountMetric):
    """F1 of TP/FP/FN pooled over labels."""

    def stats(self, y_true, y_pred):
        t, p = _indicators(y_true, y_pred)
        return np.stack([(t & p).sum(1), (~t & p).sum(1), (t & ~p).sum(1)], axis=1).astype(float)

    def from_totals(self, totals):
        tp, fp, fn = totals[..., 0], totals[..., 1], totals[..., 2]
        return _safe_div(2 * tp, 2 * tp + fp + fn)


class Mean(CountMetric):
    """Mean of a per-sample score."""

    def stats(self, x):
        x = np.asarray(x, dtype=float)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D array of per-sample scores, got shape {x.shape}")
        return np.stack([x, np.ones_like(x)], axis=1)

    def from_totals(self, totals):
        return _safe_div(totals[..., 0], totals[..., 1])


class Ratio(CountMetric):
    """sum(num) / sum(den): a mean over the samples where den is 1 (e.g. accuracy over closed questions)."""

    def stats(self, num, den):
        num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
        if num.shape != den.shape or num.ndim != 1:
            raise ValueError(f"expected two 1-D arrays of one length, got {num.shape} and {den.shape}")
        return np.stack([num, den], axis=1)

    def from_totals(self, totals):
        return _safe_div(totals[..., 0], totals[..., 1])


ACCURACY, MACRO_F1, MICRO_F1, MEAN, RATIO = ExactMatch(), MacroF1(), MicroF1(), Mean(), Ratio()
DIAGNOSIS_METRICS: dict[str, CountMetric] = {"accuracy": ACCURACY, "macro_f1": MACRO_F1, "micro_f1": MICRO_F1}


# -------------------------------------------------------------------------------------------------------- bootstrap
def _n_samples(arrays: Sequence) -> int:
    if not arrays:
        raise ValueError("expected at least one per-sample array")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"per-sample arrays differ in length: {sorted(lengths)}")
    (n,) = lengths
    if n == 0:
        raise ValueError("per-sample arrays are empty")
    return n


def _resamples(n_samples: int, n: int, seed: int) -> Iterator[np.ndarray]:
    """Chunks of resample indices, shape (chunk, n_samples); the same (n_samples, n, seed) always gives the same."""
    if n < 1:
        raise ValueError(f"n: expected at least 1 resample, got {n}")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n, _RESAMPLE_CELLS // n_samples))
    done = 0
    while done < n:
        c = min(chunk, n - done)
        yield rng.integers(0, n_samples, size=(c, n_samples))
        done += c


def _counts(idx: np.ndarray, n_samples: int) -> np.ndarray:
    """How often each sample is drawn in each resample, shape (chunk, n_samples)."""
    c = len(idx)
    flat = (idx + (np.arange(c) * n_samples)[:, None]).ravel()
    return np.bincount(flat, minlength=c * n_samples).reshape(c, n_samples).astype(float)


def _bootstrap_values(metric_fns: Sequence[Callable], arrays_per_fn: Sequence[Sequence], n: int,
                      seed: int) -> np.ndarray:
    """Metric values on each resample, shape (len(metric_fns), n); all metrics see the same resamples."""
    n_samples = _n_samples([a for arrays in arrays_per_fn for a in arrays])
    prepared = []
    for fn, arrays in zip(metric_fns, arrays_per_fn):
        if isinstance(fn, CountMetric):
            prepared.append(("count", fn, fn.stats(*arrays)))
        else:
            prepared.append(("call", fn, [np.asarray(a) for a in arrays]))
    out = np.empty((len(prepared), n))
    start = 0
    for idx in _resamples(n_samples, n, seed):
        weights = _counts(idx, n_samples) if any(kind == "count" for kind, _, _ in prepared) else None
        for j, (kind, fn, data) in enumerate(prepared):
            if kind == "count":
                out[j, start:start + len(idx)] = fn.from_totals(weights @ data)
            else:
                out[j, start:start + len(idx)] = [fn(*(a[row] for a in data)) for row in idx]
        start += len(idx)
    return out


def bootstrap_distribution(metric_fn: Callable, *per_sample_arrays, n: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """The metric on each of `n` seeded resamples (with replacement) of the samples."""
    return _bootstrap_values([metric_fn], [per_sample_arrays], n, seed)[0]


def bootstrap_ci(metric_fn: Callable, *per_sample_arrays, n: int = N_BOOT, seed: int = 0,
                 alpha: float = ALPHA) -> tuple[float, float, float]:
    """(point, lo, hi): the metric on all samples and the alpha/2, 1-alpha/2 percentiles over `n` resamples."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha: expected a number in (0, 1), got {alpha}")
    point = float(metric_fn(*per_sample_arrays))
    values = bootstrap_distribution(metric_fn, *per_sample_arrays, n=n, seed=seed)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return point, math.nan, math.nan
    lo, hi = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return point, float(lo), float(hi)


def estimate(metric_fn: Callable, *per_sample_arrays, n: int = N_BOOT, seed: int = 0, alpha: float = ALPHA,
             note: str | None = None) -> Estimate:
    """bootstrap_ci as an Estimate (None where undefined, e.g. accuracy over zero closed questions); n=0: no CI."""
    if n == 0:
        point, lo, hi = float(metric_fn(*per_sample_arrays)), math.nan, math.nan
    else:
        point, lo, hi = bootstrap_ci(metric_fn, *per_sample_arrays, n=n, seed=seed, alpha=alpha)
    if math.isnan(point):
        return Estimate(None, note=note or UNDEFINED)
    return Estimate(point, _none_if_nan(lo), _none_if_nan(hi), note)


def paired_bootstrap_pvalue(metric_fn: Callable, best: Sequence, other: Sequence, n: int = N_BOOT, seed: int = 0,
                            alternative: str = "two-sided") -> float:
    """P-value that `best` and `other` (per-sample arrays of two arms on the same samples) score the same.

    Paired bootstrap test: both arms are scored on the same resamples; the resampled differences, centred on the
    observed difference d, approximate the null. two-sided: P(|d* - d| >= |d|); "greater": P(d* - d >= d), i.e.
    evidence that `best` is better. Add-one smoothing keeps p > 0 with finitely many resamples.
    """
    if alternative not in ("two-sided", "greater"):
        raise ValueError(f"alternative: expected 'two-sided' or 'greater', got {alternative!r}")
    best, other = tuple(best), tuple(other)
    observed = float(metric_fn(*best)) - float(metric_fn(*other))
    if math.isnan(observed):
        return math.nan
    values = _bootstrap_values([metric_fn, metric_fn], [best, other], n, seed)
    deltas = values[0] - values[1]
    deltas = deltas[~np.isnan(deltas)] - observed
    if alternative == "two-sided":
        extreme = np.abs(deltas) >= abs(observed) - 1e-12
    else:
        extreme = deltas >= observed - 1e-12
    return float((1 + extreme.sum()) / (1 + deltas.size))


def compare_to_best(metric_fn: Callable, arms: Mapping[str, Sequence], n: int = N_BOOT, seed: int = 0,
                    higher_is_better: bool = True) -> tuple[str, dict[str, float]]:
    """(best arm by point value, {other arm: paired P-value against the best}) for arms scored on the same samples."""
    if len(arms) < 2:
        raise ValueError(f"arms: expected at least two arms to compare, got {list(arms)}")
    points = {name: float(metric_fn(*arrays)) for name, arrays in arms.items()}
    valid = {k: v for k, v in points.items() if not math.isnan(v)}
    if not valid:
        raise ValueError("no arm has a defined value of this metric")
    best = (max if higher_is_better else min)(valid, key=valid.get)
    return best, {name: paired_bootstrap_pvalue(metric_fn, arms[best], arrays, n=n, seed=seed)
                  for name, arrays in arms.items() if name != best}


# -------------------------------------------------------------------------------------------------------- diagnosis
def label_indicator(labels: Sequence[Sequence[str] | str], label_set: Sequence[str], multilabel: bool,
                    name: str = "labels", allow_empty: bool = True) -> np.ndarray:
    """(samples, labels) boolean indicator of label-name lists; a single-label row holds at most one label."""
    index = {label: j for j, label in enumerate(label_set)}
    if len(index) != len(label_set):
        raise ValueError(f"label_set has duplicate names: {list(label_set)}")
    out = np.zeros((len(labels), len(label_set)), dtype=bool)
    for i, row in enumerate(labels):
        row = [row] if isinstance(row, str) else list(row)
        if not row and not allow_empty:
            raise ValueError(f"{name}[{i}]: expected at least one label, got none")
        if not multilabel and len(row) > 1:
            raise ValueError(f"{name}[{i}]: a single-label task has one label per sample, got {row}")
        for label in row:
            if label not in index:
                raise ValueError(f"{name}[{i}]: label {label!r} is not in the label set {list(label_set)}")
            out[i, index[label]] = True
    return out


def diagnosis_scores(y_true: Sequence[Sequence[str] | str], y_pred: Sequence[Sequence[str]],
                     label_set: Sequence[str], multilabel: bool, failed: Sequence[bool] | None = None,
                     n: int = N_BOOT, seed: int = 0, alpha: float = ALPHA) -> dict[str, Estimate]:
    """accuracy, macro_f1, micro_f1 (+ parse_failure_rate when `failed` is given) with bootstrap CIs.

    A prediction with no label (a parse failure) is wrong: it is a false negative of the true label(s) and a false
    positive of nothing. Multilabel "No finding" is an ordinary column of the label set.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} samples but y_pred has {len(y_pred)}")
    t = label_indicator(y_true, label_set, multilabel, "y_true", allow_empty=multilabel)
    p = label_indicator(y_pred, label_set, multilabel, "y_pred")
    out = {k: estimate(fn, t, p, n=n, seed=seed, alpha=alpha) for k, fn in DIAGNOSIS_METRICS.items()}
    if failed is not None:
        if len(failed) != len(y_true):
            raise ValueError(f"failed has {len(failed)} entries for {len(y_true)} samples")
        out["parse_failure_rate"] = estimate(MEAN, np.asarray(failed, dtype=float), n=n, seed=seed, alpha=alpha)
    return out


# -------------------------------------------------------------------------------------------------------------- VQA
# VQA-v2 answer normalisation (the official evaluation's rules, as MultiMedEval applies them).
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
_PERIOD = re.compile(r"\.(?!\d)")       # a period not inside a number ("2.5" keeps its point)
_DIGIT_COMMA = re.compile(r"\d,\d")
_NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                 "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = frozenset({"a", "an", "the"})
_CANONICAL_CONTRACTIONS = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd "
    "he'd've he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've "
    "might've mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't shouldn't've "
    "somebody'd somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd "
    "something'd've something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "'twas wasn't we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've "
    "who'll who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd "
    "you'd've you'll you're you've").split()
# spellings that lost an apostrophe but are English words in their own right stay as they are
_REAL_WORDS = frozenset({"lets", "hell", "well", "were", "wed", "shed", "shell", "its", "ill", "id"})


@lru_cache(maxsize=1)
def _contractions() -> dict[str, str]:
    """Each contraction spelled with some of its apostrophes missing -> its canonical spelling."""
    table = {}
    for canonical in _CANONICAL_CONTRACTIONS:
        marks = [i for i, ch in enumerate(canonical) if ch == "'"]
        for k in range(1, len(marks) + 1):
            for drop in itertools.combinations(marks, k):
                variant = "".join(ch for i, ch in enumerate(canonical) if i not in drop)
                if variant not in _REAL_WORDS:
                    table[variant] = canonical
    return table


def clean_str(text: str) -> str:
    """`text` normalised like VQA-v2 answers: lower case, punctuation, number words -> digits, no articles."""
    if not isinstance(text, str):
        raise TypeError(f"expected an answer string, got {type(text).__name__}")
    text = text.lower()
    # VQA-v2's rule: a mark next to a space (or any mark, in an answer holding a "1,000"-style number) is deleted,
    # any other mark separates words ("x-ray" -> "x ray")
    delete_all = _DIGIT_COMMA.search(text) is not None
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if delete_all or p + " " in text or " " + p in text else " ")
    out = _PERIOD.sub("", out)
    contractions = _contractions()
    words = []
    for w in out.split():
        w = _NUMBER_WORDS.get(w, w)
        if w not in _ARTICLES:
            words.append(contractions.get(w, w))
    return " ".join(words).replace(",", "")


@lru_cache(maxsize=4)
def _bleu(order: int, tokenize: str, lowercase: bool):
    from sacrebleu.metrics import BLEU
    return BLEU(max_ngram_order=order, tokenize=tokenize, smooth_method="none", lowercase=lowercase)


def sentence_bleu(hypothesis: str, reference: str, order: int, tokenize: str = "13a",
                  lowercase: bool = False) -> float:
    """sacrebleu BLEU-`order` (no smoothing, brevity penalty) of one hypothesis against one reference, in [0, 1]."""
    if not hypothesis.strip() or not reference.strip():
        return 0.0
    # corpus_score of one pair = sentence BLEU without effective order, the torchmetrics/MultiMedEval definition,
    # and without sentence_score's per-call warning about effective order
    return _bleu(order, tokenize, lowercase).corpus_score([hypothesis], [[reference]]).score / 100.0


def _vqa_one(prediction: str, answer: str, closed_threshold: float, open_threshold: float) -> dict[str, float]:
    pred_clean, ans_clean = clean_str(prediction), clean_str(answer)
    pred, gold = set(pred_clean.split()), set(ans_clean.split())
    hit = len(pred & gold)
    precision = hit / len(pred) if pred else 0.0
    recall = hit / len(gold) if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    closed = ans_clean in ("yes", "no")
    if closed:
        accepted = gold | {"not"} if gold == {"no"} else gold
        correct = len(pred & accepted) / len(accepted) >= closed_threshold
    else:
        correct = recall >= open_threshold
    return {"precision": precision, "recall": recall, "f1": f1,
            "bleu1": sentence_bleu(pred_clean, ans_clean, 1, tokenize="none"),
            "closed": float(closed), "open": float(not closed),
            "closed_correct": float(closed and correct), "open_correct": float(not closed and correct),
            "open_recall": 0.0 if closed else recall}


def vqa_per_sample(predictions: Sequence[str], answers: Sequence[str | Sequence[str]],
                   closed_threshold: float = 0.5, open_threshold: float = 0.75) -> dict[str, np.ndarray]:
    """Per-sample VQA scores (MultiMedEval rules): precision, recall, f1, bleu1, closed/open flags and correctness.

    An answer may be a list of accepted alternatives (VQA-Med's '#'): the alternative with the best (recall, F1) counts.
    """
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    rows = []
    for i, (pred, ans) in enumerate(zip(predictions, answers)):
        if not isinstance(pred, str):
            raise TypeError(f"predictions[{i}]: expected a string, got {type(pred).__name__}")
        alternatives = [ans] if isinstance(ans, str) else list(ans)
        if not alternatives or not all(isinstance(a, str) for a in alternatives):
            raise ValueError(f"answers[{i}]: expected an answer string or a non-empty list of them, got {ans!r}")
        scored = [_vqa_one(pred, a, closed_threshold, open_threshold) for a in alternatives]
        rows.append(max(scored, key=lambda s: (s["recall"], s["f1"])))
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


# report name -> (metric, per-sample arrays it reads)
VQA_METRICS: dict[str, tuple[CountMetric, tuple[str, ...]]] = {
    "BLEU-1": (MEAN, ("bleu1",)),
    "ClosedAcc": (RATIO, ("closed_correct", "closed")),
    "OpenRecall": (RATIO, ("open_recall", "open")),
    "Recall": (MEAN, ("recall",)),
    "OpenAcc": (RATIO, ("open_correct", "open")),
    "F1": (MEAN, ("f1",)),
}


def vqa_scores(predictions: Sequence[str], answers: Sequence[str | Sequence[str]], n: int = N_BOOT, seed: int = 0,
               alpha: float = ALPHA, closed_threshold: float = 0.5,
               open_threshold: float = 0.75) -> dict[str, Estimate]:
    """BLEU-1, ClosedAcc, OpenRecall, Recall, OpenAcc, F1 with bootstrap CIs (None where a question type is absent)."""
    per = vqa_per_sample(predictions, answers, closed_threshold, open_threshold)
    if not per:
        raise ValueError("no VQA samples to score")
    return {name: estimate(fn, *(per[k] for k in keys), n=n, seed=seed, alpha=alpha)
            for name, (fn, keys) in VQA_METRICS.items()}


# -------------------------------------------------------------------------------------------------- multiple choice
def multiple_choice_per_sample(predictions: Sequence[str], options: Sequence[Sequence[str]],
                               answers: Sequence[int | str]) -> tuple[np.ndarray, np.ndarray]:
    """(correct, failed) per sample: the option each answer picks against the true option (index or option text)."""
    if not len(predictions) == len(options) == len(answers):
        raise ValueError(f"lengths differ: {len(predictions)} predictions, {len(options)} option lists, "
                         f"{len(answers)} answers")
    correct, failed = np.zeros(len(predictions)), np.zeros(len(predictions))
    for i, (pred, opts, ans) in enumerate(zip(predictions, options, answers)):
        opts = list(opts)
        if isinstance(ans, str):
            if ans not in opts:
                raise ValueError(f"answers[{i}]: {ans!r} is not one of the options {opts}")
            ans = opts.index(ans)
        elif not 0 <= int(ans) < len(opts):
            raise ValueError(f"answers[{i}]: option index {ans} out of range for {len(opts)} options")
        pick = parse_choice(pred, opts)
        failed[i] = pick is None
        correct[i] = pick == int(ans)
    return correct, failed


def multiple_choice_scores(predictions: Sequence[str], options: Sequence[Sequence[str]],
                           answers: Sequence[int | str], n: int = N_BOOT, seed: int = 0,
                           alpha: float = ALPHA) -> dict[str, Estimate]:
    """accuracy and parse_failure_rate of multiple-choice answers (OmniMedVQA) with bootstrap CIs."""
    correct, failed = multiple_choice_per_sample(predictions, options, answers)
    return {"accuracy": estimate(MEAN, correct, n=n, seed=seed, alpha=alpha),
            "parse_failure_rate": estimate(MEAN, failed, n=n, seed=seed, alpha=alpha)}


# ---------------------------------------------------------------------------------------------------------- reports
def local_wordnet():
    """nltk's WordNet reader when its data is installed locally (nltk.data path), else None; never downloads."""
    import nltk
    for resource in ("corpora/wordnet.zip", "corpora/wordnet"):
        try:
            nltk.data.find(resource)
        except LookupError:
            continue
        from nltk.corpus import wordnet
        return wordnet
    return None


class _NoSynonyms:
    """Stands in for WordNet in nltk's METEOR so that its synonym stage matches nothing (exact + stem remain)."""

    def synsets(self, word):
        return []


def meteor_per_sample(hypotheses: Sequence[str], references: Sequence[str], wordnet="auto") -> tuple[np.ndarray, str]:
    """(nltk METEOR per sample, metric name): METEOR with WordNet when found, else METEOR_NO_SYNONYMS."""
    from nltk.tokenize import wordpunct_tokenize
    from nltk.translate.meteor_score import single_meteor_score
    if wordnet == "auto":
        wordnet = local_wordnet()
    name = METEOR_FULL if wordnet is not None else METEOR_NO_SYNONYMS
    wn = wordnet if wordnet is not None else _NoSynonyms()
    scores = np.array([single_meteor_score(wordpunct_tokenize(r.lower()), wordpunct_tokenize(h.lower()), wordnet=wn)
                       for h, r in zip(hypotheses, references)])
    return scores, name


@dataclass
class ReportScores:
    """Per-sample report metrics; `not_computed` names metrics left out and why, `notes` what variant was computed."""
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def report_per_sample(hypotheses: Sequence[str], references: Sequence[str],
                      radgraph: Callable[[list[str], list[str]], Sequence[float]] | None = None,
                      chexbert: Callable[[list[str], list[str]], Sequence[float]] | None = None,
                      wordnet="auto") -> ReportScores:
    """BLEU-1, BLEU-4 (sacrebleu, 13a, lower-cased), ROUGE-1, ROUGE-L (rouge-score F), METEOR per report pair.

    `radgraph` / `chexbert` are scorers built from locally present weights (hyps, refs -> per-sample scores); when
    absent those metrics are listed in `not_computed`, never scored 0.
    """
    from rouge_score import rouge_scorer
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} generated reports for {len(references)} references")
    for name, texts in (("hypotheses", hypotheses), ("references", references)):
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"{name}[{i}]: expected a report string, got {type(t).__name__}")
    hyps, refs = list(hypotheses), list(references)
    out = ReportScores()
    # Report casing carries no meaning; lower-casing follows the R2Gen-style report-generation evaluations.
    out.per_sample["BLEU-1"] = np.array([sentence_bleu(h, r, 1, lowercase=True) for h, r in zip(hyps, refs)])
    out.per_sample["BLEU-4"] = np.array([sentence_bleu(h, r, 4, lowercase=True) for h, r in zip(hyps, refs)])
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    rouge = [scorer.score(r, h) for h, r in zip(hyps, refs)]
    out.per_sample["ROUGE-1"] = np.array([s["rouge1"].fmeasure for s in rouge])
    out.per_sample["ROUGE-L"] = np.array([s["rougeL"].fmeasure for s in rouge])
    meteor, meteor_name = meteor_per_sample(hyps, refs, wordnet)
    out.per_sample[meteor_name] = meteor
    if meteor_name == METEOR_NO_SYNONYMS:
        out.notes[meteor_name] = METEOR_NO_SYNONYMS_NOTE
    for name, scorer_fn in (("F1-RadGraph", radgraph), ("CheXbert", chexbert)):
        if scorer_fn is None:
            out.not_computed[name] = NOT_COMPUTED_WEIGHTS
            continue
        values = np.asarray(scorer_fn(hyps, refs), dtype=float)
        if values.shape != (len(hyps),):
            raise ValueError(f"{name} scorer: expected {len(hyps)} per-sample scores, got shape {values.shape}")
        out.per_sample[name] = values
    return out


def report_scores(hypotheses: Sequence[str], references: Sequence[str],
                  radgraph: Callable | None = None, chexbert: Callable | None = None, wordnet="auto",
                  n: int = N_BOOT, seed: int = 0, alpha: float = ALPHA) -> dict[str, Estimate]:
    """Report-generation metrics (means over reports) with bootstrap CIs; absent ones as Estimate(None, note=why)."""
    if not len(hypotheses):
        raise ValueError("no reports to score")
    scores = report_per_sample(hypotheses, references, radgraph, chexbert, wordnet)
    out = {name: estimate(MEAN, values, n=n, seed=seed, alpha=alpha, note=scores.notes.get(name))
           for name, values in scores.per_sample.items()}
    out.update({name: Estimate(None, note=why) for name, why in scores.not_computed.items()})
    return out


# ---------------------------------------------------------------------------------------------------------- ranking
@dataclass(frozen=True)
class Ranking:
    """Rank of each method per dataset (1 = best, ties share the mean rank) and its average over datasets."""
    per_dataset: dict[str, dict[str, float]]
    average: dict[str, float]          # best (lowest) average rank first


def rank_methods(scores: Mapping[str, Mapping[str, float]], higher_is_better: bool = True) -> Ranking:
    """Ranks of methods within each dataset ({dataset: {method: score}}) and their average rank (paper Fig. 4)."""
    from scipy.stats import rankdata
    if not scores:
        raise ValueError("scores: expected at least one dataset")
    methods = None
    per_dataset = {}
    for dataset, by_method in scores.items():
        names = sorted(by_method)
        if methods is None:
            methods = names
        elif names != methods:
            raise ValueError(f"dataset {dataset!r} scores methods {names}, the first dataset scores {methods}: "
                             "every method needs a score on every dataset")
        values = np.array([by_method[m] if by_method[m] is not None else math.nan for m in names], dtype=float)
        if np.isnan(values).any():
            missing = [m for m, v in zip(names, values) if math.isnan(v)]
            raise ValueError(f"dataset {dataset!r}: no score for {missing}")
        ranks = rankdata(-values if higher_is_better else values, method="average")
        per_dataset[dataset] = dict(zip(names, ranks.tolist()))
    average = {m: float(np.mean([per_dataset[d][m] for d in per_dataset])) for m in methods}
    return Ranking(per_dataset, dict(sorted(average.items(), key=lambda kv: (kv[1], kv[0]))))
