"""Turn one LesionResult into new Slicer nodes on the source volume's exact voxel grid.

Three nodes per click, all new (existing nodes are never touched):
- a segmentation with one segment per candidate ("Candidate 1".."Candidate K", tagged with its scores) and the
  "Consensus" (tagged with the lesion's review flag), each a binary labelmap with the CT's origin, spacing and axis
  directions, so candidate voxels coincide with CT voxels;
- a float32 scalar volume of the per-voxel uncertainty (entropy of the candidates' mean, in nats) with the CT's
  IJK-to-RAS matrix, coloured by the shared uncertainty colour map.
Both observe the CT's parent transform, so they stay on the CT when it is moved by a registration.
A third node keeps what the DICOM export's FRACTIONAL (probability) SEG needs and the other two cannot hold (the
entropy cannot tell p from 1 - p): the mean foreground probability, a float32 volume over the lesion box only, on
the CT's grid (its IJK axes and spacing, its origin on the box's first voxel), "<set> mean probability". The
segmentation references it (node reference role PROBABILITY_REFERENCE_ROLE; Libs/MRML/Core/vtkMRMLNode.h,
SetNodeReferenceID: a role without an MRML attribute name is saved in the scene file's "references" attribute and
restored on load), so it is saved with the scene and found again from the set. It is shown in no view: a scalar
volume is visible in a slice view only as a layer of that view's slice composite node, which nothing here sets
(Modules/Loadable/Volumes/SubjectHierarchyPlugins/qSlicerSubjectHierarchyVolumesPlugin.cxx, getDisplayVisibility);
it is not HideFromEditors, which would keep it out of the Save dialog (Base/QTGUI/qSlicerSaveDataDialog.cxx,
populateNode). removeOutputNodes removes it with its set.
Labelmaps are built directly as vtkOrientedImageData covering only the lesion box: no temporary nodes enter the
scene (slicer.util's array helpers go through a temporary label map volume whose display node stays behind under
the slicer-core wheel), and a 35 M-voxel CT costs a few kB per candidate.
"""

from __future__ import annotations

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from AmbiguousSAMLib.candidate_table import CANDIDATE_ROLE, ROLE_TAG, candidate_table
from AmbiguousSAMLib.errors import InvalidImageError
from AmbiguousSAMLib.lesion import LesionResult

from .colormap import MAX_ENTROPY_NATS, uncertaintyColorNode
from .geometry import ijkToRasMatrix

#: Voxels less uncertain than this (nats) are drawn transparent, so the CT shows through away from the edges.
VISIBLE_UNCERTAINTY_NATS = 0.01
#: Node attributes that mark this module's outputs, so selectors can list only them.
CANDIDATES_ATTRIBUTE = "AmbiguousSAM.Candidates"
UNCERTAINTY_ATTRIBUTE = "AmbiguousSAM.Uncertainty"
#: Marks a candidate set's mean-probability volume (not UNCERTAINTY_ATTRIBUTE: the heatmap selector lists those).
PROBABILITY_ATTRIBUTE = "AmbiguousSAM.MeanProbability"
#: The node reference role from a candidate segmentation to its mean-probability volume.
PROBABILITY_REFERENCE_ROLE = "AmbiguousSAM.meanProbability"


def checkResultFitsVolume(volumeNode: slicer.vtkMRMLScalarVolumeNode, result: LesionResult) -> None:
    """Refuse a result computed on a different grid: its voxels would land on the wrong anatomy."""
    volumeShape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    if tuple(result.volume_shape) != volumeShape:
        raise InvalidImageError(
            f"The result is for a volume of shape {tuple(result.volume_shape)} (k, j, i) but "
            f"'{volumeNode.GetName()}' has shape {volumeShape}. Run the segmentation on this volume."
        )


def labelmapFromMask(volumeNode: slicer.vtkMRMLScalarVolumeNode, mask: np.ndarray,
                     offset: tuple[int, int, int]) -> slicer.vtkOrientedImageData:
    """A binary labelmap (0/1 uint8) on the volume's grid covering the (dk, dj, di) mask placed at offset (k, j, i)."""
    k0, j0, i0 = offset
    dk, dj, di = mask.shape
    labelmap = slicer.vtkOrientedImageData()
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    labelmap.SetImageToWorldMatrix(matrix)
    labelmap.SetExtent(i0, i0 + di - 1, j0, j0 + dj - 1, k0, k0 + dk - 1)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(mask.shape)
    voxels[:] = mask.astype(np.uint8)
    return labelmap


