"""Accepting a candidate: copy its voxels into a segment the radiologist is building.

The candidates live in their own segmentation node; the radiologist's work lives in another one (possibly under
another transform, with another geometry). The candidate's labelmap is taken in world coordinates, moved into the
target segmentation's frame, and written with Slicer's own segment-writing routine, which resamples to the
target's geometry. The Segment Editor effect uses `candidateLabelmap` with its undoable modifier instead.
"""

from __future__ import annotations

import slicer
import vtk

from AmbiguousSAMLib.errors import AmbiguousSAMError


def candidateLabelmap(sourceNode: slicer.vtkMRMLSegmentationNode, sourceSegmentId: str,
                      targetNode: slicer.vtkMRMLSegmentationNode) -> slicer.vtkOrientedImageData:
    """The segment's binary labelmap expressed in the target segmentation node's coordinate frame."""
    if sourceNode.GetSegmentation().GetSegment(sourceSegmentId) is None:
        raise AmbiguousSAMError(f"'{sourceNode.GetName()}' has no segment '{sourceSegmentId}'; run the segmentation again.")
    labelmap = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(
        sourceNode, sourceSegmentId, labelmap, True)
    worldToTarget = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, targetNode.GetParentTransformNode(), worldToTarget)
    slicer.vtkOrientedImageDataResample.TransformOrientedImage(labelmap, worldToTarget)
    return labelmap


def acceptCandidate(sourceNode: slicer.vtkMRMLSegmentationNode, sourceSegmentId: str,
                    targetNode: slicer.vtkMRMLSegmentationNode, targetSegmentId: str | None = None) -> str:
    """Replace the target segment's voxels by the candidate's (a new segment if none is given); return its ID."""
    labelmap = candidateLabelmap(sourceNode, sourceSegmentId, targetNode)
    targetSegmentation = targetNode.GetSegmentation()
    if not targetSegmentId:
        sourceSegment = sourceNode.GetSegmentation().GetSegment(sourceSegmentId)
        targetSegmentId = targetSegmentation.AddEmptySegment("", sourceSegment.GetName(), sourceSegment.GetColor())
    elif targetSegmentation.GetSegment(targetSegmentId) is None:
        raise AmbiguousSAMError(f"'{targetNode.GetName()}' has no segment '{targetSegmentId}'; pick another segment.")
    written = slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, targetNode, targetSegmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    if not written:
        raise AmbiguousSAMError(f"Could not write the candidate into '{targetNode.GetName()}'.")
    return targetSegmentId
