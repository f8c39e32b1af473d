"""Errors that carry enough context for a user to fix their input without a traceback."""

from __future__ import annotations

from pathlib import Path


class AgegenderError(Exception):
    """Base class for errors the CLI reports as a one-line message, without a traceback.

    Attributes:
        exit_code: the `agegender` command's exit status for this error: 2 (bad input, as argparse uses for a bad
            command line) unless a subclass says otherwise.
    """

    exit_code: int = 2


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


class IncompleteRunError(AgegenderError):
    """A run that finished but left work undone: requests that still failed after retries (exit code 3).

    Not bad input (exit 2) and not a bug (a traceback, exit 1): the outputs of what did succeed are kept (the
    message says where), and running the same command again resumes, sending only what is missing.
    """

    exit_code = 3
