import os

import slicer
from slicer.i18n import tr as _
from slicer.ScriptedLoadableModule import ScriptedLoadableModule, ScriptedLoadableModuleTest

#
# SegmentEditorAmbiguousSAM
#


class SegmentEditorAmbiguousSAM(ScriptedLoadableModule):
    """Hidden module whose only job is to register the "Ambiguous SAM" Segment Editor effect at startup.

    Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "SegmentEditorAmbiguousSAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = ["Segmentations"]
        self.parent.contributors = ["AmbiguousSAM contributors"]
        self.parent.hidden = True
        self.parent.helpText = _("This hidden module registers the Ambiguous SAM segment editor effect.")
        self.parent.acknowledgementText = _("See the Ambiguous SAM module for the methods and data this effect uses.")
        slicer.app.connect("startupCompleted()", self.registerEditorEffect)

    def registerEditorEffect(self) -> None:
        import qSlicerSegmentationsEditorEffectsPythonQt as qSlicerSegmentationsEditorEffects

        instance = qSlicerSegmentationsEditorEffects.qSlicerSegmentEditorScriptedEffect(None)
        effectFilename = os.path.join(os.path.dirname(__file__), self.__class__.__name__ + "Lib/SegmentEditorEffect.py")
        instance.setPythonSource(effectFilename.replace("\\", "/"))
        instance.self().register()


#
# SegmentEditorAmbiguousSAMTest
#


class SegmentEditorAmbiguousSAMTest(ScriptedLoadableModuleTest):
    """Checks that the effect is registered and can be activated in a Segment Editor.

    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_effect_is_available()

    def test_effect_is_available(self) -> None:
        self.delayDisplay("Activating the Ambiguous SAM effect")
        segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        segmentEditorNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentEditorNode")
        segmentEditorWidget.setMRMLSegmentEditorNode(segmentEditorNode)
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode")
        segmentationNode.GetSegmentation().AddEmptySegment("", "Nodule")
        segmentEditorWidget.setSegmentationNode(segmentationNode)
        segmentEditorWidget.setActiveEffectByName("Ambiguous SAM")
        effect = segmentEditorWidget.activeEffect()
        self.assertIsNotNone(effect)
        self.assertEqual(effect.name, "Ambiguous SAM")
        segmentEditorWidget.setActiveEffect(None)
        self.delayDisplay("Test passed")
