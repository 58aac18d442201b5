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
from .prompt_box import prompt_box_from_ijk_points

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")


@dataclass
class Volume:
    """A volume as numpy (k, j, i) plus the SimpleITK image that carries its geometry."""

    array: np.ndarray
    image: sitk.Image
    #: The DICOM files of slices k = 0, 1, ... when read from a DICOM folder (empty otherwise): what DICOM outputs
    #: reference.
    files: tuple[str, ...] = ()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(si, sj, sk) in mm."""
        return tuple(float(s) for s in self.image.GetSpacing())  # type: ignore[return-value]


def read_volume(path: str | Path, series_uid: str | None = None, allow_non_ct: bool = False) -> Volume:
    """Read .nrrd/.nii(.gz)/.mha or a folder holding one DICOM series; refuse anything that is not 3D.

    A DICOM folder holding several series needs `series_uid` to say which one; a DICOM series that is not CT is
    refused unless `allow_non_ct` (the model knows CT in HU only).
    """
    path = Path(path)
    files: tuple[str, ...] = ()
    if series_uid is not None and not path.is_dir():
        raise InvalidImageError(f"A series UID ({series_uid}) chooses a series of a DICOM folder, but {path} is not "
                                "a folder. Leave out --series-uid (series_uid=) for a file.")
    try:
        if path.is_dir():
            files = check_dicom_series(path, series_uid, allow_non_ct)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
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
    return Volume(sitk.GetArrayFromImage(image), image, files)


def check_dicom_series(folder: str | Path, series_uid: str | None = None, allow_non_ct: bool = False
                       ) -> tuple[str, ...]:
    """Every refusal of a DICOM folder that its headers can tell (which series, evenly spaced slices, CT), without
    reading a voxel: `read_volume` runs it, and so does `segment` for each input before the model is built, so a
    bad folder exits fast. Returns the series' files in slice order."""
    folder = Path(folder)
    files = series_files(folder, series_uid)
    check_slice_positions(folder, files)
    check_modality(folder, files[0], allow_non_ct)
    return files


def _series_ids_quietly(reader: sitk.ImageSeriesReader, folder: Path) -> tuple[str, ...]:
    """The folder's DICOM series UIDs, without ITK's "No Series were found" warning on stderr: a folder with none
    gets this module's own message, and ITK's line before it (with a source path and an address) reads like a
    crash. The user's (or Slicer's) warning setting is put back as it was."""
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return reader.GetGDCMSeriesIDs(str(folder))
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def series_files(folder: Path, series_uid: str | None = None) -> tuple[str, ...]:
    """The files of the folder's one DICOM series, or of series `series_uid`, in slice order (GDCM's: along the
    slice normal); cheap enough (headers only) to check a request before any model work."""
    reader = sitk.ImageSeriesReader()
    series = _series_ids_quietly(reader, folder)
    if not series:
        raise InvalidImageError(f"{folder} holds no DICOM series. Point to the folder of one CT series.")
    if series_uid is None and len(series) == 1:
        return reader.GetGDCMSeriesFileNames(str(folder), series[0])
    listed = ", ".join(f"{uid} ({len(reader.GetGDCMSeriesFileNames(str(folder), uid))} files)" for uid in series)
    if series_uid is None:
        raise InvalidImageError(
            f"{folder} holds {len(series)} DICOM series ({listed}); AmbiguousSAM will not guess which one is "
            "meant. Choose one with --series-uid UID (series_uid= in Python), or copy the CT series you want into a "
            "folder of its own and point to that folder."
        )
    if series_uid not in series:
        raise InvalidImageError(f"{folder} holds no DICOM series {series_uid}; it holds {listed}. Copy one of these "
                                "UIDs to --series-uid.")
    return reader.GetGDCMSeriesFileNames(str(folder), series_uid)


def check_modality(folder: Path, file: str, allow_non_ct: bool) -> None:
    """Refuse a DICOM series that is not CT (an MR or PET series has no Hounsfield units), unless allowed; its
    Modality header says so before a voxel is read."""
    import pydicom

    modality = str(getattr(pydicom.dcmread(file, stop_before_pixels=True), "Modality", "") or "unknown")
    if modality != "CT" and not allow_non_ct:
        raise InvalidImageError(
            f"The DICOM series in {folder} is {modality}, not CT. AmbiguousSAM's model was trained on CT in "
            "Hounsfield units; choose the CT series, or pass --allow-non-ct (allow_non_ct=True in Python) to "
            "segment it anyway."
        )


def check_slice_positions(folder: Path, files: tuple[str, ...]) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced (a slice missing, two acquisitions mixed).

    SimpleITK reads such a series with one averaged slice spacing and only a log warning, which puts every slice
    after a gap at the wrong position: masks and millimetres would be silently wrong.
    """
    import pydicom

    positions = []
    for name in files:
        header = pydicom.dcmread(name, stop_before_pixels=True)
        orientation = np.array(getattr(header, "ImageOrientationPatient", [1, 0, 0, 0, 1, 0]), dtype=np.float64)
        normal = np.cross(orientation[:3], orientation[3:])
        position = getattr(header, "ImagePositionPatient", None)
        if position is None:
            raise InvalidImageError(f"{Path(name).name} in {folder} has no slice position (ImagePositionPatient); "
                                    "AmbiguousSAM needs a CT series with its geometry.")
        positions.append(float(np.dot(normal, np.array(position, dtype=np.float64))))
    if len(positions) < 2:
        return
    gaps = np.diff(np.sort(positions))
    typical = float(np.median(gaps))
    worst = int(np.argmax(np.abs(gaps - typical)))
    if typical <= 0 or abs(gaps[worst] - typical) > 0.01 * typical + 1e-3:
        at = np.sort(positions)[worst]
        raise InvalidImageError(
            f"The DICOM series in {folder} is not evenly spaced: {gaps[worst]:.3g} mm between the slices at "
            f"{at:.2f} and {at + gaps[worst]:.2f} mm, where the others are {typical:.3g} mm apart (a slice is "
            "missing, or two acquisitions are mixed). Export the complete series again."
        )


def physical_box_to_ijk(image: sitk.Image, corner_a: tuple[float, float, float], corner_b: tuple[float, float, float],
                        space: str = "LPS") -> tuple[tuple[float, float, float, float], int]:
    """Two box corners in LPS or RAS (mm) -> (i0, j0, i1, j1) and the axial slice k at their middle.

    The corners span an axis-aligned physical box; its 8 corners go to continuous IJK, so an oblique volume gets
    the box's full footprint, and `prompt_box_from_ijk_points` (the rule Slicer uses too) makes the prompt.
    """
    corners = np.array([corner_a, corner_b], dtype=np.float64)
    if not np.isfinite(corners).all():  # checked before the RAS flip, which would turn an inf into a nan
        given = " ".join(f"{float(value):g}" for value in corners.ravel())
        raise InvalidBoxError(f"Box corners are six finite numbers in mm (x0 y0 z0 x1 y1 z1); got {given}. "
                              "Give real coordinates.")
    if space.upper() == "RAS":
        corners = corners @ RAS_TO_LPS.T
    elif space.upper() != "LPS":
        raise InvalidBoxError(f"Box corners are given in 'LPS' or 'RAS' coordinates, not {space!r}.")
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    points = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    ijk = np.array([image.TransformPhysicalPointToContinuousIndex(tuple(map(float, p))) for p in points])
    return prompt_box_from_ijk_points(ijk, image.GetSize())
