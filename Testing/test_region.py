"""The block of voxels one click can read (AmbiguousSAMLib/region.py): what it holds, and what it refuses.

A region is what travels to the inference server, so it must hold everything the segmenter reads (the result on
the region equals the result on the volume, tested with the real model in test_segmenter.py and test_server.py)
and a region that arrives inconsistent or with unusable voxels must be refused before any model work.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from AmbiguousSAMLib.errors import InvalidBoxError, InvalidImageError
from AmbiguousSAMLib.region import LesionWindow, check_region, lesion_region


def ct(shape: tuple[int, int, int] = (40, 300, 300)) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(-1000, 200, size=shape).astype(np.int16)


def test_the_region_is_the_lesion_window_through_the_followed_slices() -> None:
    volume = ct()
    region = lesion_region(volume, (100, 110, 140, 150), 20, spacing=(0.7, 0.7, 2.0))
    window = LesionWindow.for_box(region.box, region.spacing)
    assert window.side == 128  # the minimum crop: the box is 40 px, 2.7 x 40 = 108
    assert window.max_steps == round(0.6 * 40 * 0.7 / 2.0)  # 0.6 box diameters (mm) in slices
    assert window.origin == (130 - 64, 120 - 64)
    assert region.offset == (20 - window.max_steps, 66, 56)
    assert region.voxels.shape == (2 * window.max_steps + 1, 128, 128)
    np.testing.assert_array_equal(region.voxels, volume[20 - window.max_steps:20 + window.max_steps + 1, 66:194, 56:184])
    assert region.fill == float(volume.min()) and region.volume_shape == (40, 300, 300)
    assert not np.shares_memory(region.voxels, volume)


def test_a_region_at_the_volume_corner_is_clipped_to_the_volume() -> None:
    volume = ct((10, 200, 200))
    region = lesion_region(volume, (-5.0, 2.0, 30.0, 40.0), 9, spacing=(1.0, 1.0, 5.0))
    assert region.box == (0.0, 2.0, 30.0, 40.0)
    assert region.window.origin[0] < 0 and region.window.origin[1] < 0  # padded with the fill value when cropped
    assert region.window.max_steps == 5 and region.offset == (4, 0, 0)
    assert region.voxels.shape[0] == region.window.max_steps + 1  # no slices beyond the last one
    assert region.has_slice(9) and not region.has_slice(10)
    np.testing.assert_array_equal(region.plane(9), volume[9, :region.voxels.shape[1], :region.voxels.shape[2]])


def test_nan_voxels_near_the_lesion_are_refused_with_their_position() -> None:
    volume = ct().astype(np.float32)
    volume[21, 130, 120] = np.nan
    with pytest.raises(InvalidImageError, match=r"1 NaN or infinite voxel.*\(21, 130, 120\)"):
        lesion_region(volume, (100, 110, 140, 150), 20)


def test_nan_far_from_the_lesion_does_not_block_it() -> None:
    volume = ct().astype(np.float32)
    volume[0, 0, 0] = np.nan
    region = lesion_region(volume, (150, 150, 190, 190), 30)
    assert np.isfinite(region.voxels).all()


@pytest.mark.parametrize("change, error, message", [
    ({"offset": (0, 0, 0)}, InvalidImageError, "build it with lesion_region"),
    ({"voxels": np.zeros((3, 128, 128), np.int16)}, InvalidImageError, "build it with lesion_region"),
    ({"box": (100.0, 110.0, 400.0, 150.0)}, InvalidBoxError, "reaches beyond"),
    ({"slice_k": 99}, InvalidBoxError, "outside the volume's 40 slices"),
    ({"fill": float("-inf")}, InvalidImageError, "darkest voxel is not a finite number"),
    ({"voxels": None}, InvalidImageError, "dtype object"),
])
def test_an_inconsistent_region_is_refused(change: dict, error: type, message: str) -> None:
    region = lesion_region(ct(), (100, 110, 140, 150), 20)
    if change.get("voxels", 1) is None:
        change = {"voxels": np.empty(region.voxels.shape, dtype=object)}
    with pytest.raises(error, match=message):
        check_region(dataclasses.replace(region, **change))


@pytest.mark.parametrize("spacing", [(0.0, 1.0, 1.0), (1.0, float("nan"), 1.0), (1.0, 1.0, -2.0)])
def test_impossible_spacing_is_refused(spacing: tuple[float, float, float]) -> None:
    with pytest.raises(InvalidImageError, match="spacing"):
        lesion_region(ct(), (100, 110, 140, 150), 20, spacing=spacing)
