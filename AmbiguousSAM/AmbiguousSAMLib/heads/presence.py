"""Presence gate: how many experts would mark the boxed lesion on this slice at all.

On LIDC a third of the marked slices were outlined by one radiologist of four, and whether a rater marks a
faint lesion is the largest disagreement there is. A Gaussian latent alone learnt it poorly: the prior of the
first trained head left 57 % of its samples non-empty on slices all four raters marked and 42 % on slices
one rater marked (ideal 100 % and 25 %, model card). The gate models it explicitly, as a hurdle model does:
p(mask) = (1 - pi) for "not marked", pi * p(shape | marked) otherwise, with pi predicted from what the decoder
already computed for the box (its z-free mask, its IoU estimates) and the box's size ("decoder" evidence, nine
numbers), optionally with the image's appearance inside and around that mask ("appearance" evidence: density,
texture, margin contrast and edge sharpness, nine more): what makes radiologists skip a faint lesion. Pooled
embeddings and decoder tokens (780 numbers) fit the training crops better and validation worse (measured: Brier
0.084 against 0.061 for the nine), so the appearance evidence is a few robust image statistics instead; the
"window" evidence adds one number more, a CNN's read of the pixels around the box trained on every marked crop
(presence_window.py).

Sample i is "marked" when its rank u_i < pi. The ranks are stratified (a random permutation of k strata,
jittered), so k samples contain pi * k marked ones up to rounding, not a binomial draw of them, and a fixed
rank per sample keeps the 3D hypotheses nested: a sample that is empty on a slice where pi is high is empty
wherever pi is lower.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .latent import box_channel

#: Number of inputs `presence_features` returns, and `appearance_features` adds.
PRESENCE_FEATURES = 9
APPEARANCE_FEATURES = 9
#: What a gate reads: the decoder's view only; that and the image's appearance around the mask; or both and the
#: logit of a small CNN on the image around the box (presence_window.py).
EVIDENCE = {"decoder": PRESENCE_FEATURES, "appearance": PRESENCE_FEATURES + APPEARANCE_FEATURES,
            "window": PRESENCE_FEATURES + APPEARANCE_FEATURES + 1}
#: The kinds of evidence that read the model input image, so every call must pass it.
IMAGE_EVIDENCE = ("appearance", "window")
#: Logit given to every pixel of a sample the gate leaves unmarked (sigmoid -> 2e-9).
EMPTY_LOGIT = -20.0
#: The gate's least logit (pi = sigmoid(-15) = 3e-7): a gate may doubt a lesion, never rule it out. The click
#: scales ranks into [0, pi) of the clicked slice (LatentNoise.given_marked); with pi = 0 there (a float32
#: sigmoid underflows below a logit of -104) every rank would be 0 and blanked on every slice but that one.
MIN_PRESENCE_LOGIT = -15.0


def presence_features(logits: torch.Tensor, iou: torch.Tensor, boxes: torch.Tensor, image_size: int) -> torch.Tensor:
    """z-free logits (B, S, S), the decoder's four IoU estimates (B, 4) and boxes (B, 4) -> (B, 9) features.

    Box width and height (log of the fraction of the image), the fraction of the box the mask covers, the mean
    probability in the box, the largest logit (/10) and the IoU estimates: all of order one, so no statistics
    need to be stored for normalisation.
    """
    inside = box_channel(boxes, image_size, side=logits.shape[-1])[:, 0]
    area = inside.sum(dim=(1, 2)).clamp(min=1.0)
    probs = torch.sigmoid(logits)
    covered = ((logits > 0).to(inside.dtype) * inside).sum(dim=(1, 2)) / area
    mean_prob = (probs * inside).sum(dim=(1, 2)) / area
    peak = logits.masked_fill(inside == 0, -math.inf).flatten(1).max(dim=1).values.clamp(min=-50.0) / 10
    size = ((boxes[:, 2:] - boxes[:, :2]).clamp(min=1.0) / image_size).log()
    return torch.cat([size, covered[:, None], mean_prob[:, None], peak[:, None], iou], dim=1)


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Square dilation of (B, S, S) masks as a row then a column max (the same result as one square max pool,
    at 2r + 1 instead of (2r + 1)^2 reads per pixel: 4 ms instead of 46 ms for r = 12 at 256 x 256, measured)."""
    side = 2 * radius + 1
    rows = F.max_pool2d(mask[:, None], (1, side), stride=1, padding=(0, radius))
    return F.max_pool2d(rows, (side, 1), stride=1, padding=(radius, 0))[:, 0]


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (values * weights).sum(dim=(1, 2)) / weights.sum(dim=(1, 2)).clamp(min=1.0)


