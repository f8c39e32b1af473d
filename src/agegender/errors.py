"""Errors that carry enough context for a user to fix their input without a traceback."""

from __future__ import annotations

from pathlib import Path


class AgegenderError(Exception):
    """Base class for errors the CLI reports as a one-line message (exit code 2)."""


class InputError(AgegenderError, ValueError):
    """Bad input data: names the file and, where known, the row and the field.

    Args:
        message: what is wrong, in words a user can act on.
        file: the file that holds the bad data.
        row: 1-based data row (header excluded) or a sample id, where known.
        field: the column or key, where known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        row: int | str | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = None if file is None else str(file)
        self.row = row
        self.field = field
        where = []
        if self.file is not None:
            where.append(self.file)
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join([', '.join(where), message]) if where else message}")
