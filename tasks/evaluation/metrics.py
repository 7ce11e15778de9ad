"""Diagnosis, VQA and report metrics (SPEC §8) on per-sample arrays, each with its 95% bootstrap CI
(tasks/evaluation/bootstrap.py), and the ranking of methods (Fig. 4).

    OMP_NUM_THREADS=1 pytest -q tests/test_metrics.py

Library choices: macro/micro-F1 follow torchmetrics' convention (tasks/evaluation/bootstrap.py, MacroF1); BLEU is
sacrebleu's, ROUGE is rouge-score's, METEOR is METEOR 1.5 (exact, stem, WordNet-synonym and paraphrase matching), the
jar that pycocoevalcap ships with its paraphrase table, run with Java: without `java` on PATH METEOR is reported as not
computed, never as 0 and never as another METEOR variant. F1-RadGraph and CheXbert need model weights
(tasks/evaluation/clinical.py builds their scorers): without a scorer they are reported as not computed, with why.
"""
from __future__ import annotations

import itertools
import math
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from tasks.evaluation.bootstrap import ALPHA, MEAN, N_BOOT, RATIO, CountMetric, Estimate, diagnosis_metrics, estimate

HEADLINE = {"binary": "accuracy", "multiclass": "macro_f1", "multilabel": "macro_f1"}   # SPEC §8
NOT_COMPUTED_WEIGHTS = "not computed: weights absent"
METEOR = "METEOR"
NO_JAVA = "not computed: METEOR 1.5 needs a Java runtime (java on PATH), none found"


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

    One convention everywhere: torchmetrics' (bootstrap.MacroF1 says how it treats labels absent from truth and
    prediction). A prediction with no label (a parse failure) is wrong: it is a false negative of the true label(s)
    and a false positive of nothing. Multilabel "No finding" is an ordinary column of the label set.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} samples but y_pred has {len(y_pred)}")
    t = label_indicator(y_true, label_set, multilabel, "y_true", allow_empty=multilabel)
    p = label_indicator(y_pred, label_set, multilabel, "y_pred")
    out = {k: estimate(fn, t, p, n=n, seed=seed, alpha=alpha) for k, fn in diagnosis_metrics(multilabel).items()}
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


# ---------------------------------------------------------------------------------------------------------- reports
def _one_line(text: str) -> str:
    """`text` as one line without METEOR's field separator: the jar reads one segment per line, fields split by |||."""
    return " ".join(text.replace("|||", " ").split())


def _start_meteor():
    """(pycocoevalcap's Meteor with its java process running, None) or (None, why it cannot run here)."""
    if shutil.which("java") is None:
        return None, NO_JAVA
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError as e:
        return None, f"not computed: pycocoevalcap (METEOR 1.5) is not installed: {e}"
    try:
        return Meteor(), None
    except OSError as e:
        return None, f"not computed: could not start METEOR 1.5's java process: {e}"


def _close_meteor(meteor) -> None:
    """Stop pycocoevalcap's METEOR java process now (it only stops it when the object is collected)."""
    proc = meteor.meteor_p
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        try:
            stream.close()
        except OSError:     # the process already died: its pipe is broken
            pass
    proc.kill()
    proc.wait()
    if meteor.lock.locked():   # left held when the jar failed mid-call; its __del__ takes it again
        meteor.lock.release()


class MeteorSession:
    """One METEOR 1.5 java process for several meteor_per_sample calls, stopped on leaving the `with` block.

        with MeteorSession() as meteor:
            report_per_sample(hyps_a, refs, meteor=meteor); report_per_sample(hyps_b, refs, meteor=meteor)

    Starting the jar costs about 10 s of CPU (it loads its paraphrase table), so a benchmark scoring several methods
    should share one. Once the process fails, every later call answers (None, why).
    """

    def __init__(self):
        self._meteor, self.why = None, None

    def __enter__(self) -> "MeteorSession":
        self._meteor, self.why = _start_meteor()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the java process (idempotent)."""
        if self._meteor is not None:
            _close_meteor(self._meteor)
            self._meteor = None

    def score(self, hypotheses: Sequence[str], references: Sequence[str]) -> tuple[np.ndarray | None, str | None]:
        """meteor_per_sample on this session's process."""
        if len(hypotheses) != len(references):
            raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
        if self._meteor is None:
            return None, self.why or "not computed: METEOR session is closed"
        if not hypotheses:
            return np.zeros(0), None
        try:
            gts = {i: [_one_line(r)] for i, r in enumerate(references)}
            res = {i: [_one_line(h)] for i, h in enumerate(hypotheses)}
            _, scores = self._meteor.compute_score(gts, res)
        except (OSError, ValueError) as e:      # java died or answered something other than scores
            self.close()
            self.why = f"not computed: METEOR 1.5's java process failed: {e!r}"
            return None, self.why
        return np.asarray(scores, dtype=float), None


