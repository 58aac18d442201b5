"""`pip install ambiguous-sam` must bring everything the core imports: checked against the real import statements.

The test environment has the `test` extra and more installed, so a module the core imports but pyproject.toml
does not declare (slicerio was one: `segment` wrote its .seg.nrrd with it, but only the test extra had it) passes
every other test here and fails for a user. The import names found in the source are mapped to the distributions
that provide them through the installed packages' own metadata, the mapping pip itself installs from.
`.ci/fresh-install-check` (run by hand) proves the same end to end in a fresh venv.
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # the standard library's TOML reader, Python 3.11+
REPOSITORY = Path(__file__).resolve().parents[1]
CORE = REPOSITORY / "AmbiguousSAM" / "AmbiguousSAMLib"


def normalised(distribution: str) -> str:
    """PEP 503's form of a distribution name: 'SimpleITK' and 'simpleitk', 'segment_anything' and
    'segment-anything' are the same distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def imported_modules(root: Path) -> dict[str, list[str]]:
    """Top-level names of every absolute import (at any depth, function-level ones included) -> files importing it."""
    found: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], []).append(str(path.relative_to(root)))
    return found


def declared_dependencies() -> set[str]:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    return {normalised(re.match(r"[A-Za-z0-9._-]+", requirement).group(0)) for requirement in project["dependencies"]}


def test_every_third_party_module_the_core_imports_is_a_declared_dependency():
    third_party = {name: files for name, files in imported_modules(CORE).items()
                   if name not in sys.stdlib_module_names and name != "AmbiguousSAMLib"}
    assert {"torch", "SimpleITK", "slicerio", "segment_anything"} <= set(third_party), "the walk must see the imports"
    providers = packages_distributions()
    unknown = sorted(name for name in third_party if name not in providers)
    assert not unknown, f"imported by the core but not installed here, so not mappable to a distribution: {unknown}"
    declared = declared_dependencies()
    undeclared = {name: sorted(set(third_party[name])) for name in third_party
                  if not declared & {normalised(distribution) for distribution in providers[name]}}
    assert not undeclared, f"add to pyproject.toml's [project] dependencies (imported by these files): {undeclared}"



def test_the_wheel_lists_every_package_folder_and_carries_the_shipped_head():
    """pyproject.toml lists the packages by hand (the shipped head is mapped in from Resources/Models), so a new
    subpackage left out of the list would be missing from `pip install .`; the head's mapping must hold the file
    the core loads by default."""
    settings = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["setuptools"]
    module_folder = REPOSITORY / "AmbiguousSAM"
    on_disk = {".".join(init.parent.relative_to(module_folder).parts)
               for root in ("AmbiguousSAMLib", "AmbiguousSAMLogic") for init in (module_folder / root).rglob("__init__.py")}
    listed = set(settings["packages"])
    assert listed - {"AmbiguousSAMLib.shipped_models"} == on_disk
    models = REPOSITORY / settings["package-dir"]["AmbiguousSAMLib.shipped_models"]
    from AmbiguousSAMLib.heads.checkpoint import DEFAULT_HEAD, HEAD_FILE_NAME

    assert (models / HEAD_FILE_NAME).is_file() and DEFAULT_HEAD == (models / HEAD_FILE_NAME).resolve()
    assert any(HEAD_FILE_NAME.endswith(pattern.lstrip("*"))
               for pattern in settings["package-data"]["AmbiguousSAMLib.shipped_models"])
