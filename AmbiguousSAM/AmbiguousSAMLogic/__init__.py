"""The MRML layer of Ambiguous SAM: Slicer nodes in, Slicer nodes out, the core in between.

Imports `slicer`, `vtk`, numpy and AmbiguousSAMLib, never Qt, so everything here runs at Slicer's Python console,
in batch scripts and under the headless `slicer-core` wheel the tests use. The module widget and the Segment Editor
effect are thin Qt layers over these functions.
"""

from AmbiguousSAMLib.errors import AmbiguousSAMError, CancelledError

from .accept import acceptCandidate, candidateLabelmap
from .dependencies import installDependencies, missingPackages
from .display import overlayUncertainty, setHeatmapColorNode, showCandidates
from .logic import AmbiguousSAMLogic, LesionPrompt
from .modelsettings import BACKBONE_CHOICES, DEVICE_CHOICES, HEAD_CHOICES, ModelSettings
from .nodes import CANDIDATES_ATTRIBUTE, UNCERTAINTY_ATTRIBUTE, removeOutputNodes, segmentIdsWithRole
from .worker import BackgroundTask

__all__ = [
    "AmbiguousSAMError", "AmbiguousSAMLogic", "BACKBONE_CHOICES", "BackgroundTask", "CANDIDATES_ATTRIBUTE",
    "CancelledError", "DEVICE_CHOICES", "HEAD_CHOICES", "LesionPrompt", "ModelSettings", "UNCERTAINTY_ATTRIBUTE",
    "acceptCandidate", "candidateLabelmap", "installDependencies", "missingPackages", "overlayUncertainty",
    "removeOutputNodes", "segmentIdsWithRole", "setHeatmapColorNode", "showCandidates",
]
