"""RAS <-> IJK as radiologists' volumes need it: oblique, anisotropic, under transforms, read from LPS files.

The oblique test volume's expected IJK-to-RAS matrix is written out from its parts (directions x spacing,
origin) in conftest, independently of the code under test; expected boxes are computed from it with numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import slicer

from AmbiguousSAMLib.errors import InvalidBoxError, InvalidImageError
from AmbiguousSAMLogic.geometry import (PromptBox, checkScalarVolume, ijkToRasMatrix, promptBoxFromWorldPoints,
                                        rasToIjkMatrix, roiCornersWorld, worldToIjk)


def homogeneous(points: np.ndarray) -> np.ndarray:
    points = np.atleast_2d(np.asarray(points, dtype=np.float64))
    return np.hstack([points, np.ones((len(points), 1))])


def addLinearTransform(scene, matrix: np.ndarray):
    transformNode = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return transformNode


def addRoi(scene, objectToNode: np.ndarray, size: tuple[float, float, float]):
    """An ROI whose box axes and centre are given by a 4x4 object-to-node matrix."""
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Lesion ROI")
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
    roi.SetSize(*size)
    return roi


def roiOnVolumeAxes(scene, ijkToRas: np.ndarray, low: np.ndarray, high: np.ndarray):
    """An ROI rotated with the volume's axes covering the continuous IJK box [low, high] exactly."""
    spacing = np.linalg.norm(ijkToRas[:3, :3], axis=0)
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = ijkToRas[:3, :3] / spacing
    objectToNode[:3, 3] = (ijkToRas @ np.append((low + high) / 2, 1.0))[:3]
    return addRoi(scene, objectToNode, tuple((high - low) * spacing))


def expectedBox(ijkToRas: np.ndarray, worldCorners: np.ndarray, shape: tuple[int, int, int]) -> PromptBox:
    """Bounding box of the corners in IJK, clipped to the (k, j, i) shape; slice = rounded centre k."""
    ijk = (homogeneous(worldCorners) @ np.linalg.inv(ijkToRas).T)[:, :3]
    last = np.array(shape[::-1]) - 1
    low, high = np.clip(ijk.min(0), 0, last), np.clip(ijk.max(0), 0, last)
    sliceK = int(np.clip(np.floor((ijk[:, 2].min() + ijk[:, 2].max()) / 2 + 0.5), 0, last[2]))
    return PromptBox(box=(low[0], low[1], high[0], high[1]), sliceK=sliceK)


def assertSameBox(actual: PromptBox, expected: PromptBox) -> None:
    """Equal up to 1e-4 voxel: markups keep an ROI's geometry in single precision (errors of ~1e-6 voxel here)."""
    assert actual.sliceK == expected.sliceK
    np.testing.assert_allclose(actual.box, expected.box, atol=1e-4)


def test_matrices_are_built_from_origin_spacing_and_directions(oblique_volume, oblique_ijk_to_ras):
    np.testing.assert_allclose(ijkToRasMatrix(oblique_volume), oblique_ijk_to_ras, atol=1e-12)
    np.testing.assert_allclose(rasToIjkMatrix(oblique_volume) @ oblique_ijk_to_ras, np.eye(4), atol=1e-12)


def test_world_to_ijk_inverts_ijk_to_ras(oblique_volume, oblique_ijk_to_ras):
    ijk = np.random.default_rng(0).uniform(-5.0, 50.0, size=(20, 3))
    ras = (homogeneous(ijk) @ oblique_ijk_to_ras.T)[:, :3]
    np.testing.assert_allclose(worldToIjk(oblique_volume, ras), ijk, atol=1e-9)


def test_array_is_indexed_k_j_i(oblique_volume, oblique_ijk_to_ras):
    array = slicer.util.arrayFromVolume(oblique_volume)
    assert array.shape == (24, 40, 48)
    # The ball's centre voxel (i, j, k) = (24, 20, 12) sits at array[12, 20, 24] and maps back to itself.
    centreRas = (oblique_ijk_to_ras @ [24, 20, 12, 1])[:3]
    np.testing.assert_allclose(worldToIjk(oblique_volume, centreRas), [[24, 20, 12]], atol=1e-9)
    assert array[12, 20, 24] == 40 and array[0, 0, 0] == -800


def test_world_points_follow_the_volume_parent_transform(mrml_scene, oblique_volume, oblique_ijk_to_ras):
    angle = np.radians(10.0)
    volumeToWorld = np.array([[np.cos(angle), 0, np.sin(angle), 10.0], [0, 1, 0, -5.0],
                              [-np.sin(angle), 0, np.cos(angle), 3.0], [0, 0, 0, 1]])
    oblique_volume.SetAndObserveTransformNodeID(addLinearTransform(mrml_scene, volumeToWorld).GetID())
    ijk = np.array([[10.0, 15.0, 7.0], [30.5, 2.25, 20.0]])
    world = (homogeneous(ijk) @ (volumeToWorld @ oblique_ijk_to_ras).T)[:, :3]
    np.testing.assert_allclose(worldToIjk(oblique_volume, world), ijk, atol=1e-9)


