"""The arrows point one way: ingest and origin never import each other, maintenance neither.

Imports are read with ``ast`` from every module of the package (including imports inside
functions and under ``TYPE_CHECKING``), so a lazy import cannot hide a wrong arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "framecdn"

#: package -> packages it must never import
FORBIDDEN = {
    "framecdn.ingest": (
        "framecdn.origin", "framecdn.maintenance", "framecdn.cli", "framecdn.receive",
    ),
    # The receiver writes through ingest; the origin (the read side) never sees it.
    "framecdn.receive": ("framecdn.origin", "framecdn.maintenance", "framecdn.cli"),
    "framecdn.origin": (
        "framecdn.ingest", "framecdn.maintenance", "framecdn.cli", "framecdn.receive",
    ),
    "framecdn.maintenance": ("framecdn.ingest", "framecdn.origin", "framecdn.cli"),
    "framecdn.framestore": (
        "framecdn.ingest", "framecdn.origin", "framecdn.maintenance", "framecdn.cli",
    ),
    "framecdn.errors": ("framecdn.",),
    # OHIF for the demo (a face, like the CLI): it serves files, it reads no bucket.
    "framecdn.viewer": ("framecdn.ingest", "framecdn.origin", "framecdn.maintenance"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every module that ``path`` (module ``name``) imports, absolute (relative ones resolved)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def modules() -> dict[str, set[str]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        found[module_name(path)] = imports_of(path, module_name(path))
    return found


def violations(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for name, imported in graph.items():
        for owner, forbidden in FORBIDDEN.items():
            if name != owner and not name.startswith(owner + "."):
                continue
            wrong += [
                f"{name} imports {target}"
                for target in sorted(imported)
                if any(target == f or target.startswith(f if f.endswith(".") else f + ".")
                       for f in forbidden)
            ]
    return wrong


def test_every_layer_imports_only_what_is_below_it():
    assert violations(modules()) == []


@pytest.mark.parametrize(
    ("source", "target"),
    [
        ("from framecdn.origin.app import create_app\n", "framecdn.origin.app"),
        ("from ..origin import app\n", "framecdn.origin"),
        ("def f():\n    import framecdn.origin.storage\n", "framecdn.origin.storage"),
    ],
)
def test_the_check_sees_every_spelling_of_an_import(tmp_path, source, target):
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    imported = imports_of(probe, "framecdn.ingest.probe")
    assert target in imported
    assert violations({**modules(), "framecdn.ingest.probe": imported}) != []


def test_the_package_is_all_there():
    names = modules()
    for package in ("framecdn.ingest", "framecdn.origin", "framecdn.maintenance",
                    "framecdn.framestore", "framecdn.cli"):
        assert any(name.startswith(package + ".") for name in names), package
