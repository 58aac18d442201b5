import os
import traceback

import qt
import vtk

import slicer
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from AmbiguousSAMLogic import (AmbiguousSAMError, AmbiguousSAMLogic, BackgroundTask, CancelledError,
                               candidateLabelmap, installDependencies, overlayUncertainty, removeOutputNodes,
                               segmentIdsWithRole, showCandidates)

#: A drag shorter than this many screen pixels is a click, not a box.
MINIMUM_BOX_PIXELS = 4
#: Opacity of the uncertainty heatmap over the source volume.
HEATMAP_OPACITY = 0.5


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Ambiguous SAM: drag a box around a lesion on a slice view, browse K candidate outlines, apply one.

    The candidates and the heatmap are a preview, as in "Grow from seeds": a new box replaces them, Esc discards
    them, and Apply writes the chosen candidate into the selected segment (undoable) and removes them. The Ambiguous
    SAM module keeps candidate sets as ordinary nodes instead.
    """

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Ambiguous SAM"  # no tr (don't translate it because modules find effects by name)
        scriptedEffect.perSegment = True  # Apply writes into the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = AmbiguousSAMLogic()
        self.rubberBands = {}
        self.task = None
        self.taskVolume = None
        self.candidatesNode = None
        self.heatmapNode = None
        self.candidateIndex = 0
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.onPollTask)

    def clone(self):
        # It should not be necessary to modify this method
        import qSlicerSegmentationsEditorEffectsPythonQt as effects

        clonedEffect = effects.qSlicerSegmentEditorScriptedEffect(None)
        clonedEffect.setPythonSource(__file__.replace("\\", "/"))
        return clonedEffect

    def icon(self):
        iconPath = os.path.join(os.path.dirname(__file__), os.pardir, "Resources", "Icons",
                                "SegmentEditorAmbiguousSAM.png")
        if os.path.exists(iconPath):
            return qt.QIcon(os.path.normpath(iconPath))
        return qt.QIcon()

    def helpText(self):
        return """<html>Several plausible outlines of a lesion from one box.<br>
