"""One click -> K candidate 3D segmentations, a consensus and an uncertainty heatmap, as new Slicer nodes.

Usable without the widget, from Slicer's Python console, a batch script, the Segment Editor effect or tests:

    logic = AmbiguousSAMLogic()
    segmentationNode, heatmapNode = logic.process(volumeNode, roiNode, samples=16, seed=0)

A run has three stages, so the widget can keep the GUI responsive: `preparePrompt` reads the scene (main thread),
`segment` runs the core on numpy arrays only (any thread), `createOutputNodes` adds the nodes (main thread).
`process` runs the three in sequence. Nodes are created only after the core succeeded, and all of them are removed
again if building them fails, so a failed or cancelled run leaves the scene as it was.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np
import slicer

from AmbiguousSAMLib.errors import CancelledError, InvalidBoxError
from AmbiguousSAMLib.lesion import LesionResult

from .geometry import checkScalarVolume, promptBoxFromWorldPoints, roiCornersWorld, volumeArray, volumeSpacing
from .modelsettings import ModelSettings
from .nodes import createCandidateSegmentation, createUncertaintyVolume
from .rollback import removeAddedNodesOnError

try:
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:
    # The slicer-core wheel (headless MRML for tests and batch scripts) has no Qt and therefore no
    # slicer.ScriptedLoadableModule. The base class only adds the parameter-node helpers the Qt widget calls,
    # so a plain base keeps every method of this class working the same under the wheel.
    ScriptedLoadableModuleLogic = object

if TYPE_CHECKING:
    from AmbiguousSAMLib.segmenter import LesionSegmenter

#: progress(fraction in 0..1, message), called from the thread that runs the core.
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class LesionPrompt:
    """Everything the core needs from the scene, copied out of it so the core can run on another thread."""

    #: (k, j, i) voxel values (HU for CT), a copy of the volume's array.
    volume: np.ndarray
    #: (i0, j0, i1, j1) box on slice `sliceK`, in continuous voxel indices.
    box: tuple[float, float, float, float]
    sliceK: int
    #: (si, sj, sk) voxel size in mm.
    spacing: tuple[float, float, float]


def raiseIfCancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("The segmentation was cancelled; nothing was added to the scene.")


class AmbiguousSAMLogic(ScriptedLoadableModuleLogic):
    """The computations of the Ambiguous SAM module, usable without its widget.

    Uses ScriptedLoadableModuleLogic base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        #: Change to use another model; the next run loads it.
        self.modelSettings = ModelSettings()
        self._segmenter: LesionSegmenter | None = None
        self._segmenterSettings: ModelSettings | None = None
        self._segmenterLock = threading.Lock()

    def segmenter(self) -> LesionSegmenter:
        """The model for the current settings: loaded on first use (seconds), then kept for every later click."""
        with self._segmenterLock:
            if self._segmenter is None or self._segmenterSettings != self.modelSettings:
                # Imported here: it needs torch, which Slicer installs on demand after the module has loaded.
                from AmbiguousSAMLib.segmenter import LesionSegmenter

                settings = self.modelSettings
                self._segmenter = LesionSegmenter(backbone=settings.backbone, head=settings.head,
                                                  checkpoint=settings.checkpoint, device=settings.device,
                                                  precision=settings.precision)
                self._segmenterSettings = settings
            return self._segmenter

    def runsOnCpu(self) -> bool:
        """True when the current device setting resolves to the CPU (seconds per click instead of a fraction)."""
        from AmbiguousSAMLib.device import resolve_device

        return resolve_device(self.modelSettings.device).type == "cpu"

    def preparePrompt(self, volumeNode: slicer.vtkMRMLScalarVolumeNode,
                      roiNodeOrBox: slicer.vtkMRMLMarkupsROINode | np.ndarray) -> LesionPrompt:
        """Read the volume and turn the ROI, or (N, 3) world RAS corner points, into a box on one axial slice."""
        checkScalarVolume(volumeNode)
        if isinstance(roiNodeOrBox, slicer.vtkMRMLMarkupsROINode):
            corners = roiCornersWorld(roiNodeOrBox)
        elif roiNodeOrBox is None:
            raise InvalidBoxError("No ROI is selected. Place an ROI around the lesion, or draw a box on a slice.")
        else:
            corners = np.asarray(roiNodeOrBox, dtype=np.float64)
            if corners.ndim != 2 or corners.shape[1] != 3 or len(corners) < 2 or not np.isfinite(corners).all():
                raise InvalidBoxError(
                    f"A box is given as two or more finite RAS points (N, 3); got an array of shape {corners.shape}."
                )
        promptBox = promptBoxFromWorldPoints(volumeNode, corners)
        return LesionPrompt(volume=volumeArray(volumeNode), box=promptBox.box, sliceK=promptBox.sliceK,
                            spacing=volumeSpacing(volumeNode))

    def segment(self, prompt: LesionPrompt, samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                segmenter: LesionSegmenter | None = None) -> LesionResult:
        """Run the core on a prepared prompt. Touches no MRML node, so it may run on a worker thread."""
        raiseIfCancelled(cancel)
        if segmenter is None:
            if progress is not None:
                progress(0.0, "Loading the model")
            segmenter = self.segmenter()
        return segmenter.segment(prompt.volume, prompt.box, prompt.sliceK, prompt.spacing, samples=samples,
                                 seed=seed, progress=progress, cancel=cancel)

    def createOutputNodes(self, volumeNode: slicer.vtkMRMLScalarVolumeNode, result: LesionResult
                          ) -> tuple[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLScalarVolumeNode]:
        """Add the candidate segmentation and the heatmap volume; all or nothing."""
        checkScalarVolume(volumeNode)  # It may have been removed while the core ran on another thread.
        with removeAddedNodesOnError(volumeNode.GetScene()):
            segmentationNode = createCandidateSegmentation(volumeNode, result)
            heatmapNode = createUncertaintyVolume(volumeNode, result)
        return segmentationNode, heatmapNode

    def process(self, volumeNode: slicer.vtkMRMLScalarVolumeNode,
                roiNodeOrBox: slicer.vtkMRMLMarkupsROINode | np.ndarray, samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                segmenter: LesionSegmenter | None = None
                ) -> tuple[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLScalarVolumeNode]:
        """Segment the lesion in the ROI and return (segmentation node, heatmap node), both new.

        Raises the core's AmbiguousSAMError subclasses (InvalidBoxError, InvalidImageError, CancelledError, ...)
        with a message the user can act on; the scene is unchanged when it raises.
        """
        prompt = self.preparePrompt(volumeNode, roiNodeOrBox)
        result = self.segment(prompt, samples, seed, progress, cancel, segmenter)
        raiseIfCancelled(cancel)  # Cancel pressed as the core finished: honour it and add nothing.
        return self.createOutputNodes(volumeNode, result)
