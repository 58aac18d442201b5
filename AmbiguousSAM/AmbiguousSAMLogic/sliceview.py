"""Which slice views can take a box: only one that cuts the source volume across its k (slice) axis.

The model reads a box on one axial slice of the volume, (i0, j0, i1, j1) at one k. A rectangle dragged on a
sagittal or coronal view spans one voxel or less along i or j, so it would collapse to a box of zero size (the
user would read "the box has zero size" after a drag that looked fine). The Segment Editor effect asks this
function first and tells the user which view to use instead.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk

from .geometry import ijkToRasMatrix

#: What the effect says when a box is dragged on a view that does not show the volume's axial plane.
NOT_AXIAL_MESSAGE = ("Draw the box on the red (axial) view: Ambiguous SAM reads a box on one slice of the volume "
                     "(a view that shows the volume's own slices).")


def volumeAxesWorld(volumeNode: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """(3, 3) rows: unit vectors of the volume's i, j and k axes in world RAS, through any parent transform.

    A non-linear parent transform is taken at the volume's centre, where a lesion box is drawn in practice.
    """
    ijkToRas = ijkToRasMatrix(volumeNode)
    dims = np.array(volumeNode.GetImageData().GetDimensions(), dtype=np.float64)
    centre = (ijkToRas @ np.append((dims - 1) / 2, 1.0))[:3]
    volumeToWorld = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(volumeNode.GetParentTransformNode(), None, volumeToWorld)
    axes = np.array([volumeToWorld.TransformVectorAtPoint(centre, ijkToRas[:3, axis]) for axis in range(3)])
    return axes / np.linalg.norm(axes, axis=1, keepdims=True)


def sliceShowsAxialPlane(sliceNode: slicer.vtkMRMLSliceNode, volumeNode: slicer.vtkMRMLVolumeNode) -> bool:
    """True when the view's normal is closer to the volume's k axis than to its i and j axes.

    Then a rectangle on the view spans i and j and lies within about one slice, which is a box the model can
    read; a slightly tilted (reformatted) view still qualifies.
    """
    sliceToRas = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
    normal = sliceToRas[:3, 2] / np.linalg.norm(sliceToRas[:3, 2])
    alignment = np.abs(volumeAxesWorld(volumeNode) @ normal)
    return int(np.argmax(alignment)) == 2
