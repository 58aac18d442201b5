"""A candidate as the Segment Editor's modifier labelmap: on exactly the geometry the editor writes with.

The Segment Editor modifies a segment through `modifySelectedSegmentByLabelmap`, whose Set mode replaces the
segment inside the modifier labelmap's extent. That labelmap must have the editor's geometry
(`scriptedEffect.defaultModifierLabelmap()`: the segmentation's reference geometry, possibly oversampled or
taken from another volume than the CT the candidates were computed on). A candidate handed over on the CT's own
grid would clear the wrong voxels, or be skipped with only a log line while the effect claimed success; so the
candidate is resampled onto the modifier's geometry here, and an Apply that would write nothing is refused.
"""

from __future__ import annotations

import slicer

from AmbiguousSAMLib.errors import AmbiguousSAMError

from .accept import candidateLabelmap


def resampleOntoGeometry(labelmap: slicer.vtkOrientedImageData,
                         reference: slicer.vtkOrientedImageData) -> slicer.vtkOrientedImageData:
    """The labelmap on the reference's grid and extent (nearest neighbour: a binary mask stays binary)."""
    resampled = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            labelmap, reference, resampled, False, False):
        raise AmbiguousSAMError("The candidate could not be resampled onto the segmentation's geometry.")
    return resampled


def hasVoxels(labelmap: slicer.vtkOrientedImageData) -> bool:
    """True when at least one voxel of the labelmap is set."""
    extent = [0, -1, 0, -1, 0, -1]
    return bool(slicer.vtkOrientedImageDataResample.CalculateEffectiveExtent(labelmap, extent)) and \
        extent[0] <= extent[1] and extent[2] <= extent[3] and extent[4] <= extent[5]


def candidateModifierLabelmap(sourceNode: slicer.vtkMRMLSegmentationNode, candidateSegmentId: str,
                              targetNode: slicer.vtkMRMLSegmentationNode,
                              modifierLabelmap: slicer.vtkOrientedImageData) -> slicer.vtkOrientedImageData:
    """The candidate on the modifier labelmap's geometry, ready for modifySelectedSegmentByLabelmap (Set mode).

    Raises AmbiguousSAMError when none of the candidate falls inside the segmentation's geometry: writing it
    would only clear the segment.
    """
    labelmap = resampleOntoGeometry(candidateLabelmap(sourceNode, candidateSegmentId, targetNode), modifierLabelmap)
    if not hasVoxels(labelmap):
        raise AmbiguousSAMError(
            f"The candidate lies outside the geometry of '{targetNode.GetName()}', so nothing would be written. "
            "Use a segmentation whose source geometry covers the lesion (Segment Editor: 'Specify geometry')."
        )
    return labelmap


def segmentHasVoxels(segmentationNode: slicer.vtkMRMLSegmentationNode, segmentId: str) -> bool:
    """True when the segment holds at least one voxel (checked after writing, before saying "applied")."""
    labelmap = slicer.vtkOrientedImageData()
    segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
    return labelmap.GetPointData().GetScalars() is not None and hasVoxels(labelmap)
