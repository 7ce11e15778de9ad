"""Map a model's free-text answer onto a diagnosis label set (parse_answer) or onto one multiple-choice option
(parse_choice).

    parsed = parse_answer(answer, card.labels, card.task_type == "multilabel", synonyms=card.synonyms)
    choice = parse_choice(answer, {"A": "Pneumonia", "B": "Mass"})        # OmniMedVQA
    OMP_NUM_THREADS=1 pytest -q tests/test_parsing.py

Rules, in the order they apply (SPEC §7, §8; each has a test in tests/test_parsing.py):
1. Refusals ("I cannot determine...", "unable to diagnose", "not sure", "cannot be determined from the image") are
   parse failures, even when they go on to name a label.
2. Names. Text is normalised (case-folded, every run of non-alphanumerics one space) and matched at word boundaries.
   A label is named by its own name, by the synonyms the data card lists for it (`synonyms`, label -> names) and by
   singular/plural forms of any word of either: lesion/lesions, keratosis/keratoses, nevus/nevi, opacity/opacities,
   effusion/effusions. Words under four letters and all-capital acronyms only take a plural "s" ("MS" never becomes
   "m"). Longer names claim their span first, so "normal, benign" is not also read as "benign" and "pleural
   thickening" not also as "pleural"; a form of one name never takes another name's own spelling. A synonym that
   spells another label (or another label's synonym) is rejected: an answer naming it could not be told apart.
3. Negation (NegEx-style). The answer is cut into clauses at sentence ends, ";", ":", line breaks, "but", "however",
   "although", "except", "other than", "there is", ", it is", ", which is", ", consistent with", ", likely", .... A cue
   ("no", "not", "without", "never", "negative for", "absence of", "free of", "rule out", "ruled out", "unlikely",
   "rather than", "instead of", "isn't", ...) negates every name after it in its clause; "unlikely", "ruled out",
   "excluded", "absent" and "not seen/present/identified/..." also negate a name just before them (at most three
   words back: "pneumothorax has been ruled out"); "non-" negates the name right after it. Pseudo-negations
   ("cannot rule out", "not excluded", "not only", "no doubt") negate nothing. Negated names are not predictions.
   "No finding" is a label name, so its "no" negates nothing.
4. An answer that names every label repeats the option list (paper §2, SPEC §7): a parse failure. With a "No finding"
   label and at least two others, naming every other label is enough.
5. Single-label: the first name not negated; with two labels, an answer that only negates one of them names the
   other ("no evidence of pneumonia" -> normal: a binary label set is exhaustive). Multilabel: every label named and
   not negated, in label-set order; "No finding" only when no other label is named ("no finding of effusion").
6. Nothing left is a parse failure; SPEC §8 counts failures wrong and reports their rate. `reason` says which rule.
Multiple choice (parse_choice): an option is picked by its letter ("B", "(B)", "B.", "B:", "Option B", "The answer is
B: ...", "it's B") or by its text under rules 1-3 (option texts as the names). Two different letters, two different
options named, a letter contradicting the text named, or text naming every option are failures.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

NO_FINDING = "no finding"   # normalised spelling; label sets write "No finding" or "No Finding"

# why an answer failed (ParsedAnswer.reason / ParsedChoice.reason)
REFUSAL = "refusal"
NOTHING_NAMED = "names no label"
NO_OPTION = "names no option"
ALL_NEGATED = "every label named is negated"
ECHO = "names every label (repeats the option list)"
TWO_OPTIONS = "names two different options"
CONTRADICTION = "its letter and the option text it names disagree"

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_B, _E = r"(?<![0-9a-z])", r"(?![0-9a-z])"          # word boundaries on normalised text
_CLAUSE_END = re.compile(
    r"[.!?;:]+(?=\s|$)|\n|\b(?:but|however|although|though|whereas|yet|except|apart from|other than)\b"
    r"|\bthere(?:\s*['’]s|\s+(?:is|are|was|were))\b"
    r"|\brather\b(?!\s+than)|\binstead\b(?!\s+of)"
    r"|,\s*(?:(?:it|this|that|which|these|they)(?:\s*['’]s\b|\s+(?:is|are|was|were|appears?|looks?|seems?|shows?"
    r"|represents?)\b)|(?:(?:most|more)\s+)?likely\b|probably\b|possibly\b|consistent with\b|suggestive of\b"
    r"|compatible with\b|suggesting\b|indicating\b)", re.IGNORECASE)
_REFUSAL = re.compile(
    _B + r"(?:(?:cannot|can not|can t|could not|couldn t|unable to|not able to|impossible to|not possible to)"
    r"(?: [a-z]+){0,2}? (?:determine|determined|diagnose|diagnosed|tell|say|identify|identified|classify|classified"
    r"|assess|assessed|provide|answer|conclude|make a diagnosis|be certain|be sure)"
    r"|not sure|unsure|i don t know|i do not know|no idea|not enough information|insufficient information)" + _E)
_PSEUDO = re.compile(_B + r"(?:(?:cannot|can not|can t|could not|couldn t|unable to|not)(?: be)? "
                     r"(?:rule out|ruled out|exclude|excluded)|not only|no doubt)" + _E)
_POST_ONLY = re.compile(_B + r"not (?:seen|present|identified|detected|found|visible|evident|noted|shown|"
                        r"demonstrated|suspected|favou?red|likely)" + _E)
_BOTH_WAYS = re.compile(_B + r"(?:unlikely|ruled out|excluded|absent)" + _E)
_PRE = re.compile(_B + r"(?:no|not|without|never|neither|nor|negative for|absence of|free of|rule out|rules out|"
                  r"ruling out|exclude|excludes|excluding|rather than|instead of|isn t|aren t|wasn t|weren t|doesn t|"
                  r"don t|didn t|denies|deny)" + _E)
_NON = re.compile(_B + r"non" + _E)
_POST_WORDS = 3       # "pneumothorax has been ruled out": the name at most three words before the cue
# (cue, words it may reach forward, backward); None = to the clause end, -1 = not that way
_CUES = ((_POST_ONLY, -1, _POST_WORDS), (_BOTH_WAYS, None, _POST_WORDS), (_PRE, None, -1), (_NON, 0, -1))

# Option letters: the whole answer ("b", "(B)", "C."), a line opening with "B." / "(B)" / "B:" / "B)", or
# "answer/option/choice (is) B", "it's B". Lower case counts only where the letter stands alone: "a" is also a word.
_WHOLE_LETTER = re.compile(r"^\W*\(?([A-Za-z])\)?[.:)]?\W*$")
_LEADING_LETTER = re.compile(r"^\s*(?:\(([A-Z])\)|([A-Z])[.:)])(?=\s|$)", re.MULTILINE)
_NAMED_LETTER = re.compile(r"\b(?i:answer|option|choice|it is|it['’]s)(?:\s+is)?\s*[:\-]?\s*\(?"
                           r"(?:([A-Z])|([a-z])(?=\)?\s*(?:[.:;,)]|$)))\)?(?![\w'’])")


@dataclass(frozen=True)
class ParsedAnswer:
    """Labels read from an answer, in label-set order; `failed` when none could be read (`reason`: which rule)."""
    labels: list[str] = field(default_factory=list)
    failed: bool = False
    reason: str | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ParsedChoice:
    """The option letter an answer picks; `failed` (letter None) when it picks none or several."""
    letter: str | None = None
    failed: bool = False
    reason: str | None = field(default=None, compare=False)


def normalise(text: str) -> str:
    """`text` case-folded with every run of characters other than a-z / 0-9 turned into one space, stripped."""
    return _NON_ALNUM.sub(" ", text.casefold()).strip()


def _word_forms(word: str, acronym: bool) -> list[str]:
    """`word` (normalised) and its singular/plural forms, longest first."""
    if not word.isalpha():
        return [word]
    if acronym or len(word) < 4:
        return [word + "s", word] if acronym else [word]
    forms = {word}
    endings = (("sis", "ses"), ("ses", "sis"), ("us", "i"), ("i", "us"), ("ies", "y"), ("um", "a"), ("a", "um"))
    forms.update(word[:-len(a)] + b for a, b in endings if word.endswith(a))
    if word.endswith("y") and word[-2] not in "aeiou":
        forms.add(word[:-1] + "ies")
    forms.add(word + ("es" if word.endswith(("s", "x", "z", "ch", "sh")) else "s"))
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        forms.add(word[:-1])
    if word.endswith(("sses", "xes", "zes", "ches", "shes")):
        forms.add(word[:-2])
    return sorted(forms, key=lambda f: (-len(f), f))


def _name_pattern(name: str) -> str:
    """Regex source matching normalised text that spells `name` with any word in any of its forms."""
    norm = normalise(name).split()
    raw = [w for w in re.split(r"[^0-9A-Za-z]+", name) if w]
    caps = [len(w) > 1 and w.isupper() for w in raw] if len(raw) == len(norm) else [False] * len(norm)
    words = ["(?:" + "|".join(re.escape(f) for f in _word_forms(w, c)) + ")" for w, c in zip(norm, caps)]
    return " ".join(words)


def _check_names(label_set: tuple, synonyms: tuple) -> list[tuple[str, int]]:
    """(name, label index) for every label and synonym; raises on names answers could not tell apart."""
    owner: dict[str, tuple[int, str]] = {}     # normalised name -> (label index, how it was given)
    out = []
    for i, label in enumerate(label_set):
        if not isinstance(label, str):
            raise TypeError(f"label_set[{i}]: expected a label name, got {label!r}")
        norm = normalise(label)
        if not norm:
            raise ValueError(f"label_set[{i}] {label!r}: has no letters or digits, so no answer can match it")
        if norm in owner:
            raise ValueError(f"label_set[{i}] {label!r}: same as {owner[norm][1]!r} once case and punctuation are "
                             "ignored, so answers cannot tell them apart")
        owner[norm] = (i, label)
        out.append((label, i))
    index = {label: i for i, label in enumerate(label_set)}
    for label, names in synonyms:
        if label not in index:
            raise ValueError(f"synonyms[{label!r}]: not in the label set {list(label_set)}")
        for j, name in enumerate(names):
            where = f"synonyms[{label!r}][{j}] {name!r}"
            if not isinstance(name, str) or not normalise(name):
                raise ValueError(f"{where}: expected a name with letters or digits")
            i, given = owner.setdefault(normalise(name), (index[label], f"synonym of {label!r}"))
            if i != index[label]:
                what = f"the name of label {given!r}" if given in index else f"also a {given}"
                raise ValueError(f"{where}: is {what} once case and punctuation are ignored; a synonym must name "
                                 f"only its own label, or an answer naming it could be both")
            out.append((name, i))
    return out


@lru_cache(maxsize=256)
def _compiled(label_set: tuple, synonyms: tuple) -> tuple[tuple[int, re.Pattern], ...]:
    """(label index, pattern) per name, longest normalised name first; a pattern never matches another name's own
    spelling (labels "lesions" and "lesion": "lesion" is the second label)."""
    names = _check_names(label_set, synonyms)
    sources = [_name_pattern(name) for name, _ in names]
    out = []
    for k, (name, i) in enumerate(names):
        whole = re.compile(sources[k])
        others = {normalise(n) for n, j in names if j != i and whole.fullmatch(normalise(n))}
        guard = "".join(f"(?!{re.escape(o)}{_E})" for o in sorted(others))
        out.append((len(normalise(name)), k, i, re.compile(_B + guard + "(?:" + sources[k] + ")" + _E)))
    out.sort(key=lambda t: (-t[0], t[1]))
    return tuple((i, pattern) for _, _, i, pattern in out)


def _frozen_synonyms(synonyms: Mapping[str, Sequence[str]] | None) -> tuple:
    if not synonyms:
        return ()
    if not isinstance(synonyms, Mapping):
        raise TypeError(f"synonyms: expected a mapping label -> names, got {type(synonyms).__name__}")
    out = []
    for label, names in synonyms.items():
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"synonyms[{label!r}]: expected a list of names, got {names!r}")
        out.append((label, tuple(names)))
    return tuple(out)


def _check_text(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"answer: expected a string, got {type(text).__name__}")
    return text


def _take(claimed: bytearray, start: int, end: int) -> bool:
    """Claim [start, end) when none of it is claimed yet."""
    if any(claimed[start:end]):
        return False
    claimed[start:end] = b"\x01" * (end - start)
    return True


def _words(text: str) -> int:
    return len(text.split())


def _negated(norm: str, start: int, end: int, cues: list[tuple[int, int, int | None, int]]) -> bool:
    for c_start, c_end, forward, backward in cues:
        if c_end <= start and forward != -1 and (forward is None or _words(norm[c_end:start]) <= forward):
            return True
        if c_start >= end and backward != -1 and _words(norm[end:c_start]) <= backward:
            return True
    return False


def _mentions(text: str, names: tuple[tuple[int, re.Pattern], ...]) -> list[tuple[int, int, bool]]:
    """(position, label index, negated) of every name in `text`, in order of mention."""
    out = []
    offset = 0
    for clause in _CLAUSE_END.split(text):
        norm = normalise(clause)
        claimed = bytearray(len(norm))
        found = [(m.start(), m.end(), i) for i, pattern in names for m in pattern.finditer(norm)
                 if _take(claimed, m.start(), m.end())]
        for m in _PSEUDO.finditer(norm):
            _take(claimed, m.start(), m.end())
        cues = [(m.start(), m.end(), forward, backward) for pattern, forward, backward in _CUES
                for m in pattern.finditer(norm) if _take(claimed, m.start(), m.end())]
        out += [(offset + s, i, _negated(norm, s, e, cues)) for s, e, i in sorted(found)]
        offset += len(norm) + 1
    return out


def _echoes(found: set[int], label_set: Sequence[str]) -> bool:
    """True when `found` covers the whole label set (or every label but "No finding", given two or more others)."""
    others = {i for i, label in enumerate(label_set) if normalise(label) != NO_FINDING}
    if len(others) >= 2 and others <= found:
        return True
    return len(label_set) >= 2 and found >= set(range(len(label_set)))


def parse_answer(text: str, label_set: Sequence[str], multilabel: bool,
                 synonyms: Mapping[str, Sequence[str]] | None = None) -> ParsedAnswer:
    """The labels `text` names (module docstring, rules 1-6): single-label -> the first named and not negated;
    multilabel -> all named and not negated (No finding only alone). `synonyms`: label -> other names for it."""
    label_set = list(label_set)
    if not label_set:
        raise ValueError("label_set: expected at least one label")
    names = _compiled(tuple(label_set), _frozen_synonyms(synonyms))
    if _REFUSAL.search(normalise(_check_text(text))):
        return ParsedAnswer([], True, REFUSAL)
    mentions = _mentions(text, names)
    asserted = [i for _, i, negated in mentions if not negated]
    negated = {i for _, i, is_negated in mentions if is_negated}
    if not asserted and not multilabel and len(label_set) == 2 and len(negated) == 1:
        return ParsedAnswer([label_set[1 - negated.pop()]], False)      # rule 5: a binary set is exhaustive
    if not asserted:
        return ParsedAnswer([], True, ALL_NEGATED if mentions else NOTHING_NAMED)
    if _echoes(set(asserted), label_set):
        return ParsedAnswer([], True, ECHO)
    if not multilabel:
        return ParsedAnswer([label_set[asserted[0]]], False)
    found = sorted(set(asserted))
    diseases = [i for i in found if normalise(label_set[i]) != NO_FINDING]
    return ParsedAnswer([label_set[i] for i in (diseases or found)], False)


def _letters(text: str) -> set[str]:
    """Every option letter `text` states (upper case)."""
    m = _WHOLE_LETTER.match(text)
    if m:
        return {m.group(1).upper()}
    found = [g for pattern in (_LEADING_LETTER, _NAMED_LETTER) for m in pattern.finditer(text) for g in m.groups()
             if g]
    return {g.upper() for g in found}


def _check_options(options: Mapping[str, str]) -> None:
    if not isinstance(options, Mapping) or not options:
        raise ValueError(f"options: expected a non-empty mapping letter -> option text, got {options!r}")
    for letter, option in options.items():
        if not (isinstance(letter, str) and len(letter) == 1 and "A" <= letter <= "Z"):
            raise ValueError(f"options[{letter!r}]: expected a single capital letter A-Z as the option's key")
        if not isinstance(option, str) or not option.strip():
            raise ValueError(f"options[{letter!r}]: expected the option's text, got {option!r}")


def parse_choice(text: str, options: Mapping[str, str]) -> ParsedChoice:
    """The option `text` picks, by letter or by option text (module docstring); options: letter -> text."""
    _check_options(options)
    _check_text(text)
    if _REFUSAL.search(normalise(text)):
        return ParsedChoice(None, True, REFUSAL)
    letters = _letters(text) & set(options)
    if len(letters) > 1:
        return ParsedChoice(None, True, TWO_OPTIONS)
    # options whose texts cannot be told apart (same words, or no words) can only be picked by letter
    by_norm: dict[str, list[tuple[str, str]]] = {}
    for letter, option in options.items():
        by_norm.setdefault(normalise(option), []).append((option, letter))
    matchable = [group[0] for norm, group in by_norm.items() if norm and len(group) == 1]
    names = _compiled(tuple(option for option, _ in matchable), ()) if matchable else ()
    named = {matchable[i][1] for _, i, negated in _mentions(text, names) if not negated}
    if len(options) >= 2 and named == set(options):
        return ParsedChoice(None, True, ECHO)
    if letters:
        (letter,) = letters
        if named - letters:
            return ParsedChoice(None, True, CONTRADICTION)
        return ParsedChoice(letter, False)
    if len(named) == 1:
        return ParsedChoice(named.pop(), False)
    return ParsedChoice(None, True, TWO_OPTIONS if named else NO_OPTION)
