"""The one stage cache key: the digests of what a stage reads, its resolved settings, and the code it runs.

    key = stage_key("corpus", inputs={"train:ham10000": digest, ...}, settings=profile.corpus,
                    code=["tasks.generalist.corpus", "tasks.prompts"])

Every stage (ingest, base model, synthesis, corpus, fine-tuning, specialist jobs, RAD index, evaluation, report)
keys its outputs with `stage_key` and serves them from disk when the key it recorded matches. The code part is the
source text of the named modules (a package stands for every module under it), so editing any line of what a stage
runs changes its key and nothing else's; no version number is bumped by hand.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any


def _module_files(name: str) -> tuple[Path, list[Path]]:
    """(folder the names are relative to, source files) of module `name`; a package: every .py file under it."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"cache key: no source for module {name!r}")
    origin = Path(spec.origin)
    if spec.submodule_search_locations:  # a package
        return origin.parent, sorted(p for p in origin.parent.rglob("*.py") if "__pycache__" not in p.parts)
    return origin.parent, [origin]


@lru_cache(maxsize=None)
def _file_digest(path: str, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def code_digest(modules: Sequence[str]) -> str:
    """sha256 over the source text of `modules` (dotted names; packages recursively), independent of where the
    checkout lies."""
    h = hashlib.sha256()
    for name in sorted(set(modules)):
        base, files = _module_files(name)
        for p in files:
            st = p.stat()
            h.update(f"{name}:{p.relative_to(base).as_posix()}\0".encode())
            h.update(_file_digest(str(p), st.st_mtime_ns, st.st_size).encode())
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """Settings as plain JSON values: pydantic models and dataclasses become dicts, tuples and paths lists/strings."""
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def stage_key(stage: str, inputs: Mapping[str, Any], settings: Any, code: Sequence[str]) -> str:
    """The hex sha256 cache key of one unit of a stage.

    `inputs`: name -> content digest (or id) of everything the unit reads; `settings`: what the profile asks of it
    (only what changes its outputs); `code`: the modules it runs.
    """
    blob = json.dumps({"stage": stage, "inputs": jsonable(inputs), "settings": jsonable(settings),
                       "code": code_digest(code)}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def recorded_key(marker: Path, field: str = "key") -> str | None:
    """The key a stage recorded in its JSON marker file, or None when there is none (or it is unreadable)."""
    try:
        return json.loads(Path(marker).read_text()).get(field)
    except (OSError, ValueError, AttributeError):
        return None
