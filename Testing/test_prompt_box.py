"""One rule turns box corners into (IJK box, slice): the command line and Slicer give the same prompt for one box.

The command line reads a file with SimpleITK (LPS) and takes corners in LPS or RAS mm; Slicer takes world RAS
points on a volume node. Here a Slicer volume node is saved with Slicer's own storage node and read back by the
command line's reader, as a radiologist's CT travels between the two, and the same physical box goes through both
paths: the half-slice case (a box over slices 10-11, which used to land on 10 from the command line and on 11 in
Slicer) and the oblique anisotropic volume of conftest.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import slicer

from AmbiguousSAMLib.errors import InvalidBoxError
from AmbiguousSAMLib.prompt_box import prompt_box_from_ijk_points
from AmbiguousSAMLib.volume_io import Volume, physical_box_to_ijk, read_volume
from AmbiguousSAMLogic.geometry import promptBoxFromWorldPoints

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def savedAndReadBack(volumeNode, folder: Path) -> Volume:
    """The volume node written by Slicer's volume storage node and read back by the command line's reader."""
    path = folder / f"{volumeNode.GetName().replace(' ', '_')}.nrrd"
    storageNode = volumeNode.GetScene().AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storageNode.SetFileName(str(path))
    assert storageNode.WriteData(volumeNode), f"Slicer could not write {path}"
    return read_volume(path)


def boxCornersRas(ijkToRas: np.ndarray, cornerA: tuple[float, ...], cornerB: tuple[float, ...]) -> np.ndarray:
    """The 8 corners, in RAS, of the axis-aligned physical box spanned by two voxel positions (i, j, k)."""
    a, b = ((ijkToRas @ [*corner, 1.0])[:3] for corner in (cornerA, cornerB))
    low, high = np.minimum(a, b), np.maximum(a, b)
    return np.array([[x, y, z] for x in (low[0], high[0]) for y in (low[1], high[1]) for z in (low[2], high[2])])


def bothPaths(volumeNode, image, cornersRas: np.ndarray):
    """(box, slice) from the command line (LPS corners and RAS corners) and from Slicer (world RAS points)."""
    low, high = cornersRas.min(axis=0), cornersRas.max(axis=0)
    fromLps = physical_box_to_ijk(image, tuple(RAS_TO_LPS @ low), tuple(RAS_TO_LPS @ high), "LPS")
    fromRas = physical_box_to_ijk(image, tuple(low), tuple(high), "RAS")
    prompt = promptBoxFromWorldPoints(volumeNode, cornersRas)
    return fromLps, fromRas, (prompt.box, prompt.sliceK)


def assertSamePrompt(*prompts) -> None:
    """Equal slices and boxes equal to 1e-6 voxel (two libraries invert the same matrix in double precision)."""
    (firstBox, firstSlice), *others = prompts
    for box, sliceK in others:
        assert sliceK == firstSlice
        np.testing.assert_allclose(box, firstBox, atol=1e-6)


@pytest.mark.parametrize("lowK, highK, expected", [(10.0, 11.0, 11), (8.0, 9.0, 9), (10.0, 10.9, 10), (3.0, 4.6, 4)])
def test_the_slice_is_the_centre_rounded_half_up(lowK, highK, expected):
    # Python's round() gives 10 and 8 for the first two (half to even): the rule Slicer never used.
    _, sliceK = prompt_box_from_ijk_points([[5.0, 5.0, lowK], [15.0, 20.0, highK]], (40, 30, 24))
    assert sliceK == expected


def test_noise_just_below_a_half_still_rounds_up_but_a_real_difference_does_not():
    dims = (40, 30, 24)
    assert prompt_box_from_ijk_points([[5, 5, 10.0], [15, 20, 10.9999992]], dims)[1] == 11
    assert prompt_box_from_ijk_points([[5, 5, 10.0], [15, 20, 10.99]], dims)[1] == 10


def test_the_box_is_the_bounding_box_of_the_points_clipped_to_the_volume():
    points = [[-3.0, 4.5, 30.0], [12.25, -1.0, 18.0], [50.0, 9.0, 22.0]]
    box, sliceK = prompt_box_from_ijk_points(points, (40, 30, 24))
    assert box == (0.0, 0.0, 39.0, 9.0)
    assert sliceK == 23, "centre k = 24 lies past the last slice and is clipped to it"


def test_a_box_beside_the_volume_is_refused_with_both_extents():
    with pytest.raises(InvalidBoxError) as error:
        prompt_box_from_ijk_points([[45.0, 5.0, 2.0], [60.0, 9.0, 3.0]], (40, 30, 24), "Chest CT")
    assert str(error.value) == ("The box (i 45.0..60.0, j 5.0..9.0, k 2.0..3.0) does not intersect the volume "
                                "'Chest CT' (i 0..39, j 0..29, k 0..23). Place the box over the lesion on that volume.")


@pytest.mark.parametrize("points, message", [
    ([[1.0, np.nan, 2.0], [5.0, 6.0, 3.0]], r"must be finite numbers; one of them is \[1.0, nan, 2.0\]"),
    ([[1.0, 2.0]], r"\(N, 3\) corner points .* shape \(1, 2\)"),
    (np.zeros((0, 3)), r"shape \(0, 3\)"),
])
def test_malformed_points_are_refused_in_plain_numbers(points, message):
    with pytest.raises(InvalidBoxError, match=message) as error:
        prompt_box_from_ijk_points(points, (40, 30, 24))
    assert "np.float64" not in str(error.value)


@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_an_infinite_physical_corner_is_named_as_given(oblique_volume, tmp_path, space):
    image = savedAndReadBack(oblique_volume, tmp_path).image
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning before the message
        with pytest.raises(InvalidBoxError, match=r"six finite numbers in mm .*; got inf 0 0 1 1 1\."):
            physical_box_to_ijk(image, (float("inf"), 0.0, 0.0), (1.0, 1.0, 1.0), space)


def test_corners_in_an_unknown_space_are_refused(oblique_volume, tmp_path):
    image = savedAndReadBack(oblique_volume, tmp_path).image
    with pytest.raises(InvalidBoxError, match="'LPS' or 'RAS' coordinates, not 'XYZ'"):
        physical_box_to_ijk(image, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "XYZ")


def test_a_box_over_slices_10_and_11_lands_on_slice_11_from_the_command_line_and_from_slicer(mrml_scene, tmp_path):
    volumeNode = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Axial CT")
    volumeNode.SetSpacing(0.8, 0.8, 2.5)
    volumeNode.SetOrigin(-150.0, -120.0, -300.0)
    slicer.util.updateVolumeFromArray(volumeNode, np.full((20, 48, 64), -900, dtype=np.int16))
    image = savedAndReadBack(volumeNode, tmp_path).image
    ijkToRas = np.eye(4)
    ijkToRas[:3, :3] = np.diag([0.8, 0.8, 2.5])
    ijkToRas[:3, 3] = (-150.0, -120.0, -300.0)

    prompts = bothPaths(volumeNode, image, boxCornersRas(ijkToRas, (10.0, 12.0, 10.0), (30.0, 25.0, 11.0)))

    assertSamePrompt(((10.0, 12.0, 30.0, 25.0), 11), *prompts)


def test_an_oblique_anisotropic_volume_gives_the_same_box_through_both_paths(oblique_volume, oblique_ijk_to_ras,
                                                                             tmp_path):
    image = savedAndReadBack(oblique_volume, tmp_path).image
    np.testing.assert_allclose(image.TransformIndexToPhysicalPoint((24, 20, 12)),
                               RAS_TO_LPS @ (oblique_ijk_to_ras @ [24, 20, 12, 1])[:3], atol=1e-4)
    corners = boxCornersRas(oblique_ijk_to_ras, (18.0, 14.0, 10.0), (30.0, 26.0, 13.0))

    prompts = bothPaths(oblique_volume, image, corners)

    # Expected, independently of both: the corners through the inverse of conftest's written-out matrix.
    ijk = (np.hstack([corners, np.ones((8, 1))]) @ np.linalg.inv(oblique_ijk_to_ras).T)[:, :3]
    low, high = np.clip(ijk.min(0), 0, [47, 39, 23]), np.clip(ijk.max(0), 0, [47, 39, 23])
    expected = ((low[0], low[1], high[0], high[1]), int(np.floor((ijk[:, 2].min() + ijk[:, 2].max()) / 2 + 0.5)))
    assert expected[0][1] < 13.0 and expected[0][3] > 27.0, "on the oblique grid the box is wider than 14..26 in j"
    assertSamePrompt(expected, *prompts)
