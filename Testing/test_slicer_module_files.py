"""What can be checked about the Slicer extension without running Slicer: files, layering, UI, metadata.

Slicer's Qt side (the widget, the effect, the self-tests) only runs inside the application. Here the sources are
compiled, the CMake file lists are compared with the files on disk (a file missing from the list is missing from
the installed extension), the import layering of DESIGN.md is checked with `ast`, and the .ui file is checked
against the names the widget uses.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "AmbiguousSAM"
NOT_SOURCES = {".venv", ".git", "cache", "build", "out", "__pycache__", ".pytest_cache"}

#: The Qt layer: the module (widget, self-test), the hidden module that registers the effect, and the effect.
QT_FILES = [MODULE_DIR / "AmbiguousSAM.py", MODULE_DIR / "SegmentEditorAmbiguousSAM.py",
            *sorted((MODULE_DIR / "SegmentEditorAmbiguousSAMLib").glob("*.py"))]
#: What the Qt layer may import: the MRML logic, Slicer's Python bindings, and the standard library. The
#: Segment Editor's own effect base classes come with Slicer and are how every scripted effect is built.
QT_LAYER_IMPORTS = {"AmbiguousSAMLogic", "slicer", "qt", "ctk", "vtk",
                    "SegmentEditorEffects", "qSlicerSegmentationsEditorEffectsPythonQt"}


def sourceFiles(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*.py") if not NOT_SOURCES.intersection(path.relative_to(root).parts))


def importedModules(path: Path) -> set[str]:
    """Top-level names of every absolute import in the file, at any depth (function-level imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def cmakeList(text: str, variable: str) -> set[str]:
    """Entries of `set(<variable> ...)` in a CMakeLists, with ${MODULE_NAME} expanded."""
    moduleName = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text).group(1)
    body = re.search(rf"set\({variable}\s+(.*?)\)", text, re.DOTALL).group(1)
    return {entry.replace("${MODULE_NAME}", moduleName) for entry in body.split()}


def pngSize(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    return struct.unpack(">II", header[16:24])


@pytest.mark.parametrize("path", sourceFiles(REPOSITORY), ids=lambda path: str(path.relative_to(REPOSITORY)))
def test_every_python_file_compiles(path):
    compile(path.read_text(), str(path), "exec")


def test_module_cmakelists_lists_exactly_the_python_files_and_resources_on_disk():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    # `pip install -e .` writes its egg-info into the module folder (the packages live there); it is build output.
    onDisk = {path.relative_to(MODULE_DIR).as_posix() for path in MODULE_DIR.rglob("*")
              if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
              and not any(part.endswith(".egg-info") for part in path.parts)}
    onDisk.discard("CMakeLists.txt")
    scripts = {path for path in onDisk if path.endswith(".py")}
    assert cmakeList(text, "MODULE_PYTHON_SCRIPTS") == scripts, "update MODULE_PYTHON_SCRIPTS in AmbiguousSAM/CMakeLists.txt"
    assert cmakeList(text, "MODULE_PYTHON_RESOURCES") == onDisk - scripts, \
        "update MODULE_PYTHON_RESOURCES in AmbiguousSAM/CMakeLists.txt"


@pytest.mark.parametrize("path", QT_FILES, ids=lambda path: path.name)
def test_qt_layer_imports_only_the_logic_slicer_and_the_standard_library(path):
    foreign = importedModules(path) - QT_LAYER_IMPORTS - set(sys.stdlib_module_names)
    assert not foreign, f"{path.name} imports {sorted(foreign)}; go through AmbiguousSAMLogic instead"


@pytest.mark.parametrize("path", sourceFiles(MODULE_DIR / "AmbiguousSAMLogic"), ids=lambda path: path.name)
def test_mrml_layer_never_imports_qt(path):
    assert not importedModules(path) & {"qt", "ctk", "SegmentEditorEffects", "AmbiguousSAM"}


@pytest.mark.parametrize("path", sourceFiles(MODULE_DIR / "AmbiguousSAMLib"),
                         ids=lambda path: str(path.relative_to(MODULE_DIR)))
def test_core_never_imports_slicer_vtk_or_qt(path):
    assert not importedModules(path) & {"slicer", "vtk", "qt", "ctk", "AmbiguousSAMLogic", "AmbiguousSAM"}


def test_ui_file_has_every_widget_the_module_uses_and_binds_only_real_parameters():
    root = ElementTree.parse(MODULE_DIR / "Resources" / "UI" / "AmbiguousSAM.ui").getroot()
    widgets = {widget.get("name") for widget in root.iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (MODULE_DIR / "AmbiguousSAM.py").read_text()))
    assert used - widgets == set(), "the widget code uses names that are not in AmbiguousSAM.ui"

    bound = {prop.find("string").text for prop in root.iter("property") if prop.get("name") == "SlicerParameterName"}
    module = ast.parse((MODULE_DIR / "AmbiguousSAM.py").read_text())
    # The class is built inside parameterNodeClass() (its ROI field needs the Markups module loaded): search deep.
    parameterNode = next(node for node in ast.walk(module)
                         if isinstance(node, ast.ClassDef) and node.name == "AmbiguousSAMParameterNode")
    fields = {statement.target.id for statement in parameterNode.body if isinstance(statement, ast.AnnAssign)}
    assert bound == fields, "every parameter should have exactly one widget in the .ui and vice versa"


