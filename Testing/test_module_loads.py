"""Slicer 5.8 can load the module: importing its Qt-layer files touches no Markups class.

Slicer 5.8 instantiates modules in alphabetical order, and "AmbiguousSAM" comes before "Markups", whose classes
(vtkMRMLMarkupsROINode) enter the `slicer` namespace only when the Markups module is loaded; Slicer 5.10 moved
them to MRML Core. A module file that imports such a class at import time does not load in 5.8. Here each
Qt-layer file is imported the way Slicer imports it, with a `slicer` that is the real slicer-core wheel minus
every Markups class, and with minimal stand-ins for what exists only inside the Slicer application (qt,
slicer.ScriptedLoadableModule, slicer.i18n, slicer.parameterNodeWrapper, SegmentEditorEffects). An `ast` check
adds that no Qt-layer file names a Markups class in code that runs at import.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "AmbiguousSAM"
QT_FILES = [MODULE_DIR / "AmbiguousSAM.py", MODULE_DIR / "SegmentEditorAmbiguousSAM.py",
            MODULE_DIR / "SegmentEditorAmbiguousSAMLib" / "SegmentEditorEffect.py"]


class SlicerBeforeMarkups(types.ModuleType):
    """`slicer` as Slicer 5.8 has it while the modules before "Markups" load: everything but the Markups classes."""

    def __init__(self, real: types.ModuleType) -> None:
        super().__init__("slicer")
        self.__path__ = real.__path__
        self._real = real

    def __getattr__(self, name: str):
        if "Markups" in name:
            raise AttributeError(f"module 'slicer' has no attribute '{name}' (the Markups module is not loaded yet)")
        return getattr(self._real, name)


def standIn(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def plainClass(name: str) -> type:
    return type(name, (), {"__init__": lambda self, *args, **kwargs: None})


@pytest.fixture
def slicer_5_8_at_startup(monkeypatch):
    """sys.modules as the module files see them when Slicer 5.8 loads AmbiguousSAM; restored afterwards."""
    import slicer
    import slicer.util

    saved = dict(sys.modules)
    for name in [name for name in sys.modules if name == "AmbiguousSAMLogic" or name.startswith("AmbiguousSAMLogic.")]:
        del sys.modules[name]  # re-imported against the stand-in `slicer`, as in a fresh Slicer
    withoutMarkups = SlicerBeforeMarkups(slicer)
    modules = {
        "slicer": withoutMarkups,
        "slicer.util": slicer.util,
        "slicer.i18n": standIn("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.ScriptedLoadableModule": standIn("slicer.ScriptedLoadableModule", **{
            name: plainClass(name) for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget",
                                                "ScriptedLoadableModuleLogic", "ScriptedLoadableModuleTest")}),
        "slicer.parameterNodeWrapper": standIn("slicer.parameterNodeWrapper", parameterNodeWrapper=lambda cls: cls,
                                               Choice=lambda choices: None, WithinRange=lambda low, high: None),
        "qt": standIn("qt"),
        "SegmentEditorEffects": standIn("SegmentEditorEffects", __path__=[],
                                        AbstractScriptedSegmentEditorEffect=plainClass("AbstractScriptedSegmentEditorEffect")),
    }
    modules["SegmentEditorEffects.AbstractScriptedSegmentEditorEffect"] = standIn(
        "SegmentEditorEffects.AbstractScriptedSegmentEditorEffect",
        AbstractScriptedSegmentEditorEffect=modules["SegmentEditorEffects"].AbstractScriptedSegmentEditorEffect)
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    yield withoutMarkups
    for name in [name for name in sys.modules if name not in saved]:
        del sys.modules[name]
    sys.modules.update(saved)


def importFile(path: Path, name: str) -> types.ModuleType:
    """Execute a module file as Slicer does (by path, under its own name)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_the_stand_in_really_lacks_the_markups_classes(slicer_5_8_at_startup):
    """The control: the import the module used to do fails under this `slicer`, as it did in Slicer 5.8."""
    with pytest.raises(ImportError, match="vtkMRMLMarkupsROINode"):
        exec("from slicer import vtkMRMLMarkupsROINode", {})
    assert slicer_5_8_at_startup.vtkMRMLScalarVolumeNode is not None


def test_the_module_file_loads_before_markups(slicer_5_8_at_startup):
    module = importFile(MODULE_DIR / "AmbiguousSAM.py", "AmbiguousSAM")
    assert {"AmbiguousSAM", "AmbiguousSAMWidget", "AmbiguousSAMTest", "parameterNodeClass"} <= set(vars(module))
    with pytest.raises(ImportError, match="vtkMRMLMarkupsROINode"):
        module.parameterNodeClass()  # built at widget setup, once Markups is loaded; not at import


def test_the_hidden_effect_module_and_the_effect_load_before_markups(slicer_5_8_at_startup):
    hidden = importFile(MODULE_DIR / "SegmentEditorAmbiguousSAM.py", "SegmentEditorAmbiguousSAM")
    effect = importFile(MODULE_DIR / "SegmentEditorAmbiguousSAMLib" / "SegmentEditorEffect.py", "SegmentEditorEffect")
    assert hasattr(hidden, "SegmentEditorAmbiguousSAM")
    assert hasattr(effect, "SegmentEditorEffect") and hasattr(effect, "RubberBand")


class ImportTimeMarkupsNames(ast.NodeVisitor):
    """Markups class names in code that runs when a file is imported: everything but function bodies."""

    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        for expression in [*node.decorator_list, *node.args.defaults, *node.args.kw_defaults]:
            if expression is not None:
                self.visit(expression)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.found += [(node.lineno, alias.name) for alias in node.names if "Markups" in alias.name]

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if "Markups" in node.attr:
            self.found.append((node.lineno, node.attr))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if "Markups" in node.id:
            self.found.append((node.lineno, node.id))


@pytest.mark.parametrize("path", QT_FILES, ids=lambda path: path.name)
def test_no_qt_layer_file_names_a_markups_class_at_import_time(path):
    visitor = ImportTimeMarkupsNames()
    visitor.visit(ast.parse(path.read_text(), str(path)))
    assert not visitor.found, f"{path.name} uses Markups classes at import time (lines, names): {visitor.found}"


def test_the_ast_check_catches_the_old_module_level_import():
    visitor = ImportTimeMarkupsNames()
    visitor.visit(ast.parse("from slicer import vtkMRMLMarkupsROINode\nclass P:\n    roi: slicer.vtkMRMLMarkupsROINode\n"
                            "def lazy():\n    from slicer import vtkMRMLMarkupsROINode\n"))
    assert visitor.found == [(1, "vtkMRMLMarkupsROINode"), (3, "vtkMRMLMarkupsROINode")]
