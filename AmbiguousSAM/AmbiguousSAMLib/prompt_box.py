"""The one rule that turns box corners into the prompt the segmenter takes: (i0, j0, i1, j1) on one axial slice.

The command line (corners in LPS or RAS mm, mapped by SimpleITK) and Slicer (an ROI or a rectangle in world RAS,
mapped through transforms) reach this function with the corners already in the volume's continuous voxel
indices, so the same physical box gives the same voxel box and the same slice wherever it was drawn. Before this
module the two paths rounded a centre between two slices differently (Python's half-to-even against half-up),
and a box over slices 10-11 landed on 10 from the command line and on 11 in Slicer.

Indices are continuous and voxel-centred: voxel (i, j, k) covers [i - 0.5, i + 0.5] and so on, the convention of
Slicer's IJK-to-RAS matrices and of SimpleITK's continuous indices.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import InvalidBoxError

#: A centre this close below a half (in voxels) counts as the half. Corners pass through matrix inversions and,
#: in Slicer, single-precision ROI geometry, so a box drawn from slice 10 to slice 11 arrives with its centre at
#: 10.4999996 as often as at 10.5; without the tolerance such noise alone would choose the slice.
HALF_TOLERANCE = 1e-3


def _span(low: float, high: float) -> str:
    return f"{low:.1f}..{high:.1f}"


def prompt_box_from_ijk_points(points_ijk: np.ndarray, dims_ijk: tuple[int, int, int],
                               volume_name: str | None = None) -> tuple[tuple[float, float, float, float], int]:
    """(N, 3) continuous (i, j, k) points and the volume's (ni, nj, nk) -> the box (i0, j0, i1, j1) and its slice.

    The box is the points' bounding box clipped to the volume; the slice is the bounding box's centre rounded
    half up (floor(centre + 0.5)) and clipped to the volume. A box that misses the volume is refused.
    """
    points = np.asarray(points_ijk, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise InvalidBoxError(f"A box is given by (N, 3) corner points (i, j, k); got an array of shape "
                              f"{points.shape}.")
    if not np.isfinite(points).all():
        bad = [float(value) for value in points[~np.isfinite(points).all(axis=1)][0]]
        raise InvalidBoxError(f"The box's corners must be finite numbers; one of them is {bad}. Give real coordinates.")
    dims = np.asarray(dims_ijk, dtype=np.float64)
    low, high = points.min(axis=0), points.max(axis=0)
    if np.any(high < -0.5) or np.any(low > dims - 0.5):
        name = f" '{volume_name}'" if volume_name else ""
        raise InvalidBoxError(
            f"The box (i {_span(low[0], high[0])}, j {_span(low[1], high[1])}, k {_span(low[2], high[2])}) does not "
            f"intersect the volume{name} (i 0..{int(dims[0]) - 1}, j 0..{int(dims[1]) - 1}, k 0..{int(dims[2]) - 1}). "
            "Place the box over the lesion on that volume."
        )
    first, last = np.clip(low, 0, dims - 1), np.clip(high, 0, dims - 1)
    centre_k = (low[2] + high[2]) / 2
    slice_k = min(max(math.floor(centre_k + 0.5 + HALF_TOLERANCE), 0), int(dims[2]) - 1)
    return (float(first[0]), float(first[1]), float(last[0]), float(last[1])), int(slice_k)
