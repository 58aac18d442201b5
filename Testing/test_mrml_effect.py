"""The Segment Editor effect's decisions, headless: which slice view takes a box, and what Apply writes.

The effect itself is Qt and runs only inside Slicer; what it decides is MRML-layer code tested here on real
slice nodes (with Slicer's own orientation presets), oblique and re-oriented volumes, and real oriented image
data: the candidate resampled onto an oversampled modifier geometry, as `defaultModifierLabelmap()` gives it.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from vtk.util import numpy_support

from AmbiguousSAMLib.errors import AmbiguousSAMError
from AmbiguousSAMLogic import (CANDIDATE_ROLE, candidateModifierLabelmap, segmentHasVoxels, segmentIdsWithRole,
                               sliceShowsAxialPlane)
from AmbiguousSAMLogic.geometry import ijkToRasMatrix
from AmbiguousSAMLogic.nodes import createCandidateSegmentation


def sliceNode(scene, orientation: str) -> slicer.vtkMRMLSliceNode:
    """A slice node set to one of Slicer's orientation presets, as a slice view's node is."""
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene)
    node = scene.AddNewNodeByClass("vtkMRMLSliceNode")
    assert node.SetOrientation(orientation)
    return node


@pytest.fixture
def sagittally_acquired_volume(mrml_scene):
    """A volume whose slices are sagittal: i runs along A, j along S, k along R (as a sagittal MR series)."""
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Sagittal series")
    directions = np.eye(4)
    directions[:3, :3] = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # columns: i, j, k in RAS
    volume.SetIJKToRASDirectionMatrix(slicer.util.vtkMatrixFromArray(directions))
    slicer.util.updateVolumeFromArray(volume, np.full((10, 20, 30), -800, dtype=np.int16))
    return volume


@pytest.mark.parametrize("orientation, accepted", [("Axial", True), ("Sagittal", False), ("Coronal", False)])
def test_only_the_axial_view_of_an_oblique_ct_takes_a_box(mrml_scene, oblique_volume, orientation, accepted):
    assert sliceShowsAxialPlane(sliceNode(mrml_scene, orientation), oblique_volume) is accepted


@pytest.mark.parametrize("orientation, accepted", [("Axial", False), ("Sagittal", True), ("Coronal", False)])
def test_a_sagittally_acquired_volume_takes_a_box_on_the_sagittal_view(mrml_scene, sagittally_acquired_volume,
                                                                      orientation, accepted):
    assert sliceShowsAxialPlane(sliceNode(mrml_scene, orientation), sagittally_acquired_volume) is accepted


def test_the_volume_s_parent_transform_turns_which_view_is_axial(mrml_scene, oblique_volume):
    """Rotated 90 degrees about R, the CT's k axis points along A: now the coronal view shows its slices."""
    rotation = vtk.vtkTransform()
    rotation.RotateX(90.0)
    transformNode = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transformNode.SetMatrixTransformToParent(rotation.GetMatrix())
    oblique_volume.SetAndObserveTransformNodeID(transformNode.GetID())
    assert sliceShowsAxialPlane(sliceNode(mrml_scene, "Coronal"), oblique_volume)
    assert not sliceShowsAxialPlane(sliceNode(mrml_scene, "Axial"), oblique_volume)


def test_a_slightly_tilted_reformat_still_takes_a_box(mrml_scene, oblique_volume):
    node = sliceNode(mrml_scene, "Axial")
    tilted = vtk.vtkTransform()
    tilted.RotateY(35.0)  # less than 45 degrees off the axial plane (the volume's own tilt is 15 degrees)
    sliceToRas = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(tilted.GetMatrix(), node.GetSliceToRAS(), sliceToRas)
    node.GetSliceToRAS().DeepCopy(sliceToRas)
    node.UpdateMatrices()
    assert sliceShowsAxialPlane(node, oblique_volume)


