"""Turn a 2D slice and a box into LiteMedSAM's input, and its output back into the slice's pixels.

Follows LiteMedSAM's recipe so the pretrained weights see what they were trained on: intensities to [0, 1]
(CT in HU windowed first), longest side resized to the model's input size, zero padding at the bottom and
right, the box scaled by the same factor (`ModelFrame`); `ModelFrame.logits_to_image` undoes resize and padding
exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InvalidBoxError, InvalidImageError

#: Lung window (level -600 HU, width 1500 HU): the radiologist's default for lung nodules.
LUNG_WINDOW = (-1350.0, 150.0)


@dataclass(frozen=True)
class ModelFrame:
    """How a slice of `original_size` (rows, cols) maps into the model's `model_size` square input, and back.

    The one transform between slice pixels and the model's frame (segment_anything's `ResizeLongestSide`): the
    longest side is resized to `model_size`, the rest zero-padded at the bottom and right. Images, boxes, target
    masks and output logits all go through these methods, so the scale rule exists once.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    model_size: int

    @staticmethod
    def for_image(original_size: tuple[int, int], model_size: int) -> "ModelFrame":
        rows, cols = original_size
        scale = model_size / max(rows, cols)
        return ModelFrame((int(rows), int(cols)), (max(1, int(rows * scale + 0.5)), max(1, int(cols * scale + 0.5))),
                          model_size)

    @property
    def scale(self) -> float:
        return self.resized_size[0] / self.original_size[0]

    def points_to_model(self, points: np.ndarray) -> np.ndarray:
        """Points (..., 2) as (x, y) = (column, row) in slice pixels -> the model's input frame (float32)."""
        return (np.asarray(points, dtype=np.float32) * self.scale).astype(np.float32)

    def box_to_model(self, box: np.ndarray) -> np.ndarray:
        """A box (x0, y0, x1, y1) in slice pixels -> the same box in the model's input frame (float32): its two
        corners are points."""
        return self.points_to_model(box)

    def image_to_model(self, image01: np.ndarray) -> torch.Tensor:
        """(rows, cols) in [0, 1] -> (1, 3, S, S): resized, zero-padded bottom/right, grey copied to RGB."""
        tensor = torch.from_numpy(np.ascontiguousarray(image01, dtype=np.float32))[None, None]
        if self.resized_size != self.original_size:
            tensor = F.interpolate(tensor, size=self.resized_size, mode="bilinear", align_corners=False,
                                   antialias=True)
        size = self.model_size
        tensor = F.pad(tensor, (0, size - self.resized_size[1], 0, size - self.resized_size[0]))
        return tensor.expand(1, 3, size, size).contiguous()

    def mask_to_model(self, mask: np.ndarray) -> torch.Tensor:
        """(rows, cols) bool mask -> (S, S) float target, resized like the image (nearest) and zero-padded."""
        tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
        tensor = F.interpolate(tensor, size=self.resized_size, mode="nearest")
        size = self.model_size
        return F.pad(tensor, (0, size - self.resized_size[1], 0, size - self.resized_size[0]))[0, 0]

    def logits_to_image(self, low_res_logits: torch.Tensor) -> torch.Tensor:
        """(..., 256, 256) decoder logits -> (..., rows, cols) logits on the original slice (undoes resize and pad)."""
        lead = low_res_logits.shape[:-2]
        logits = low_res_logits.reshape(-1, 1, *low_res_logits.shape[-2:]).float()
        logits = F.interpolate(logits, size=(self.model_size, self.model_size), mode="bilinear", align_corners=False)
        logits = logits[..., : self.resized_size[0], : self.resized_size[1]]
        logits = F.interpolate(logits, size=self.original_size, mode="bilinear", align_corners=False)
        return logits.reshape(*lead, *self.original_size)


def validate_slice(image: np.ndarray) -> np.ndarray:
    """Check a 2D slice and return it as float32; raise a clear error on anything else."""
    image = np.asarray(image)
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise InvalidImageError(
            f"The image has dtype {image.dtype}; a grey-level slice of integers or floats is expected "
            "(for example int16 HU or uint8). Convert it with image.astype(np.float32)."
        )
    if image.ndim != 2:
        hint = " Pass one axial slice, e.g. volume[k]." if image.ndim == 3 else ""
        raise InvalidImageError(f"Expected a 2D slice (rows, cols) but got shape {image.shape}.{hint}")
    if min(image.shape) < 2:
        raise InvalidImageError(f"The slice {image.shape} is too small to segment.")
    image = image.astype(np.float32, copy=False)
    if not np.isfinite(image).all():
        raise InvalidImageError(
            f"The slice contains {int((~np.isfinite(image)).sum())} NaN or infinite pixels. "
            "Replace them (e.g. np.nan_to_num(image, nan=image[np.isfinite(image)].min())) before segmenting."
        )
    return image


def normalize_intensities(image: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Clip to `window` when given, then min-max scale to [0, 1] (a flat image becomes all zeros)."""
    if window is not None:
        image = np.clip(image, window[0], window[1])
    low, high = float(image.min()), float(image.max())
    return (image - low) / max(high - low, 1e-8)


def model_input(image: np.ndarray, model_size: int,
                window: tuple[float, float] | None = LUNG_WINDOW) -> tuple[torch.Tensor, ModelFrame]:
    """Validate, normalise and resize a slice into the model's (1, 3, S, S) input, and give its frame.

    `window` clips non-uint8 input (CT in HU) before min-max scaling; uint8 input (PNG, the LIDC crops) is only
    min-max scaled. The one way an image becomes model input: inference, training and evaluation all use it.
    """
    image = np.asarray(image)
    pixels = validate_slice(image)
    frame = ModelFrame.for_image(pixels.shape, model_size)
    return frame.image_to_model(normalize_intensities(pixels, None if image.dtype == np.uint8 else window)), frame


def validate_box(box: np.ndarray | list[float] | tuple[float, ...], original_size: tuple[int, int]) -> np.ndarray:
    """Check a box (x0, y0, x1, y1) in pixel coordinates (x = column) and clip it to the image."""
    box = np.asarray(box, dtype=np.float64).reshape(-1)
    if box.shape != (4,):
        raise InvalidBoxError(f"A box is four numbers (x0, y0, x1, y1); got {box.size}.")
    if not np.isfinite(box).all():
        raise InvalidBoxError(f"The box {box.tolist()} contains NaN or infinity.")
    x0, y0, x1, y1 = box
    if x1 < x0 or y1 < y0:
        raise InvalidBoxError(
            f"The box {box.tolist()} is inverted (x1 < x0 or y1 < y0). Give corners as (x0, y0, x1, y1) "
            "with x0 <= x1 and y0 <= y1."
        )
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise InvalidBoxError(f"The box {box.tolist()} is empty; draw a box at least one pixel wide and high.")
    rows, cols = original_size
    if x1 < 0 or y1 < 0 or x0 > cols - 1 or y0 > rows - 1:
        raise InvalidBoxError(
            f"The box {box.tolist()} lies outside the {cols}x{rows} image; draw it on the lesion."
        )
    return np.array([max(x0, 0), max(y0, 0), min(x1, cols - 1), min(y1, rows - 1)], dtype=np.float64)
