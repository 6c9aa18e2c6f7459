"""The floors of DESIGN §1, checked on the source: what each installed package may import."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"common", "worker", "broker", "scripts", "examples", "tests"}
ALLOWED = {
    "common": {"common"},
    "worker": {"common", "worker"},
    "broker": {"common", "worker", "broker"},
    "examples": {"common", "examples"},
    "scripts": {"common", "worker", "broker", "scripts", "examples"},
}


def _modules(path: Path) -> set[str]:
    """Every module ``path`` imports, dotted names in full (relative imports left out)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _imports(path: Path) -> set[str]:
    """Our top-level packages that ``path`` imports."""
    return {name.split(".")[0] for name in _modules(path)} & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_floor_imports_only_the_floors_below_it(package: str) -> None:
    bad = {
        str(path.relative_to(ROOT)): sorted(_imports(path) - ALLOWED[package])
        for path in sorted((ROOT / package).rglob("*.py"))
        if _imports(path) - ALLOWED[package]
    }
    assert bad == {}, f"{package} imports beyond its floor (installed code never imports tests)"


CORE = sorted(p.stem for p in (ROOT / "broker" / "core").glob("*.py"))


@pytest.mark.parametrize("module", CORE)
def test_the_broker_core_does_no_io_and_knows_no_driver(module: str) -> None:
    """The core (and what it owns) drives zmq, in-process and Dask alike: no transport, no
    process, no file in it, and no driver or transport module of ours."""
    modules = _modules(ROOT / "broker" / "core" / f"{module}.py")
    imported = modules | {name.split(".")[0] for name in modules}
    forbidden = {"zmq", "msgpack", "socket", "subprocess", "multiprocessing", "sqlite3"}
    forbidden |= {"threading", "psutil", "common.codec", "broker.journal", "broker.graph_executor"}
    assert imported & forbidden == set()
    ours = {m for m in modules if m.startswith("broker.")}
    assert all(m.startswith("broker.core") for m in ours), ours


def _our_modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the installed packages."""
    found: dict[str, Path] = {}
    for package in ("common", "worker", "broker", "scripts"):
        for path in (ROOT / package).rglob("*.py"):
            found[
                ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            ] = path
    return found


def _imported_modules(path: Path, ours: dict[str, Path]) -> set[str]:
    """Our modules ``path`` imports anywhere in it (in functions and type checks too), with
    ``from package import module`` naming the module."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{alias.name}" for alias in node.names}
    return out & ours.keys()


def test_no_module_imports_itself_back() -> None:
    """Imports flow one way: no cycle of our modules, even through an import in a function."""
    ours = _our_modules()
    graph: nx.DiGraph[str] = nx.DiGraph()
    for name, path in ours.items():
        graph.add_edges_from((name, m) for m in _imported_modules(path, ours) if m != name)
    assert list(nx.simple_cycles(graph)) == []
