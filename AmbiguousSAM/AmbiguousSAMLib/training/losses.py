"""Probabilistic SAM's loss: BCE + Dice on the posterior sample, plus beta * KL(q || p).

The KL is divided by the number of pixels in the model frame, so `beta` weighs it against a BCE summed over
pixels, as in the Probabilistic U-Net family (where beta = 1..10), while the BCE we report stays a per-pixel
mean. With a per-pixel-mean BCE and an undivided KL, beta = 10 collapses the posterior onto the prior and
every sample looks alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_dice_loss(logits: torch.Tensor, targets: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image (B,); an empty target is matched only by an empty prediction."""
    probs = torch.sigmoid(logits).flatten(1)
    targets = targets.flatten(1)
    overlap = (probs * targets).sum(1)
    return 1 - (2 * overlap + smooth) / (probs.sum(1) + targets.sum(1) + smooth)


def probabilistic_sam_loss(logits: torch.Tensor, targets: torch.Tensor, kl: torch.Tensor,
                           beta: float) -> dict[str, torch.Tensor]:
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    dice = soft_dice_loss(logits, targets).mean()
    kl_mean = kl.mean()
    total = bce + dice + beta * kl_mean / targets[0].numel()
    return {"total": total, "bce": bce, "dice": dice, "kl": kl_mean}
