"""The package layering of exporter/ (docs/architecture.md, "Layers"), held by a test.

Every module is parsed (AST), so imports inside functions and under ``TYPE_CHECKING``
count like any other.  A module may import:

* anything of a lower layer;
* modules of its own package;
* ``exporter`` itself (the version).

It may not import a higher layer, nor a sibling package of the same layer (probers,
queues, logs, roundtrip and continuity are independent of each other), and the module
graph has no cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "exporter"

#: Layer of each top-level package or module of exporter/, lowest first.
LAYERS: dict[str, int] = {
    "core": 0,
    "config": 1,
    "net": 2,
    "probers": 3,
    "queues": 3,
    "logs": 3,
    "roundtrip": 3,
    "continuity": 3,
    "checks": 4,
    "web": 5,
    "app": 6,
    "cli": 7,
    "__main__": 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p): p for p in sorted(root.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported exporter module, line) for every import statement in the file, wherever it is."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "exporter" or alias.name.startswith("exporter."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not (target == "exporter" or target.startswith("exporter.")):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in known else target), node.lineno


def unit(module: str) -> str:
    """The top-level package (or module) of exporter/ that a module belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(root: Path = PACKAGE) -> list[str]:
    mods = modules(root)
    known = set(mods)
    out = []
    for name, path in mods.items():
        src = unit(name)
        if src == "":
            continue  # exporter/__init__.py: the version only
        if src not in LAYERS:
            out.append(f"{name}: exporter.{src} has no layer in tests/test_layers.py LAYERS")
            continue
        for target, line in imports_of(name, path, known):
            dst = unit(target)
            if dst in ("", src):
                continue
            if dst not in LAYERS:
                out.append(f"{path.relative_to(ROOT)}:{line}: imports {target}, which has no layer")
            elif LAYERS[dst] > LAYERS[src]:
                out.append(
                    f"{path.relative_to(ROOT)}:{line}: {src} (layer {LAYERS[src]}) imports {target} "
                    f"(layer {LAYERS[dst]}, higher)"
                )
            elif LAYERS[dst] == LAYERS[src]:
                out.append(f"{path.relative_to(ROOT)}:{line}: {src} imports its sibling {target} (same layer)")
    return out


def cycles(root: Path = PACKAGE) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    mods = modules(root)
    known = set(mods)
    graph = {
        name: sorted({t for t, _ in imports_of(name, path, known) if t in known and t != name})
        for name, path in mods.items()
    }
    # A package's __init__ importing its own submodules to re-export them is not a cycle
    # unless a submodule imports the package back; both edges are kept, so such a pair shows.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_every_import_points_down() -> None:
    bad = violations()
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_no_import_cycles() -> None:
    found = cycles()
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_package_has_a_layer() -> None:
    units = {unit(m) for m in modules()} - {""}
    assert units <= set(LAYERS), f"give these a layer: {sorted(units - set(LAYERS))}"


# --- the test can fail: a copy of the tree with one upward import, and one cycle ----------


def _copy_tree(tmp_path: Path) -> Path:
    root = tmp_path / "exporter"
    for path in PACKAGE.rglob("*.py"):
        dest = root / path.relative_to(PACKAGE)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(path.read_text())
    return root


@pytest.mark.parametrize(
    ("module", "statement", "expected"),
    [
        ("core/model.py", "from exporter.app import Exporter", "core (layer 0) imports exporter.app"),
        (
            "config/__init__.py",
            "from exporter.continuity import webhook",
            "config (layer 1) imports exporter.continuity",
        ),
        ("probers/smtp.py", "from exporter.queues import read_queue", "probers imports its sibling exporter.queues"),
    ],
)
def test_an_upward_import_is_caught_even_inside_a_function(
    tmp_path: Path, module: str, statement: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _copy_tree(tmp_path)
    target = root / module
    target.write_text(target.read_text() + f"\n\ndef _late():\n    {statement}\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = violations(root)
    assert any(expected in v for v in found), found


def test_a_type_checking_import_counts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_tree(tmp_path)
    target = root / "net" / "tls.py"
    target.write_text(target.read_text() + "\nif TYPE_CHECKING:\n    from exporter.web.server import make_app\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert any("net (layer 2) imports exporter.web.server" in v for v in violations(root))


def test_a_cycle_inside_a_package_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _copy_tree(tmp_path)
    (root / "core" / "metrics.py").write_text(
        (root / "core" / "metrics.py").read_text() + "\n\ndef _late():\n    from exporter.core import model\n"
    )
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    found = cycles(root)
    assert any("exporter.core.metrics" in c and "exporter.core.model" in c for c in found), found
