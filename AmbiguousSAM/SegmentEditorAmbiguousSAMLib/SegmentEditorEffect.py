import os

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from SegmentEditorEffects import AbstractScriptedSegmentEditorEffect

from AmbiguousSAMLogic import (CANDIDATE_ROLE, NOT_AXIAL_MESSAGE, AmbiguousSAMLogic, SegmentationRun,
                               candidateIdsBestFirst, candidateModifierLabelmap, candidateScores, candidateSetReview,
                               installDependencies, overlayUncertainty, removeOutputNodes, segmentHasVoxels,
                               segmentIdsWithRole, showCandidates, sliceShowsAxialPlane, userMessage)

#: A drag shorter than this many screen pixels is a click, not a box.
MINIMUM_BOX_PIXELS = 4
#: Opacity of the uncertainty heatmap over the source volume.
HEATMAP_OPACITY = 0.5


class SegmentEditorEffect(AbstractScriptedSegmentEditorEffect):
    """Ambiguous SAM: drag a box around a lesion on the axial view, browse K candidate outlines, apply one.

    The candidates and the heatmap are nodes of their own (like the module's results), so nothing is lost when
    Esc deactivates the effect (Segment Editor's own shortcut, qMRMLSegmentEditorWidget::installKeyboardShortcuts),
    when the user leaves the module, or when the next box brings a new set; Discard removes the sets this effect
    made. The model runs in the shared inference session (the module's model settings), polled by a timer.
    """

    def __init__(self, scriptedEffect):
        scriptedEffect.name = "Ambiguous SAM"  # no tr (don't translate it because modules find effects by name)
        scriptedEffect.title = _("Ambiguous SAM")
        scriptedEffect.perSegment = True  # Apply writes into the selected segment
        scriptedEffect.requireSegments = True
        AbstractScriptedSegmentEditorEffect.__init__(self, scriptedEffect)
        self.logic = AmbiguousSAMLogic()  # the shared session: one model for the module, this effect, the console
        self.rubberBands = {}
        self.run = None
        #: True from the box's release until its run has started (packages may be installing meanwhile).
        self.startPending = False
        #: (candidates, heatmap) node pairs this effect made, oldest first; the last one is browsed.
        self.previewSets = []
        self.candidateIndex = 0
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(100)
        self.pollTimer.connect("timeout()", self.onPollRun)

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
        return "<html>" + _("""Several plausible outlines of a lesion from one box.<br>
<p><ul style="margin: 0">
<li><b>Left-button drag</b> on the red (axial) slice view: box around the lesion. K candidate 3D outlines, their
consensus and an uncertainty heatmap appear after a moment (the first box also starts the model).</li>
<li><b>Previous / Next</b>: show one candidate at a time; <b>Show all</b>: every candidate and the consensus.</li>
<li><b>Apply</b>: write the shown candidate into the selected segment (undoable).</li>
<li><b>Discard</b>: remove the shown candidate set. Candidate sets are kept otherwise, also when the effect is
left; the Ambiguous SAM module browses them too.</li>
</ul><p>""") + "</html>"

    def setupOptionsFrame(self):
        self.samplesSpinBox = qt.QSpinBox()
        self.samplesSpinBox.setRange(2, 64)
        self.samplesSpinBox.setToolTip(_("How many plausible segmentations to draw (K)."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Candidates:"), self.samplesSpinBox)
        self.samplesSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)

        self.seedSpinBox = qt.QSpinBox()
        self.seedSpinBox.setRange(0, 999999)
        self.seedSpinBox.setToolTip(_("The same seed gives the same candidates; change it to draw another set."))
        self.scriptedEffect.addLabeledOptionsWidget(_("Random seed:"), self.seedSpinBox)
        self.seedSpinBox.connect("valueChanged(int)", self.updateMRMLFromGUI)

        self.showUncertaintyCheckBox = qt.QCheckBox(_("Show uncertainty heatmap"))
        self.showUncertaintyCheckBox.setToolTip(_("Overlay where the candidates disagree (bright = uncertain)."))
        self.scriptedEffect.addOptionsWidget(self.showUncertaintyCheckBox)
        self.showUncertaintyCheckBox.connect("toggled(bool)", self.updateMRMLFromGUI)

        self.progressBar = qt.QProgressBar()
        self.cancelButton = qt.QPushButton(_("Cancel"))
        self.cancelButton.setToolTip(_("Stop the running segmentation; nothing is added to the scene."))
        self.cancelButton.connect("clicked()", self.cancelRun)
        self.addOptionsRow(self.progressBar, self.cancelButton)
        self.statusLabel = qt.QLabel(_("Drag a box around the lesion on the red (axial) view."))
        self.statusLabel.wordWrap = True
        self.scriptedEffect.addOptionsWidget(self.statusLabel)

        self.previousButton = qt.QPushButton(_("Previous"))
        self.previousButton.setToolTip(_("Show the previous candidate alone."))
        self.nextButton = qt.QPushButton(_("Next"))
        self.nextButton.setToolTip(_("Show the next candidate alone."))
        self.showAllButton = qt.QPushButton(_("Show all"))
        self.showAllButton.setToolTip(_("Show every candidate and the consensus."))
        self.showAllButton.checkable = True
        self.addOptionsRow(self.previousButton, self.nextButton, self.showAllButton)
        self.previousButton.connect("clicked()", lambda: self.showCandidate(self.candidateIndex - 1))
        self.nextButton.connect("clicked()", lambda: self.showCandidate(self.candidateIndex + 1))
        self.showAllButton.connect("toggled(bool)", self.onShowAllToggled)

        self.applyButton = qt.QPushButton(_("Apply"))
        self.applyButton.objectName = self.__class__.__name__ + "Apply"
        self.applyButton.setToolTip(_("Write the shown candidate into the selected segment (undoable)."))
        self.applyButton.connect("clicked()", self.onApply)
        self.discardButton = qt.QPushButton(_("Discard"))
        self.discardButton.setToolTip(_("Remove the shown candidate set and its heatmap from the scene."))
        self.discardButton.connect("clicked()", self.onDiscard)
        self.addOptionsRow(self.applyButton, self.discardButton)
        self.updateButtons()

    def addOptionsRow(self, *widgets):
        """Widgets side by side as one row of the effect's options."""
        row = qt.QWidget()
        layout = qt.QHBoxLayout(row)
        layout.setContentsMargins(0, 0, 0, 0)
        for widget in widgets:
            layout.addWidget(widget)
        self.scriptedEffect.addOptionsWidget(row)

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

    def activate(self):
        """The model settings live in the Ambiguous SAM module's parameter node, and its widget hands them to the
        shared session when it is set up: creating it here (once, not shown) makes the effect use them also when
        the user came straight to the Segment Editor (widgetRepresentation() creates a module's widget on demand, as
        Slicer's own tests use it, e.g. Applications/SlicerApp/Testing/Python/ScriptedModuleDiscoveryTest.py)."""
        module = getattr(slicer.modules, "ambiguoussam", None)
        if module is not None:
            module.widgetRepresentation()

    def deactivate(self):
        """Esc or another effect: only the rubber bands go; a running segmentation finishes into its own nodes."""
        for sliceWidget, rubberBand in self.rubberBands.items():
            self.scriptedEffect.removeActor2D(sliceWidget, rubberBand.actor)
        self.rubberBands = {}

    #
    # Drawing the box
    #

    def processInteractionEvents(self, callerInteractor, eventId, viewWidget):
        if viewWidget.className() != "qMRMLSliceWidget":
            return False
        rubberBand = self.rubberBandFor(viewWidget)
        anyModifierKeyPressed = (callerInteractor.GetShiftKey() or callerInteractor.GetControlKey()
                                 or callerInteractor.GetAltKey())
        if eventId == vtk.vtkCommand.LeftButtonPressEvent and not anyModifierKeyPressed:
            if self.run is not None or self.startPending:
                self.statusLabel.text = _("Still segmenting the previous box; wait for it, or Cancel it.")
                return True
            sourceVolumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
            if sourceVolumeNode is None:
                self.statusLabel.text = _("Select a source volume (the CT) first.")
                return True
            if not sliceShowsAxialPlane(viewWidget.mrmlSliceNode(), sourceVolumeNode):
                self.statusLabel.text = NOT_AXIAL_MESSAGE
                return True
            rubberBand.begin(callerInteractor.GetEventPosition())
        elif eventId == vtk.vtkCommand.MouseMoveEvent and rubberBand.active:
            rubberBand.moveTo(callerInteractor.GetEventPosition())
        elif eventId == vtk.vtkCommand.LeftButtonReleaseEvent and rubberBand.active:
            corners = rubberBand.finish(callerInteractor.GetEventPosition())
            if corners:
                rasCorners = [self.xyToRas(corner, viewWidget) for corner in corners]
                # Out of the interactor callback: dialogs and package installs process events, and a second drag
                # must not start inside them (startPending refuses it).
                self.startPending = True
                qt.QTimer.singleShot(0, lambda: self.startRun(rasCorners))
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

    #
    # Running the model
    #

    def startRun(self, rasCorners):
        """Install the packages once if needed (one confirmation), then start segmenting the box."""
        try:
            if self.logic.session.runsLocally and not installDependencies(
                    confirm=lambda text: slicer.util.confirmOkCancelDisplay(text, _("Install Python packages"))):
                self.statusLabel.text = _("Ambiguous SAM needs its Python packages to run.")
                return
            sourceVolumeNode = self.scriptedEffect.parameterSetNode().GetSourceVolumeNode()
            self.run = SegmentationRun(self.logic, sourceVolumeNode, rasCorners,
                                       self.scriptedEffect.integerParameter("Samples"),
                                       self.scriptedEffect.integerParameter("Seed"),
                                       onSucceeded=self.onRunSucceeded, onFailed=self.onRunFailed,
                                       onCancelled=self.onRunCancelled)
        except Exception as error:
            self.showError(*userMessage(error))
            return
        finally:
            self.startPending = False
        self.progressBar.value = 0
        self.statusLabel.text = _("Starting...")
        self.pollTimer.start()
        self.updateButtons()

    def cancelRun(self):
        if self.run is not None:
            self.run.cancel()

    def onPollRun(self):
        """One short step of the run; while it runs, show its progress (its callbacks report the end)."""
        self.run.poll()
        if not self.run.finished:
            self.progressBar.value = int(round(100 * self.run.progress))
            self.statusLabel.text = self.run.message

    def endRun(self):
        self.pollTimer.stop()
        self.run = None
        self.updateButtons()

    def onRunSucceeded(self, candidatesNode, heatmapNode):
        self.endRun()
        self.previewSets.append((candidatesNode, heatmapNode))
        self.candidateIndex = 0
        self.progressBar.value = 100
        self.showCurrentSet()

    def onRunFailed(self, text, details):
        self.endRun()
        self.progressBar.value = 0
        self.showError(text, details)

    def onRunCancelled(self, text):
        self.endRun()
        self.progressBar.value = 0
        self.statusLabel.text = text

    def showError(self, text, details):
        self.statusLabel.text = text
        if details:
            slicer.util.errorDisplay(text, detailedText=details)
        else:
            slicer.util.errorDisplay(text)

    #
    # Browsing, applying and discarding the candidates
    #

    def currentSet(self):
        """The newest candidate set this effect made that is still in the scene, or (None, None)."""
        self.previewSets = [(candidates, heatmap) for candidates, heatmap in self.previewSets
                            if candidates.GetScene() is not None]
        return self.previewSets[-1] if self.previewSets else (None, None)

    def candidateIds(self):
        """The current set's candidates best first (highest expected quality, or most typical without a scorer)."""
        candidatesNode, _heatmapNode = self.currentSet()
        return candidateIdsBestFirst(candidatesNode) if candidatesNode is not None else []

    def reviewText(self):
        """The current set's review flag in a few words."""
        review = candidateSetReview(self.currentSet()[0])
        if review.disagreement is None:
            return _("Review flag not available.")
        if review.needs_review:
            return _("Needs review (predicted expert disagreement {value:.2f}).").format(value=review.disagreement)
        return _("No review needed (predicted expert disagreement {value:.2f}).").format(value=review.disagreement)

    def showCurrentSet(self):
        """Show every candidate of the current set and its heatmap."""
        wasBlocked = self.showAllButton.blockSignals(True)
        self.showAllButton.checked = True
        self.showAllButton.blockSignals(wasBlocked)
        self.onShowAllToggled(True)
        self.showHeatmap()
        self.updateButtons()

    def showCandidate(self, index):
        candidateIds = self.candidateIds()
        if not candidateIds:
            return
        self.candidateIndex = index % len(candidateIds)
        wasBlocked = self.showAllButton.blockSignals(True)
        self.showAllButton.checked = False
        self.showAllButton.blockSignals(wasBlocked)
        candidatesNode = self.currentSet()[0]
        candidateId = candidateIds[self.candidateIndex]
        showCandidates(candidatesNode, segmentIdsWithRole(candidatesNode, CANDIDATE_ROLE).index(candidateId))
        quality, _typicality = candidateScores(candidatesNode, candidateId)
        rank = _("{name}: number {number} of {count}, best first").format(
            name=candidatesNode.GetSegmentation().GetSegment(candidateId).GetName(), number=self.candidateIndex + 1,
            count=len(candidateIds))
        if quality is not None:
            rank += _(" (expected quality {quality:.2f})").format(quality=quality)
        self.statusLabel.text = rank + ". " + _("Apply writes it into the selected segment.") + " " + self.reviewText()

    def onShowAllToggled(self, checked):
        candidateIds = self.candidateIds()
        if not candidateIds:
            return
        if checked:
            showCandidates(self.currentSet()[0], None)
            self.statusLabel.text = _("All {count} candidates and their consensus. Apply writes candidate {number} "
                                      "into the selected segment.").format(count=len(candidateIds),
                                                                            number=self.candidateIndex + 1) + \
                " " + self.reviewText()
        else:
            self.showCandidate(self.candidateIndex)

    def showHeatmap(self):
        _candidatesNode, heatmapNode = self.currentSet()
        if heatmapNode is None or heatmapNode.GetScene() is None:
            return
        if self.showUncertaintyCheckBox.checked:
            overlayUncertainty(None, heatmapNode, HEATMAP_OPACITY)
        else:
            slicer.util.setSliceViewerLayers(foreground=None)

    def onApply(self):
        """Write the shown candidate into the selected segment through the editor's modifier labelmap, undoably."""
        candidateIds = self.candidateIds()
        if not candidateIds:
            return
        if not self.scriptedEffect.confirmCurrentSegmentVisible():
            return
        parameterSetNode = self.scriptedEffect.parameterSetNode()
        segmentationNode = parameterSetNode.GetSegmentationNode()
        segmentId = parameterSetNode.GetSelectedSegmentID()
        try:
            labelmap = candidateModifierLabelmap(self.currentSet()[0], candidateIds[self.candidateIndex],
                                                 segmentationNode, self.scriptedEffect.defaultModifierLabelmap())
        except Exception as error:
            self.showError(*userMessage(error))
            return
        self.scriptedEffect.saveStateForUndo()
        self.scriptedEffect.modifySelectedSegmentByLabelmap(
            labelmap, slicer.qSlicerSegmentEditorAbstractEffect.ModificationModeSet)
        segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
        if segmentHasVoxels(segmentationNode, segmentId):
            self.statusLabel.text = _("Candidate {number} applied to '{segment}'. Undo reverts it.").format(
                number=self.candidateIndex + 1, segment=segmentName)
        else:
            self.statusLabel.text = _("Nothing was written into '{segment}': the masking settings (editable area, "
                                      "editable intensity range) exclude the whole candidate. Undo restores the "
                                      "segment.").format(segment=segmentName)

    def onDiscard(self):
        """Remove the shown candidate set and its heatmap; the previous set, if any, is shown again."""
        candidatesNode, heatmapNode = self.currentSet()
        if candidatesNode is None:
            return
        if heatmapNode is not None and heatmapNode.GetScene() is not None:
            slicer.util.setSliceViewerLayers(foreground=None)
        removeOutputNodes([node for node in (candidatesNode, heatmapNode) if node is not None])
        self.candidateIndex = 0
        if self.candidateIds():
            self.showCurrentSet()
        else:
            self.statusLabel.text = _("Candidates discarded. Drag a box around the lesion on the red (axial) view.")
            self.updateButtons()

    def updateButtons(self):
        haveCandidates = bool(self.candidateIds())
        idle = self.run is None
        for button in (self.previousButton, self.nextButton, self.showAllButton, self.applyButton,
                       self.discardButton):
            button.enabled = haveCandidates and idle
        self.cancelButton.enabled = not idle


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
