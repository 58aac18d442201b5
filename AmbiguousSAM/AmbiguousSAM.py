import functools
import pathlib
from typing import Annotated, Optional

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleTest,
                                           ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from AmbiguousSAMLogic import (BACKBONE_CHOICES, CANDIDATE_ROLE, DEVICE_CHOICES, HEAD_CHOICES, RUNTIME_CHOICES,
                               UNCERTAINTY_ATTRIBUTE, AmbiguousSAMLogic, ModelSettings, SegmentationRun,
                               acceptCandidate, adoptCandidateSet, candidateIdsBestFirst, candidateScores,
                               candidateSetReview, candidateSetVolume, exportCandidateSetToDicom, installDependencies,
                               installDicomExportDependencies, missingPackages, overlayUncertainty,
                               segmentIdsWithRole, setHeatmapColorNode, showCandidates, userMessage)

#
# AmbiguousSAM
#


class AmbiguousSAM(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Ambiguous SAM")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["AmbiguousSAM contributors"]
        self.parent.helpText = _("""
Draw a box around a lesion (for example a lung nodule) on one axial CT slice and get <b>several plausible 3D
segmentations</b> instead of one: K candidates that differ where experts would differ, their consensus, and a
per-voxel <b>uncertainty heatmap</b> (0 = all candidates agree, ln 2 = an even split).
<ul>
<li>Select the CT and place an ROI around the lesion; its centre picks the slice.</li>
<li>Click <i>Segment lesion</i>. The candidates appear as outlines, the heatmap over the CT.</li>
<li>Step through the candidates and <i>Accept</i> one into a segment of your own segmentation.</li>
</ul>
In the Segment Editor, the <i>Ambiguous SAM</i> effect does the same by dragging a box on a slice view.
""")
        self.parent.acknowledgementText = _("""
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
""")


#
# AmbiguousSAMParameterNode
#


@functools.lru_cache(maxsize=None)
def parameterNodeClass() -> type:
    """The module's parameter node wrapper class, built on first use (widget setup, self-test).

    Not at import time: its ROI field is typed vtkMRMLMarkupsROINode, which Slicer 5.8 adds to `slicer` only once
    the Markups module is loaded, and modules are loaded in alphabetical order, after this one (Slicer 5.10 moved
    the class to MRML Core). By the time a widget is set up, every module is loaded.
    """
    from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode

    @parameterNodeWrapper
    class AmbiguousSAMParameterNode:
        """The module's inputs, saved with the scene so a reopened study shows the same settings.

        inputVolume - the CT to segment.
        roi - the box around the lesion; its centre picks the axial slice the box is drawn on.
        samples - the number K of candidate segmentations.
        seed - the random seed; the same seed gives the same candidates.
        backbone, checkpoint, head, device - the model of a local server (see AmbiguousSAMLogic.ModelSettings); an
            empty checkpoint path is LiteMedSAM's embedded weights.
        serverUrl, tokenFile - a remote `ambiguous-sam serve` (a GPU workstation) and its token file; an empty URL
            runs the model in a local server process.
        """

        inputVolume: vtkMRMLScalarVolumeNode
        roi: vtkMRMLMarkupsROINode
        samples: Annotated[int, WithinRange(2, 64)] = 16
        seed: Annotated[int, WithinRange(0, 999999)] = 0
        backbone: Annotated[str, Choice(list(BACKBONE_CHOICES))] = "litemedsam"
        checkpoint: pathlib.Path
        head: Annotated[str, Choice(list(HEAD_CHOICES))] = "default"
        device: Annotated[str, Choice(list(DEVICE_CHOICES))] = "auto"
        runtime: Annotated[str, Choice(list(RUNTIME_CHOICES))] = "auto"
        serverUrl: str = ""
        tokenFile: pathlib.Path

    return AmbiguousSAMParameterNode


def pathText(path: pathlib.Path) -> str:
    """A path parameter as text; the unset path (pathlib.Path(), shown empty in the GUI) is ""."""
    return "" if path == pathlib.Path() else str(path)


def reviewText(review) -> str:
    """The review flag of a candidate set (AmbiguousSAMLogic.candidateSetReview) in words."""
    if review.disagreement is None:
        return _("Not available ({reason}).").format(reason=review.reason.rstrip("."))
    if review.needs_review:
        return _("Needs review: predicted expert disagreement {value:.2f} (threshold {threshold:.3f}).").format(
            value=review.disagreement, threshold=review.threshold)
    return _("No review needed: predicted expert disagreement {value:.2f} (below {threshold:.3f}).").format(
        value=review.disagreement, threshold=review.threshold)


def candidateText(segmentationNode, candidateId: str) -> str:
    """The chosen candidate's name and what it was ranked by: expected quality, or typicality without a scorer."""
    name = segmentationNode.GetSegmentation().GetSegment(candidateId).GetName()
    quality, typicality = candidateScores(segmentationNode, candidateId)
    if quality is not None:
        return _("{name}, expected quality {quality:.2f}").format(name=name, quality=quality)
    if typicality is not None:
        return _("{name}, typicality {score:.2f}").format(name=name, score=typicality)
    return name


def installPackagesOnce() -> bool:
    """Install the local server's Python packages after one confirmation; False if the user declined."""
    return installDependencies(
        confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, _("Install Python packages")))


