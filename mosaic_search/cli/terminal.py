"""Terminal plumbing of the `mosaic` command: consoles, tables, number formats, progress, Ctrl-C, JSON."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time

from rich import box
from rich.console import Console
from rich.table import Table

from ..errors import Interrupted

# markup off: every string printed is data (paths, model ids, "pip install 'mosaic-search[cuda]'"), and rich
# would take its [brackets] for style tags and drop them
console = Console(no_color=bool(os.environ.get("NO_COLOR")), highlight=False, markup=False)
err = Console(stderr=True, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, markup=False)  # progress

PROGRESS_EVERY_S = 5.0  # plain progress lines at most this often (plus the last): logs stay short
NOTHING_WRITTEN = "nothing was written"  # what an interrupted command without its own note kept


class _Stderr(logging.Handler):
    """Prints each record's message as it is, one line on the stderr of the moment (which tests capture)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


def show_notes() -> None:
    """Print the library's notes and warnings (its `logging` records, which say "note: ..." / "warning: ...") on
    stderr; installed once, however often called."""
    logger = logging.getLogger("mosaic_search")
    if not any(isinstance(h, _Stderr) for h in logger.handlers):
        logger.addHandler(_Stderr())
    logger.setLevel(logging.INFO)


def emit_json(obj) -> None:
    """Print `obj` as the sorted, indented JSON every `--json` prints."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def ms(value) -> str:
    """Milliseconds to four significant digits and no fewer integer ones (1636, 163.6, 0.123): narrow columns."""
    return "-" if value is None else f"{value:.{max(0, 4 - len(str(int(abs(value)))))}f}"


def x(ratio) -> str:
    """A speedup to three significant digits and no fewer integer ones (1.52x, 61.2x, 4767x); '-' for None."""
    return "-" if ratio is None else f"{ratio:.{max(0, 3 - len(str(int(abs(ratio)))))}f}x"


# Column kinds: a label or a number stays whole on one line; text wraps, and folds a word longer than its column.
KINDS = {"label": dict(no_wrap=True), "num": dict(justify="right", no_wrap=True), "text": dict(overflow="fold")}


def print_table(title: str, columns, rows, lead: int = 1, caption: str | None = None) -> None:
    """Print `rows` under `columns` ((header, kind) pairs, kinds in KINDS) without cutting any cell to '…'.

    When the terminal is too narrow for every label and number column side by side, the columns after the
    first `lead` (which tell the rows apart) go on into further tables that repeat those `lead` columns.
    """
    def build(keep, first=True, last=True):
        table = Table(title=title if first else None, caption=caption if last else None, box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
        for i in keep:
            table.add_column(columns[i][0], **KINDS[columns[i][1]])
        for row in rows:
            table.add_row(*(row[i] for i in keep))
        return table

    def fits(keep):
        with console.capture() as shown:
            console.print(build(keep))
        return "…" not in shown.get()

    head, parts, rest = list(range(lead)), [], list(range(lead, len(columns)))
    while rest:
        n = 1
        while n < len(rest) and fits(head + rest[:n + 1]):
            n += 1
        parts, rest = parts + [rest[:n]], rest[n:]
    parts = parts or [[]]
    for k, part in enumerate(parts):
        console.print(build(head + part, k == 0, k == len(parts) - 1))


def rank0() -> bool:
    """Whether this process prints: always outside torchrun, only rank 0 under it (read before torch starts)."""
    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def progress(label: str, show: bool = True, every_step: bool = False):
    """Progress on stderr; yields the library's `progress(done, total, what)` callback (None when not `show`). A bar
    on a terminal; elsewhere (CI, `tee`), where rich's transient bar prints nothing, plain lines (`plain_progress`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if not show:
        yield None
        return
    if not err.is_terminal:
        yield plain_progress(label, every_step)
        return

    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}", markup=False),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task("", total=None)

        def tick(done, total, what):
            bar.update(task, completed=done, total=total, description=what)

        yield tick


def plain_progress(label: str, every_step: bool = False):
    """A progress callback printing `label: done/total what (elapsed s)` lines: the first, then at most one per
    PROGRESS_EVERY_S, and the last (done == total); with `every_step`, also every line whose `done` differs from the
    last printed one (the demo's stages, each of which must be seen to start)."""
    start, last, last_done = time.monotonic(), None, None

    def tick(done, total, what):
        nonlocal last, last_done
        now = time.monotonic()
        new_step = every_step and done != last_done
        if last is not None and now - last < PROGRESS_EVERY_S and done != total and not new_step:
            return
        last, last_done = now, done
        sys.stderr.write(f"{label}: {done}{f'/{total}' if total else ''} {what} ({now - start:.0f} s)\n")
        sys.stderr.flush()

    return tick


@contextlib.contextmanager
def interruptible(kept):
    """Turn Ctrl-C inside into exit 130 (`Interrupted`) with one line saying what the command kept (`kept()`)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {kept()}") from None


def fail(message: str, code: int) -> int:
    """Print `error: message` on one line of stderr and return `code`."""
    # plain write, not rich: a known error must stay on one line whatever the terminal width
    sys.stderr.write(f"error: {message}\n")
    return code
