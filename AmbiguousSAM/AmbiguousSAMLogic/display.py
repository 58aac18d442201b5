"""What the radiologist sees: one candidate or all of them, and the uncertainty heatmap over the CT.

Kept apart from node creation so scripts and tests can build results without touching the views, and so the
widget and the Segment Editor effect show results the same way.
"""

from __future__ import annotations

import slicer

from AmbiguousSAMLib.candidate_table import CANDIDATE_ROLE, CONSENSUS_ROLE

from .nodes import segmentIdsWithRole


def showCandidates(segmentationNode: slicer.vtkMRMLSegmentationNode, candidateIndex: int | None = None) -> None:
    """Show every candidate and the consensus (`None`), or only candidate `candidateIndex` (0-based)."""
    displayNode = segmentationNode.GetDisplayNode()
    candidateIds = segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE)
    if candidateIndex is not None and not 0 <= candidateIndex < len(candidateIds):
        raise IndexError(f"There are {len(candidateIds)} candidates; candidate {candidateIndex + 1} does not exist.")
    for index, segmentId in enumerate(candidateIds):
        displayNode.SetSegmentVisibility(segmentId, candidateIndex is None or index == candidateIndex)
    for segmentId in segmentIdsWithRole(segmentationNode, CONSENSUS_ROLE):
        displayNode.SetSegmentVisibility(segmentId, candidateIndex is None)


def overlayUncertainty(backgroundNode: slicer.vtkMRMLScalarVolumeNode | None,
                       heatmapNode: slicer.vtkMRMLScalarVolumeNode, opacity: float) -> None:
    """Show the heatmap as the slice views' foreground at the given opacity (0..1), over the CT if one is given."""
    slicer.util.setSliceViewerLayers(background=backgroundNode if backgroundNode is not None else "keep-current",
                                     foreground=heatmapNode, foregroundOpacity=min(max(opacity, 0.0), 1.0))


def setHeatmapColorNode(heatmapNode: slicer.vtkMRMLScalarVolumeNode, colorNode: slicer.vtkMRMLColorNode) -> None:
    """Colour the heatmap with another colour map (any colour table or procedural colour node)."""
    heatmapNode.GetDisplayNode().SetAndObserveColorNodeID(colorNode.GetID())
