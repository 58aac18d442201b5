"""Prior p(z | image, box) and posterior q(z | image, box, mask) of Probabilistic SAM.

Conditioned on the SAM image embedding (as in the paper's figure) rather than on the raw image (as in its
code): the embedding is computed anyway, so the nets add only two small convolutions. The box enters as a
64 x 64 indicator channel so the prior knows *which* object of the crop is meant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: log-sigma is clamped to this range, as in Probabilistic SAM's code, to keep KL and sampling stable.
LOG_SIGMA_RANGE = (-5.0, 5.0)


def box_channel(box: torch.Tensor, image_size: int, side: int = 64) -> torch.Tensor:
    """(B, 4) boxes in the model frame -> (B, 1, side, side) indicator of the box on the embedding grid."""
    centres = (torch.arange(side, device=box.device, dtype=box.dtype) + 0.5) * (image_size / side)
    inside_x = (centres[None] >= box[:, 0:1]) & (centres[None] <= box[:, 2:3])
    inside_y = (centres[None] >= box[:, 1:2]) & (centres[None] <= box[:, 3:4])
    return (inside_y[:, :, None] & inside_x[:, None, :]).to(box.dtype)[:, None]


class GaussianLatentNet(nn.Module):
    """Embedding + box indicator (+ a rater's mask, for the posterior) -> diagonal Gaussian (mu, log_sigma).

    Features are pooled over the whole image and over the box. The posterior also pools them under the mask
    and sees the fraction of the box the mask covers: a nodule covers ~2% of the embedding grid, and with
    the mask as just one more input channel the posterior learned nothing in 300 steps (seen here) while
    the decoder learned to ignore z. These summaries hand it what distinguishes raters: whether they marked
    the lesion, how much of it, and where.
    """

    def __init__(self, latent_dim: int, with_mask: bool, width: int = 64, *, in_channels: int = 256) -> None:
        """`in_channels`: of the feature map read (SAM's embedding; UA-SAM reads its encoder's 320-channel
        features before the adapted blocks)."""
        super().__init__()
        self.with_mask = with_mask
        self.features = nn.Sequential(
            nn.Conv2d(in_channels + 1 + int(with_mask), width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.hidden = nn.Linear((3 if with_mask else 2) * width + 2 * int(with_mask), width)
        self.out = nn.Linear(width, 2 * latent_dim)

    def forward(self, embedding: torch.Tensor, box: torch.Tensor,
                mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """`box` and `mask` are (B, 1, 64, 64) maps on the embedding grid (mask: fraction of each cell marked)."""
        inputs = [embedding, box] + ([mask] if self.with_mask else [])
        features = self.features(torch.cat(inputs, dim=1))
        pooled = [features.mean(dim=(2, 3)), _weighted_mean(features, F.avg_pool2d(box, 2))]
        if self.with_mask:
            coverage = mask.sum(dim=(2, 3)) / box.sum(dim=(2, 3)).clamp(min=1.0)
            pooled += [_weighted_mean(features, F.avg_pool2d(mask, 2)), coverage, (coverage > 0).to(coverage.dtype)]
        mu, log_sigma = self.out(F.relu(self.hidden(torch.cat(pooled, dim=1)))).chunk(2, dim=1)
        return mu, log_sigma.clamp(*LOG_SIGMA_RANGE)


def _weighted_mean(features: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Average of (B, C, h, w) features under (B, 1, h, w) weights; zeros where the weights are all zero."""
    return (features * weights).sum(dim=(2, 3)) / weights.sum(dim=(2, 3)).clamp(min=1e-6)


def kl_divergence(q: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians given as (mu, log_sigma), summed over latent dims -> (B,)."""
    (mu_q, ls_q), (mu_p, ls_p) = q, p
    var_ratio = torch.exp(2 * (ls_q - ls_p))
    return 0.5 * (var_ratio + (mu_q - mu_p) ** 2 * torch.exp(-2 * ls_p) - 1 - 2 * (ls_q - ls_p)).sum(dim=1)