def meteor_per_sample(hypotheses: Sequence[str], references: Sequence[str],
                      session: MeteorSession | None = None) -> tuple[np.ndarray | None, str | None]:
    """(METEOR 1.5 per hypothesis-reference pair, None), or (None, why) when METEOR cannot run here.

    pycocoevalcap's Meteor runs meteor-1.5.jar (`-l en -norm`: exact, stem, synonym, paraphrase modules) in one java
    process: `session`'s, else one started for this call and stopped before returning. The scores are the jar's
    per-segment scores (the report gives their mean; the jar's corpus-level aggregate is not used).
    """
    if session is not None:
        return session.score(hypotheses, references)
    with MeteorSession() as own:
        return own.score(hypotheses, references)


@dataclass
class ReportScores:
    """Per-sample report metrics; `not_computed` names metrics left out and why, `notes` what variant was computed."""
    per_sample: dict[str, np.ndarray] = field(default_factory=dict)
    not_computed: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def _model_scores(name: str, scorer_fn: Callable, hyps: list[str], refs: list[str]) -> np.ndarray:
    values = np.asarray(scorer_fn(hyps, refs), dtype=float)
    if values.shape != (len(hyps),):
        raise ValueError(f"{name} scorer: expected {len(hyps)} per-sample scores, got shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"{name} scorer: non-finite scores for samples {bad[:10].tolist()}")
    return values


def report_per_sample(hypotheses: Sequence[str], references: Sequence[str],
                      radgraph: Callable[[list[str], list[str]], Sequence[float]] | None = None,
                      chexbert: Callable[[list[str], list[str]], Sequence[float]] | None = None,
                      radgraph_note: str | None = None, chexbert_note: str | None = None,
                      meteor: MeteorSession | None = None) -> ReportScores:
    """BLEU-1, BLEU-4 (sacrebleu, 13a, lower-cased), ROUGE-1, ROUGE-L (rouge-score F), METEOR 1.5 per report pair.

    `radgraph` / `chexbert` are scorers built from locally present weights (hyps, refs -> per-sample scores; see
    tasks/evaluation/clinical.py); when absent those metrics are listed in `not_computed` with `radgraph_note` /
    `chexbert_note` as the reason (default NOT_COMPUTED_WEIGHTS), never scored 0. METEOR without Java: likewise.
    `meteor`: a MeteorSession to reuse (else one java process is started and stopped for this call).
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
    meteor_scores, why = meteor_per_sample(hyps, refs, meteor)
    if meteor_scores is None:
        out.not_computed[METEOR] = why
    else:
        out.per_sample[METEOR] = meteor_scores
    for name, scorer_fn, note in (("F1-RadGraph", radgraph, radgraph_note), ("CheXbert", chexbert, chexbert_note)):
        if scorer_fn is None:
            out.not_computed[name] = note or NOT_COMPUTED_WEIGHTS
        else:
            out.per_sample[name] = _model_scores(name, scorer_fn, hyps, refs)
    return out


def report_scores(hypotheses: Sequence[str], references: Sequence[str],
                  radgraph: Callable | None = None, chexbert: Callable | None = None,
                  n: int = N_BOOT, seed: int = 0, alpha: float = ALPHA, radgraph_note: str | None = None,
                  chexbert_note: str | None = None) -> dict[str, Estimate]:
    """Report-generation metrics (means over reports) with bootstrap CIs; absent ones as Estimate(None, note=why)."""
    if not len(hypotheses):
        raise ValueError("no reports to score")
    scores = report_per_sample(hypotheses, references, radgraph, chexbert, radgraph_note, chexbert_note)
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
