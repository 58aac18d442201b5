"""The part of a CT volume that one click can read, cut out before any model work.

The segmenter crops every slice with one window fixed per lesion (centred on the clicked box, ~2.7x its size,
at least 128 px) and follows the lesion at most a bounded number of slices up and down. Everything it can ever
read is therefore known from the box alone: this module computes that block once, validates the volume and the
box, and copies only that block. A full chest CT is ~70 MB; the block is ~1 MB, which is what travels to the
inference server (a separate process, possibly a remote GPU), and the in-process path segments the very same
block, so both give identical results by construction.

Numpy order (k, j, i) throughout; boxes are (i0, j0, i1, j1) in continuous voxel indices (i = column, j = row).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from .errors import InvalidBoxError, InvalidImageError
from .limits import check_box_size

#: The training crops were 128 px with the nodule at ~1/2.7 of the side; inference crops match that.
MIN_CROP = 128
CROP_TO_BOX = 2.7
#: A lesion is followed at most this many box diameters (mm) above and below the clicked slice: nodules are
#: roughly as deep as they are wide, and SAM, given a box, always finds *something* (vessels, pleura).
MAX_HALF_EXTENT_PER_DIAMETER = 0.6
#: Volumes whose darkest voxel is above this are not CT in HU (CT has air at about -1000 HU).
CT_AIR_THRESHOLD = -500.0
#: A CT box whose voxels (1st to 99th percentile) span less than this many HU holds no lesion to outline: a
#: nodule differs from lung parenchyma by hundreds of HU, while the model, given any box, outlines *something*.
MIN_BOX_CONTRAST_HU = 20.0
#: Each crop is min-max scaled, as the training crops were; a voxel this many times further from the crop's
#: median than the crop's own 0.1-99.9 % spread is corrupt data and would scale the rest of the crop to one grey.
MAX_OUTLIER_SPREADS = 100.0


@dataclass(frozen=True)
class LesionWindow:
    """Where one lesion's slices are cropped: the same square window on every slice, and how far to follow it."""

    #: (j, i) of the window's first pixel in the full volume; may be negative (padded with the fill value).
    origin: tuple[int, int]
    #: Side of the square window in pixels.
    side: int
    #: Slices followed at most above and below the clicked one.
    max_steps: int

    @staticmethod
    def for_box(box: tuple[float, float, float, float], spacing: tuple[float, float, float]) -> "LesionWindow":
        """The window of a validated box: the one crop rule shared by the region and the segmenter."""
        i0, j0, i1, j1 = box
        side = max(MIN_CROP, int(math.ceil(CROP_TO_BOX * max(i1 - i0, j1 - j0))))
        centre = ((j0 + j1) / 2, (i0 + i1) / 2)
        origin = (int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2)))
        diameter_mm = max((i1 - i0) * float(spacing[0]), (j1 - j0) * float(spacing[1]))
        max_steps = max(1, int(round(MAX_HALF_EXTENT_PER_DIAMETER * diameter_mm / max(float(spacing[2]), 1e-3))))
        return LesionWindow(origin, side, max_steps)


@dataclass(frozen=True)
class LesionRegion:
    """The part of a CT volume one click can read: everything the segmenter needs, nothing more."""

    #: (dk, dj, di) copy of the volume's voxels (original dtype) that the segmenter may read.
    voxels: np.ndarray
    #: (k0, j0, i0) of voxels[0, 0, 0] in the full volume.
    offset: tuple[int, int, int]
    #: (nk, nj, ni) of the full volume.
    volume_shape: tuple[int, int, int]
    #: (si, sj, sk) voxel size in mm.
    spacing: tuple[float, float, float]
    #: (i0, j0, i1, j1) in the full volume's voxel indices, validated and clipped to the volume.
    box: tuple[float, float, float, float]
    #: The axial slice the box is drawn on (full-volume index).
    slice_k: int
    #: The whole volume's darkest voxel: it pads crops beyond the volume's edges, as the training crops were.
    fill: float

    @property
    def window(self) -> LesionWindow:
        return LesionWindow.for_box(self.box, self.spacing)

    def plane(self, k: int) -> np.ndarray:
        """The region's part of full-volume slice k, as a (dj, di) array."""
        return self.voxels[k - self.offset[0]]

    def has_slice(self, k: int) -> bool:
        return self.offset[0] <= k < self.offset[0] + self.voxels.shape[0]


