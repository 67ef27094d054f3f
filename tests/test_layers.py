"""The package's layers: the engine, the services, the vision code and the protocol models sit
below the HTTP layer (``ferry.api``) and never reach it, not even through another module or a
function-level import. Checked by parsing every module's imports, without importing anything."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "ferry"
BELOW_API = ("ferry.services", "ferry.engine", "ferry.vision", "ferry.protocol")


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = ROOT) -> set[str]:
    """Every ferry module ``path`` imports, anywhere in the file (``from a import b`` counts as
    both ``a`` and ``a.b``: ``b`` may be a submodule)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in out if m == "ferry" or m.startswith("ferry.")}


def graph() -> dict[str, set[str]]:
    """Module -> the ferry modules it imports. The root package is no edge: every module imports
    it for ``__version__``, and its ``create_app`` is a lazy attribute, not an import."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    return {m: {i for i in imports_of(p) if i in modules and i != "ferry"}
            for m, p in modules.items()}


def reachable(g: dict[str, set[str]], start: str) -> dict[str, str]:
    """Modules reachable from ``start``, each with the module that imported it first."""
    seen, todo = {start: ""}, [start]
    while todo:
        m = todo.pop()
        for dep in sorted(g.get(m, ())):
            if dep not in seen:
                seen[dep] = m
                todo.append(dep)
    return seen


def chain(seen: dict[str, str], end: str) -> str:
    path = [end]
    while seen[path[-1]]:
        path.append(seen[path[-1]])
    return " -> ".join(reversed(path))


def test_the_import_graph_is_read_from_real_modules():
    g = graph()
    assert "ferry.api.routes" in g and "ferry.services.completions" in g
    assert "ferry.protocol.openai" in g["ferry.services.completions"]
    assert "ferry.services.completions" in g["ferry.api.routes"]


LOWER = sorted(m for m in graph() if m.startswith(BELOW_API))


@pytest.mark.parametrize("module", LOWER)
def test_lower_layers_never_import_the_http_layer(module):
    seen = reachable(graph(), module)
    bad = [m for m in seen if m == "ferry.api" or m.startswith("ferry.api.")
           or m in ("ferry.app", "ferry.server", "ferry.cli")]
    assert not bad, chain(seen, bad[0])


def test_the_protocol_models_do_not_import_the_services():
    for module in (m for m in graph() if m.startswith("ferry.protocol")):
        seen = reachable(graph(), module)
        assert not [m for m in seen if m.startswith("ferry.services")], module


def test_a_relative_import_of_the_api_is_caught(tmp_path):
    pkg = tmp_path / "ferry" / "services"
    pkg.mkdir(parents=True)
    (pkg / "x.py").write_text("def f():\n    from ..api import schemas\n")
    assert "ferry.api.schemas" in imports_of(pkg / "x.py", tmp_path / "ferry")
