"""Read CT volumes from disk and turn physical box corners into the voxel box the segmenter takes.

Files on disk are LPS (DICOM's convention); Slicer shows RAS. This is the one place the core converts:
RAS = diag(-1, -1, 1) * LPS. Arrays are numpy (k, j, i), SimpleITK's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InvalidBoxError, InvalidImageError

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class Volume:
    """A volume as numpy (k, j, i) plus the SimpleITK image that carries its geometry."""

    array: np.ndarray
    image: sitk.Image

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(si, sj, sk) in mm."""
        return tuple(float(s) for s in self.image.GetSpacing())  # type: ignore[return-value]


def read_volume(path: str | Path) -> Volume:
    """Read .nrrd/.nii(.gz)/.mha or a folder holding one DICOM series; refuse anything that is not 3D."""
    path = Path(path)
    try:
        if path.is_dir():
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(str(path))
            if not series:
                raise InvalidImageError(f"{path} holds no DICOM series. Point to the folder of one CT series.")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path), series[0]))
            image = reader.Execute()
        elif not path.is_file():
            raise InvalidImageError(f"{path} does not exist.")
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InvalidImageError(
            f"Could not read {path} as an image ({str(error).strip().splitlines()[-1]}). Supported: "
            f"{', '.join(SUFFIXES)} or a DICOM series folder."
        ) from error
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InvalidImageError(
            f"{path} is a {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} component(s); "
            "AmbiguousSAM needs one 3D scalar volume (a whole CT series)."
        )
    return Volume(sitk.GetArrayFromImage(image), image)


def physical_box_to_ijk(image: sitk.Image, corner_a: tuple[float, float, float], corner_b: tuple[float, float, float],
                        space: str = "LPS") -> tuple[tuple[float, float, float, float], int]:
    """Two box corners in LPS or RAS (mm) -> (i0, j0, i1, j1) and the axial slice k at their middle."""
    corners = np.array([corner_a, corner_b], dtype=np.float64)
    if space.upper() == "RAS":
        corners = corners @ RAS_TO_LPS.T
    elif space.upper() != "LPS":
        raise ValueError("space must be 'LPS' or 'RAS'")
    # All 8 corners of the axis-aligned physical box, so oblique volumes get the box's full footprint.
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    points = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in points])
    slice_k = int(round(float(ijk[:, 2].mean())))
    if not 0 <= slice_k < image.GetSize()[2]:
        raise InvalidBoxError(f"The box's centre lies on slice {slice_k}, outside the volume (0..{image.GetSize()[2] - 1}).")
    box = (float(ijk[:, 0].min()), float(ijk[:, 1].min()), float(ijk[:, 0].max()), float(ijk[:, 1].max()))
    return box, slice_k