def test_the_hidden_module_finds_the_effect_and_its_icon():
    assert (MODULE_DIR / "SegmentEditorAmbiguousSAMLib" / "SegmentEditorEffect.py").is_file()
    assert pngSize(MODULE_DIR / "Resources" / "Icons" / "SegmentEditorAmbiguousSAM.png") == (21, 21)
    assert 'scriptedEffect.name = "Ambiguous SAM"' in (
        MODULE_DIR / "SegmentEditorAmbiguousSAMLib" / "SegmentEditorEffect.py").read_text()


def test_extension_metadata_and_index_entry_agree():
    text = (REPOSITORY / "CMakeLists.txt").read_text()
    metadata = dict(re.findall(r'set\((EXTENSION_\w+)\s+"([^"]*)"\)', text))
    assert {"EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
            "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"} <= set(metadata)
    assert metadata["EXTENSION_CATEGORY"] == "Segmentation"
    assert re.search(r"add_subdirectory\(AmbiguousSAM\)", text)
    assert pngSize(REPOSITORY / "AmbiguousSAM.png") == (128, 128)

    entry = json.loads((REPOSITORY / "Resources" / "ExtensionsIndex" / "AmbiguousSAM.json").read_text())
    assert set(entry) == {"$schema", "build_dependencies", "build_subdirectory", "category", "scm_revision",
                          "scm_url", "tier"}
    assert entry["category"] == metadata["EXTENSION_CATEGORY"]
    assert entry["build_dependencies"] == metadata["EXTENSION_DEPENDS"].split(";") == ["PyTorch"]
    assert entry["scm_url"] == metadata["EXTENSION_HOMEPAGE"]


def test_the_extension_ships_its_own_licence_and_readme():
    """ExtensionsIndex's check_description_files.py wants a LICENSE file in the repository root, and without
    EXTENSION_LICENSE_FILE / EXTENSION_README_FILE, Slicer's UseSlicer.cmake sets them to Slicer's own files,
    which SlicerExtensionCPack.cmake then packages as this extension's. They must be set before UseSlicer runs."""
    licence = (REPOSITORY / "LICENSE").read_text()
    assert licence.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in licence
    pyproject = (REPOSITORY / "pyproject.toml").read_text()
    assert 'license = "Apache-2.0"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    text = (REPOSITORY / "CMakeLists.txt").read_text()
    files = dict(re.findall(r"set\((EXTENSION_(?:LICENSE|README)_FILE)\s+\$\{CMAKE_CURRENT_SOURCE_DIR\}/(\S+)\)", text))
    assert files == {"EXTENSION_LICENSE_FILE": "LICENSE", "EXTENSION_README_FILE": "README.md"}
    assert all((REPOSITORY / name).is_file() for name in files.values())
    assert text.index("EXTENSION_LICENSE_FILE") < text.index("include(${Slicer_USE_FILE})")
    # The minimum of Slicer's current extension template (Utilities/Templates/Extensions/Default/CMakeLists.txt).
    assert text.startswith("cmake_minimum_required(VERSION 3.28.0...3.28.0 FATAL_ERROR)")
