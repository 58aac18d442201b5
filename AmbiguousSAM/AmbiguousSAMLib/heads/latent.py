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
    """Embedding (+ extra channels, the first being the box indicator) -> diagonal Gaussian (mu, log_sigma).

    Features are pooled twice: over the whole image and over the box only. A nodule covers ~2% of the
    embedding grid, so a global average alone dilutes the one thing the posterior must see (how much of the
    box this rater marked, if anything) until the decoder learns to ignore z (posterior collapse).
    """

    def __init__(self, extra_channels: int, latent_dim: int, width: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(256 + extra_channels, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        )
        self.hidden = nn.Linear(2 * width, width)
        self.out = nn.Linear(width, 2 * latent_dim)

    def forward(self, embedding: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.features(torch.cat([embedding, extra], dim=1))
        box = F.avg_pool2d(extra[:, :1], 2)
        in_box = (features * box).sum(dim=(2, 3)) / box.sum(dim=(2, 3)).clamp(min=1.0)
        pooled = torch.cat([features.mean(dim=(2, 3)), in_box], dim=1)
        mu, log_sigma = self.out(F.relu(self.hidden(pooled))).chunk(2, dim=1)
        return mu, log_sigma.clamp(*LOG_SIGMA_RANGE)


def kl_divergence(q: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """KL(q || p) of two diagonal Gaussians given as (mu, log_sigma), summed over latent dims -> (B,)."""
    (mu_q, ls_q), (mu_p, ls_p) = q, p
    var_ratio = torch.exp(2 * (ls_q - ls_p))
    return 0.5 * (var_ratio + (mu_q - mu_p) ** 2 * torch.exp(-2 * ls_p) - 1 - 2 * (ls_q - ls_p)).sum(dim=1)
