"""Every prompt of the paper (SPEC §4: Figs. 6, A3, A4): DGB/DES synthesis, the training templates, the GSCo arms,
and the OmniMedVQA multiple-choice instruction (SPEC §8).

    prompts.diagnosis_prompt("chest X-ray", card.labels, multilabel=True, rad=rad_labels, moed=moed_labels)
    prompts.multiple_choice_prompt(question, {"A": "Pneumonia", "B": "Mass"})
    OMP_NUM_THREADS=1 pytest -q tests/test_prompts.py

Templates are plain `str.format` strings with lower-case fields ({modality}, {label_set}, {question}, {disease},
{rad}, {moed}) so that table code can render them column-wise (tasks/generalist/corpus.py); the chat format around
them is tasks/generalist/chat.py. The wording is the paper's, verbatim, including its quirks (paraphrase 2 says
"Image"): a model fine-tuned on these strings is sensitive to them.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

PREAMBLE = "You are a helpful medical assistant."

# The option list (the label set) is joined by ", " so that "malignant, normal, benign" reads as the benchmark's two
# options "malignant" and "normal, benign"; the reference lists {RAD} and {MoED} are joined by "," as SPEC §4 fixes.
OPTION_SEP = ", "
REFERENCE_SEP = ","

# Fig. 6: diagnosis-guided bootstrapping, sent to the general-domain generalist to write a DGB report.
DGB_SYNTHESIS_TEMPLATE = (
    PREAMBLE + " Your task is medical report generation. You are given a {modality} image, and the diagnosis is "
    "{disease}. You need to provide a medical report consisting of findings and impressions."
)

# Fig. A3: instruction-tuning templates, one per corpus part.
VQA_TEMPLATE = (PREAMBLE + " You are required to answer the question based on the medical image. "
                "The question is {question}.")
MRG_TEMPLATE = (PREAMBLE + " Your task is report generation. You are given a chest x-ray image, and you are required "
                "to generate a summary report about the image.")
CLS_TEMPLATE = (PREAMBLE + " Your task is disease diagnosis. You are given a {modality} image. "
                "The possible diagnoses are: {label_set}.")
DGB_TEMPLATE = (PREAMBLE + " Your task is report generation. You are given a {modality} image. You need to provide a "
                "medical report consisting of findings and impressions. Findings list the observations and "
                "impressions outlines the final diagnosis.")
DES_TEMPLATE = (PREAMBLE + " Your task is report generation. You are given a {modality} image. You are required to "
                "generate a detailed description and analysis from a medical perspective based on the image.")

# DES rewriting (paper §4 "Medical Image Description Dataset"): the paper gives no verbatim text, only the intent —
# keep what the image shows, drop what cannot be inferred from it.
DES_REWRITE_TEMPLATE = (
    PREAMBLE + " You are given a medical image and the text that accompanies it in a published case study (its title "
    "and the image caption):\n{case_text}\n"
    "Rewrite this text into a description of what the image shows, from a medical perspective: the imaging modality, "
    "the body region, the visible findings and the diagnosis they support. Keep only what can be seen in or inferred "
    "from the image. Remove everything else, in particular the patient's name, age, dates, the clinical history, "
    "treatment, outcome and any reference to other figures or panels. Do not mention that you were given a caption "
    "or a title. Answer with the description only."
)

# Fig. A4: the four paraphrases of the generalist-specialist collaboration instruction, split into their sentences
# so that the ablation arms (Table A7) can drop the RAD and/or MoED sentence and keep the rest in the paper's order.
_INTRO = "intro"
_OPTIONS = "options"
_RAD = "rad"
_MOED = "moed"
GSCO_PARAPHRASES: tuple[tuple[tuple[str, str], ...], ...] = (
    ((_INTRO, PREAMBLE + " Your task is disease diagnosis. You are given a {modality} image."),
     (_OPTIONS, "The possible options are: {label_set}."),
     (_RAD, "The diagnoses of the most similar cases are {rad}."),
     (_MOED, "The reference answers by other models are {moed}.")),
    ((_INTRO, PREAMBLE + " Your task is disease diagnosis. You are required to diagnose the {modality} image."),
     (_RAD, "The reference diagnoses of the most similar cases are {rad}."),
     (_MOED, "The reference answers by other models are {moed}."),
     (_OPTIONS, "The possible options are: {label_set}.")),
    ((_INTRO, PREAMBLE + " You are required to classify the {modality} Image."),
     (_RAD, "The reference diagnoses of the most similar cases are {rad}."),
     (_MOED, "The reference answers by other models are {moed}."),
     (_OPTIONS, "The available options are: {label_set}.")),
    ((_INTRO, PREAMBLE + " You are required to diagnose the {modality} image."),
     (_RAD, "The reference diagnoses of the most similar cases are {rad}."),
     (_MOED, "The reference answers by other models are {moed}."),
     (_OPTIONS, "The possible options are: {label_set}.")),
)
# OmniMedVQA multiple choice (SPEC §8): the Fig. A3 VQA instruction, then the options one per line as OmniMedVQA's
# option_A..option_D fields letter them ("A: text"), then a request for the letter.
MULTIPLE_CHOICE_OPTIONS = "Options:"
MULTIPLE_CHOICE_RESPONSE = "Answer with the letter of the correct option."
MULTILABEL_RESPONSE = ("The response should only contain one or more options. Only if no other options are "
                       "available, you can choose 'No finding'.")
SINGLE_LABEL_RESPONSE = "The response should only contain one option."


def _required_text(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: expected a non-empty string, got {value!r}")
    return value.strip()


def join_labels(labels: Sequence[str], name: str = "labels", sep: str = REFERENCE_SEP) -> str:
    """Label names joined by `sep` (REFERENCE_SEP for {RAD}/{MoED}, OPTION_SEP for the option list), in the order
    given (duplicates kept: they carry the specialists' votes)."""
    if isinstance(labels, str):
        raise TypeError(f"{name}: expected a list of label names, got the string {labels!r}")
    if len(labels) == 0:
        raise ValueError(f"{name}: expected at least one label name, got an empty list "
                         "(pass None to leave the sentence out)")
    return sep.join(_required_text(label, f"{name}[{i}]") for i, label in enumerate(labels))


def dgb_prompt(modality: str, disease: str) -> str:
    """The Fig. 6 diagnosis-guided bootstrapping prompt for one image of `modality` whose diagnosis is `disease`."""
    return DGB_SYNTHESIS_TEMPLATE.format(modality=_required_text(modality, "modality"),
                                         disease=_required_text(disease, "disease"))


def vqa_prompt(question: str) -> str:
    """The Fig. A3 VQA instruction for `question` (a trailing '?' or '.' is kept as written)."""
    return VQA_TEMPLATE.format(question=_required_text(question, "question"))


def multiple_choice_prompt(question: str, options: Mapping[str, str]) -> str:
    """The OmniMedVQA multiple-choice instruction: the Fig. A3 VQA template for `question`, then `options` (letter ->
    text, letters A, B, C, ... in order) one per line as "A: text", then a request for the option's letter.

    OmniMedVQA's own evaluation (Multi-Modality-Arena MedicalEval) appends the candidate answers unlettered and scores
    the answer by string similarity to each; its data letter them (option_A..option_D), and a letter is what
    tasks/evaluation/parsing.parse_choice reads first. One option per line because option texts contain commas
    ("Normal, no acute findings"); parse_choice also accepts an answer that repeats one option's text.
    """
    if not isinstance(options, Mapping):
        raise TypeError(f"options: expected a mapping letter -> option text, got {type(options).__name__}")
    letters = list(options)
    expected = [chr(ord("A") + i) for i in range(len(letters))]
    if len(letters) < 2:
        raise ValueError(f"options: expected at least 2 options, got {len(letters)}")
    if letters != expected:
        raise ValueError(f"options: expected the letters {expected} in order, got {letters}")
    lines = [f"{letter}: {_required_text(options[letter], f'options[{letter!r}]')}" for letter in letters]
    return "\n".join([vqa_prompt(question), MULTIPLE_CHOICE_OPTIONS, *lines, MULTIPLE_CHOICE_RESPONSE])


def mrg_prompt() -> str:
    """The Fig. A3 chest x-ray report-generation instruction."""
    return MRG_TEMPLATE


def des_rewrite_prompt(case_text: str) -> str:
    """The instruction asking the generalist to rewrite an OpenI case's title + caption into an image description."""
    return DES_REWRITE_TEMPLATE.format(case_text=_required_text(case_text, "case_text"))


def diagnosis_prompt(modality: str, label_set: Sequence[str], multilabel: bool, rad: Sequence[str] | None,
                     moed: Sequence[str] | None, paraphrase: int = 0) -> str:
    """The Fig. A4 GSCo diagnosis instruction; rad/moed None drops that sentence (MedDr, +MoED, +RAD arms)."""
    if not 0 <= paraphrase < len(GSCO_PARAPHRASES):
        raise ValueError(f"paraphrase: expected 0..{len(GSCO_PARAPHRASES) - 1}, got {paraphrase!r}")
    values = {_INTRO: {"modality": _required_text(modality, "modality")},
              _OPTIONS: {"label_set": join_labels(label_set, "label_set", OPTION_SEP)}}
    if rad is not None:
        values[_RAD] = {"rad": join_labels(rad, "rad")}
    if moed is not None:
        values[_MOED] = {"moed": join_labels(moed, "moed")}
    sentences = [template.format(**values[part]) for part, template in GSCO_PARAPHRASES[paraphrase] if part in values]
    sentences.append(MULTILABEL_RESPONSE if multilabel else SINGLE_LABEL_RESPONSE)
    return " ".join(sentences)


# Table A9's RAD on VQA and report generation "incorporates the retrieved images' annotations into the input"; the
# paper gives no wording, so these sentences are ours (named as a departure in the report), appended to Fig. A3's.
VQA_RAD_SENTENCE = "The question-answer pairs of the most similar images are: {references}."
MRG_RAD_SENTENCE = "The findings of the most similar images are: {references}."


def _references(texts: Sequence[str], name: str) -> str:
    if isinstance(texts, str) or not texts:
        raise ValueError(f"{name}: expected a non-empty list of retrieved texts, got {texts!r}")
    return " | ".join(_required_text(t, f"{name}[{i}]") for i, t in enumerate(texts))


def vqa_rad_prompt(question: str, annotations: Sequence[str]) -> str:
    """The VQA instruction followed by the retrieved images' question-answer pairs (nearest first, ' | ' apart)."""
    return vqa_prompt(question) + " " + VQA_RAD_SENTENCE.format(references=_references(annotations, "annotations"))


def mrg_rad_prompt(findings: Sequence[str]) -> str:
    """The report-generation instruction followed by the retrieved images' findings (nearest first, ' | ' apart)."""
    return mrg_prompt() + " " + MRG_RAD_SENTENCE.format(references=_references(findings, "findings"))
