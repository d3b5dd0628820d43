"""Declared dependencies equal imported ones: what src/ imports from outside the standard library is exactly
what pyproject.toml's [project] dependencies name, so nothing works only because another package pulled it in."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kcuda_validate"


def imported_modules() -> set[str]:
    """Top-level names of every module src/ imports (absolute imports; inside functions too)."""
    names: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"kcuda_validate", "__future__"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {normalize(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0]) for dep in deps}


def test_every_imported_package_is_declared_and_every_declared_one_is_imported() -> None:
    owners = packages_distributions()
    imported: dict[str, str] = {}
    for module in imported_modules():
        dists = owners.get(module)
        assert dists, f"src/ imports {module!r}, which no installed distribution provides"
        imported[normalize(dists[0])] = module
    assert set(imported) - declared() == set(), "imported but not declared in pyproject.toml"
    assert declared() - set(imported) == set(), "declared in pyproject.toml but never imported"
