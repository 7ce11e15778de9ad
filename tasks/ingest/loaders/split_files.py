"""Split files that list sample ids per split in one JSON object (R2Gen's IU-Xray annotation.json), and the seeded
random fallback used, with a warning, when a card allows it and no split file is present.

    splits, rejects = json_id_splits(ctx, known_ids)     # {id_column value: split}, unmappable records as rejects

A card opts in with split.source=file, split.file_content=json_ids (split.id_field, split.id_pattern) and optionally
split.fallback=random (see data_contracts/cards.py SplitSpec); report_table reads it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import LoadContext, Reject, RowError, decode_utf8, nonempty, not_utf8, safe_path, \
    split_sources


def _names(ctx: LoadContext) -> str:
    return ", ".join(sorted(set(ctx.card.raw.split.files.values())))


def fallback_note(ctx: LoadContext) -> str:
    """The warning given when no split file is present and the rows are split at random instead."""
    spec = ctx.card.raw.split
    fractions = " / ".join(f"{s} {f:g}" for s, f in spec.fractions.items())
    origin = f"; the standard split is {spec.file_origin}" if spec.file_origin else ""
    return (f"{ctx.card.name}: no split file {_names(ctx)} in {ctx.dataset_dir}, so rows are split at random "
            f"(seeded {fractions}, seed {spec.seed}){origin}: place it there as {_names(ctx)}")


def split_file_present(ctx: LoadContext) -> bool:
    """Whether any split.files entry exists (split.fallback applies only when none does)."""
    return any(any(ctx.dataset_dir.glob(f)) for f in ctx.card.raw.split.files.values())


def describe_split(ctx: LoadContext) -> str:
    """One line for `gsco datasets validate`: whether the split file is there and what happens without it."""
    if split_file_present(ctx):
        return f"split file: {_names(ctx)} found; rows follow it, rows it does not list are left out"
    if ctx.card.raw.split.fallback:
        return "split file: " + fallback_note(ctx).split(": ", 1)[1]
    return f"split file: {_names(ctx)} missing in {ctx.dataset_dir}; ingest fails without it"


def _records(ctx: LoadContext, rel: str, split: str, cache: dict) -> tuple[Path, list]:
    """The records under key `split` of a JSON split file (each file is parsed once)."""
    path = safe_path(ctx, ctx.dataset_dir, rel, ctx.rel(ctx.dataset_dir), field="split.files")
    if path not in cache:
        if not path.is_file():
            raise DataError(ctx.rel(ctx.dataset_dir) + f"/{rel}", f"the split file of split {split!r}",
                            field="split.files")
        text, bad = decode_utf8(path.read_bytes())   # a non-UTF-8 byte inside a record's text spoils no id
        try:
            cache[path] = json.loads(text)
        except Exception as e:
            raise DataError(ctx.rel(path), not_utf8(*bad[0]) if bad else
                            f"a readable JSON file ({type(e).__name__}: {e})") from None
    data = cache[path]
    if not isinstance(data, dict) or not isinstance(data.get(split), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DataError(ctx.rel(path), f"a JSON object with a list of records under {split!r} (found {found})",
                        field=split)
    return path, data[split]


def json_id_splits(ctx: LoadContext, known: set[str]) -> tuple[dict[str, str], list[Reject]]:
    """id_column value -> split from the JSON split files; records whose id maps to no known row, and later listings of
    an id already listed under another split (the first listing is kept), are rejects.

    With split.id_pattern, group 1 of the pattern searched in the record's id is the id_column value
    ("^CXR(\\d+)_" maps R2Gen's "CXR2384_IM-0942" to uid "2384"); without it, the id itself is.
    """
    raw, spec = ctx.card.raw, ctx.card.raw.split
    pattern = re.compile(spec.id_pattern) if spec.id_pattern else None
    splits: dict[str, str] = {}
    rejects: list[Reject] = []
    cache: dict = {}
    for split, f in split_sources(ctx):
        path, records = _records(ctx, f, split, cache)
        frel = ctx.rel(path)
        for n, rec in enumerate(records):
            row = f"{split}[{n}]"
            v = rec.get(spec.id_field) if isinstance(rec, dict) else None
            key = str(v).strip() if nonempty(v) else ""
            m = pattern.search(key) if pattern and key else None
            uid = m.group(1) if m else key
            if not key:
                reason = f"a record with a non-empty {spec.id_field!r}"
            elif pattern and not m:
                reason = f"an id matching split.id_pattern {spec.id_pattern!r}, got {key!r}"
            elif uid not in known:
                reason = (f"an id naming a {raw.id_column} of {raw.table}, got {key!r} ({raw.id_column} {uid!r} "
                          "is absent)")
            elif splits.setdefault(uid, split) != split:   # the first listing is kept, this one is the bad row
                reason = f"each {raw.id_column} in one split only, got {key!r} again (its listing under " \
                         f"{splits[uid]!r} is kept)"
            else:
                continue
            error = RowError(frel, reason, row=row, field=spec.id_field)
            rejects.append(Reject(frel, row, spec.id_field, str(error)))
    return splits, rejects
