"""The lesion window: a small CNN's read of the image around the box, one more input of the presence gate.

Nine hand-made appearance statistics (presence.py) left the gate telling an obvious lesion from a faint one
little better than the decoder alone (issue 12). Radiologists skip a faint lesion for what it looks like:
ground glass, a smudge on a vessel, an ill-defined margin. A CNN can learn that from the pixels, and unlike the
embeddings and decoder tokens (780 numbers that overfit 2,734 crops, model card) it needs no encoder pass, so it
is trained on every marked training crop (8,000 and more) with flips and rotations. Measured in a scratch run
(the model card): alone it predicts the share of raters as well as the shipped gate does (validation Brier
0.061 against 0.062), and a gate that reads both does better than either (0.059 on the odd half).

The window is square, centred on the box, `context` times its longer side plus 16 pixels, resampled to 48 x 48:
what the CNN sees does not depend on how much of the slice the model input covers (a 2D crop, or the 3D path's
region around the box). The first window gate read twice the box (context 2); three times reads more of what
surrounds the lesion (a vessel running on, the pleura), and its CNN alone predicted the share of raters better
on the 1,740 marked val slices (Brier 0.0632 against 0.0648 for the shipped context-2 CNN and 0.0662 for a second
seed of it; model card). Intensities are read relative to the window's own 5th and 95th percentiles (those of the
whole image move with the field of view: a wider one adds more lung), and a second channel marks the box. The CNN is stored as plain convolutions: the batch
normalisation it is trained with is folded into them (training/window_fit.py), so a head file holds weights only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: Side of the window the CNN reads (pixels).
WINDOW_SIDE = 48
#: Channels of the CNN's four stages.
WINDOW_WIDTHS = (24, 48, 96, 96)
#: The window's side over the box's longer side (plus 16 pixels) of the first window gates, and files without one.
DEFAULT_CONTEXT = 2.0
#: The field a new window CNN is trained on unless asked otherwise (fit-gate): it predicted the raters better.
FITTED_CONTEXT = 3.0


def lesion_window(images: torch.Tensor, boxes: torch.Tensor, image_size: int,
                  context: float = DEFAULT_CONTEXT) -> torch.Tensor:
    """Model inputs (B, 3 or 1, S, S) in [0, 1] and boxes (B, 4) in the model frame of `image_size` -> the CNN's
    input (B, 2, 48, 48): the image around the box (percentile-scaled) and the box's indicator."""
    grey = images[:, :1].float()
    boxes = boxes.float()
    centre_x, centre_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    half_side = context / 2 * torch.maximum(width, height) + 8
    theta = torch.zeros(len(boxes), 2, 3, device=grey.device)
    theta[:, 0, 0] = theta[:, 1, 1] = half_side / image_size
    theta[:, 0, 2], theta[:, 1, 2] = centre_x / image_size * 2 - 1, centre_y / image_size * 2 - 1
    grid = F.affine_grid(theta, [len(boxes), 1, WINDOW_SIDE, WINDOW_SIDE], align_corners=False)
    window = F.grid_sample(grey, grid, align_corners=False, padding_mode="border")
    quantiles = torch.quantile(window.flatten(1), torch.tensor([0.05, 0.95], device=grey.device), dim=1).T
    low, spread = quantiles[:, :1, None, None], (quantiles[:, 1:, None, None] - quantiles[:, :1, None, None])
    window = (window - low) / spread.clamp(min=1e-3)
    position = torch.linspace(-1, 1, WINDOW_SIDE, device=grey.device)
    inside_x = (position[None].abs() <= (width / 2 / half_side)[:, None]).float()
    inside_y = (position[None].abs() <= (height / 2 / half_side)[:, None]).float()
    return torch.cat([window, (inside_y[:, :, None] * inside_x[:, None, :])[:, None]], dim=1)


def _stage(channels_in: int, channels_out: int, normalised: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for source in (channels_in, channels_out):
        layers += [nn.Conv2d(source, channels_out, 3, padding=1)]
        layers += [nn.BatchNorm2d(channels_out)] if normalised else []
        layers += [nn.ReLU()]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class WindowNet(nn.Module):
    """Lesion window (B, 2, 48, 48) -> logit (B,) of the share of raters who mark the lesion on this slice.

    `normalised=True` builds the training form, with batch normalisation after each convolution; the stored
    form (the default) has none, and `fold_from` copies a trained one into it.
    """

    def __init__(self, *, normalised: bool = False) -> None:
        super().__init__()
        widths = (2, *WINDOW_WIDTHS)
        self.features = nn.Sequential(*(_stage(a, b, normalised) for a, b in zip(widths, widths[1:])))
        self.logit = nn.Sequential(nn.Dropout(0.3), nn.Linear(widths[-1], 1))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.logit(self.features(window).mean(dim=(2, 3)))[:, 0]

    @torch.no_grad()
    def fold_from(self, trained: "WindowNet") -> None:
        """Copy a trained, batch-normalised net into this plain one: each BN's eval-mode scale and shift folded
        into the convolution before it (y = g (W x + b - m) / s + beta)."""
        convolutions = [m for m in self.features.modules() if isinstance(m, nn.Conv2d)]
        trained_layers = [m for m in trained.features.modules() if isinstance(m, (nn.Conv2d, nn.BatchNorm2d))]
        pairs = list(zip(trained_layers[0::2], trained_layers[1::2]))
        if len(pairs) != len(convolutions) or not all(isinstance(n, nn.BatchNorm2d) for _, n in pairs):
            raise ValueError("fold_from needs a WindowNet built with normalised=True")
        for plain, (conv, norm) in zip(convolutions, pairs):
            scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
            plain.weight.copy_(conv.weight * scale[:, None, None, None])
            plain.bias.copy_((conv.bias - norm.running_mean) * scale + norm.bias)
        self.logit.load_state_dict(trained.logit.state_dict())