def oversampledGeometry(volumeNode, factor: int) -> slicer.vtkOrientedImageData:
    """The volume's grid with `factor` times finer voxels over the same bounds, as Segment Editor's oversampling
    makes the modifier labelmap's geometry."""
    ijkToRas = ijkToRasMatrix(volumeNode)
    fine = ijkToRas.copy()
    fine[:3, :3] /= factor
    fine[:3, 3] = (ijkToRas @ np.append(np.full(3, -0.5 + 0.5 / factor), 1.0))[:3]  # same outer voxel corner
    geometry = slicer.vtkOrientedImageData()
    geometry.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(fine))
    ni, nj, nk = volumeNode.GetImageData().GetDimensions()
    geometry.SetExtent(0, factor * ni - 1, 0, factor * nj - 1, 0, factor * nk - 1)
    geometry.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    geometry.GetPointData().GetScalars().Fill(0)
    return geometry


def setVoxelsWorld(labelmap: slicer.vtkOrientedImageData) -> np.ndarray:
    """World RAS centres of the labelmap's set voxels."""
    dims = labelmap.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(dims[::-1])
    k, j, i = np.nonzero(voxels)
    extent = labelmap.GetExtent()
    ijk = np.stack([i + extent[0], j + extent[2], k + extent[4], np.ones_like(i)], axis=1).astype(np.float64)
    imageToWorld = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(imageToWorld)
    return (ijk @ slicer.util.arrayFromVTKMatrix(imageToWorld).T)[:, :3]


@pytest.fixture
def candidates_and_target(mrml_scene, oblique_volume, make_lesion_result):
    result = make_lesion_result(tuple(reversed(oblique_volume.GetImageData().GetDimensions())))
    candidates = createCandidateSegmentation(oblique_volume, result)
    target = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Radiologist")
    target.SetReferenceImageGeometryParameterFromVolumeNode(oblique_volume)
    segmentId = target.GetSegmentation().AddEmptySegment("", "Nodule")
    return candidates, target, segmentId, result


def test_apply_takes_the_candidate_onto_an_oversampled_modifier_geometry(oblique_volume, candidates_and_target):
    candidates, target, _segmentId, result = candidates_and_target
    candidateId = segmentIdsWithRole(candidates, CANDIDATE_ROLE)[2]
    modifier = oversampledGeometry(oblique_volume, 2)
    labelmap = candidateModifierLabelmap(candidates, candidateId, target, modifier)

    assert slicer.vtkOrientedImageDataResample.DoGeometriesMatch(labelmap, modifier)
    assert labelmap.GetExtent() == modifier.GetExtent(), "Set mode replaces the segment over the modifier's extent"
    assert len(setVoxelsWorld(labelmap)) == 8 * int(result.candidates[2].sum()), "each CT voxel is 2 x 2 x 2 fine ones"
    original = slicer.vtkOrientedImageData()
    candidates.GetBinaryLabelmapRepresentation(candidateId, original)
    np.testing.assert_allclose(setVoxelsWorld(labelmap).mean(axis=0), setVoxelsWorld(original).mean(axis=0),
                               atol=1e-6)


def test_a_candidate_outside_the_segmentation_s_geometry_is_refused(mrml_scene, oblique_volume,
                                                                    candidates_and_target):
    candidates, target, _segmentId, _result = candidates_and_target
    elsewhere = oversampledGeometry(oblique_volume, 1)
    elsewhere.SetExtent(0, 3, 0, 3, 0, 3)  # one corner of the CT, far from the lesion box
    elsewhere.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    with pytest.raises(AmbiguousSAMError, match="outside the geometry of 'Radiologist'"):
        candidateModifierLabelmap(candidates, segmentIdsWithRole(candidates, CANDIDATE_ROLE)[0], target, elsewhere)


def test_segment_has_voxels_tells_an_empty_segment_from_a_written_one(oblique_volume, candidates_and_target):
    candidates, target, segmentId, _result = candidates_and_target
    assert not segmentHasVoxels(target, segmentId)
    labelmap = candidateModifierLabelmap(candidates, segmentIdsWithRole(candidates, CANDIDATE_ROLE)[0], target,
                                         oversampledGeometry(oblique_volume, 1))
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, target, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    assert segmentHasVoxels(target, segmentId)
