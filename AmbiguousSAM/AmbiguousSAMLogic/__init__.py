"""The MRML layer of Ambiguous SAM: Slicer nodes in, Slicer nodes out, the core in between.

Imports `slicer`, `vtk`, numpy and AmbiguousSAMLib, never Qt, so everything here runs at Slicer's Python console,
in batch scripts and under the headless `slicer-core` wheel the tests use. The module widget and the Segment Editor
effect are thin Qt layers over these functions.
"""

from AmbiguousSAMLib.candidate_table import CANDIDATE_ROLE
from AmbiguousSAMLib.errors import AmbiguousSAMError, CancelledError, ServerError

from .accept import acceptCandidate, candidateLabelmap
from .candidateset import candidateIdsBestFirst, candidateScores, candidateSetReview
from .dependencies import installDependencies, installDicomExportDependencies, missingPackages
from .dicomexport import DicomExport, candidateSetVolume, exportCandidateSetToDicom
from .display import overlayUncertainty, setHeatmapColorNode, showCandidates
from .logic import AmbiguousSAMLogic
from .modelsettings import BACKBONE_CHOICES, DEVICE_CHOICES, HEAD_CHOICES, RUNTIME_CHOICES, ModelSettings
from .modifier import candidateModifierLabelmap, segmentHasVoxels
from .nodes import (CANDIDATES_ATTRIBUTE, PROBABILITY_ATTRIBUTE, UNCERTAINTY_ATTRIBUTE, adoptCandidateSet,
                    candidateSetProbability, removeOutputNodes, segmentIdsWithRole)
from .runner import SegmentationRun, userMessage
from .session import InferenceSession, RemoteTask, sharedSession
from .sliceview import NOT_AXIAL_MESSAGE, sliceShowsAxialPlane

__all__ = [
    "AmbiguousSAMError", "AmbiguousSAMLogic", "BACKBONE_CHOICES", "CANDIDATE_ROLE", "CANDIDATES_ATTRIBUTE",
    "CancelledError", "DEVICE_CHOICES", "DicomExport", "PROBABILITY_ATTRIBUTE", "candidateSetProbability", "HEAD_CHOICES", "InferenceSession", "RUNTIME_CHOICES", "ModelSettings", "NOT_AXIAL_MESSAGE", "RemoteTask", "SegmentationRun", "ServerError", "UNCERTAINTY_ATTRIBUTE",
    "acceptCandidate", "adoptCandidateSet", "candidateIdsBestFirst", "candidateLabelmap", "candidateScores", "candidateSetReview", "candidateModifierLabelmap", "candidateSetVolume",
    "exportCandidateSetToDicom", "installDependencies", "installDicomExportDependencies", "missingPackages", "overlayUncertainty",
    "removeOutputNodes", "segmentHasVoxels", "segmentIdsWithRole", "setHeatmapColorNode", "sharedSession", "showCandidates", "sliceShowsAxialPlane", "userMessage",
]