def addMaskSegment(segmentationNode: slicer.vtkMRMLSegmentationNode, labelmap: slicer.vtkOrientedImageData,
                   name: str, color: tuple[float, float, float], tags: dict[str, str]) -> str:
    """Add one labelmap as a new segment (its own layer, as candidates overlap) and return the segment ID."""
    segment = slicer.vtkSegment()
    segment.SetName(name)
    segment.SetColor(*color)
    for tag, value in tags.items():
        segment.SetTag(tag, value)
    segment.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), labelmap)
    segmentation = segmentationNode.GetSegmentation()
    segmentation.AddSegment(segment)
    return segmentation.GetSegmentIdBySegment(segment)


def createCandidateSegmentation(volumeNode: slicer.vtkMRMLScalarVolumeNode,
                                result: LesionResult) -> slicer.vtkMRMLSegmentationNode:
    """A new segmentation node: K candidate segments then the consensus, outlined over the CT."""
    checkResultFitsVolume(volumeNode, result)
    scene = volumeNode.GetScene()
    name = scene.GenerateUniqueName(f"{volumeNode.GetName()} candidates")
    segmentationNode = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentationNode.SetAttribute(CANDIDATES_ATTRIBUTE, "1")
    segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
    segmentationNode.CreateDefaultDisplayNodes()
    masks = [*result.candidates, result.consensus]
    for entry, mask in zip(candidate_table(result.scores, result.quality, result.review), masks):
        addMaskSegment(segmentationNode, labelmapFromMask(volumeNode, mask, result.offset), entry.name, entry.colour,
                       entry.tags)
    displayNode = segmentationNode.GetDisplayNode()
    displayNode.SetVisibility2DFill(False)
    displayNode.SetVisibility2DOutline(True)
    return segmentationNode


def createUncertaintyVolume(volumeNode: slicer.vtkMRMLScalarVolumeNode,
                            result: LesionResult) -> slicer.vtkMRMLScalarVolumeNode:
    """A new float32 volume of per-voxel uncertainty (nats) on the CT's grid, coloured 0..ln 2 by inferno."""
    checkResultFitsVolume(volumeNode, result)
    scene = volumeNode.GetScene()
    name = scene.GenerateUniqueName(f"{volumeNode.GetName()} uncertainty")
    heatmapNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    heatmapNode.SetAttribute(UNCERTAINTY_ATTRIBUTE, "entropy")
    heatmapNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRasMatrix(volumeNode)))
    heatmapNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(heatmapNode, result.paste(result.entropy.astype(np.float32, copy=False)))
    heatmapNode.CreateDefaultDisplayNodes()
    displayNode = heatmapNode.GetDisplayNode()
    displayNode.SetAndObserveColorNodeID(uncertaintyColorNode(scene).GetID())
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(0.0, MAX_ENTROPY_NATS)
    displayNode.SetThreshold(VISIBLE_UNCERTAINTY_NATS, np.finfo(np.float32).max)
    displayNode.ApplyThresholdOn()
    return heatmapNode


def createProbabilityVolume(volumeNode: slicer.vtkMRMLScalarVolumeNode, result: LesionResult,
                            segmentationNode: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLScalarVolumeNode:
    """A new float32 volume of the mean foreground probability over the lesion box, on the CT's grid, referenced
    from the candidate segmentation; shown in no view (see the module docstring)."""
    checkResultFitsVolume(volumeNode, result)
    probability = np.asarray(result.mean_probability, dtype=np.float32)
    if probability.shape != result.consensus.shape or not np.isfinite(probability).all():
        raise ValueError(f"The result's mean probability (shape {probability.shape}) is not a finite map of its "
                         f"lesion box {result.consensus.shape}.")
    scene = volumeNode.GetScene()
    name = scene.GenerateUniqueName(f"{segmentationNode.GetName()} mean probability")
    probabilityNode = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    probabilityNode.SetAttribute(PROBABILITY_ATTRIBUTE, "1")
    matrix = ijkToRasMatrix(volumeNode)
    k0, j0, i0 = result.offset
    matrix[:3, 3] = (matrix @ np.array([i0, j0, k0, 1.0]))[:3]  # the box's first voxel is its IJK origin
    probabilityNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    probabilityNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
    slicer.util.updateVolumeFromArray(probabilityNode, np.ascontiguousarray(probability))
    probabilityNode.CreateDefaultDisplayNodes()
    displayNode = probabilityNode.GetDisplayNode()
    displayNode.AutoWindowLevelOff()
    displayNode.SetWindowLevelMinMax(0.0, 1.0)
    segmentationNode.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, probabilityNode.GetID())
    return probabilityNode