def appearance_features(logits: torch.Tensor, boxes: torch.Tensor, images: torch.Tensor, image_size: int) -> torch.Tensor:
    """z-free logits (B, S, S), boxes (B, 4) in the model frame of `image_size` and the model's input images
    (B, 3 or 1, image_size, image_size) in [0, 1] (the first, grey channel is read) -> (B, 9) features, read at
    the logits' resolution S.

    The mask is the z-free outline inside the box; its ring is the 4 pixels outside it (about 2 pixels of a
    128-pixel crop), the outer ring the 12 beyond that. Intensities are read relative to the image's own 5th
    and 95th percentiles, so a crop's min-max scaling (one bright rib) does not move them: the density inside,
    in the ring and outside it, the two margin contrasts, the texture (spread inside), the edge sharpness
    (gradient on the boundary), the mask's log area (/5) and where the image's median sits.
    """
    side = logits.shape[-1]
    images = F.interpolate(images[:, :1].to(logits.dtype), size=(side, side), mode="area")[:, 0]
    inside = box_channel(boxes, image_size, side=side)[:, 0]
    mask = (logits > 0).to(images.dtype) * inside
    near, far = _dilate(mask, 4), _dilate(mask, 12)
    ring, outer = (near - mask).clamp(min=0), (far - near).clamp(min=0)
    quantiles = torch.quantile(images.flatten(1).float(), torch.tensor([0.05, 0.5, 0.95], device=images.device),
                               dim=1).T.to(images.dtype)
    low, scale = quantiles[:, 0], (quantiles[:, 2] - quantiles[:, 0]).clamp(min=1e-3)
    density, around, beyond = (_weighted_mean(images, w) for w in (mask, ring, outer))
    spread = (_weighted_mean(images ** 2, mask) - density ** 2).clamp(min=0).sqrt()
    grad_y, grad_x = torch.gradient(images, dim=(1, 2))
    edge = _weighted_mean((grad_x ** 2 + grad_y ** 2).sqrt(), (_dilate(mask, 1) - mask).clamp(min=0))
    area = mask.sum(dim=(1, 2)).clamp(min=1.0).log() / 5
    return torch.stack([(density - low) / scale, (around - low) / scale, (beyond - low) / scale,
                        (density - around) / scale, (density - beyond) / scale, spread / scale, edge / scale, area,
                        (quantiles[:, 1] - low) / scale], dim=1)


class PresenceGate(nn.Module):
    """Evidence features -> logit of pi, the chance that a random expert marks the lesion.

    Features are first clipped to the range the gate was fitted on (`bounds`, stored in the head file's config):
    a ReLU network extrapolates linearly, and one gate gave a synthetic ball whose features fell outside that range
    pi = 0.00 on some slices and 1.00 on others (clipped: 0.12-0.32). Heads fitted before the bounds existed have
    none and are not clipped.
    """

    def __init__(self, inputs: int = PRESENCE_FEATURES, hidden: int = 64,
                 bounds: tuple[list[float], list[float]] | None = None) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1))
        self.register_buffer("low", torch.full((inputs,), -math.inf), persistent=False)
        self.register_buffer("high", torch.full((inputs,), math.inf), persistent=False)
        if bounds is not None:
            self.set_bounds(torch.tensor(bounds[0]), torch.tensor(bounds[1]))

    def set_bounds(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Clip future inputs to [low, high] per feature (the fitted features' minimum and maximum)."""
        if low.shape != self.low.shape or high.shape != self.high.shape or bool((low > high).any()):
            raise ValueError(f"presence bounds must be two lists of {len(self.low)} numbers, low <= high")
        self.low.copy_(low)
        self.high.copy_(high)

    def bounds(self) -> tuple[list[float], list[float]] | None:
        """The clipping range as stored in a head file's config; None when the gate has none."""
        if bool(torch.isinf(self.low).all()) and bool(torch.isinf(self.high).all()):
            return None
        return self.low.tolist(), self.high.tolist()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.mlp(torch.maximum(torch.minimum(features, self.high), self.low))[:, 0]


def presence_probability(logit: torch.Tensor) -> torch.Tensor:
    """pi from the gate's logit (offset included), never below sigmoid(MIN_PRESENCE_LOGIT)."""
    return torch.sigmoid(logit.clamp(min=MIN_PRESENCE_LOGIT))


def stratified_ranks(k: int, generator: torch.Generator) -> torch.Tensor:
    """(k,) ranks in [0, 1): one per stratum [j/k, (j+1)/k), strata in random order."""
    strata = torch.randperm(k, generator=generator).to(torch.float32)
    return (strata + torch.rand(k, generator=generator)) / k


def gate_logits(logits: torch.Tensor, ranks: torch.Tensor, presence: torch.Tensor) -> torch.Tensor:
    """Blank the samples (K, S, S) whose rank is at or above the presence probability (scalar)."""
    unmarked = (ranks.to(logits.device) >= presence)[:, None, None]
    return logits.masked_fill(unmarked, EMPTY_LOGIT)


def presence_loss(presence_logit: torch.Tensor, marked_fraction: torch.Tensor) -> torch.Tensor:
    """BCE against the fraction of raters who marked the slice: the expected BCE of one random rater's
    marked/unmarked label, with the variance of picking that rater taken out."""
    return F.binary_cross_entropy_with_logits(presence_logit, marked_fraction)
