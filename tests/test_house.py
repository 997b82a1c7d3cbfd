"""Checks of the package's shape that anyone can run: the import graph has no cycle and no module grows past the
house's size unless LONG_MODULES says why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mosaic_search"
MAX_LINES = 450
# ground modules that hold torch code and are imported only inside the functions that need it
TORCH_INSIDE = {"mosaic_search.operators.teacher"}  # a mixer's initialisation from the teacher's weights
# The modules allowed past MAX_LINES, each with why; an entry whose module is back under the limit is an error, so
# that the list says only what is true.
LONG_MODULES = {
    "mosaic_search.quality.scorer": "the teacher pass, the items and the table share one batch layout (`_Batch`, "
                                    "`_Context`) and one fingerprint scheme",
    "mosaic_search.cli.commands": "every command's signature lists its flags (solve's serving regime adds four) and "
                                  "forwards them in a few lines; split, a command's flags would sit apart from their "
                                  "forwarding",
}


def _modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the package (the embedded teacher's training script aside: it runs
    outside the package, with its own imports)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "assets" in path.relative_to(PACKAGE).parts:
            continue
        parts = ("mosaic_search", *path.relative_to(PACKAGE).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """The package modules `name` imports anywhere in its file (a function-level import is an arrow too)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import x`: x is a submodule, or a name defined in the package's __init__
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # an attribute path: the module that holds it
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _cycle(graph: dict) -> list | None:
    """One import cycle of `graph`, as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_graph_has_no_cycle():
    modules = _modules()
    graph = {n: _imports(n, p, modules) for n, p in modules.items()}
    # the package's lazy entry points (`mosaic_search.profile` ...) load on attribute access, not on import
    graph["mosaic_search"] = set()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_every_module_imports_in_a_fresh_interpreter():
    names = [n for n in sorted(_modules()) if n != "mosaic_search.__main__"]  # that one runs the CLI when imported
    names += [f"mosaic_search.assets.{p.stem}" for p in sorted((PACKAGE / "assets").glob("train_*.py"))]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    run = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr.strip().splitlines()[-1:]


def test_no_module_is_longer_than_the_house_unless_allowed_with_a_reason():
    modules = _modules()
    lines = {name: path.read_text().count("\n") for name, path in modules.items()}
    long = [f"{name} ({n} lines)" for name, n in lines.items() if n > MAX_LINES and name not in LONG_MODULES]
    assert not long, f"over {MAX_LINES} lines and not in LONG_MODULES: {', '.join(long)}"
    stale = [name for name in LONG_MODULES if lines.get(name, 0) <= MAX_LINES]
    assert not stale, f"in LONG_MODULES but missing or within {MAX_LINES} lines (remove them): {', '.join(stale)}"
    assert all(why.strip() for why in LONG_MODULES.values())


@pytest.mark.parametrize("folder", ["artifacts", "operators", "search"])
def test_the_torch_free_ground_imports_no_torch(folder):
    """The bottom band (records and files, the registry, the problem and MIP) must load where torch is absent."""
    names = [n for n in _modules() if n.startswith(f"mosaic_search.{folder}") and n not in TORCH_INSIDE]
    code = ("import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
            "heavy = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
            "sys.exit(f'imported {heavy}' if heavy else 0)\n")
    run = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True)
    assert names and run.returncode == 0, run.stderr.strip().splitlines()[-1:]
