"""Known failures: each is one line for the user and a documented exit code.

Exit codes of `mosaic`: 0 ok, 1 runtime failure, 2 usage or invalid input (arguments, unreadable or
malformed input files, an output location that cannot be written), 3 infeasible budget, 4 stale input
(fingerprint mismatch), 130 interrupted (Ctrl-C; the message says what was kept).
"""

from __future__ import annotations

import difflib
import math
import numbers
import re

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_INFEASIBLE = 3
EXIT_STALE = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


# a library parameter named inside a message, as `name`: the command line says its flag there instead
_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`")


class MosaicError(Exception):
    """A failure the user can act on; `main()` prints it as one line and exits with `exit_code`.

    A parameter its message names is written `name` (in backquotes), which the CLI says as its flag (`for_cli`)."""

    exit_code = EXIT_RUNTIME

    def for_cli(self, flag_of) -> str:
        """The message as the command line says it: each parameter named through `flag_of` (`lr` -> `--lr`)."""
        return _MENTION.sub(lambda m: flag_of(m.group(1)), str(self))


class UsageError(MosaicError):
    """Invalid arguments or input files (exit 2).

    `param` names the library parameter at fault and `problem` what is wrong with it, when the error is about one
    argument (`invalid`): the library's message names the parameter (`lr must be positive, got -1`), and the CLI,
    which knows its flags, says the same with the flag (`--lr must be positive, got -1`) through `for_cli`.
    """

    exit_code = EXIT_USAGE

    def __init__(self, message: str, param: str | None = None, problem: str | None = None):
        super().__init__(message)
        self.param, self.problem = param, problem

    def for_cli(self, flag_of) -> str:
        """The message as the command line says it: the parameter at fault and any other named through `flag_of`."""
        if not self.param or self.problem is None:
            return super().for_cli(flag_of)
        return _MENTION.sub(lambda m: flag_of(m.group(1)), _join(flag_of(self.param), self.problem))


class InfeasibleError(MosaicError):
    """The requested budget cannot be met by any assignment (exit 3)."""

    exit_code = EXIT_INFEASIBLE


class StaleInputError(MosaicError):
    """An input artifact was made for another model, device or library set (exit 4)."""

    exit_code = EXIT_STALE


class Interrupted(MosaicError):
    """Ctrl-C stopped a command; the message says what it kept (exit 130)."""

    exit_code = EXIT_INTERRUPTED


def invalid(param: str, problem: str) -> UsageError:
    """The error for a bad value of library parameter `param`, e.g. invalid("lr", "must be positive, got -1"), or
    invalid("ops", ": empty operator list") (a `problem` starting with ':' follows the name directly)."""
    return UsageError(_join(param, problem), param=param, problem=problem)


def _join(name: str, problem: str) -> str:
    return f"{name}{problem}" if problem.startswith(":") else f"{name} {problem}"


def check(ok: bool, param: str, problem: str) -> None:
    """Raise `invalid(param, problem)` unless `ok`: the one way a library function validates an argument."""
    if not ok:
        raise invalid(param, problem)


def integer(value) -> bool:
    """Whether `value` is an integer argument: an int (numpy's too), never a bool, though Python counts it one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def number(value) -> bool:
    """Whether `value` is a finite number argument (an int or a float, not a bool, a string or NaN)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def flags(**values) -> None:
    """Refuse any of `values` ({parameter: value}) that is neither True nor False (None passes: "not given"): a
    flag given "no" or 0 would otherwise be read by its truth, `resume="no"` resuming."""
    for param, value in values.items():
        check(value is None or isinstance(value, bool), param, f"must be True or False, got {value!r}")


def path_arg(param: str, value, optional: bool = False, what: str = "a path"):
    """`value` as a path argument (a str or os.PathLike; None too when `optional`), else `invalid` naming `param`
    and `what` it must be ("a model id or directory" for a model)."""
    import os

    check((optional and value is None) or isinstance(value, (str, os.PathLike)), param,
          f"must be {what}, got {type(value).__name__} {value!r}")
    return value


def listed(param: str, value) -> list | None:
    """A list-valued argument as a list: a list or a tuple, or one string of comma-separated items as the command line
    writes them ("gqa,swa", "decode:1k,prefill:4k"), a string in a list split likewise (a repeated flag given
    "decode:1k,prefill:4k" once); None stays None. Anything else (a number, a mapping) is `invalid` naming `param`:
    every list-valued parameter of the library reads its argument here."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise invalid(param, f"must be a list or a comma-separated string, got {type(value).__name__} {value!r}")
    parts = [part for item in value for part in (item.split(",") if isinstance(item, str) else [item])]
    return [part.strip() if isinstance(part, str) else part for part in parts
            if not isinstance(part, str) or part.strip()]


def did_you_mean(word: str, choices) -> str:
    """Return ' (did you mean "x"?)' for the closest choice, or '' when none is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""
