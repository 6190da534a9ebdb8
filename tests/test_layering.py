"""The layering of docs/design.md, checked on the source and on a fresh interpreter.

- Each folder imports only what it may, counting imports inside functions too (the stages load
  their heavy parts lazily, and a lazy import is still a dependency).
- No two modules import each other, directly or round a longer cycle.
- Every module imports alone, in a fresh interpreter; the client modules pull in no torch, timm,
  transformers, training or export.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _layout() -> tuple[dict[str, str], dict[str, tuple[str, ...]]]:
    """docs/design.md's layout table, the one statement of the rule: ``{folder: package}`` and ``{package (or
    module): what it must not import}``. Names in the last column are folders (their packages) or third-party
    packages."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text[text.index("## Layout"):text.index("## Manifest")]
    folders, forbidden, rows = {}, {}, []
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and "(not Python)" not in cells[1]:
            rows.append(([n.strip("/") for n in re.findall(r"`([^`]+)`", cells[0])], re.findall(r"`([^`]+)`", cells[1]),
                         re.findall(r"`([^`]+)`", cells[3])))
    for paths, packages, _ in rows:
        for path, package in zip(paths, packages):
            if not path.endswith(".py"):
                folders[path] = package
    named = {path.split("/")[-1]: package for path, package in folders.items()}
    for _, packages, banned in rows:
        for package in packages:
            forbidden[package] = tuple(named.get(b, b) for b in banned)
    return folders, forbidden


FOLDERS, FORBIDDEN = _layout()
CORE = tuple(m for m in (f"editguard.{p.stem}" for p in sorted((ROOT / "editguard").glob("*.py")))
             if m not in ("editguard.__init__", "editguard.__main__", "editguard.cli"))
HEAVY = ("torch", "torchvision", "timm", "transformers")


def test_the_layout_table_is_setup_pys_map(setup_folders):
    assert {f: p for f, p in FOLDERS.items() if "/" not in f} == {folder: p for p, folder in setup_folders.items()}
    assert FORBIDDEN["editguard.clients"][-len(HEAVY):] == HEAVY  # the thin client stays thin
    assert "editguard.serving" in FORBIDDEN["editguard.export"]  # export builds; it runs no serving code
    assert "editguard.training" in FORBIDDEN["editguard.serving"]


def _modules() -> dict[str, Path]:
    """``{module name: file}`` of everything the package ships (the folders map into one namespace)."""
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if parts == ["__main__"]:
                continue  # `python -m editguard`: importing it runs the command
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, anywhere in the file, resolved to absolute names."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _rule(module: str) -> tuple[str, ...]:
    for prefix in sorted(FORBIDDEN, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return FORBIDDEN[prefix]
    return ()


def test_each_folder_imports_only_what_it_may():
    broken = []
    for name, deps in GRAPH.items():
        for dep in deps:
            bad = [f for f in _rule(name) if dep == f or dep.startswith(f + ".")]
            if bad:
                broken.append(f"{name} imports {dep}")
    assert not broken, "layering (docs/design.md):\n" + "\n".join(sorted(broken))


def test_no_import_cycles():
    edges = {m: {d for d in deps if d in MODULES and d != m and not m.startswith(d + ".")}
             for m, deps in GRAPH.items()}
    cycles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [m, d]) if d in stack else f"{m} -> {d}")
            elif d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


CHECK = """
import importlib, sys
name, forbidden = sys.argv[1], sys.argv[2:]
importlib.import_module(name)
loaded = [m for m in forbidden if m in sys.modules]
print(",".join(loaded))
"""


@pytest.mark.parametrize("folder", ["clients", "core"])
def test_modules_import_alone_and_clients_stay_thin(folder):
    """Each module of the thin client and of the shared core, in its own fresh interpreter."""
    names = [m for m in MODULES if m.startswith("editguard.clients")] if folder == "clients" else list(CORE)
    heavy = [*HEAVY, "editguard.training", "editguard.export"]
    for name in names:
        r = subprocess.run([sys.executable, "-c", CHECK, name, *heavy], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"import {name} failed alone:\n{r.stderr[-2000:]}"
        assert r.stdout.strip() == "", f"import {name} loaded {r.stdout.strip()}"


@pytest.mark.slow  # over 2 s: make test runs it, make test-fast does not
def test_every_module_imports_in_a_fresh_interpreter():
    """One interpreter per module would take minutes; one per folder, importing its modules in turn,
    still catches a module that only imports after another one has run."""
    for folder, package in FOLDERS.items():
        if folder == "model_repository":
            continue  # Triton imports these inside its Python backend, with triton_python_backend_utils
        names = [m for m, path in MODULES.items() if path.is_relative_to(ROOT / folder)]
        code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
        r = subprocess.run([sys.executable, "-c", code, *reversed(names)], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, f"importing {folder}/ failed:\n{r.stderr[-2000:]}"


GRIMP = """
import json, grimp
graph = grimp.build_graph("editguard", cache_dir=None)
rooms = sorted(m for m in graph.modules if m.count(".") == 1 and graph.find_children(m))
print(json.dumps({a: sorted(b for b in rooms if b != a and graph.direct_import_exists(importer=a, imported=b,
                                                                                  as_packages=True)) for a in rooms}))
"""


@pytest.mark.slow  # a wheel install: grimp walks the files of an installed package, which an editable one hides
def test_an_import_graph_tool_draws_the_rooms_as_the_table_says(wheel_venv, tmp_path):
    """grimp, which follows imports by path, on the installed wheel: the arrows between the folders."""
    r = subprocess.run([str(wheel_venv / "bin" / "python"), "-c", GRIMP], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import json

    arrows = json.loads(r.stdout)
    print("\n" + "\n".join(f"{a} -> {', '.join(b) or '(nothing)'}" for a, b in arrows.items()))
    assert {"editguard.model", "editguard.serving", "editguard.clients", "editguard.benchmarks"} <= set(arrows)
    broken = [f"{a} -> {b}" for a, bs in arrows.items() for b in bs
              if any(b == f or b.startswith(f + ".") for f in _rule(a))]
    assert not broken, broken
