"""Model-based report metrics built from local weights only (SPEC §8): F1-RadGraph (the `radgraph` package) and
CheXbert vector similarity (the CheXbert labeler of the `f1chexbert` package).

    scorer, why = chexbert_scorer(settings.report_metrics.chexbert)    # (None, why) when it cannot be built here
    report_per_sample(hyps, refs, chexbert=scorer, chexbert_note=why)   # a scorer: (hyps, refs) -> per-sample scores

Nothing here downloads. Both packages fetch weights from the Hugging Face hub when theirs are missing; a scorer is
built only when the profile points at weights present on this machine (and, for CheXbert, bert-base-uncased's config
and vocabulary are in the local Hugging Face cache), else the metric is reported as not computed with the reason.

Packages: f1chexbert==0.0.2 is a project dependency; only its labeler network (`bert_labeler`) and checkpoint loading
are used, because its own tokenising calls `encode_plus`, which transformers 5 removed. radgraph==0.1.18 installs
beside transformers 5 but cannot run with it (its bundled AllenNLP tokenizer calls `encode_plus` while loading), so
it is not a dependency: F1-RadGraph is computed only where a transformers with `encode_plus` is installed with it.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

Scorer = Callable[[list[str], list[str]], np.ndarray]
CHEXBERT_FILE = "chexbert.pth"
CHEXBERT_ENCODER = "bert-base-uncased"          # what f1chexbert builds its labeler and tokenizer from
RADGRAPH_FILES = ("config.json", "weights.th", "vocabulary")
RADGRAPH_REWARD = "partial"                     # the F1-RadGraph level reported by report-generation evaluations


def _no_weights(key: str) -> str:
    return f"not computed: no local weights configured (evaluation.report_metrics.{key})"


def _encode_plus_removed() -> str | None:
    """Why packages written for transformers 4 cannot tokenize here, or None when they can."""
    import transformers
    from transformers import PreTrainedTokenizerBase
    if hasattr(PreTrainedTokenizerBase, "encode_plus"):
        return None
    return f"tokenizer.encode_plus, which transformers {transformers.__version__} no longer has"


def _in_hf_cache(repo: str, files: Sequence[str]) -> list[str]:
    """Those of `files` of hub repo `repo` absent from the local Hugging Face cache (nothing is fetched)."""
    from huggingface_hub import try_to_load_from_cache
    return [f for f in files if not isinstance(try_to_load_from_cache(repo, f), str)]


# --------------------------------------------------------------------------------------------------------- RadGraph
def radgraph_scorer(weights: str | None, device: str | None = None) -> tuple[Scorer | None, str | None]:
    """(F1-RadGraph "partial" reward per report pair, None), or (None, why it is not computed).

    `weights`: the radgraph package's extracted model folder (config.json, weights.th, vocabulary/), named by its
    model type (radgraph, radgraph-xl, ...), as the package unpacks it under its cache.
    """
    if weights is None:
        return None, _no_weights("radgraph")
    folder = Path(weights).expanduser()
    missing = [f for f in RADGRAPH_FILES if not (folder / f).exists()]
    if missing:
        return None, f"not computed: RadGraph model folder {folder} lacks {missing} (expected {list(RADGRAPH_FILES)})"
    try:
        import radgraph
    except ImportError:
        return None, ("not computed: radgraph not installed (radgraph==0.1.18 conflicts with transformers 5.x: it "
                      "calls tokenizer.encode_plus, which transformers 5 removed)")
    removed = _encode_plus_removed()
    if removed is not None:
        return None, f"not computed: radgraph cannot run with this transformers (it calls {removed})"
    config = json.loads((folder / "config.json").read_text())
    encoder = config["model"]["embedder"]["token_embedders"]["bert"]["model_name"]
    absent = _in_hf_cache(encoder, ["config.json", "model.safetensors", "pytorch_model.bin"])
    if "config.json" in absent or len(absent) == 3:     # its config and one of its weight files
        return None, f"not computed: RadGraph's encoder {encoder} is not in the local Hugging Face cache"
    cuda = -1 if device in (None, "cpu") else int(str(device).partition(":")[2] or 0)
    model = radgraph.F1RadGraph(reward_level=RADGRAPH_REWARD, model_type=folder.name,
                                model_cache_dir=str(folder.parent), cuda=cuda)

    def score(hyps: list[str], refs: list[str]) -> np.ndarray:
        _, rewards, _, _ = model(refs=list(refs), hyps=list(hyps))
        return np.asarray(rewards, dtype=float)
    return score, None


# ---------------------------------------------------------------------------------------------------------- CheXbert
def _chexbert_file(weights: str) -> Path | None:
    path = Path(weights).expanduser()
    path = path / CHEXBERT_FILE if path.is_dir() else path
    return path if path.is_file() and path.name == CHEXBERT_FILE else None


def _f1chexbert():
    """The f1chexbert.f1chexbert module (ImportError when not installed)."""
    with warnings.catch_warnings():     # it switches every warning of the process off on import; undo that
        from f1chexbert import f1chexbert as package
    return package


def _load_chexbert(checkpoint: Path, device: str):
    """f1chexbert's F1CheXbert (labeler + tokenizer) with its weights read from `checkpoint`, never fetched."""
    package = _f1chexbert()
    # F1CheXbert reads <CACHE_DIR>/chexbert.pth and fetches it only when absent: point it at the local file
    package.CACHE_DIR = str(checkpoint.parent)
    return package.F1CheXbert(device=device)