def validate_volume(volume: np.ndarray, allow_non_ct: bool = False) -> tuple[np.ndarray, float]:
    """Refuse what cannot be a CT volume before anything is copied or encoded; return it with its darkest
    finite voxel (one pass over a 35 M-voxel CT serves both the CT check and the crops' padding)."""
    volume = np.asarray(volume)
    if volume.ndim != 3:
        hint = " It looks like a single slice; load the whole series." if volume.ndim == 2 else \
            " Pick one channel/time point first." if volume.ndim == 4 else ""
        raise InvalidImageError(f"Expected a 3D volume (k, j, i) but got shape {volume.shape}.{hint}")
    if volume.dtype == bool or not np.issubdtype(volume.dtype, np.number) or np.iscomplexobj(volume):
        raise InvalidImageError(f"The volume has dtype {volume.dtype}; a CT in HU (integers or floats) is expected.")
    if min(volume.shape[1:]) < 8:
        raise InvalidImageError(f"The volume's slices {volume.shape[1:]} are too small to segment.")
    low = darkest_voxel(volume)
    if not math.isfinite(low):
        raise InvalidImageError("The volume holds no finite voxel (all NaN or infinite); fix the volume first.")
    if not allow_non_ct and low > CT_AIR_THRESHOLD:
        raise InvalidImageError(
            f"The volume's darkest voxel is {low:g}, but CT in Hounsfield units has air near -1000. It may be MR, "
            f"or CT stored without its rescale (raw 0..4095 values: load it with the DICOM rescale slope and "
            f"intercept, or subtract 1024); AmbiguousSAM's head was trained on chest CT. To segment it anyway "
            f"(min-max normalisation per crop): --allow-non-ct on the command line, allow_non_ct=True in Python, "
            f"allowNonCt=True in Slicer's AmbiguousSAMLogic().process."
        )
    return volume, low


