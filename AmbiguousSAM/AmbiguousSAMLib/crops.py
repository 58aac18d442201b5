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
    with np.load(path) as data:
        missing = {"images", "masks"} - set(data.files)
        if missing:
            raise InvalidImageError(f"{path} lacks the key(s) {sorted(missing)}; see shared/data/README.md.")
        images, masks = data["images"], data["masks"]
        patient = data["patient"] if "patient" in data.files else np.array(["?"] * len(images))
    if images.ndim != 3 or masks.ndim != 4 or masks.shape[0] != images.shape[0] or masks.shape[2:] != images.shape[1:]:
        raise InvalidImageError(
            f"{path}: expected images (N, H, W) and masks (N, R, H, W); got {images.shape} and {masks.shape}."
        )
    index = np.arange(len(images)) if rows is None else np.asarray(rows)
    return CropSet(images[index], masks[index].astype(bool), patient[index], index)


def rows_with_raters(masks: np.ndarray) -> np.ndarray:
    """Rows where at least one rater marked something: the only slices a box can be drawn on."""
    return np.nonzero(masks.reshape(len(masks), -1).any(axis=1))[0]
