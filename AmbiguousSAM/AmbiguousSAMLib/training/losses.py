"""Probabilistic SAM's loss on the outline: BCE + Dice on the posterior sample, plus beta * KL(q || p).

The head is a hurdle model (heads/presence.py): p(mask) = 1 - pi when the drawn rater left the slice empty,
pi * p(outline | marked) otherwise. An example whose rater left it empty is the gate's to learn (fitted in a
second stage, training/presence_fit.py), so the outline terms average over the examples whose rater marked
it; the latent then spends its few dimensions on where the outline runs, not on whether there is one.

The posterior gets "free bits": with Adam, a KL gradient however small moves the latent nets at full
step size while the decoder has not yet learnt to use z, and the posterior collapses onto the prior (seen
here: KL -> 0.001 within 50 steps). Below `free_nats` the KL only trains the prior.

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


def probabilistic_sam_loss(logits: torch.Tensor, targets: torch.Tensor, kl_prior: torch.Tensor,
                           kl_posterior: torch.Tensor, beta: float, free_nats: float) -> dict[str, torch.Tensor]:
    """`kl_prior` trains the prior towards the posterior; `kl_posterior` pulls the posterior towards the prior
    only beyond `free_nats` per image (free bits): below that, the posterior may encode the rater freely."""
    marked = targets.flatten(1).any(dim=1).to(logits.dtype)
    weights = marked / marked.sum().clamp(min=1.0)
    bce = (F.binary_cross_entropy_with_logits(logits, targets, reduction="none").flatten(1).mean(1) * weights).sum()
    dice = (soft_dice_loss(logits, targets) * weights).sum()
    kl = ((kl_prior + kl_posterior.clamp(min=free_nats)) * weights).sum()
    total = bce + dice + beta * kl / targets[0].numel()
    return {"total": total, "bce": bce, "dice": dice, "kl": (kl_posterior * weights).sum().detach()}


def soft_iou_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - soft IoU between every mask of a (B, M, P) and of b (B, N, P), probabilities in [0, 1] -> (B, M, N)."""
    overlap = a @ b.transpose(1, 2)
    union = a.sum(2)[:, :, None] + b.sum(2)[:, None, :] - overlap
    return 1 - (overlap + 1.0) / (union + 1.0)


def set_energy_loss(sample_logits: torch.Tensor, raters: torch.Tensor, marked: torch.Tensor) -> torch.Tensor:
    """Energy distance between K prior samples and the raters who marked the slice, averaged over the batch.

    GED, the protocol's main score, is this energy distance with a hard IoU: 2 E d(s, y) - E d(s, s') - E d(y, y').
    The ELBO only asks each rater's posterior sample to match that rater; this asks the *prior's* set of K to
    sit where the raters' set sits and to spread as much as they do, which is what the user is shown. Soft IoU
    keeps it differentiable. `sample_logits` (B, K, S, S), `raters` (B, R, S, S) {0, 1}, `marked` (B, R) bool:
    only marked raters take part (whether there is a lesion at all is the presence gate's to learn).
    """
    samples = torch.sigmoid(sample_logits).flatten(2)
    targets = raters.flatten(2)
    weight = marked.to(samples.dtype)
    count = weight.sum(1).clamp(min=1.0)
    cross = (soft_iou_distance(samples, targets) * weight[:, None, :]).sum((1, 2)) / (samples.shape[1] * count)
    # Off the diagonal only, for the samples: the soft distance of a blurred sample to itself is above 0, and
    # counting it would reward blur. (The raters' term is constant; its diagonal is 0 as in the protocol's GED.)
    k = samples.shape[1]
    within_samples = soft_iou_distance(samples, samples).sum((1, 2)) / (k * (k - 1))
    pair = weight[:, :, None] * weight[:, None, :]
    within_raters = (soft_iou_distance(targets, targets) * pair).sum((1, 2)) / count ** 2
    valid = (weight.sum(1) > 0).to(samples.dtype)
    return ((2 * cross - within_samples - within_raters) * valid).sum() / valid.sum().clamp(min=1.0)
