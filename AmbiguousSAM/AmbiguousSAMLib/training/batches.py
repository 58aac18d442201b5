"""Training examples from cached crops: a random rater as the target and a box that does not give it away.

The box is drawn around the union of *all* raters (as the scoring protocol does), never around the chosen
rater, so its size cannot tell the model which rater it must reproduce; its margin is random (1-6 px per
side) so its exact position gives nothing away either. Empty rater masks stay in: "this expert would not
mark it" is part of the distribution the head must learn. Each example also carries the fraction of raters
who marked the slice, which trains the presence gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..preprocessing import ModelFrame, model_input


#: Range of the random margin (pixels, per side) added to the raters' union to make a training box.
BOX_MARGINS = (1, 6)


@dataclass
class Batch:
    embeddings: torch.Tensor  # (B, 256, 64, 64) float32
    boxes: torch.Tensor  # (B, 4) model frame
    targets: torch.Tensor  # (B, S, S) float32 {0, 1} in the model frame
    marked_fraction: torch.Tensor  # (B,) float32: share of the raters whose mask is non-empty
    raters: torch.Tensor  # (B, R, S, S) float32 {0, 1}: every rater's mask in the model frame (the set losses)
    marked: torch.Tensor  # (B, R) bool: which raters marked the slice
    #: (B, 3, S, S) model inputs of the crops, when asked for (appearance gates read them), else None.
    images: torch.Tensor | None = None


def union_box(masks: np.ndarray, margins: np.ndarray) -> np.ndarray:
    """(R, H, W) rater masks -> box (x0, y0, x1, y1) around their union, widened by margins (4,), clipped."""
    union = masks.any(axis=0)
    rows, cols = np.nonzero(union)
    h, w = union.shape
    return np.array([max(cols.min() - margins[0], 0), max(rows.min() - margins[1], 0),
                     min(cols.max() + margins[2], w - 1), min(rows.max() + margins[3], h - 1)], dtype=np.float32)


def make_batch(rng: np.random.Generator, embeddings: np.ndarray, masks: np.ndarray, rows: np.ndarray,
               model_size: int, margin_range: tuple[int, int] = BOX_MARGINS, images: np.ndarray | None = None) -> Batch:
    """Gather cached embeddings for `rows`, one random rater each as the target (and the crops' model inputs,
    when the cache's `images` are given)."""
    order = np.sort(rows)  # sorted reads are faster on the memory-mapped cache
    boxes, targets, every_rater = [], [], []
    for row in order:
        raters = masks[row]
        frame = ModelFrame.for_image(raters.shape[-2:], model_size)
        box = union_box(raters, rng.integers(margin_range[0], margin_range[1] + 1, size=4))
        boxes.append(frame.box_to_model(box))
        every_rater.append(torch.stack([frame.mask_to_model(mask) for mask in raters]))
        targets.append(every_rater[-1][rng.integers(len(raters))])
    raters = torch.stack(every_rater)
    marked = raters.flatten(2).any(dim=2)
    return Batch(embeddings=torch.from_numpy(np.asarray(embeddings[order], dtype=np.float32)),
                 boxes=torch.from_numpy(np.stack(boxes)), targets=torch.stack(targets),
                 marked_fraction=marked.float().mean(dim=1), raters=raters, marked=marked,
                 images=None if images is None else torch.cat([model_input(images[row], model_size)[0] for row in order]))