def validate_volume_box(box_ijk: tuple[float, float, float, float], slice_k: int,
                        shape: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """Check a box (i0, j0, i1, j1) on slice `slice_k` of a volume of `shape` and clip it to the slice."""
    try:
        box = np.asarray(box_ijk, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        box = np.array([np.nan])
    if box.shape != (4,) or not np.isfinite(box).all():
        shown = ", ".join(f"{value:g}" for value in box.tolist()) if box.shape != (1,) or np.isfinite(box).all() \
            else repr(box_ijk)
        raise InvalidBoxError(f"A box is four finite numbers (i0, j0, i1, j1); got ({shown}).")
    nk, nj, ni = shape
    slice_k = check_slice_index(slice_k)
    if not 0 <= slice_k < nk:
        raise InvalidBoxError(f"Slice {slice_k} is outside the volume's {nk} slices (0..{nk - 1}).")
    i0, j0, i1, j1 = box
    if i1 < i0 or j1 < j0:
        raise InvalidBoxError(f"The box {box.tolist()} is inverted; give (i0, j0, i1, j1) with i0 <= i1, j0 <= j1.")
    if i1 - i0 < 1 or j1 - j0 < 1:
        raise InvalidBoxError(f"The box {box.tolist()} has zero size; drag a box around the whole lesion.")
    if i1 < 0 or j1 < 0 or i0 > ni - 1 or j0 > nj - 1:
        raise InvalidBoxError(f"The box {box.tolist()} lies outside the {ni} x {nj} slice; draw it on the lesion.")
    return (float(max(i0, 0)), float(max(j0, 0)), float(min(i1, ni - 1)), float(min(j1, nj - 1)))


def check_slice_index(slice_k: object) -> int:
    """An axial slice index as an int; a fractional or non-numeric one is refused rather than truncated."""
    if isinstance(slice_k, (bool, np.bool_)) or not isinstance(slice_k, (numbers.Integral, numbers.Real)) \
            or not math.isfinite(float(slice_k)) or float(slice_k) != int(slice_k):
        raise InvalidBoxError(f"The slice must be a whole number (an index k of the volume's axial slices); got "
                              f"{slice_k!r}.")
    return int(slice_k)


def check_spacing(spacing: object) -> tuple[float, float, float]:
    """Voxel spacing (si, sj, sk) as three positive finite floats (mm)."""
    try:
        values = tuple(float(s) for s in spacing)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = ()
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise InvalidImageError(f"The voxel spacing {spacing!r} must be three positive numbers (mm).")
    return values  # type: ignore[return-value]


def region_bounds(window: LesionWindow, slice_k: int, shape: tuple[int, int, int]) -> tuple[slice, slice, slice]:
    """The (k, j, i) block of a volume of `shape` that a lesion window can read."""
    nk, nj, ni = shape
    (j0, i0), side = window.origin, window.side
    return (slice(max(slice_k - window.max_steps, 0), min(slice_k + window.max_steps + 1, nk)),
            slice(min(max(j0, 0), nj), min(max(j0 + side, 0), nj)),
            slice(min(max(i0, 0), ni), min(max(i0 + side, 0), ni)))


def darkest_voxel(volume: np.ndarray) -> float:
    """The lowest finite voxel value: NaN or infinity elsewhere in the volume must not become the padding."""
    if np.issubdtype(volume.dtype, np.integer):
        return float(volume.min())
    return float(np.min(volume, where=np.isfinite(volume), initial=np.inf))


def lesion_region(volume: np.ndarray, box_ijk: tuple[float, float, float, float], slice_k: int,
                  spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), allow_non_ct: bool = False) -> LesionRegion:
    """Validate the volume and the box, and copy the block of voxels that segmenting this lesion can read."""
    volume, darkest = validate_volume(volume, allow_non_ct)
    box = validate_volume_box(box_ijk, slice_k, volume.shape)
    spacing, slice_k = check_spacing(spacing), check_slice_index(slice_k)
    bounds = region_bounds(LesionWindow.for_box(box, spacing), slice_k, volume.shape)
    region = LesionRegion(voxels=np.array(volume[bounds], copy=True),
                          offset=tuple(int(b.start) for b in bounds), volume_shape=tuple(int(n) for n in volume.shape),
                          spacing=spacing, box=box, slice_k=slice_k, fill=darkest)
    check_region(region)
    return region


def check_region(region: LesionRegion) -> None:
    """Refuse a region that is inconsistent or holds unusable voxels (a region may arrive over the network).

    Everything is checked here, before any model work: the block must be exactly the one its box reads, and it
    must hold finite numbers only.
    """
    shape = tuple(region.volume_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise InvalidImageError(f"The volume shape {shape} is not a 3D shape (k, j, i).")
    box = validate_volume_box(region.box, region.slice_k, shape)
    check_spacing(region.spacing)
    if box != tuple(region.box):
        raise InvalidBoxError(f"The box {list(region.box)} reaches beyond the {shape[2]} x {shape[1]} slice; "
                              "clip it to the volume.")
    bounds = region_bounds(LesionWindow.for_box(box, region.spacing), region.slice_k, shape)
    expected_offset = tuple(int(b.start) for b in bounds)
    expected_shape = tuple(int(b.stop - b.start) for b in bounds)
    voxels = region.voxels
    if tuple(region.offset) != expected_offset or tuple(voxels.shape) != expected_shape:
        raise InvalidImageError(
            f"The region holds a {tuple(voxels.shape)} block at {tuple(region.offset)}, but its box needs the "
            f"{expected_shape} block at {expected_offset}; build it with lesion_region()."
        )
    if voxels.dtype == bool or not np.issubdtype(voxels.dtype, np.number) or np.iscomplexobj(voxels):
        raise InvalidImageError(f"The volume has dtype {voxels.dtype}; a CT in HU (integers or floats) is expected.")
    finite = np.isfinite(voxels)
    if not finite.all():
        bad = np.argwhere(~finite)[0] + np.array(region.offset)
        raise InvalidImageError(
            f"The volume holds {int((~finite).sum())} NaN or infinite voxel(s) around the lesion (the first at "
            f"(k, j, i) = {tuple(int(v) for v in bad)}); fix or mask them in the volume first."
        )
    if not math.isfinite(region.fill):
        raise InvalidImageError("The volume's darkest voxel is not a finite number; fix the volume first.")
    check_box_size(box, region.spacing)
    check_content(region)


def check_content(region: LesionRegion) -> None:
    """Refuse a box with nothing in it, and a crop that one corrupt voxel would blank.

    Both would otherwise come back as a confident lesion (a constant -1000 HU volume gave four non-empty
    candidates of about a real nodule's size) or as masks on a featureless grey crop.
    """
    plane = region.plane(region.slice_k).astype(np.float64)
    i0, j0, i1, j1 = region.box
    _, oj, oi = region.offset
    inside = plane[int(math.floor(j0)) - oj:int(math.ceil(j1)) - oj + 1,
                   int(math.floor(i0)) - oi:int(math.ceil(i1)) - oi + 1]
    low, high = np.percentile(inside, [1, 99])
    looks_like_hu = region.fill <= CT_AIR_THRESHOLD
    if (looks_like_hu and high - low < MIN_BOX_CONTRAST_HU) or high <= low:
        raise InvalidImageError(
            f"The box on slice {region.slice_k} holds no structure: its voxels span only {high - low:.3g}"
            f"{' HU' if looks_like_hu else ''} (1st-99th percentile, between {low:.6g} and {high:.6g}). "
            "Check that the box is on the lesion and that the volume's voxels were loaded correctly."
        )
    spread_low, median, spread_high = np.percentile(plane, [0.1, 50, 99.9])
    spread = max(spread_high - spread_low, 1e-6)
    distance = np.abs(plane - median)
    worst = np.unravel_index(int(np.argmax(distance)), plane.shape)
    if distance[worst] > MAX_OUTLIER_SPREADS * spread:
        k = region.slice_k
        raise InvalidImageError(
            f"Voxel (k, j, i) = ({k}, {worst[0] + oj}, {worst[1] + oi}) holds {plane[worst]:.6g}, far outside the "
            f"rest of the slice around the lesion ({spread_low:.6g} to {spread_high:.6g}); it looks corrupt and would "
            "wash out the image the model sees. Fix or mask that voxel in the volume first."
        )
