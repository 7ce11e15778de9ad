"""Profiles (`infra/profiles/<name>.yaml`) select datasets, sizes, backends and recipes; code never branches on a name.

    from infra.profiles import load_profile
    profile = load_profile("tiny", overrides=["data.policy=quarantine"])
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

PROFILES_DIR = Path(__file__).parent / "profiles"


def profile_path(name_or_path: str | Path) -> Path:
    """The YAML file of a profile given by name (tiny, full) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"profile file {p} does not exist")
        return p
    p = PROFILES_DIR / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(q.stem for q in PROFILES_DIR.glob("*.yaml"))
        raise FileNotFoundError(f"unknown profile {name_or_path!r}; known: {known}, or pass a .yaml path")
    return p


def apply_override(profile: dict, override: str) -> None:
    """Set `a.b.c=value` (value parsed as YAML) in place; the key path must already exist."""
    if "=" not in override:
        raise ValueError(f"override {override!r}: expected KEY.PATH=VALUE")
    key, value = override.split("=", 1)
    node, parts = profile, key.strip().split(".")
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(f"override {override!r}: no key {'.'.join(parts[:i + 1])!r} in the profile")
        node = node[part]
        if node is None:
            raise KeyError(f"override {override!r}: {'.'.join(parts[:i + 1])} is null in the profile")
    if not isinstance(node, dict) or parts[-1] not in node:
        raise KeyError(f"override {override!r}: no key {key!r} in the profile")
    node[parts[-1]] = yaml.safe_load(value)


def _merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_profile(name_or_path: str | Path, overrides: list[str] | None = None) -> dict:
    """The profile as a dict, with `overrides` applied and `_path` recording where it came from.

    A profile may start from another (`extends: tiny`): its keys are merged over the parent's, mappings recursively.
    """
    path = profile_path(name_or_path)
    profile = yaml.safe_load(path.read_text())
    if not isinstance(profile, dict) or "name" not in profile:
        raise ValueError(f"{path}: a profile is a mapping with at least a `name`")
    if profile.get("extends"):
        parent = load_profile(profile.pop("extends"))
        parent.pop("_path", None)
        profile = _merge(parent, profile)
    profile = copy.deepcopy(profile)
    for o in overrides or []:
        apply_override(profile, o)
    profile["_path"] = str(path)
    return profile
