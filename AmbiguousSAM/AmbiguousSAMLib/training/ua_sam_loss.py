"""UA-SAM's loss: DiceCE (BCE + soft Dice) on one posterior sample per crop, plus beta * KL(q || p).

Empty rater masks are targets like any other: this project's protocol counts "not marked" as an opinion, and
UA-SAM has no presence gate to learn it separately (Probabilistic SAM's loss leaves those examples to its gate),
so the latent must be able to give an empty mask. The posterior sees that the rater's mask is empty (latent.py),
so z can carry it; soft Dice with smoothing 1 scores an empty prediction of an empty target as a perfect match.

The KL is scaled as in Probabilistic SAM's loss (losses.py: divided by the pixels of the model frame, so beta
weighs it against a per-pixel BCE as in the Probabilistic U-Net family) with the same free bits for the
posterior: the adapters' up-projections start at zero, so at first no reconstruction gradient reaches z while the
KL gradient does, and without free bits the posterior collapses onto the prior before z can matter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import soft_dice_loss


def ua_sam_loss(logits: torch.Tensor, targets: torch.Tensor, kl_prior: torch.Tensor, kl_posterior: torch.Tensor,
                beta: float, free_nats: float) -> dict[str, torch.Tensor]:
    """Logits and targets (B, S, S), the two KL views (B,) of UASAM.forward_train -> the loss terms (means over
    the batch); `kl_posterior` pulls the posterior towards the prior only beyond `free_nats` per crop."""
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    dice = soft_dice_loss(logits, targets).mean()
    kl = (kl_prior + kl_posterior.clamp(min=free_nats)).mean()
    total = bce + dice + beta * kl / targets[0].numel()
    return {"total": total, "bce": bce, "dice": dice, "kl": kl_posterior.mean().detach()}
