"""SeqSAM's set loss: Dice between every prediction and every rater, Hungarian-matched, plus chunk pooling.

The raters of a slice come in no order, so prediction m cannot be told "be rater m"; matching each prediction to
the rater it is cheapest to match (the Hungarian assignment on the detached cost, as in DETR and the authors'
code) lets the sequence settle on its own canonical order. For more steps M than raters K the paper's randomised
strided pooling splits the sequence into consecutive chunks of ceil(M/K) steps and trains one random member of
each: every stretch of the sequence learns a role, so no step is left untrained and none is trained twice.

Empty rater masks, two ways (`EMPTY_RATERS`):
- "target" (this project's protocol): a rater who did not mark the slice is an opinion too, and the prediction
  matched to them is pushed towards an empty mask (Dice(empty, empty) = 1, as the protocol scores it);
- "masked" (the authors' code): the assignment is made over every rater, then the matched costs of empty raters
  are multiplied by 0, so the predictions matched to them are free.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from .losses import soft_dice_loss

EMPTY_RATERS = ("target", "masked")


def dice_cost(logits: torch.Tensor, raters: torch.Tensor) -> torch.Tensor:
    """Soft Dice loss between each of M predictions and each of R raters: logits (B, M, S, S), raters (B, R, S, S)
    {0, 1} -> (B, M, R)."""
    b, m = logits.shape[:2]
    r = raters.shape[1]
    pairs = soft_dice_loss(logits[:, :, None].expand(-1, -1, r, -1, -1).flatten(0, 2),
                           raters[:, None].expand(-1, m, -1, -1, -1).flatten(0, 2))
    return pairs.view(b, m, r)


def chunk_members(steps: int, labels: int, rng: np.random.Generator) -> np.ndarray:
    """One random step from each consecutive chunk of ceil(steps / labels) steps (the last may be shorter).

    With steps <= labels every step is its own chunk. ceil can leave fewer chunks than labels (6 steps, 4 labels:
    chunks of 2, three chunks); the assignment then matches every chosen step and leaves the rest of the raters out.
    """
    size = math.ceil(steps / labels)
    return np.array([rng.integers(start, min(start + size, steps)) for start in range(0, steps, size)])


def hungarian_loss(cost: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the matched costs (B, M, R) under the minimum-cost assignment, each matched pair
    weighted by its rater's weight (B, R) and divided by R, as the authors do. The assignment is made on the
    detached cost: it is a choice, not a function to differentiate."""
    total = cost.new_zeros(())
    for item, weight in zip(cost, weights):
        rows, cols = linear_sum_assignment(item.detach().float().cpu().numpy())
        total = total + (item[rows, cols] * weight[cols]).sum() / item.shape[1]
    return total / len(cost)


def seqsam_loss(logits: torch.Tensor, raters: torch.Tensor, marked: torch.Tensor, empty_raters: str) -> torch.Tensor:
    """The training loss of the chosen steps (`chunk_members`) of one unrolled batch: logits (B, M, S, S),
    raters (B, R, S, S) {0, 1}, marked (B, R) bool."""
    if empty_raters not in EMPTY_RATERS:
        raise ValueError(f"empty_raters must be one of {EMPTY_RATERS}, not {empty_raters!r}")
    cost = dice_cost(logits.float(), raters.float())
    weights = marked.to(cost.dtype) if empty_raters == "masked" else torch.ones_like(marked, dtype=cost.dtype)
    return hungarian_loss(cost, weights)
