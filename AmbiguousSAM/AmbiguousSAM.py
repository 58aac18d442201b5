import logging
import pathlib
import traceback
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from AmbiguousSAMLogic import (BACKBONE_CHOICES, CANDIDATES_ATTRIBUTE, DEVICE_CHOICES, HEAD_CHOICES,
                               UNCERTAINTY_ATTRIBUTE, AmbiguousSAMError, AmbiguousSAMLogic, BackgroundTask,
                               CancelledError, ModelSettings, acceptCandidate, installDependencies, missingPackages,
                               overlayUncertainty, segmentIdsWithRole, setHeatmapColorNode, showCandidates)

#
# AmbiguousSAM
#


class AmbiguousSAM(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Ambiguous SAM"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["AmbiguousSAM contributors"]
        self.parent.helpText = """
Draw a box around a lesion (for example a lung nodule) on one axial CT slice and get <b>several plausible 3D
segmentations</b> instead of one: K candidates that differ where experts would differ, their consensus, and a
per-voxel <b>uncertainty heatmap</b> (0 = all candidates agree, ln 2 = an even split).
<ul>
<li>Select the CT and place an ROI around the lesion; its centre picks the slice.</li>
<li>Click <i>Segment lesion</i>. The candidates appear as outlines, the heatmap over the CT.</li>
<li>Step through the candidates and <i>Accept</i> one into a segment of your own segmentation.</li>
</ul>
In the Segment Editor, the <i>Ambiguous SAM</i> effect does the same by dragging a box on a slice view.
"""
        self.parent.acknowledgementText = """
Ambiguous SAM builds on Segment Anything-style models for ambiguous medical image segmentation:
<ul>
<li>T. Ward, A. Imran. <i>A Probabilistic Segment Anything Model for Ambiguity-Aware Medical Image
Segmentation</i> (Probabilistic SAM). arXiv:2509.05809, 2025.</li>
<li>B. Towle, X. Chen, K. Zhou. <i>SeqSAM: Autoregressive Multiple Hypothesis Prediction for Medical Image
Segmentation using SAM</i>.</li>
<li>M. Jiang, J. Zhou, J. Wu, T. Wang, Y. Jin, M. Xu. <i>Uncertainty-Aware Adapter: Adapting Segment Anything
Model (SAM) for Ambiguous Medical Image Segmentation</i> (UA-SAM).</li>
<li>T. Kaiser, T. Norrenbrock, B. Rosenhahn. <i>UncertainSAM: Fast and Efficient Uncertainty Quantification of
the Segment Anything Model</i>. ICML 2025.</li>
</ul>
The models were trained and evaluated on LIDC-IDRI (The Cancer Imaging Archive, CC BY 3.0):
S. G. Armato III et al. <i>The Lung Image Database Consortium (LIDC) and Image Database Resource Initiative (IDRI):
a completed reference database of lung nodules on CT scans</i>. Medical Physics 38:915-931, 2011.
Data DOI <a href="https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX">10.7937/K9/TCIA.2015.LO9QL9SX</a>.
"""


#
# AmbiguousSAMParameterNode
#


@parameterNodeWrapper
class AmbiguousSAMParameterNode:
    """The module's inputs, saved with the scene so a reopened study shows the same settings.

    inputVolume - the CT to segment.
    roi - the box around the lesion; its centre picks the axial slice the box is drawn on.
    samples - the number K of candidate segmentations.
    seed - the random seed; the same seed gives the same candidates.
    backbone, checkpoint, head, device - the model (see AmbiguousSAMLogic.ModelSettings); an empty checkpoint
        path is LiteMedSAM's embedded weights.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    roi: vtkMRMLMarkupsROINode
    samples: Annotated[int, WithinRange(2, 64)] = 16
    seed: Annotated[int, WithinRange(0, 999999)] = 0
    backbone: Annotated[str, Choice(list(BACKBONE_CHOICES))] = "litemedsam"
    checkpoint: pathlib.Path
    head: Annotated[str, Choice(list(HEAD_CHOICES))] = "default"
    device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"


#
# AmbiguousSAMWidget
#

CPU_WARNING = "Running on the CPU: each lesion takes several seconds. A CUDA GPU makes it interactive."


class AmbiguousSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Reads the GUI, calls the logic, shows progress. The model runs on a worker thread (a BackgroundTask polled by a
    timer), so Slicer stays responsive and Cancel works; scene nodes are read and created on the main thread only.
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._task: Optional[BackgroundTask] = None
        self._taskVolume = None
        self._lastDevice = None
        self._pollTimer = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        # Load widget from .ui file (created by Qt Designer).
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AmbiguousSAM.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)

        # Set scene in MRML widgets. The .ui file connects the top-level qMRMLWidget's "mrmlSceneChanged(vtkMRMLScene*)"
        # signal to each MRML widget's "setMRMLScene(vtkMRMLScene*)" slot.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = AmbiguousSAMLogic()

        # Result selectors list only this module's outputs.
        self.ui.candidatesSelector.addAttribute("vtkMRMLSegmentationNode", CANDIDATES_ATTRIBUTE)
        self.ui.heatmapSelector.addAttribute("vtkMRMLScalarVolumeNode", UNCERTAINTY_ATTRIBUTE)
        self.ui.cpuWarningLabel.visible = False

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollTask)

        # These connections ensure that we update parameter node when scene is closed
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # Buttons and result browsers
        self.ui.runButton.connect("clicked(bool)", self.onRunButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.candidatesSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onCandidatesChanged)
        self.ui.candidateSpinBox.connect("valueChanged(int)", self.onCandidateChosen)
        self.ui.showAllCandidatesButton.connect("toggled(bool)", self.onShowAllToggled)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptButton)
        self.ui.heatmapSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onHeatmapChanged)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.onHeatmapOpacityChanged)
        self.ui.heatmapColorSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onHeatmapColorChanged)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self.onCandidatesChanged(self.ui.candidatesSelector.currentNode())

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.cancelRunningTask()
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        # Do not react to parameter node changes (GUI will be updated when the user enters into the module)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed: stop the model, its volume is going away."""
        self.cancelRunningTask()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(AmbiguousSAMParameterNode(self.logic.getParameterNode()))

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[AmbiguousSAMParameterNode]) -> None:
        """Set and observe parameter node, so changes made by scripts or other modules show in the GUI at once."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # ui element that needs connection to the parameter node needs to have its SlicerParameterName property set
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self._updateButtons()
        if self._parameterNode and self._parameterNode.device != self._lastDevice:
            self._lastDevice = self._parameterNode.device
            self._updateDeviceWarning()

    def _updateButtons(self) -> None:
        running = self._task is not None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.roi)
        self.ui.runButton.enabled = ready and not running
        self.ui.runButton.toolTip = ("Segment the lesion in the box: K candidates, their consensus and an uncertainty map."
                                     if ready else "Select a CT volume and place a lesion box (ROI) first.")
        self.ui.cancelButton.enabled = running

    def _modelSettings(self) -> ModelSettings:
        checkpoint = self._parameterNode.checkpoint
        return ModelSettings(backbone=self._parameterNode.backbone, head=self._parameterNode.head,
                             checkpoint=None if checkpoint == pathlib.Path() else str(checkpoint),
                             device=self._parameterNode.device)

    def _updateDeviceWarning(self) -> None:
        """Warn when the model will run on the CPU; the device is only known once PyTorch is installed."""
        if "torch" in missingPackages():
            self.ui.cpuWarningLabel.visible = False
            return
        self.logic.modelSettings = self._modelSettings()
        try:
            onCpu = self.logic.runsOnCpu()
        except AmbiguousSAMError as error:  # CUDA chosen but not available
            self.ui.cpuWarningLabel.text = str(error)
            self.ui.cpuWarningLabel.visible = True
            return
        self.ui.cpuWarningLabel.text = CPU_WARNING
        self.ui.cpuWarningLabel.visible = onCpu

    def _showError(self, message: str, error: Exception) -> None:
        """Errors the user can act on show their message; anything else also shows the traceback."""
        if isinstance(error, AmbiguousSAMError):
            slicer.util.errorDisplay(f"{message}\n\n{error}")
            return
        details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        logging.error(f"{message}\n{details}")
        slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText=details)

    def onRunButton(self) -> None:
        """Read the inputs here, run the model on a worker thread, and add the results when it has finished."""
        try:
            if not installDependencies(
                    confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, "Install Python packages")):
                self.ui.statusLabel.text = "Ambiguous SAM needs its Python packages to run."
                return
            self.logic.modelSettings = self._modelSettings()
            self._updateDeviceWarning()
            volumeNode = self._parameterNode.inputVolume
            prompt = self.logic.preparePrompt(volumeNode, self._parameterNode.roi)
        except Exception as error:
            self._showError("Ambiguous SAM could not start.", error)
            return
        samples, seed = self._parameterNode.samples, self._parameterNode.seed
        self._task = BackgroundTask(lambda progress, cancel: self.logic.segment(prompt, samples, seed, progress, cancel))
        self._taskVolume = volumeNode
        self.ui.progressBar.value = 0
        self._task.start()
        self._pollTimer.start()
        self._updateButtons()

    def onCancelButton(self) -> None:
        self.cancelRunningTask()
        self.ui.statusLabel.text = "Cancelling..."

    def cancelRunningTask(self) -> None:
        """Ask the running model to stop; its result is discarded when it finishes."""
        if self._task is not None:
            self._task.cancel()
            self.ui.cancelButton.enabled = False

    def onPollTask(self) -> None:
        """Show the model's progress; once it has finished, add its results to the scene (main thread)."""
        fraction, message = self._task.progress
        self.ui.progressBar.value = int(round(100 * fraction))
        self.ui.statusLabel.text = message
        if not self._task.done:
            return
        self._pollTimer.stop()
        task, volumeNode = self._task, self._taskVolume
        self._task, self._taskVolume = None, None
        self._updateButtons()
        try:
            result = task.result()
            if task.cancelled:
                raise CancelledError("The segmentation was cancelled; nothing was added to the scene.")
            segmentationNode, heatmapNode = self.logic.createOutputNodes(volumeNode, result)
        except CancelledError as error:
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = str(error)
            return
        except Exception as error:
            self.ui.statusLabel.text = "Ambiguous SAM failed."
            self._showError("Ambiguous SAM failed.", error)
            return
        self.ui.progressBar.value = 100
        self.ui.statusLabel.text = f"{result.num_candidates} candidates of the lesion in '{volumeNode.GetName()}'."
        self.ui.candidatesSelector.setCurrentNode(segmentationNode)
        self.ui.heatmapSelector.setCurrentNode(heatmapNode)

    def onCandidatesChanged(self, segmentationNode) -> None:
        """A new candidate set is selected: size the candidate browser to it and show all of it."""
        count = len(segmentIdsWithRole(segmentationNode, "candidate")) if segmentationNode else 0
        self.ui.candidateSpinBox.maximum = max(count, 1)
        for widget in (self.ui.candidateSpinBox, self.ui.showAllCandidatesButton, self.ui.acceptButton):
            widget.enabled = count > 0
        self._showChosenCandidates()

    def onCandidateChosen(self, number: int) -> None:
        """Choosing a candidate shows it alone."""
        if self.ui.showAllCandidatesButton.checked:
            self.ui.showAllCandidatesButton.checked = False  # its toggled signal updates the views
        else:
            self._showChosenCandidates()

    def onShowAllToggled(self, checked: bool) -> None:
        self._showChosenCandidates()

    def _showChosenCandidates(self) -> None:
        segmentationNode = self.ui.candidatesSelector.currentNode()
        if segmentationNode is None or not segmentIdsWithRole(segmentationNode, "candidate"):
            return
        showAll = self.ui.showAllCandidatesButton.checked
        showCandidates(segmentationNode, None if showAll else self.ui.candidateSpinBox.value - 1)

    def onAcceptButton(self) -> None:
        """Copy the chosen candidate into the target segment (a new segment if the target has none selected)."""
        sourceNode = self.ui.candidatesSelector.currentNode()
        targetNode = self.ui.targetSegmentSelector.currentNode()
        if targetNode is None:
            slicer.util.errorDisplay("Select the segmentation that should receive the candidate under 'Accept into'.")
            return
        candidateId = segmentIdsWithRole(sourceNode, "candidate")[self.ui.candidateSpinBox.value - 1]
        try:
            segmentId = acceptCandidate(sourceNode, candidateId, targetNode,
                                        self.ui.targetSegmentSelector.currentSegmentID() or None)
        except Exception as error:
            self._showError("Could not accept the candidate.", error)
            return
        self.ui.targetSegmentSelector.setCurrentSegmentID(segmentId)
        self.ui.statusLabel.text = (f"Candidate {self.ui.candidateSpinBox.value} copied into "
                                    f"'{targetNode.GetName()}'.")

    def onHeatmapChanged(self, heatmapNode) -> None:
        if heatmapNode is None:
            return
        wasBlocked = self.ui.heatmapColorSelector.blockSignals(True)
        self.ui.heatmapColorSelector.setCurrentNode(heatmapNode.GetDisplayNode().GetColorNode())
        self.ui.heatmapColorSelector.blockSignals(wasBlocked)
        self.onHeatmapOpacityChanged(self.ui.heatmapOpacitySlider.value)

    def onHeatmapOpacityChanged(self, opacity: float) -> None:
        heatmapNode = self.ui.heatmapSelector.currentNode()
        if heatmapNode is not None:
            backgroundNode = self._parameterNode.inputVolume if self._parameterNode else None
            overlayUncertainty(backgroundNode, heatmapNode, opacity)

    def onHeatmapColorChanged(self, colorNode) -> None:
        heatmapNode = self.ui.heatmapSelector.currentNode()
        if heatmapNode is not None and colorNode is not None:
            setHeatmapColorNode(heatmapNode, colorNode)


