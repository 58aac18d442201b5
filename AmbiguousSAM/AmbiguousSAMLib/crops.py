"""Read multi-rater 2D crops in the LIDC-IDRI npz format of `shared/data/lidc-crops`.

The format: `images` (N, H, W) uint8, `masks` (N, R, H, W) bool (R raters, empty = "did not mark"),
`patient` (N,) str, `nodule` and `slice` (N,) int. Anyone's own multi-rater data in this layout can be used
for training and evaluation unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InvalidImageError


@dataclass
class CropSet:
    images: np.ndarray
    masks: np.ndarray
    patient: np.ndarray
    #: Row of each slice in the source file, so results can be traced and re-scored.
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.images)


def load_crops(path: str | Path, rows: np.ndarray | None = None) -> CropSet:
    """Load the npz (optionally only `rows`), checking the keys and shapes a user's own file must have."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"No crop file at {path}. Point --data at an npz with 'images' and 'masks'.")
    with open_crop_file(path) as data:
        images, masks = data["images"], data["masks"]
        patient = data["patient"] if "patient" in data.files else np.array(["?"] * len(images))
    if images.ndim != 3 or masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[1:]:
        raise InvalidImageError(
            f"{path}: expected images (N, H, W) and masks (N, R, H, W); got {images.shape} and {masks.shape}."
        )
    index = np.arange(len(images)) if rows is None else np.asarray(rows)
    return CropSet(images[index], masks[index].astype(bool), patient[index], index)


def open_crop_file(path: str | Path) -> np.lib.npyio.NpzFile:
    """Open a crop file for reading, refusing what is not one (a missing file, not an npz, keys missing)."""
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(f"No crop file at {path}. Point --data at an npz with 'images' and 'masks'.")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises ValueError, OSError, BadZipFile... for files that are not npz
        raise InvalidImageError(f"{path} is not an npz file ({type(error).__name__}); --data takes an npz with "
                                "'images' and 'masks' (see shared/data/README.md).") from error
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise InvalidImageError(f"{path} holds one array, not an npz with 'images' and 'masks'.")
    missing = {"images", "masks"} - set(data.files)
    if missing:
        data.close()
        raise InvalidImageError(f"{path} lacks the key(s) {sorted(missing)}; an npz with 'images' (N, H, W) and "
                                "'masks' (N, R, H, W) is expected (see shared/data/README.md).")
    return data


def nested_order(rows: np.ndarray) -> np.ndarray:
    """`rows` reordered so that its first quarter is every 4th row, its first half every 2nd, then the rest.

    The training cache is encoded in this order (about 1 s per crop on a CPU), so a partly built cache is
    always an evenly spread subset of the file, never only its first patients, and a learning curve over
    1/4, 1/2 and all of the data reads nested prefixes of one cache instead of encoding three.
    """
    rows = np.asarray(rows)
    return np.concatenate([rows[0::4], rows[2::4], rows[1::4], rows[3::4]])


def rows_with_raters(masks: np.ndarray) -> np.ndarray:
    """Rows where at least one rater marked something: the only slices a box can be drawn on."""
    return np.nonzero(masks.reshape(len(masks), -1).any(axis=1))[0]
