"""The package's layers, read from the source with ``ast`` (no imports run).

Layers, each importing only those below it (docs/architecture.md):

    0 model  <-  1 training  <-  2 streaming.worker  <-  3 streaming.monitor | streaming.tools  <-  4 bench  <-  5 cli

``monitor`` (the operators' view) and ``tools`` (the local tools) share a layer and must not import each
other. Every import counts: module level, inside functions, relative ones. Installed, the distribution
is ``affectstream`` and nothing else at the top of site-packages.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "affectstream"
OLD_TOP_LEVEL = ("model", "training", "streaming", "bench")

# module-name prefix -> (layer, group); the longest matching prefix wins
LAYERS: dict[str, tuple[int, str]] = {
    "affectstream": (0, "root"),          # the namespace package itself: imports nothing of ours
    "affectstream.model": (0, "model"),
    "affectstream.training": (1, "training"),
    "affectstream.streaming": (2, "worker"),  # the streaming package's __init__
    "affectstream.streaming.worker": (2, "worker"),
    "affectstream.streaming.monitor": (3, "monitor"),
    "affectstream.streaming.tools": (3, "tools"),
    "affectstream.bench": (4, "bench"),
    "affectstream.cli": (5, "cli"),
    "affectstream.analyzer": (5, "cli"),  # the one-post Python API and `predict`: the worker's pieces, no broker
    "affectstream.predict": (5, "cli"),
    "affectstream.__main__": (5, "cli"),
}


@dataclass(frozen=True)
class Edge:
    source: str      # importing module
    target: str      # imported module (or package), absolute
    path: Path
    line: int

    def __str__(self) -> str:
        where = self.path.relative_to(ROOT) if ROOT in self.path.parents else self.path
        return f"{where}:{self.line}: {self.source} imports {self.target}"


def package_dirs(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, Path]:
    """``[tool.setuptools.package-dir]``: package name -> folder (``affectstream.model`` -> ``model/``)."""
    config = tomllib.loads(pyproject.read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name: pyproject.parent / folder for name, folder in mapping.items()}


def module_files(dirs: dict[str, Path]) -> dict[str, Path]:
    """Every module of the package: dotted name -> file, named as pyproject maps the folders."""
    mapped = {d.resolve() for d in dirs.values()}
    modules: dict[str, Path] = {}
    for package, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if "__pycache__" in rel.parts:
                continue
            # a sub-folder mapped to a package of its own is walked under that name instead
            if any(parent.resolve() in mapped and parent != folder for parent in path.parents
                   if folder in parent.parents):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([package, *parts])] = path
    return modules


def imports_of(name: str, path: Path) -> list[tuple[str, int, int]]:
    """(absolute imported name, line, level) for every import in the file, anywhere in it."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: list[tuple[str, int, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno, 0) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import sub`` imports the module pkg.sub when there is one
            out += [(f"{module}.{alias.name}", node.lineno, node.level) for alias in node.names]
            out.append((module, node.lineno, node.level))
    return out


def internal_edges(modules: dict[str, Path]) -> tuple[list[Edge], list[Edge]]:
    """(edges between our modules, imports of the old top-level names)."""
    edges: list[Edge] = []
    old: list[Edge] = []
    for name, path in modules.items():
        seen: set[str] = set()
        for target, line, level in imports_of(name, path):
            if level == 0 and target.split(".")[0] in OLD_TOP_LEVEL:
                old.append(Edge(name, target, path, line))
                continue
            if not (target == PACKAGE or target.startswith(PACKAGE + ".")):
                continue
            resolved = _known(target, modules)
            if resolved is None or resolved == name or resolved in seen:
                continue
            # ``from affectstream.x import y``: the edge is to y when y is a module, else to x
            seen.add(resolved)
            edges.append(Edge(name, resolved, path, line))
    return _drop_parents_of_submodules(edges), old


def _known(target: str, modules: dict[str, Path]) -> str | None:
    parts = target.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in modules:
            return candidate
    return None


def _drop_parents_of_submodules(edges: list[Edge]) -> list[Edge]:
    """``from affectstream.streaming.worker import metrics`` yields both the package and the module;
    keep the module (the package ``__init__`` runs anyway, it is not the dependency that was meant)."""
    by_source: dict[str, set[str]] = {}
    for e in edges:
        by_source.setdefault(e.source, set()).add(e.target)
    return [e for e in edges
            if not any(t.startswith(e.target + ".") for t in by_source[e.source])]


def layer_of(module: str) -> tuple[int, str] | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        found = LAYERS.get(".".join(parts[:n]))
        if found is not None:
            return found
    return None


