"""Known failures: each is one line for the user and a documented exit code."""

from __future__ import annotations

import difflib

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3
EXIT_STALE = 4


class MosaicError(Exception):
    """A failure the user can act on; `main()` prints it as one line and exits with `exit_code`."""

    exit_code = EXIT_RUNTIME


class UsageError(MosaicError):
    """Invalid arguments or input files (exit 2)."""

    exit_code = EXIT_USAGE


class InfeasibleError(MosaicError):
    """The requested budget cannot be met by any assignment (exit 3)."""

    exit_code = EXIT_INFEASIBLE


class StaleInputError(MosaicError):
    """An input artifact was made for another model, device or library set (exit 4)."""

    exit_code = EXIT_STALE


def did_you_mean(word: str, choices) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""
