"""Where a run departs from the paper's protocol, in words, for the report's "Departures from the paper" section.

    lines = profile_departures(profile)          # from the profile's settings (infra/profiles.py)
    lines += ingest_warnings(ingest_results)     # what the loaders said (28-px MedMNIST files, random IU-Xray split)

The report adds what it sees itself (Table A7 datasets missing, metrics not computed, parse failures). Every line
says what differs and why, so a reader never mistakes a tiny run's numbers for the paper's.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from tasks.evaluation.settings import PAPER_A7_DATASETS

PAPER_K = 5
PAPER_GENERALIST = "InternVL-Chat-V1-2-Plus (40B) fine-tuned as MedDr"


def _generalist(profile) -> list[str]:
    g, out = profile.generalist, []
    if g.tiny_model is not None and g.model is None:
        out.append(f"Generalist: a tiny random-initialised InternVL (text width {g.tiny_model.text_hidden_size}, "
                   f"{g.tiny_model.text_layers} layers, {g.tiny_model.image_size}-px images) instead of "
                   f"{PAPER_GENERALIST}: the tiny profile runs on 2 CPU cores with no downloads.")
    elif g.model is not None:
        out.append(f"Generalist base: {g.model} (the paper: {PAPER_GENERALIST}).")
    ft = profile.finetune
    if ft.max_steps is not None:
        out.append(f"Fine-tuning: {ft.max_steps} steps at learning rate {ft.learning_rate:g} instead of the paper's "
                   "2 epochs at 1e-5 (SPEC §5).")
    return out


def _corpus(profile) -> list[str]:
    c, out = profile.corpus, []
    if c.cls_prompt == "evaluation":
        out.append("Corpus: CLS instructions are worded like the evaluation's diagnosis prompt (Fig. A4 without "
                   "references) instead of Fig. A3's CLS template.")
    if c.in_domain_train:
        out.append("Corpus: in-domain benchmark sets without a training set of their own (ChestMNIST) give their "
                   "train/val splits as CLS rows, standing in for their source training set (ChestX-ray14).")
    if c.collaboration.enabled:
        out.append(f"Corpus: collaboration instructions ({', '.join(c.collaboration.arms)}; Fig. A4 prompts built "
                   f"from train/val samples' specialist predictions and their {c.collaboration.rad_k} nearest other "
                   "training cases, answered with the true label) are added; the paper's GSCo is training-free. "
                   "A small model learns to use references only when shown them.")
        if c.collaboration.per_sample == "rotate":
            out.append("Corpus: each sample gives the plain prompt and one of the reference arms in turn.")
        if c.collaboration.datasets == "specialists":
            out.append("Corpus: collaboration instructions come from every set a specialist trained on, the "
                       "out-of-domain ones included: those sets are then not out-of-domain for the tiny MedDr.")
    return out


def _specialists(profile) -> list[str]:
    s, out = profile.specialists, []
    scratch = [a for a in s.architectures
               if not s.arch_settings.get(a) or not s.arch_settings[a].weights_path]
    if scratch:
        out.append(f"Specialists trained from random initialisation ({', '.join(scratch)}) instead of the paper's "
                   "pretrained weights (IN1K / CLIP / DINO / SA-1B): no weights are downloaded.")
    if s.recipe.img_size != 224:
        out.append(f"Specialists: input {s.recipe.img_size} px (some architectures their own size) instead of 224 "
                   f"px, {s.recipe.max_epochs} epochs at most instead of 100.")
    return out


def _evaluation(profile) -> list[str]:
    e, r, out = profile.evaluation, profile.rad, []
    if e.rad_k != PAPER_K:
        out.append(f"RAD retrieves {e.rad_k} cases instead of the paper's {PAPER_K}.")
    if r.retriever is None:
        out.append("RAD is off (rad.retriever null): the +RAD and GSCo arms are not evaluated.")
    elif r.retriever != "best-validation":
        out.append(f"RAD retriever fixed to {r.retriever} instead of the best specialist (chosen on validation).")
    if e.bootstrap < 1000:
        out.append(f"Confidence intervals from {e.bootstrap} bootstrap resamples instead of 1,000.")
    if list(e.a7_datasets) != PAPER_A7_DATASETS:
        out.append(f"Table A7 averages over the profile's list {list(e.a7_datasets)} instead of the paper's nine.")
    return out


def profile_departures(profile) -> list[str]:
    """The departures a profile makes from the paper's setup, one sentence each (generalist, corpus, specialists,
    RAD and evaluation settings)."""
    data = ["Data: generated look-alikes of the benchmark in the real raw formats, not the real datasets."] \
        if profile.data.tiny_benchmark is not None else []
    return [*data, *_generalist(profile), *_corpus(profile), *_specialists(profile), *_evaluation(profile)]


def ingest_warnings(results: Iterable[Mapping]) -> list[str]:
    """The loaders' warnings (e.g. a 28-px MedMNIST file read, IU-Xray without the R2Gen split file), one per line."""
    return [f"Data: {w}" for r in results for w in r.get("warnings") or []]