def layer_violations(edges: list[Edge]) -> list[str]:
    problems = []
    for e in edges:
        src, dst = layer_of(e.source), layer_of(e.target)
        if src is None or dst is None:
            problems.append(f"{e}: module outside every layer")
        elif dst[0] > src[0]:
            problems.append(f"{e}: layer {src[0]} ({src[1]}) imports layer {dst[0]} ({dst[1]})")
        elif dst[0] == src[0] and dst[1] != src[1] and "root" not in (src[1], dst[1]):
            problems.append(f"{e}: {src[1]} and {dst[1]} share a layer and must not import each other")
    return problems


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    graph: dict[str, list[str]] = {}
    for e in edges:
        graph.setdefault(e.source, []).append(e.target)
        graph.setdefault(e.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


# --- the repository ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def modules() -> dict[str, Path]:
    return module_files(package_dirs())


@pytest.fixture(scope="module")
def graph(modules) -> tuple[list[Edge], list[Edge]]:
    return internal_edges(modules)


def test_every_package_folder_is_walked(modules):
    assert {"affectstream.cli", "affectstream.model.aligned", "affectstream.training.train",
            "affectstream.streaming.worker.app", "affectstream.streaming.monitor.web",
            "affectstream.streaming.tools.services", "affectstream.bench.cli"} <= set(modules)
    assert all(layer_of(m) is not None for m in modules), [m for m in modules if layer_of(m) is None]


def test_no_module_imports_a_higher_layer_or_a_sibling_program(graph):
    edges, _ = graph
    assert len(edges) > 50  # the walk found the real imports
    assert layer_violations(edges) == []


def test_no_import_cycles_between_modules(graph):
    edges, _ = graph
    assert cycles(edges) == []


def test_no_module_imports_the_old_top_level_names(graph, modules):
    _, old = graph
    tests = {f"tests.{p.stem}": p for p in (ROOT / "tests").glob("*.py")}
    _, old_in_tests = internal_edges(tests)
    assert [str(e) for e in old + old_in_tests] == []


# --- the checker itself, on a small tree ---------------------------------------------------------------

def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files({"affectstream": tmp_path / "affectstream",
                         "affectstream.streaming": tmp_path / "streaming"})


def test_checker_flags_a_worker_importing_a_tool_inside_a_function(tmp_path):
    modules = _tree(tmp_path, {
        "affectstream/__init__.py": "",
        "streaming/__init__.py": "",
        "streaming/worker/__init__.py": "",
        "streaming/worker/app.py": "def f():\n    from affectstream.streaming.tools.services import free_port\n",
        "streaming/tools/__init__.py": "",
        "streaming/tools/services.py": "from ..worker import app\n",
        "streaming/monitor/__init__.py": "",
        "streaming/monitor/web.py": "from . import hub\nimport streaming.worker\n",
        "streaming/monitor/hub.py": "from affectstream.streaming.tools import services\n",
    })
    assert "affectstream.streaming.worker.app" in modules
    edges, old = internal_edges(modules)
    assert {(e.source, e.target) for e in edges} >= {
        ("affectstream.streaming.worker.app", "affectstream.streaming.tools.services"),
        ("affectstream.streaming.tools.services", "affectstream.streaming.worker.app"),
        ("affectstream.streaming.monitor.web", "affectstream.streaming.monitor.hub")}
    problems = layer_violations(edges)
    assert any("worker.app imports affectstream.streaming.tools.services: layer 2" in p for p in problems)
    assert any("monitor and tools share a layer" in p for p in problems)
    assert cycles(edges) == [["affectstream.streaming.tools.services", "affectstream.streaming.worker.app"]]
    assert [e.target for e in old] == ["streaming.worker"]


# --- the installed distribution --------------------------------------------------------------------------

def test_pyproject_packages_are_all_under_affectstream():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert all(p == PACKAGE or p.startswith(PACKAGE + ".") for p in config["packages"])
    assert all(p == PACKAGE or p.startswith(PACKAGE + ".") for p in config["package-dir"])


def test_built_wheel_has_only_affectstream_at_the_top(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in {p.relative_to(ROOT).parts[0] for p in package_dirs().values()}:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
    assert {n.split("/")[0] for n in names} == {PACKAGE, "affectstream-0.1.0.dist-info"}
    assert "affectstream/streaming/worker/app.py" in names and "affectstream/model/aligned.py" in names
    top_level = [n for n in names if n.endswith("top_level.txt")]
    if top_level:
        with zipfile.ZipFile(wheel) as z:
            assert z.read(top_level[0]).decode().split() == [PACKAGE]


@pytest.mark.parametrize("name", OLD_TOP_LEVEL)
def test_old_top_level_names_are_not_importable(tmp_path, name):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, done.stderr
    # the same interpreter and environment do find the name under the namespace
    ok = subprocess.run([sys.executable, "-c", f"import importlib.util as u; assert u.find_spec('affectstream.{name}')"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr[-2000:]
