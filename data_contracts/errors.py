"""Errors raised on bad input: each names the file, row or field and what was expected."""
from __future__ import annotations


class ContractError(ValueError):
    """A table or raw file breaks its contract; `problems` holds the row-level details when there are any."""

    def __init__(self, message: str, problems: list | None = None):
        super().__init__(message)
        self.problems = problems or []


class DataError(ContractError):
    """A raw input file is unusable: `path`, optional `row` and `field`, and what was `expected`."""

    def __init__(self, path: str, expected: str, row: int | str | None = None, field: str | None = None):
        where = str(path)
        if row is not None:
            where += f" row {row}"
        if field is not None:
            where += f" field '{field}'"
        super().__init__(f"{where}: expected {expected}")
        self.path, self.row, self.field, self.expected = str(path), row, field, expected