def test_roi_rotated_with_the_volume_gives_its_exact_voxel_box(mrml_scene, oblique_volume, oblique_ijk_to_ras):
    roi = roiOnVolumeAxes(mrml_scene, oblique_ijk_to_ras, np.array([10.0, 5.0, 6.0]), np.array([20.0, 25.0, 9.4]))
    assertSameBox(promptBoxFromWorldPoints(oblique_volume, roiCornersWorld(roi)),
                  PromptBox(box=(10.0, 5.0, 20.0, 25.0), sliceK=8))  # centre k = 7.7


def test_axis_aligned_roi_on_an_oblique_volume_gives_the_bounding_box_of_its_corners(
        mrml_scene, oblique_volume, oblique_ijk_to_ras):
    centre = (oblique_ijk_to_ras @ [24, 20, 12, 1])[:3]
    objectToNode = np.eye(4)
    objectToNode[:3, 3] = centre
    roi = addRoi(mrml_scene, objectToNode, (12.0, 9.0, 6.0))
    corners = np.array([centre + np.array([x, y, z]) for x in (-6, 6) for y in (-4.5, 4.5) for z in (-3, 3)])
    np.testing.assert_allclose(np.sort(roiCornersWorld(roi), axis=0), np.sort(corners, axis=0), atol=1e-4)
    assertSameBox(promptBoxFromWorldPoints(oblique_volume, roiCornersWorld(roi)),
                  expectedBox(oblique_ijk_to_ras, corners, (24, 40, 48)))


def test_roi_under_a_transform_is_placed_in_world_coordinates(mrml_scene, oblique_volume, oblique_ijk_to_ras):
    shift = np.eye(4)
    shift[:3, 3] = (8.0, -3.0, 2.5)
    objectToNode = np.eye(4)
    objectToNode[:3, 3] = (oblique_ijk_to_ras @ [20, 18, 10, 1])[:3]
    roi = addRoi(mrml_scene, objectToNode, (10.0, 10.0, 5.0))
    roi.SetAndObserveTransformNodeID(addLinearTransform(mrml_scene, shift).GetID())
    worldCorners = np.array([objectToNode[:3, 3] + shift[:3, 3] + [x, y, z]
                             for x in (-5, 5) for y in (-5, 5) for z in (-2.5, 2.5)])
    assertSameBox(promptBoxFromWorldPoints(oblique_volume, roiCornersWorld(roi)),
                  expectedBox(oblique_ijk_to_ras, worldCorners, (24, 40, 48)))


def test_box_is_clipped_to_the_volume_and_the_slice_stays_inside(mrml_scene, oblique_volume, oblique_ijk_to_ras):
    roi = roiOnVolumeAxes(mrml_scene, oblique_ijk_to_ras, np.array([40.0, -6.0, 20.0]), np.array([60.0, 4.0, 30.0]))
    assertSameBox(promptBoxFromWorldPoints(oblique_volume, roiCornersWorld(roi)),
                  PromptBox(box=(40.0, 0.0, 47.0, 4.0), sliceK=23))


def test_roi_outside_the_volume_is_refused(mrml_scene, oblique_volume, oblique_ijk_to_ras):
    roi = roiOnVolumeAxes(mrml_scene, oblique_ijk_to_ras, np.array([60.0, 5.0, 6.0]), np.array([70.0, 25.0, 9.0]))
    with pytest.raises(InvalidBoxError, match="does not intersect the volume 'Oblique CT'"):
        promptBoxFromWorldPoints(oblique_volume, roiCornersWorld(roi))


@pytest.mark.parametrize("placed", [False, True])
def test_unplaced_or_zero_size_roi_is_refused(mrml_scene, placed):
    roi = mrml_scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Empty ROI")
    if placed:  # issue 11: a placed ROI of zero size was reported as "not placed" only
        roi.SetCenter(1.0, 2.0, 3.0)
        roi.SetSize(0.0, 0.0, 0.0)
    with pytest.raises(InvalidBoxError, match="has no extent yet \\(not placed, or of zero size\\).*drag its handles"):
        roiCornersWorld(roi)


def test_a_label_map_is_not_accepted_as_ct(mrml_scene):
    labelmap = mrml_scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Nodule label")
    slicer.util.updateVolumeFromArray(labelmap, np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="select a scalar volume"):
        checkScalarVolume(labelmap)


def test_lidc_ct_from_an_lps_file_matches_simpleitk(lidc_ct_node, lidc_ct_path):
    import SimpleITK as sitk

    image = sitk.ReadImage(str(lidc_ct_path))
    ijkToRas = ijkToRasMatrix(lidc_ct_node)
    for index in [(0, 0, 0), (511, 0, 132), (317, 364, 89)]:
        left, posterior, superior = image.TransformIndexToPhysicalPoint(index)
        np.testing.assert_allclose((ijkToRas @ [*index, 1])[:3], [-left, -posterior, superior], atol=1e-6)
    array = slicer.util.arrayFromVolume(lidc_ct_node)
    assert array.shape == (133, 512, 512)
    assert array[89, 364, 317] == sitk.GetArrayViewFromImage(image)[89, 364, 317]
    np.testing.assert_allclose(lidc_ct_node.GetSpacing(), image.GetSpacing())