def _checkpoint_mismatch(checkpoint: Path, model) -> list[str]:
    """Labeler parameters the checkpoint does not hold (f1chexbert loads it with strict=False, silently)."""
    import torch
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state = state.get("model_state_dict", state)
    have = {k.replace("module.", "") for k in state}
    return sorted(set(model.state_dict()) - have)


def chexbert_scorer(weights: str | None, device: str | None = None) -> tuple[Scorer | None, str | None]:
    """(CheXbert vector similarity per report pair, None), or (None, why it is not computed).

    The similarity is the cosine between the CheXbert labeler's [CLS] embeddings of the generated and the reference
    report (reports truncated to 512 tokens). `weights`: the CheXbert checkpoint `chexbert.pth` or its folder.
    """
    if weights is None:
        return None, _no_weights("chexbert")
    checkpoint = _chexbert_file(weights)
    if checkpoint is None:
        return None, f"not computed: no CheXbert checkpoint {CHEXBERT_FILE} at {weights}"
    try:
        _f1chexbert()
    except ImportError as e:
        return None, f"not computed: f1chexbert not installed ({e})"
    absent = _in_hf_cache(CHEXBERT_ENCODER, ["config.json", "vocab.txt"])
    if absent:
        return None, (f"not computed: CheXbert needs {CHEXBERT_ENCODER}'s {absent} in the local Hugging Face cache "
                      "(nothing is downloaded)")
    import torch
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    chexbert = _load_chexbert(checkpoint, device)
    missing = _checkpoint_mismatch(checkpoint, chexbert.model)
    if missing:
        return None, f"not computed: {checkpoint} is not a CheXbert labeler checkpoint (lacks {missing[:5]})"

    @torch.no_grad()
    def embed(texts: list[str], batch: int = 32) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch):
            enc = chexbert.tokenizer([" ".join(t.split()) for t in texts[i:i + batch]], padding=True,
                                     truncation=True, max_length=512, return_tensors="pt").to(device)
            hidden = chexbert.model.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])[0]
            out.append(hidden[:, 0, :].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)

    def score(hyps: list[str], refs: list[str]) -> np.ndarray:
        if len(hyps) != len(refs):
            raise ValueError(f"CheXbert: {len(hyps)} generated reports for {len(refs)} references")
        if not hyps:
            return np.zeros(0)
        sim = torch.nn.functional.cosine_similarity(embed(list(hyps)), embed(list(refs)), dim=1)
        return sim.numpy().astype(float)
    return score, None