#
# AmbiguousSAMWidget
#


class AmbiguousSAMWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Reads the GUI, hands the click to a SegmentationRun and polls it from a timer. The model runs in the shared
    inference session's server process (or on a remote server), so Slicer stays responsive and Cancel works.
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run: Optional[SegmentationRun] = None
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

        # The candidate selector lists every segmentation: one loaded from a command-line result
        # (candidates.seg.nrrd) is adopted as a candidate set when selected.
        self.ui.heatmapSelector.addAttribute("vtkMRMLScalarVolumeNode", UNCERTAINTY_ATTRIBUTE)
        self.ui.cpuWarningLabel.visible = False

        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(100)
        self._pollTimer.connect("timeout()", self.onPollRun)

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
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicomButton)
        self.ui.heatmapSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onHeatmapChanged)
        self.ui.heatmapOpacitySlider.connect("valueChanged(double)", self.onHeatmapOpacityChanged)
        self.ui.heatmapColorSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onHeatmapColorChanged)

        # Make sure parameter node is initialized (needed for module reload)
        self.initializeParameterNode()
        self.onCandidatesChanged(self.ui.candidatesSelector.currentNode())

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed: stop polling, cancel the run,
        and stop the inference server."""
        self._pollTimer.stop()
        self.cancelRun()
        self._run = None
        self.logic.session.shutdown()
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
        """Called just before the scene is closed: stop the run, its volume is going away."""
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(parameterNodeClass()(self.logic.getParameterNode()))

        # Select default input nodes if nothing is selected yet to save a few clicks for the user
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
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
        """The session follows the GUI's model settings; a changed model starts its server on the next click."""
        if self._parameterNode:
            self.logic.session.settings = self._modelSettings()
        self._updateButtons()
        self._updateDeviceWarning()

    def _updateButtons(self) -> None:
        running = self._run is not None
        ready = bool(self._parameterNode and self._parameterNode.inputVolume and self._parameterNode.roi)
        self.ui.runButton.enabled = ready and not running
        self.ui.runButton.toolTip = (
            _("Segment the lesion in the box: K candidates, their consensus and an uncertainty map.") if ready
            else _("Select a CT volume and place a lesion box (ROI) first."))
        self.ui.cancelButton.enabled = running

    def _modelSettings(self) -> ModelSettings:
        parameters = self._parameterNode
        return ModelSettings(backbone=parameters.backbone, head=parameters.head,
                             checkpoint=pathText(parameters.checkpoint) or None, device=parameters.device,
                             runtime=parameters.runtime,
                             serverUrl=parameters.serverUrl.strip(), tokenFile=pathText(parameters.tokenFile))

    def _updateDeviceWarning(self) -> None:
        """Warn when the model runs on the CPU: known from the device setting, or once the server has answered."""
        self.ui.cpuWarningLabel.visible = bool(self.logic.session.runsOnCpu())

    def _showError(self, text: str, details: Optional[str]) -> None:
        self.ui.statusLabel.text = text
        if details:
            slicer.util.errorDisplay(text, detailedText=details)
        else:
            slicer.util.errorDisplay(text)

    def onRunButton(self) -> None:
        """Start segmenting the lesion in the ROI; the timer polls the run until it has added its nodes."""
        if self._run is not None:
            return
        self.ui.runButton.enabled = False  # no second click while packages install
        try:
            if self.logic.session.runsLocally and not installPackagesOnce():
                self.ui.statusLabel.text = _("Ambiguous SAM needs its Python packages to run.")
                return
        except Exception as error:
            self._showError(*userMessage(error))
            return
        finally:
            self._updateButtons()
        self._run = SegmentationRun(self.logic, self._parameterNode.inputVolume, self._parameterNode.roi,
                                    self._parameterNode.samples, self._parameterNode.seed,
                                    onSucceeded=self._onRunSucceeded, onFailed=self._onRunFailed,
                                    onCancelled=self._onRunCancelled)
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = _("Starting...")
        self._pollTimer.start()
        self._updateButtons()

    def onCancelButton(self) -> None:
        self.cancelRun()

    def cancelRun(self) -> None:
        """Ask the server to drop the running job; the next poll reports the cancellation."""
        if self._run is not None:
            self._run.cancel()
            self.ui.cancelButton.enabled = False

    def onPollRun(self) -> None:
        """One short step of the run; while it runs, show its progress (its callbacks report the end)."""
        self._run.poll()
        if not self._run.finished:
            self.ui.progressBar.value = int(round(100 * self._run.progress))
            self.ui.statusLabel.text = self._run.message

    def _endRun(self) -> None:
        self._pollTimer.stop()
        self._run = None
        self._updateButtons()
        self._updateDeviceWarning()

    def _onRunSucceeded(self, segmentationNode, heatmapNode) -> None:
        volumeName = self._run.volumeNode.GetName()
        self._endRun()
        self.ui.progressBar.value = 100
        count = len(segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE))
        self.ui.statusLabel.text = _("{count} candidates of the lesion in '{volume}'.").format(count=count,
                                                                                          volume=volumeName)
        self.ui.candidatesSelector.setCurrentNode(segmentationNode)
        self.ui.heatmapSelector.setCurrentNode(heatmapNode)

    def _onRunFailed(self, text: str, details: Optional[str]) -> None:
        self._endRun()
        self.ui.progressBar.value = 0
        self._showError(text, details)

    def _onRunCancelled(self, text: str) -> None:
        self._endRun()
        self.ui.progressBar.value = 0
        self.ui.statusLabel.text = text

    def onCandidatesChanged(self, segmentationNode) -> None:
        """A segmentation is selected: browse it if it holds candidates (ours, or a command-line result)."""
        isCandidateSet = segmentationNode is not None and adoptCandidateSet(segmentationNode)
        count = len(segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE)) if isCandidateSet else 0
        self.ui.candidateSpinBox.maximum = max(count, 1)
        for widget in (self.ui.candidateSpinBox, self.ui.showAllCandidatesButton, self.ui.acceptButton,
                       self.ui.exportDicomButton):
            widget.enabled = count > 0
        if segmentationNode is not None and not isCandidateSet:
            self.ui.statusLabel.text = _("'{name}' holds no Ambiguous SAM candidates.").format(
                name=segmentationNode.GetName())
        self.ui.reviewLabel.text = reviewText(candidateSetReview(segmentationNode)) if count else ""
        self.ui.candidateQualityLabel.text = ""
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
        if segmentationNode is None or not segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE):
            return
        candidateId = self._chosenCandidateId()
        self.ui.candidateQualityLabel.text = candidateText(segmentationNode, candidateId)
        showAll = self.ui.showAllCandidatesButton.checked
        stored = segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE).index(candidateId)
        showCandidates(segmentationNode, None if showAll else stored)

    def _chosenCandidateId(self) -> str:
        """The candidate the spin box chose: number 1 is the best (highest expected quality, or most typical)."""
        candidateIds = candidateIdsBestFirst(self.ui.candidatesSelector.currentNode())
        return candidateIds[min(self.ui.candidateSpinBox.value, len(candidateIds)) - 1]

    def onAcceptButton(self) -> None:
        """Copy the chosen candidate into the target segment (a new segment if the target has none selected)."""
        sourceNode = self.ui.candidatesSelector.currentNode()
        targetNode = self.ui.targetSegmentSelector.currentNode()
        if targetNode is None:
            slicer.util.errorDisplay(_("Select the segmentation that should receive the candidate under 'Accept into'."))
            return
        candidateId = self._chosenCandidateId()
        try:
            segmentId = acceptCandidate(sourceNode, candidateId, targetNode,
                                        self.ui.targetSegmentSelector.currentSegmentID() or None)
        except Exception as error:
            self._showError(*userMessage(error))
            return
        self.ui.targetSegmentSelector.setCurrentSegmentID(segmentId)
        self.ui.statusLabel.text = _("{candidate} copied into '{name}'.").format(
            candidate=sourceNode.GetSegmentation().GetSegment(candidateId).GetName(), name=targetNode.GetName())

    def onExportDicomButton(self) -> None:
        """Write the chosen candidate set and its heatmap as DICOM objects referencing the CT's series, into a
        folder the user picks (the folder dialog as Slicer's ExtensionWizard.py selectExtension asks for one)."""
        segmentationNode = self.ui.candidatesSelector.currentNode()
        heatmapNode = self.ui.heatmapSelector.currentNode()
        volumeNode = candidateSetVolume(segmentationNode) or (self._parameterNode and self._parameterNode.inputVolume)
        try:
            if not installDicomExportDependencies(
                    confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, _("Install Python packages"))):
                return
        except Exception as error:
            self._showError(*userMessage(error))
            return
        folder = qt.QFileDialog.getExistingDirectory(self.parent.window(),
                                                     _("Export to DICOM: choose an empty folder"))
        if not folder:
            return
        try:
            with slicer.util.WaitCursor():
                exported = exportCandidateSetToDicom(segmentationNode, heatmapNode, volumeNode, folder)
        except Exception as error:
            self._showError(*userMessage(error))
            return
        # exported.leftOut says why an object is missing (the probability SEG of a set that keeps no probability).
        self.ui.statusLabel.text = " ".join([_("'{name}' exported to DICOM in {folder} ({count} files).").format(
            name=segmentationNode.GetName(), folder=folder, count=len(exported.files)), *exported.leftOut.values()])

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
        self.test_AmbiguousSAM_parameter_node()
        self.setUp()
        self.test_AmbiguousSAM_synthetic_nodule()

    def test_AmbiguousSAM_parameter_node(self) -> None:
        """The parameter node class builds (every module, Markups included, is loaded) and keeps an ROI."""
        parameters = parameterNodeClass()(AmbiguousSAMLogic().getParameterNode())
        roiNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Nodule box")
        parameters.roi = roiNode
        self.assertIs(parameters.roi, roiNode)
        self.assertEqual(parameters.samples, 16)

    def test_AmbiguousSAM_synthetic_nodule(self) -> None:
        """A synthetic chest CT with a round nodule, an ROI on it, one run: K + 1 segments and a heatmap on its grid.

        The CT is generated (a 0 HU ellipsoid in -800 HU lung), so the test needs no download. The model part needs
        PyTorch and the other packages; without them it is skipped (a CI run must not download PyTorch, and the
        testing mode would confirm the download by itself).
        """
        missing = missingPackages()
        if missing:
            self.delayDisplay(_("Skipping the model run: {packages} not installed. Open the module and click "
                                "'Segment lesion' once to install them.").format(packages=", ".join(missing)))
            return

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

        self.delayDisplay("Segmenting (the first run starts the inference server)")
        segmentationNode, heatmapNode = AmbiguousSAMLogic().process(volumeNode, roiNode, samples=4, seed=0)
        self.assertEqual(segmentationNode.GetSegmentation().GetNumberOfSegments(), 5)
        self.assertEqual(len(segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE)), 4)
        self.assertEqual(heatmapNode.GetImageData().GetDimensions(), volumeNode.GetImageData().GetDimensions())
        heatmapIjkToRas = vtk.vtkMatrix4x4()
        heatmapNode.GetIJKToRASMatrix(heatmapIjkToRas)
        for row in range(4):
            for column in range(4):
                self.assertAlmostEqual(heatmapIjkToRas.GetElement(row, column), ijkToRas.GetElement(row, column))
        self.delayDisplay("Test passed")
