"""One click -> K candidate 3D segmentations, a consensus and an uncertainty heatmap, as new Slicer nodes.

Usable without the widget, from Slicer's Python console, a batch script, the Segment Editor effect or tests:

    logic = AmbiguousSAMLogic()
    segmentationNode, heatmapNode = logic.process(volumeNode, roiNode, samples=16, seed=0)

A run has three stages: `preparePrompt` reads the scene and cuts out the lesion region (the only voxels the model
reads, which is what travels to the inference server), `segment` runs the model on that region (in the session's
server process, or in this process when a segmenter is given), `createOutputNodes` adds the nodes. `process` runs
the three in sequence and waits; the widget and the effect run the same stages without waiting (runner.py).
Nodes are created only after the model succeeded, and all of them are removed again if building them fails, so a
failed or cancelled run leaves the scene as it was. Nothing here imports torch: inside Slicer the GUI process may
not have it; the server process does.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Callable

import numpy as np
import slicer

from AmbiguousSAMLib.errors import InvalidBoxError
from AmbiguousSAMLib.lesion import LesionResult
from AmbiguousSAMLib.region import LesionRegion, lesion_region

from .geometry import checkScalarVolume, promptBoxFromWorldPoints, roiCornersWorld, volumeSpacing
from .nodes import createCandidateSegmentation, createProbabilityVolume, createUncertaintyVolume
from .rollback import removeAddedNodesOnError
from .session import InferenceSession, cancelledError, sharedSession

try:
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:
    # The slicer-core wheel (headless MRML for tests and batch scripts) has no Qt and therefore no
    # slicer.ScriptedLoadableModule. The base class only adds the parameter-node helpers the Qt widget calls,
    # so a plain base keeps every method of this class working the same under the wheel.
    ScriptedLoadableModuleLogic = object

if TYPE_CHECKING:
    from AmbiguousSAMLib.segmenter import LesionSegmenter

#: progress(fraction in 0..1, message).
ProgressCallback = Callable[[float, str], None]


def raiseIfCancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise cancelledError()


class AmbiguousSAMLogic(ScriptedLoadableModuleLogic):
    """The computations of the Ambiguous SAM module, usable without its widget.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, session: InferenceSession | None = None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        #: Where the model runs; by default the one session of this Slicer process, shared with the widget and
        #: the Segment Editor effect (one model, one cache, one set of model settings: `session.settings`).
        self.session = session if session is not None else sharedSession()

    def preparePrompt(self, volumeNode: slicer.vtkMRMLScalarVolumeNode,
                      roiNodeOrBox: slicer.vtkMRMLMarkupsROINode | np.ndarray,
                      allowNonCt: bool = False) -> LesionRegion:
        """The lesion region for an ROI, or (N, 3) world RAS corner points: the box on one axial slice and a copy
        of the voxels the model may read for it (validated: a bad box or volume raises here, before any model)."""
        checkScalarVolume(volumeNode)
        if roiNodeOrBox is None:
            raise InvalidBoxError("No ROI is selected. Place an ROI around the lesion, or draw a box on a slice.")
        if isinstance(roiNodeOrBox, slicer.vtkMRMLNode):
            if not roiNodeOrBox.IsA("vtkMRMLMarkupsROINode"):
                raise InvalidBoxError(f"'{roiNodeOrBox.GetName()}' is a {roiNodeOrBox.GetClassName()}, not an ROI; "
                                      "select an ROI around the lesion.")
            corners = roiCornersWorld(roiNodeOrBox)
        else:
            corners = np.asarray(roiNodeOrBox, dtype=np.float64)
            if corners.ndim != 2 or corners.shape[1] != 3 or len(corners) < 2 or not np.isfinite(corners).all():
                raise InvalidBoxError(
                    f"A box is given as two or more finite RAS points (N, 3); got an array of shape {corners.shape}."
                )
        promptBox = promptBoxFromWorldPoints(volumeNode, corners)
        # A view of the voxels, not a copy of the whole CT: lesion_region copies only the block the model reads.
        return lesion_region(slicer.util.arrayFromVolume(volumeNode), promptBox.box, promptBox.sliceK,
                             volumeSpacing(volumeNode), allow_non_ct=allowNonCt)

    def segment(self, region: LesionRegion, samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                segmenter: LesionSegmenter | None = None) -> LesionResult:
        """Run the model on a lesion region and wait: in the session's server, or in this process on `segmenter`
        (an AmbiguousSAMLib.segmenter.LesionSegmenter, for scripts that hold a model themselves)."""
        raiseIfCancelled(cancel)
        if segmenter is not None:
            return segmenter.segment_region(region, samples=samples, seed=seed, progress=progress, cancel=cancel)
        return self.session.segment(region, samples, seed, progress, cancel)

    def createOutputNodes(self, volumeNode: slicer.vtkMRMLScalarVolumeNode, result: LesionResult
                          ) -> tuple[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLScalarVolumeNode]:
        """Add the candidate segmentation and the heatmap volume, and the mean-probability volume the segmentation
        references (for the DICOM export, nodes.createProbabilityVolume); all or nothing."""
        checkScalarVolume(volumeNode)  # It may have been removed while the model ran.
        with removeAddedNodesOnError(volumeNode.GetScene()):
            segmentationNode = createCandidateSegmentation(volumeNode, result)
            heatmapNode = createUncertaintyVolume(volumeNode, result)
            createProbabilityVolume(volumeNode, result, segmentationNode)
        return segmentationNode, heatmapNode

    def process(self, volumeNode: slicer.vtkMRMLScalarVolumeNode,
                roiNodeOrBox: slicer.vtkMRMLMarkupsROINode | np.ndarray, samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                segmenter: LesionSegmenter | None = None, allowNonCt: bool = False
                ) -> tuple[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLScalarVolumeNode]:
        """Segment the lesion in the ROI and return (segmentation node, heatmap node), both new.

        `allowNonCt` segments volumes that are not CT in Hounsfield units (refused otherwise: the head was
        trained on chest CT).

        Raises the core's AmbiguousSAMError subclasses (InvalidBoxError, InvalidImageError, CancelledError,
        ServerError, ...) with a message the user can act on; the scene is unchanged when it raises.
        """
        region = self.preparePrompt(volumeNode, roiNodeOrBox, allowNonCt)
        result = self.segment(region, samples, seed, progress, cancel, segmenter)
        raiseIfCancelled(cancel)  # Cancel pressed as the model finished: honour it and add nothing.
        return self.createOutputNodes(volumeNode, result)
