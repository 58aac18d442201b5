"""Where a voxel is: the one place that converts between Slicer's RAS world and a volume's (k, j, i) array.

Slicer keeps a volume's voxels with an IJK-to-RAS matrix that carries origin, spacing and axis directions
(oblique and anisotropic in general), and numpy arrays from Slicer index voxels as [k, j, i]. The core works in
voxel indices on one axial slice, so every prompt drawn in RAS (an ROI, a rectangle on a slice view) is mapped
here: its corners go world RAS -> the volume's IJK, and the prompt is their bounding box on the volume's grid.
Points pass through the transforms between the prompt's node and the volume's node, so a volume or an ROI that
sits under a (registration) transform still lines up.

IJK coordinates are continuous and voxel-centred: voxel (i, j, k) covers [i - 0.5, i + 0.5] and so on, the
convention of Slicer's matrices and of the core's boxes (x0, y0, x1, y1) in pixel coordinates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import slicer
import vtk

from AmbiguousSAMLib.errors import InvalidBoxError, InvalidImageError
from AmbiguousSAMLib.prompt_box import prompt_box_from_ijk_points


@dataclass(frozen=True)
class PromptBox:
    """A box prompt on one axial slice of a volume, in the volume's voxel indices."""

    #: (i0, j0, i1, j1): continuous voxel indices of the box corners on slice `sliceK` (i = column, j = row).
    box: tuple[float, float, float, float]
    #: Index of the axial slice the box is drawn on.
    sliceK: int


def ijkToRasMatrix(volumeNode: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix (in the volume's own frame, before any parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def rasToIjkMatrix(volumeNode: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's 4x4 RAS-to-IJK matrix (in the volume's own frame, before any parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetRASToIJKMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def checkScalarVolume(volumeNode: slicer.vtkMRMLNode | None) -> None:
    """Raise a clear error unless the node is a grey-level volume with voxels (a label map is not a CT)."""
    if volumeNode is None:
        raise InvalidImageError("No input volume is selected. Select a scalar volume (a CT) to segment.")
    if volumeNode.GetScene() is None:
        raise InvalidImageError(f"The volume '{volumeNode.GetName()}' is no longer in the scene; select another one.")
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InvalidImageError(
            f"'{volumeNode.GetName()}' is a {volumeNode.GetClassName()}; select a scalar volume (a CT) instead."
        )
    imageData = volumeNode.GetImageData()
    if imageData is None or imageData.GetNumberOfPoints() == 0:
        raise InvalidImageError(f"The volume '{volumeNode.GetName()}' has no voxels; load the image data first.")
    if imageData.GetNumberOfScalarComponents() != 1:
        raise InvalidImageError(
            f"The volume '{volumeNode.GetName()}' has {imageData.GetNumberOfScalarComponents()} components per "
            "voxel; select a single-component (grey-level) scalar volume."
        )


def volumeSpacing(volumeNode: slicer.vtkMRMLVolumeNode) -> tuple[float, float, float]:
    """Voxel size (si, sj, sk) in mm along the volume's i, j, k axes."""
    return tuple(float(s) for s in volumeNode.GetSpacing())  # type: ignore[return-value]


def transformPoints(transform: vtk.vtkAbstractTransform, points: np.ndarray) -> np.ndarray:
    """Apply a (possibly non-linear) VTK transform to (N, 3) points."""
    return np.array([transform.TransformPoint(*map(float, point)) for point in points], dtype=np.float64)


def worldToIjk(volumeNode: slicer.vtkMRMLVolumeNode, pointsRas: np.ndarray) -> np.ndarray:
    """Map (N, 3) world RAS points to (N, 3) continuous (i, j, k) indices of the volume."""
    worldToVolume = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(None, volumeNode.GetParentTransformNode(), worldToVolume)
    local = transformPoints(worldToVolume, np.asarray(pointsRas, dtype=np.float64).reshape(-1, 3))
    homogeneous = np.hstack([local, np.ones((len(local), 1))])
    return (homogeneous @ rasToIjkMatrix(volumeNode).T)[:, :3]


def roiCornersWorld(roiNode: slicer.vtkMRMLMarkupsROINode) -> np.ndarray:
    """The 8 corners of an ROI box in world RAS, honouring its rotation and any parent transform."""
    if roiNode.GetNumberOfControlPoints() == 0:
        # An ROI gets its control points once it has an extent: a placed ROI of zero size has none either.
        raise InvalidBoxError(f"The ROI '{roiNode.GetName()}' has no extent yet (not placed, or of zero size); "
                              "place it on the lesion and drag its handles so that it covers the whole lesion.")
    bounds = [0.0] * 6
    roiNode.GetObjectBounds(bounds)
    corners = np.array([[x, y, z, 1.0] for x in bounds[0:2] for y in bounds[2:4] for z in bounds[4:6]])
    objectToNode = slicer.util.arrayFromVTKMatrix(roiNode.GetObjectToNodeMatrix())
    inNode = (corners @ objectToNode.T)[:, :3]
    nodeToWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(roiNode.GetParentTransformNode(), None, nodeToWorld)
    return transformPoints(nodeToWorld, inNode)


def promptBoxFromWorldPoints(volumeNode: slicer.vtkMRMLVolumeNode, pointsRas: np.ndarray) -> PromptBox:
    """The box prompt spanned by world RAS points (ROI corners, a rectangle's corners) on the volume's grid.

    The points go to IJK through the transforms; the core's `prompt_box_from_ijk_points`, the rule the command
    line uses too, makes their bounding box (clipped to the volume) and picks the slice at its centre. On an
    oblique volume an axis-aligned ROI becomes a slightly larger box, which is what a radiologist expects from
    "everything inside the ROI".
    """
    box, sliceK = prompt_box_from_ijk_points(worldToIjk(volumeNode, pointsRas),
                                             volumeNode.GetImageData().GetDimensions(), volumeNode.GetName())
    return PromptBox(box=box, sliceK=sliceK)
