"""Profiles (`infra/profiles/<name>.yaml`) select datasets, sizes, backends and recipes; code never branches on a name.

    from infra.profiles import load_profile
    profile = load_profile("tiny", overrides=["data.policy=quarantine"])     # a typed, validated Profile
    profile.specialists.recipe.lr

Every section is a typed model (the part that reads it owns it: tasks/<part>/settings.py). A profile is checked
whole when it is loaded, `--set` overrides included, before any stage runs: an unknown key or a value of the wrong
type is a `ProfileError` naming the file, the key (and the `--set` that gave it) and what was expected.
A profile may start from another (`extends: tiny`): its keys are merged over the parent's, mappings recursively.
"""
from __future__ import annotations

import copy
import typing
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError, model_validator

from tasks.evaluation.settings import EvaluationSettings
from tasks.generalist.settings import CorpusSettings, FinetuneSettings, GeneralistSettings, SynthesisSettings
from tasks.ingest.settings import DataSettings
from tasks.rad.settings import RadSettings
from tasks.secrets import redact
from tasks.settings import Settings
from tasks.specialists.settings import SpecialistsSettings

PROFILES_DIR = Path(__file__).parent / "profiles"
REPO_ROOT = Path(__file__).resolve().parents[1]


class ProfileError(ValueError):
    """A profile file or override that does not validate; the message names file, key and what was expected."""


class OutputsSettings(Settings):
    dir: str                                 # where a run writes (data_contracts/layout.py); `gsco run --out` wins


class TrackingSettings(Settings):
    uri: str | None = None                   # null: sqlite:////<outputs>/mlflow.db, artifacts in <outputs>/mlartifacts
    experiment: str
    log_table_artifacts: bool = True         # copy each table's Parquet shards into the MLflow run


class Profile(Settings):
    """One profile, every section typed."""
    name: str
    data: DataSettings
    outputs: OutputsSettings
    tracking: TrackingSettings
    generalist: GeneralistSettings
    synthesis: SynthesisSettings
    corpus: CorpusSettings
    finetune: FinetuneSettings
    specialists: SpecialistsSettings
    rad: RadSettings
    evaluation: EvaluationSettings
    path: str = ""                           # the YAML file it was loaded from (set by load_profile)

    @model_validator(mode="after")
    def _retriever_is_trained(self) -> "Profile":
        from tasks.rad.retriever import BEST_VALIDATION
        r = self.rad.retriever
        if r not in (None, BEST_VALIDATION) and r not in self.specialists.architectures:
            raise ValueError(f"rad.retriever {r!r} is not in specialists.architectures "
                             f"{self.specialists.architectures} (or best-validation, or null): a retriever's "
                             "embeddings come from its job")
        from tasks.evaluation.settings import ENCODER_RAD_ARM
        if ENCODER_RAD_ARM in self.evaluation.arms and self.generalist.backend == "openai":
            raise ValueError(f"evaluation.arms: {ENCODER_RAD_ARM} embeds images with MedDr's own vision encoder, "
                             "which a served generalist (generalist.backend: openai) does not expose; use the "
                             "transformers backend or drop the arm")
        return self


def profile_path(name_or_path: str | Path) -> Path:
    """The YAML file of a profile given by name (tiny, full) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ProfileError(f"profile file {p} does not exist")
        return p
    p = PROFILES_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in PROFILES_DIR.glob("*.yaml"))
        raise ProfileError(f"unknown profile {name_or_path!r}; known: {known}, or pass a .yaml path")
    return p


def _raw(path: Path) -> dict:
    """The profile's YAML as a mapping, with its `extends` chain merged under it."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"{path}: a profile is a mapping of sections, got {type(data).__name__}")
    parent = data.pop("extends", None)
    return _merge(_raw(profile_path(parent)), data) if parent else data


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def apply_override(profile: dict, override: str) -> str:
    """Set `a.b.c=value` (value parsed as YAML) in the raw profile in place; returns the dotted key. Whether the key
    exists and the value fits is checked when the profile is validated."""
    if "=" not in override:
        raise ProfileError(f"--set {override!r}: expected KEY.PATH=VALUE")
    key, value = (part.strip() for part in override.split("=", 1))
    parts = key.split(".")
    if not all(parts):
        raise ProfileError(f"--set {override!r}: expected a dotted key such as finetune.max_steps")
    node = profile
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ProfileError(f"--set {override!r}: {'.'.join(parts[:i + 1])} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ProfileError(f"--set {override!r}: the value is not valid YAML ({e})") from None
    return key


def _known_keys(loc: tuple) -> list[str]:
    """The keys the section at `loc` (a validation error's location, minus its last part) accepts."""
    model, parts = Profile, list(loc)
    while parts:
        field = model.model_fields.get(str(parts.pop(0)))
        if field is None:
            return []
        if typing.get_origin(field.annotation) is dict and parts:
            parts.pop(0)  # the mapping's key (e.g. the architecture under arch_settings)
        model = _model_of(field.annotation)
        if model is None:
            return []
    return [k for k in model.model_fields if not (model is Profile and k == "path")]


def _model_of(annotation) -> type[BaseModel] | None:
    """The settings model inside an annotation (X, X | None, dict[str, X])."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _problems(e: ValidationError, path: Path, overridden: dict[str, str]) -> str:
    """One line per validation error: where (file or --set), the key, what was expected and what was given."""
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"])
        source = next((f"--set {o}" for k, o in overridden.items() if loc == k or loc.startswith(k + ".")
                       or k.startswith(loc + ".")), str(path))
        if err["type"] == "extra_forbidden":
            known = _known_keys(err["loc"][:-1])
            what = "unknown key" + (f" (expected one of {', '.join(known)})" if known else "")
        elif err["type"] == "missing":
            what = "missing key"
        else:
            what = err["msg"].removeprefix("Value error, ")
        if not loc:   # a check across sections: its message names the keys; the input is the whole profile
            sources = ", ".join(f"--set {o}" for o in overridden.values())
            lines.append(f"{path}{' with ' + sources if sources else ''}: {what}")
            continue
        got = "" if err["type"] in ("missing", "extra_forbidden") else f" (got {err['input']!r})"
        lines.append(f"{source}: {loc}: {what}{got}")
    return "; ".join(lines)


def load_profile(name_or_path: str | Path, overrides: list[str] | None = None) -> Profile:
    """The validated profile, with `overrides` (`a.b=value`) applied; raises ProfileError naming what is wrong."""
    path = profile_path(name_or_path)
    raw = _raw(path)
    if "path" in raw:
        raise ProfileError(f"{path}: path: unknown key (it is set to the profile's file when loaded)")
    try:
        overridden = {apply_override(raw, o): o for o in overrides or []}
    except ProfileError as e:
        raise ProfileError(redact(str(e))) from None
    try:
        return Profile.model_validate({**raw, "path": str(path)})
    except ValidationError as e:  # values are quoted back: a secret someone typed must not be
        raise ProfileError(redact(f"invalid profile: {_problems(e, path, overridden)}")) from None


def repo_path(p: str | Path) -> Path:
    """`p`, or the repository path it names when relative (profiles name infra files relative to the repository)."""
    q = Path(p)
    return q if q.is_absolute() else REPO_ROOT / q