<p><ul style="margin: 0">
<li><b>Left-button drag</b> on a slice view: box around the lesion. K candidate 3D outlines, their consensus and an
uncertainty heatmap appear after a moment.</li>
<li><b>Previous / Next</b>: show one candidate at a time; <b>Show all</b>: every candidate and the consensus.</li>
<li><b>Apply</b>: write the shown candidate into the selected segment (undoable).</li>
<li><b>Esc</b>: cancel the running segmentation, the box being dragged, or discard the candidates.</li>
</ul><p></html>"""

    def setupOptionsFrame(self):
        self.samplesSpinBox = qt.QSpinBox()
        self.samplesSpinBox.setRange(2, 64)
        self.samplesSpinBox.setToolTip("How many plausible segmentations to draw (K).")
        self.scriptedEffect.addLabeledOptionsWidget("Candidates:", self.samplesSpinBox)
        self.samplesSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)

        self.seedSpinBox = qt.QSpinBox()
        self.seedSpinBox.setRange(0, 999999)
        self.seedSpinBox.setToolTip("The same seed gives the same candidates; change it to draw another set.")
        self.scriptedEffect.addLabeledOptionsWidget("Random seed:", self.seedSpinBox)
        self.seedSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)

        self.showUncertaintyCheckBox = qt.QCheckBox("Show uncertainty heatmap")
        self.showUncertaintyCheckBox.setToolTip("Overlay where the candidates disagree (bright = uncertain).")
        self.scriptedEffect.addOptionsWidget(self.showUncertaintyCheckBox)
        self.showUncertaintyCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)

        self.progressBar = qt.QProgressBar()
        self.scriptedEffect.addOptionsWidget(self.progressBar)
        self.statusLabel = qt.QLabel("Drag a box around the lesion on a slice view.")
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.previousButton = qt.QPushButton("Previous")
        self.previousButton.setToolTip("Show the previous candidate alone.")
        self.nextButton = qt.QPushButton("Next")
        self.nextButton.setToolTip("Show the next candidate alone.")
        self.showAllButton = qt.QPushButton("Show all")
        self.showAllButton.setToolTip("Show every candidate and the consensus.")
        self.showAllButton.checkable = True
        browseWidget = qt.QWidget()
        browseLayout = qt.QHBoxLayout(browseWidget)
        browseLayout.setContentsMargins(0, 0, 0, 0)
        for button in (self.previousButton, self.nextButton, self.showAllButton):
            browseLayout.addWidget(button)
        self.scriptedEffect.addOptionsWidget(browseWidget)
        self.previousButton.connect("clicked()", lambda: self.showCandidate(self.candidateIndex - 1))
        self.nextButton.connect("clicked()", lambda: self.showCandidate(self.candidateIndex + 1))
        self.showAllButton.connect("toggled(bool)", self.onShowAllToggled)

        self.applyButton = qt.QPushButton("Apply")
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.setToolTip("Write the shown candidate into the selected segment.")
        self.scriptedEffect.addOptionsWidget(self.applyButton)
        self.applyButton.connect("clicked()", self.onApply)
        self.updateButtons()

    def createCursor(self, widget):
        # A box is dragged with the standard arrow cursor
        return slicer.util.mainWindow().cursor

    def setMRMLDefaults(self):
        self.scriptedEffect.setParameterDefault("Samples", 16)
        self.scriptedEffect.setParameterDefault("Seed", 0)
        self.scriptedEffect.setParameterDefault("ShowUncertainty", 1)

    def updateGUIFromMRML(self):
        for widget, value in ((self.samplesSpinBox, self.scriptedEffect.integerParameter("Samples")),
                              (self.seedSpinBox, self.scriptedEffect.integerParameter("Seed"))):
            wasBlocked = widget.blockSignals(True)
            widget.value = value
            widget.blockSignals(wasBlocked)
        wasBlocked = self.showUncertaintyCheckBox.blockSignals(True)
        self.showUncertaintyCheckBox.checked = self.scriptedEffect.integerParameter("ShowUncertainty") != 0
        self.showUncertaintyCheckBox.blockSignals(wasBlocked)

    def updateMRMLFromGUI(self):
        self.scriptedEffect.setParameter("Samples", self.samplesSpinBox.value)
        self.scriptedEffect.setParameter("Seed", self.seedSpinBox.value)
        self.scriptedEffect.setParameter("ShowUncertainty", 1 if self.showUncertaintyCheckBox.checked else 0)
        self.showHeatmap()

    def deactivate(self):
        self.cancelRunningTask()
        for sliceWidget, rubberBand in self.rubberBands.items():
            self.scriptedEffect.removeActor2D(sliceWidget, rubberBand.actor)
        self.rubberBands = {}
        self.discardPreview()

    def cleanup(self):
        self.pollTimer.stop()
        self.pollTimer.disconnect("timeout()", self.onPollTask)

    #
    # Drawing the box
    #

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        if eventId == vtk.vtkCommand.KeyPressEvent:
            return callerInteractor.GetKeySym() == "Escape" and self.onEscape()
        rubberBand = self.rubberBandFor(viewWidget)
        anyModifierKeyPressed = (callerInteractor.GetShiftKey() or callerInteractor.GetControlKey()
                                 or callerInteractor.GetAltKey())
        if eventId == vtk.vtkCommand.LeftButtonPressEvent and not anyModifierKeyPressed:
            if self.task is not None:
                self.statusLabel.text = "Still segmenting the previous box; press Esc to cancel it."
                return True
            rubberBand.begin(callerInteractor.GetEventPosition())
        elif eventId == vtk.vtkCommand.MouseMoveEvent and rubberBand.active:
            rubberBand.moveTo(callerInteractor.GetEventPosition())
        elif eventId == vtk.vtkCommand.LeftButtonReleaseEvent and rubberBand.active:
            corners = rubberBand.finish(callerInteractor.GetEventPosition())
            if corners:
                self.run([self.xyToRas(corner, viewWidget) for corner in corners])
        else:
            return False
        viewWidget.sliceView().scheduleRender()
        return True

    def rubberBandFor(self, sliceWidget):
        if sliceWidget not in self.rubberBands:
            rubberBand = RubberBand()
            self.scriptedEffect.addActor2D(sliceWidget, rubberBand.actor)
            self.rubberBands[sliceWidget] = rubberBand
        return self.rubberBands[sliceWidget]

    def onEscape(self):
        """Esc cancels, in this order: the running segmentation, a box being dragged, the candidates shown."""
        if self.task is not None:
            self.cancelRunningTask()
            return True
        dragging = [sliceWidget for sliceWidget, band in self.rubberBands.items() if band.active]
        for sliceWidget in dragging:
            self.rubberBands[sliceWidget].cancel()
            sliceWidget.sliceView().scheduleRender()
        if dragging:
            return True
        if self.candidatesNode is not None:
            self.discardPreview()
            self.statusLabel.text = "Candidates discarded. Drag a box around the lesion on a slice view."
            return True
        return False

    #
    # Running the model
    #

    def run(self, rasCorners):
        """Segment the lesion in the box (its corners in world RAS) on a worker thread; the GUI stays responsive."""
        sourceVolumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
        try:
            if not installDependencies(
                    confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, "Install Python packages")):
                self.statusLabel.text = "Ambiguous SAM needs its Python packages to run."
                return
            prompt = self.logic.preparePrompt(sourceVolumeNode, rasCorners)
        except Exception as error:
            self.showError("Ambiguous SAM could not start.", error)
            return
        samples = self.scriptedEffect.integerParameter("Samples")
        seed = self.scriptedEffect.integerParameter("Seed")
        self.task = BackgroundTask(lambda progress, cancel: self.logic.segment(prompt, samples, seed, progress, cancel))
        self.taskVolume = sourceVolumeNode
        self.progressBar.value = 0
        self.task.start()
        self.pollTimer.start()
        self.updateButtons()

    def cancelRunningTask(self):
        if self.task is not None:
            self.task.cancel()
            self.statusLabel.text = "Cancelling..."

    def onPollTask(self):
        fraction, message = self.task.progress
        self.progressBar.value = int(round(100 * fraction))
        self.statusLabel.text = message
        if not self.task.done:
            return
        self.pollTimer.stop()
        task, volumeNode = self.task, self.taskVolume
        self.task, self.taskVolume = None, None
        try:
            result = task.result()
            if task.cancelled:
                raise CancelledError("The segmentation was cancelled; nothing was added to the scene.")
            outputs = self.logic.createOutputNodes(volumeNode, result)
        except CancelledError as error:
            self.progressBar.value = 0
            self.statusLabel.text = str(error)
            self.updateButtons()
            return
        except Exception as error:
            self.statusLabel.text = "Ambiguous SAM failed."
            self.showError("Ambiguous SAM failed.", error)
            self.updateButtons()
            return
        self.discardPreview()
        self.candidatesNode, self.heatmapNode = outputs
        self.progressBar.value = 100
        wasBlocked = self.showAllButton.blockSignals(True)
        self.showAllButton.checked = True
        self.showAllButton.blockSignals(wasBlocked)
        self.onShowAllToggled(True)
        self.showHeatmap()
        self.updateButtons()

    def showError(self, message, error):
        if isinstance(error, AmbiguousSAMError):
            slicer.util.errorDisplay(f"{message}\n\n{error}")
        else:
            slicer.util.errorDisplay(f"{message}\n\n{error}", detailedText="".join(
                traceback.format_exception(type(error), error, error.__traceback__)))

    #
    # Browsing and applying the candidates
    #

    def candidateIds(self):
        return segmentIdsWithRole(self.candidatesNode, "candidate") if self.candidatesNode is not None else []

    def showCandidate(self, index):
        candidateIds = self.candidateIds()
        if not candidateIds:
            return
        self.candidateIndex = index % len(candidateIds)
        wasBlocked = self.showAllButton.blockSignals(True)
        self.showAllButton.checked = False
        self.showAllButton.blockSignals(wasBlocked)
        showCandidates(self.candidatesNode, self.candidateIndex)
        self.statusLabel.text = (f"Candidate {self.candidateIndex + 1} of {len(candidateIds)}. "
                                 "Apply writes it into the selected segment.")

    def onShowAllToggled(self, checked):
        if not self.candidateIds():
            return
        if checked:
            showCandidates(self.candidatesNode, None)
            self.statusLabel.text = (f"All {len(self.candidateIds())} candidates and their consensus. Apply writes "
                                     f"candidate {self.candidateIndex + 1} into the selected segment.")
        else:
            self.showCandidate(self.candidateIndex)

    def showHeatmap(self):
        if self.heatmapNode is None:
            return
        if self.showUncertaintyCheckBox.checked:
            overlayUncertainty(None, self.heatmapNode, HEATMAP_OPACITY)
        else:
            slicer.util.setSliceViewerLayers(foreground=None)

    def onApply(self):
        """Write the shown candidate into the selected segment, undoably, then drop the preview."""
        candidateIds = self.candidateIds()
        if not candidateIds:
            return
        segmentationNode = self.scriptedEffect.parameterSetNode().GetSegmentationNode()
        try:
            labelmap = candidateLabelmap(self.candidatesNode, candidateIds[self.candidateIndex], segmentationNode)
        except Exception as error:
            self.showError("Could not apply the candidate.", error)
            return
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        self.discardPreview()
        self.statusLabel.text = "Candidate applied. Drag another box, or Undo to revert."

    def discardPreview(self):
        if self.heatmapNode is not None:
            slicer.util.setSliceViewerLayers(foreground=None)
        removeOutputNodes([node for node in (self.candidatesNode, self.heatmapNode) if node is not None])
        self.candidatesNode, self.heatmapNode, self.candidateIndex = None, None, 0
        self.updateButtons()

    def updateButtons(self):
        haveCandidates = bool(self.candidateIds())
        for button in (self.previousButton, self.nextButton, self.showAllButton, self.applyButton):
            button.enabled = haveCandidates and self.task is None


class RubberBand:
    """The rectangle being dragged on one slice view, drawn as a 2D actor in the view's XY (display) coordinates."""

    def __init__(self):
        self.start = None
        self.end = None
        self.points = vtk.vtkPoints()
        self.points.SetNumberOfPoints(4)
        outline = vtk.vtkCellArray()
        outline.InsertNextCell(5)
        for pointId in (0, 1, 2, 3, 0):
            outline.InsertCellPoint(pointId)
        self.polyData = vtk.vtkPolyData()
        self.polyData.SetPoints(self.points)
        self.polyData.SetLines(outline)
        self.mapper = vtk.vtkPolyDataMapper2D()
        self.mapper.SetInputData(self.polyData)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(self.mapper)
        self.actor.GetProperty().SetColor(1.0, 0.85, 0.0)
        self.actor.GetProperty().SetLineWidth(2)
        self.actor.VisibilityOff()

    @property
    def active(self):
        return self.start is not None

    def corners(self):
        (x0, y0), (x1, y1) = self.start, self.end
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]

    def begin(self, xy):
        self.start = self.end = tuple(xy)
        self._update()
        self.actor.VisibilityOn()

    def moveTo(self, xy):
        self.end = tuple(xy)
        self._update()

    def finish(self, xy):
        """The box's four XY corners, or None for a click (a box too small to mean anything)."""
        self.moveTo(xy)
        corners = self.corners()
        isBox = min(abs(self.end[0] - self.start[0]), abs(self.end[1] - self.start[1])) >= MINIMUM_BOX_PIXELS
        self.cancel()
        return corners if isBox else None

    def cancel(self):
        self.start = self.end = None
        self.actor.VisibilityOff()

    def _update(self):
        for pointId, (x, y) in enumerate(self.corners()):
            self.points.SetPoint(pointId, x, y, 0.0)
        self.points.Modified()
        self.polyData.Modified()