#
# AmbiguousSAMTest
#


class AmbiguousSAMTest(ScriptedLoadableModuleTest):
    """Self-test run from Slicer (Developer mode > Reload and Test, or the SelfTests module).

    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self) -> None:
        """Reset the state - a scene clear is enough."""
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_AmbiguousSAM_synthetic_nodule()

    def test_AmbiguousSAM_synthetic_nodule(self) -> None:
        """A synthetic chest CT with a round nodule, an ROI on it, one run: K + 1 segments and a heatmap on its grid.

        The CT is generated (a 0 HU ellipsoid in -800 HU lung), so the test needs no download; the model and its
        Python packages are installed on first use.
        """
        self.delayDisplay("Creating a synthetic CT with a nodule")
        nodule = vtk.vtkImageEllipsoidSource()
        nodule.SetWholeExtent(0, 127, 0, 127, 0, 39)
        nodule.SetCenter(64, 64, 20)
        nodule.SetRadius(10, 10, 3)
        nodule.SetInValue(0)
        nodule.SetOutValue(-800)
        nodule.SetOutputScalarTypeToShort()
        nodule.Update()
        volumeNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Synthetic chest CT")
        volumeNode.SetSpacing(0.7, 0.7, 2.5)
        volumeNode.SetAndObserveImageData(nodule.GetOutput())
        volumeNode.CreateDefaultDisplayNodes()

        self.delayDisplay("Placing an ROI around the nodule")
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        centre = ijkToRas.MultiplyPoint((64, 64, 20, 1))[:3]
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Nodule box")
        roiNode.SetCenter(centre)
        roiNode.SetSize(24 * 0.7, 24 * 0.7, 2.5)

        self.delayDisplay("Installing Python packages if needed")
        self.assertTrue(installDependencies(confirm=slicer.util.confirmOkCancelDisplay))

        self.delayDisplay("Segmenting")
        segmentationNode, heatmapNode = AmbiguousSAMLogic().process(volumeNode, roiNode, samples=4, seed=0)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 5)
        self.assertEqual(len(segmentIdsWithRole(segmentationNode, "candidate")), 4)
        self.assertEqual(heatmapNode.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
        heatmapIjkToRas = vtk.vtkMatrix4x4()
        heatmapNode.GetIJKToRASMatrix(heatmapIjkToRas)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(heatmapIjkToRas.GetElement(row, column), ijkToRas.GetElement(row, column))
        self.delayDisplay("Test passed")
