"""Reading the records of a raw table (CSV, JSON list, JSONL) row by row: a record that cannot be used is a bad row,
never the end of the file.

    path, rows = read_table(ctx, "HAM10000_metadata.csv")   # dicts; bad records stay in place as BadRecord
    for i, rec in filtered(rows, card.raw.filters): check_record(rec, rel, i) ...

Bad records: a JSONL line that does not parse, a JSON entry that is not an object, text that is not UTF-8 (a Latin-1
byte, named with its byte offset in the file). Each keeps its place, so the row numbers after it stay right.
"""
from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import polars as pl

from data_contracts.errors import DataError
from tasks.ingest.loaders.common import BadRecord, LoadContext, NotUtf8, decode_utf8, safe_path

_MARK = "\U0010fffd"   # stands in for a non-UTF-8 byte while polars parses a CSV (a private-use code point)


def read_table(ctx: LoadContext, rel: str) -> tuple[Path, list[dict]]:
    """Records of a CSV / JSON list / JSONL file as dicts (CSV: of strings); errors name the file.

    A record that cannot be used (see the module docstring) stays in its place as a BadRecord, so the rows after it
    keep their numbers; the loaders turn it into that row's reject (check_record)."""
    path = safe_path(ctx, ctx.dataset_dir, rel, ctx.rel(ctx.dataset_dir), field="table")
    if not path.is_file():
        raise DataError(ctx.rel(ctx.dataset_dir) + f"/{rel}", "a table file")
    try:
        text, bad = decode_utf8(path.read_bytes())
        if path.suffix == ".csv":
            rows = _csv_records(ctx, path, text, NotUtf8(bad))
        elif path.suffix == ".jsonl":
            rows = _jsonl_records(text, NotUtf8(bad))
        else:
            rows = _json_records(ctx, path, text, NotUtf8(bad))
    except DataError:
        raise
    except Exception as e:
        raise DataError(ctx.rel(path), f"a readable table ({type(e).__name__}: {e})") from None
    return path, rows


def _csv_records(ctx: LoadContext, path: Path, text: str, flaws: NotUtf8) -> list[dict]:
    """CSV rows as dicts of strings; a row holding a byte that is not UTF-8 is a BadRecord naming the first one."""
    if not flaws:
        df = pl.read_csv(path, infer_schema=False)
    else:   # polars refuses the whole file: parse it with each such byte marked, then flag the rows holding one
        if _MARK in text:
            raise DataError(ctx.rel(path), flaws.first())
        df = pl.read_csv(io.BytesIO(NotUtf8.sub(_MARK, text).encode()), infer_schema=False)
        if any(_MARK in c for c in df.columns):
            raise DataError(ctx.rel(path), flaws.first(), field="header")
    # some releases pad header names ("ON\xa0" in RFMiD 2.0); strip unless that makes two names equal
    stripped = [c.strip() for c in df.columns]
    if stripped != df.columns and len(set(stripped)) == len(stripped):
        df = df.rename(dict(zip(df.columns, stripped)))
    rows = df.to_dicts()
    if not flaws:
        return rows
    for i, r in enumerate(rows):
        problem = None
        for c, v in r.items():   # cells in file order, so the bytes are handed out in file order
            got = flaws.take(v.count(_MARK)) if isinstance(v, str) else None
            if got and problem is None:
                problem = (got, c)
        if problem:
            rows[i] = BadRecord({c: v.replace(_MARK, "\ufffd") if isinstance(v, str) else v for c, v in r.items()},
                                problem[0], field=problem[1])
    return rows


def _jsonl_records(text: str, flaws: NotUtf8) -> list[dict]:
    """One record per non-blank line; a line that does not parse, is no object or is not UTF-8 is a BadRecord."""
    rows: list[dict] = []
    for line in text.split("\n"):   # JSON text may hold U+2028 and the like unescaped: split on newlines only
        if not line.strip():
            continue
        got = flaws.take(NotUtf8.count(line))
        if got:
            rows.append(BadRecord({}, got, readable=False))
            continue
        try:
            rec = json.loads(line)
        except ValueError as e:
            rows.append(BadRecord({}, f"a JSON object on one line ({type(e).__name__}: {e})", readable=False))
            continue
        rows.append(_json_record(rec, flaws, _ESCAPED_SURROGATE.search(line) is not None))
    return rows


def _json_records(ctx: LoadContext, path: Path, text: str, flaws: NotUtf8) -> list[dict]:
    """The records of a JSON list; an entry that is no object or holds text that is not UTF-8 is a BadRecord."""
    try:
        data = json.loads(text)
    except ValueError as e:
        # a non-UTF-8 byte outside any string breaks the whole document: name the byte
        raise DataError(ctx.rel(path), flaws.first() if flaws else f"a readable table ({type(e).__name__}: {e})"
                        ) from None
    if not isinstance(data, list):
        raise DataError(ctx.rel(path), "a list of records")
    escapes = _ESCAPED_SURROGATE.search(text) is not None
    return [_json_record(rec, flaws, escapes) for rec in data]


def _json_record(rec, flaws: NotUtf8, escapes: bool):
    """`rec` when it is an object of readable text, else a BadRecord saying what was expected (its text is looked at
    only when the file has non-UTF-8 bytes or surrogate escapes)."""
    if not isinstance(rec, dict):
        if flaws:   # its bytes are passed over, so those of the records after it keep their offsets
            flaws.take(sum(NotUtf8.count(t) for t in _strings(rec)))
        return BadRecord({}, f"a JSON object, got {type(rec).__name__}", readable=False)
    if not flaws and not escapes:
        return rec
    problem = None
    for k, v in rec.items():   # keys and values in document order, so the bytes are handed out in file order
        texts = list(_strings(k, v))
        got = flaws.take(sum(NotUtf8.count(t) for t in texts)) if flaws else None
        if not got and any(_SURROGATE.search(t) for t in texts):   # a "\udXXX" escape: no text UTF-8 can carry
            got = "UTF-8 text, got an unpaired surrogate escape (\\ud800-\\udfff)"
        if got and problem is None:
            problem = (got, k)
    return BadRecord(rec, *problem) if problem else rec


_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _strings(*values) -> Iterator[str]:
    """Every string in JSON values (object keys included), in document order."""
    for v in values:
        if isinstance(v, str):
            yield v
        elif isinstance(v, dict):
            for k, x in v.items():
                yield k
                yield from _strings(x)
        elif isinstance(v, list):
            yield from _strings(*v)


def filtered(rows: list[dict], filters: dict[str, str]) -> list[tuple[int, dict]]:
    """(row index, record) of the records the card's filters keep; a record that cannot be read is kept too (it is
    reported, whatever its filter fields would have said)."""
    return [(i, r) for i, r in enumerate(rows) if (isinstance(r, BadRecord) and not r.readable)
            or all(str(r.get(k)) == v for k, v in filters.items())]