def candidateSetProbability(segmentationNode: slicer.vtkMRMLSegmentationNode | None
                            ) -> slicer.vtkMRMLScalarVolumeNode | None:
    """The mean-probability volume a candidate set references; None for a set without one (made by an older
    version, loaded from a .seg.nrrd, or whose volume was deleted)."""
    if segmentationNode is None:
        return None
    return segmentationNode.GetNodeReference(PROBABILITY_REFERENCE_ROLE)


def segmentIdsWithRole(segmentationNode: slicer.vtkMRMLSegmentationNode, role: str) -> list[str]:
    """IDs of the segments whose role tag is `role` (CANDIDATE_ROLE or CONSENSUS_ROLE), in segment order."""
    segmentation = segmentationNode.GetSegmentation()
    found = []
    for index in range(segmentation.GetNumberOfSegments()):
        segmentId = segmentation.GetNthSegmentID(index)
        value = vtk.reference("")
        if segmentation.GetSegment(segmentId).GetTag(ROLE_TAG, value) and str(value) == role:
            found.append(segmentId)
    return found


def adoptCandidateSet(segmentationNode: slicer.vtkMRMLSegmentationNode) -> bool:
    """Mark a segmentation that holds candidate segments (one loaded from a `candidates.seg.nrrd` the command line
    wrote, or from a saved scene) as a candidate set, so the module lists and browses it like its own results.

    Returns whether it is one; a segmentation without candidate-tagged segments is left untouched.
    """
    if not segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE):
        return False
    segmentationNode.SetAttribute(CANDIDATES_ATTRIBUTE, "1")
    return True


def removeOutputNodes(nodes: list[slicer.vtkMRMLDisplayableNode]) -> None:
    """Remove result nodes together with their display and storage nodes, which the scene would otherwise keep.

    A candidate set's mean-probability volume goes with it, unless a set that stays references it too (a clone);
    the shared uncertainty colour map stays: other heatmaps may use it.
    """
    nodes = [node for node in nodes if node is not None]
    for node in list(nodes):
        probabilityNode = candidateSetProbability(node) if node.IsA("vtkMRMLSegmentationNode") else None
        if (probabilityNode is not None and probabilityNode.GetAttribute(PROBABILITY_ATTRIBUTE) == "1"
                and all(other in nodes for other in setsReferencing(probabilityNode))
                and probabilityNode not in nodes):
            nodes.append(probabilityNode)
    for node in nodes:
        scene = node.GetScene()
        if scene is None:
            continue
        companions = [node.GetNthDisplayNode(index) for index in range(node.GetNumberOfDisplayNodes())]
        companions += [node.GetNthStorageNode(index) for index in range(node.GetNumberOfStorageNodes())]
        for companion in [*companions, node]:
            if companion is not None and companion.GetScene() is not None:
                scene.RemoveNode(companion)


def setsReferencing(probabilityNode: slicer.vtkMRMLScalarVolumeNode) -> list[slicer.vtkMRMLSegmentationNode]:
    """The segmentations of the scene whose mean-probability reference is `probabilityNode`."""
    scene = probabilityNode.GetScene()
    if scene is None:
        return []
    collection = scene.GetNodesByClass("vtkMRMLSegmentationNode")
    found = [collection.GetItemAsObject(index) for index in range(collection.GetNumberOfItems())]
    return [node for node in found if candidateSetProbability(node) is probabilityNode]
