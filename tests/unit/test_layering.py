"""The floors of DESIGN §1, checked on the source: what each installed package may import."""

from __future__ import annotations

import ast
from pathlib import Path

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
