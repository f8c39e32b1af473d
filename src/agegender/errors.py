"""Errors that carry enough context for a user to fix their input without a traceback."""

from __future__ import annotations

import math
import re
from fractions import Fraction
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


#: a failure budget: a count N, or a percentage P% of the rows
_BUDGET_RE = re.compile(r"(?P<count>\d+)|(?P<percent>\d+(?:\.\d+)?)\s*%")


def failure_budget(max_failed: int | str, rows: int) -> int:
    """How many rows may stay `failed` after retries before a run counts as incomplete.

    Args:
        max_failed: a count `N` (an int, or its digits as text) or a percentage `"P%"` of the run's rows, rounded
            down (`"1%"` of 150 rows allows 1). 0, the default everywhere, accepts no failed row.
        rows: the run's rows (the percentage's base).

    Raises:
        InputError: anything else (a negative count, a percentage above 100, a bare fraction such as 0.05, which
            would be ambiguous between a share and a count).
    """
    m = None if isinstance(max_failed, bool) else _BUDGET_RE.fullmatch(str(max_failed).strip())
    if m is None or (m["percent"] is not None and Fraction(m["percent"]) > 100):
        raise InputError(
            f"max_failed must be a count N or a percentage P% of the rows (0 <= P <= 100; e.g. 0, 25 or 2.5%), "
            f"got {max_failed!r}",
            field="max_failed",
        )
    if m["count"] is not None:
        return int(m["count"])
    return math.floor(Fraction(m["percent"]) * rows / 100)  # exact: 2.5% of 200 rows is 5, not 4.999...
