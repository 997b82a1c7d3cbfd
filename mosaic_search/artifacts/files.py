"""One writer for every file and folder mosaic writes: atomic, with the user's umask, no leftovers.

A reader sees the old file or the whole new one, never a part: everything is written to a temporary
sibling named `.<name>.<pid>.<random>.tmp`, then renamed over the target. A run killed with SIGKILL
leaves that sibling behind; the next write to the same target removes the siblings whose process is
gone (a build's leftovers are as large as the model). Logs, which grow a record at a time, are the one
exception: `append_line` appends to them durably instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

from ..errors import UsageError, invalid, path_arg

_PSEUDO_FS = ("/proc", "/sys", "/dev")
_WRITABLE_UNDER_DEV = ("/dev/shm",)  # tmpfs: ordinary files live there
# where the stages write by default, relative to the working directory (docs/design.md §5)
PROFILES_DIR, PLANS_DIR = "profiles", "layer_plans"


def umask() -> int:
    """The process umask (read without changing it for more than an instant)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new file under the user's umask (0644 under the usual 022)."""
    return 0o666 & ~umask()


def dir_mode() -> int:
    """Mode of a new folder under the user's umask (0755 under the usual 022)."""
    return 0o777 & ~umask()


def _temp_sibling(path: Path, suffix: str = ".tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def clean_stale(path: str | os.PathLike) -> list[Path]:
    """Remove temporary siblings of `path` that a killed mosaic process left; return what was removed.

    Only names of this module's own pattern whose writer process no longer runs are touched. A `.old`
    sibling with no `path` beside it is the previous output of a writer killed between its two renames
    (see `atomic_dir`): it is put back as `path`, not removed.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]{{8}}\.(tmp|old)$")
    removed = []
    for sibling in sorted(path.parent.iterdir()):
        m = pattern.match(sibling.name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            if m.group(2) == "old" and not os.path.lexists(path):
                os.replace(sibling, path)
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            removed.append(sibling)
    return removed


def _normalise_modes(root: Path) -> None:
    """Give a finished folder's tree the umask's modes (mkdtemp makes 0700; some writers make 0600)."""
    fmode, dmode = file_mode(), dir_mode()
    for d, subdirs, names in os.walk(root):
        os.chmod(d, dmode)
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                os.chmod(p, fmode)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path` for any writer (savefig, safetensors, ...); on success it
    becomes `path` with the umask's mode, on any failure (Ctrl-C included) it is removed.

    Errors: OSError from the file system, unchanged (see `check_output` to refuse bad paths up front).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # durable before the rename makes it visible
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; return the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 `text` to `path` atomically; return the path."""
    return write_bytes(path, text.encode())


def json_text(obj: Any) -> str:
    """The text `write_json` writes (indent 2, sorted keys, trailing newline): hash it to know the file's sha256."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write `json_text(obj)` to `path` atomically; return the path."""
    return write_text(path, json_text(obj))


def append_line(path: str | os.PathLike, line: str) -> Path:
    """Append `line` (without its newline) to a log durably; return the path.

    A log grows one record at a time, so it is appended to rather than replaced: a single write() to an
    O_APPEND file, then fsync. A line left unfinished by a kill is closed first so that it spoils only itself.
    A new log gets the umask's mode, as every file does. Errors: OSError from the file system, unchanged.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (line + "\n").encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o666)  # open() applies the umask
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


@contextlib.contextmanager
def claimed(out: str | os.PathLike, param: str = "out") -> Iterator[Path]:
    """Hold `out` for one run while it works towards it (a run that appends its progress beside `out` before writing
    it, as `score` does): a second run naming the same `out` meanwhile is refused (UsageError, exit 2) instead of
    mixing its progress into this one's. The claim is a `.<name>.lock` file holding the claimant's pid; one left by a
    killed run is taken over."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.with_name(f".{out.name}.lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                holder = int(lock.read_text() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and holder != os.getpid() and _alive(holder):
                raise invalid(param, f"{out}: another run (pid {holder}) is writing it; wait for it to finish or "
                                     f"choose another `{param}`") from None
            lock.unlink(missing_ok=True)  # left by a killed run (or unreadable): take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        break
    try:
        yield out
    finally:
        lock.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(out: str | os.PathLike, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder beside `out`; on success it replaces `out` (an old `out` is moved
    aside first and removed only after the rename), with the umask's modes throughout; on failure it is
    removed and `out` is untouched. `replace=False`: an `out` that another run created meanwhile is kept and
    this one is discarded (UsageError), so two runs never both report writing it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    tmp = _temp_sibling(out)
    tmp.mkdir()
    try:
        yield tmp
        _normalise_modes(tmp)
        if not out.exists() or not replace:
            try:
                os.rename(tmp, out)  # fails on POSIX when out is a non-empty folder or a file
            except OSError:
                if replace or not out.exists():
                    raise
                raise UsageError(f"{out} was written by another run meanwhile; it is kept and this result "
                                 "discarded (pass `overwrite` to replace it)") from None
            return
        old = _temp_sibling(out, ".old")
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output(path: str | os.PathLike, param: str = "out", *, folder: bool = False,
                 overwrite: bool | None = None, kind: str | None = None) -> Path:
    """Refuse, before any work, an output location that cannot be written; return it as a Path.

    `param` names the caller's parameter in the message; `folder` says the output is a directory (else a file);
    `overwrite=False` refuses an existing output (the rule of the commands with --overwrite: a plan or a
    build is never replaced unasked); `kind` lets an existing file be replaced only by a newer artifact of
    that kind (a profile re-measured, a table re-scored), never a file of something else. Raises UsageError
    (exit 2) for those, and for a location under /proc, /sys or /dev, below an existing file, of the wrong
    kind (a folder where a file goes, or the reverse), or in a folder this user cannot write.
    """
    path = Path(path)
    full = path.absolute()
    def under(roots):
        return any(str(full) == p or str(full).startswith(p + "/") for p in roots)

    if under(_PSEUDO_FS) and not under(_WRITABLE_UNDER_DEV):
        raise invalid(param, f"{path}: not a place for output files (pseudo file system)")
    try:
        if path.exists():
            if folder and not path.is_dir():
                raise invalid(param, f"{path}: is a file, expected a folder")
            if not folder and path.is_dir():
                raise invalid(param, f"{path}: is a folder, expected a file name")
            if overwrite is False:
                raise UsageError(f"{path} already exists; pass `overwrite` to replace it, or `{param}` elsewhere")
            if kind is not None and not folder and _json_kind(path) != kind:
                raise invalid(param, f"{path}: exists and is not a {kind} file; refusing to replace it")
        ancestor = full.parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise invalid(param, f"{path}: {ancestor} is a file, not a folder")
        # os.access is not enough: read-only mounts and root both fool it
        probe = _temp_sibling(ancestor / "mosaic-probe")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise invalid(param, f"{path}: cannot write there ({e.strerror or type(e).__name__})") from None
    return path


def check_not_input(outputs, inputs: dict, param: str = "out") -> None:
    """Refuse, before any work, an output that is one of the run's own inputs or would remove one: UsageError (exit 2)
    naming the input, so that `overwrite` never replaces what the run reads (a plan written over its own profile).

    `outputs`: the paths the run writes, files or folders (a folder is replaced whole, so an input inside it counts);
    `inputs`: {library parameter: what it names} of what the run reads; those that are not on disk (None for a record
    passed in memory, a hub id, "self") have nothing to replace. Paths compare as written and as resolved, so `./x`
    and `x`, or a symlink and its target, are one file.
    """
    for out in map(Path, outputs):
        written, real = os.path.abspath(out), os.path.realpath(out)
        for name, given in inputs.items():
            if not isinstance(given, (str, os.PathLike)) or not os.path.lexists(given):
                continue
            for a, b in ((written, os.path.abspath(given)), (real, os.path.realpath(given))):
                if a == b:
                    raise invalid(param, f"{out}: would replace the `{name}` input of this run ({given}); choose "
                                         f"another `{param}`")
                if b.startswith(a.rstrip(os.sep) + os.sep) and os.path.isdir(a):
                    raise invalid(param, f"{out}: would remove the `{name}` input of this run ({given}), which is "
                                         f"inside it; choose another `{param}`")


def _json_kind(path: Path) -> str | None:
    """The `kind` of a JSON artifact file, or None for anything else."""
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return obj.get("kind") if isinstance(obj, dict) else None


def output_path(out, default: str | os.PathLike, param: str = "out", *, folder: bool = False) -> Path:
    """`out` as an output's path, or `default` when `out` is None. Raises UsageError (exit 2) for an empty `out`
    and, unless the output is a `folder`, for one that names a folder (a trailing '/', '.' or '..'): Path() would
    drop the slash and write a file of the folder's name."""
    if out is None:
        return Path(default)
    text = os.fspath(path_arg(param, out))
    if not text.strip():
        raise invalid(param, ": empty path")
    if not folder and (text.endswith(("/", os.sep)) or Path(text).name in ("", ".", "..")):
        raise invalid(param, f"{text}: names a folder; give a file name")
    return Path(text)


def read_text(path: str | os.PathLike, what: str = "") -> str:
    """The UTF-8 text of a user's input file; `what` (e.g. "--profile ") prefixes the message of the
    UsageError (exit 2) raised for a missing, unreadable or binary file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"{what}{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{what}{path}: cannot read ({e.strerror or type(e).__name__})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"{what}{path}: not UTF-8 text (byte {e.start} is 0x{data[e.start]:02x}); "
                         "is it the right file?") from None
