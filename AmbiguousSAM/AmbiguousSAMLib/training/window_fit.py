"""Fit the presence gate's lesion-window CNN (heads/presence_window.py) on cached training crops.

It reads pixels only, so it needs no embeddings and trains on every crop the gate itself is not fitted on:
the gate then reads the CNN's logit on crops the CNN never saw, the view it has of a new patient (a CNN's
logit on its own training crops is surer than it will ever be in use, and a gate fitted there would trust it
too much). Boxes are drawn as in training (a random 1-6 px margin around the raters' union), once per crop;
each batch is flipped and rotated by a multiple of 90 degrees, which a lesion's look does not depend on.
The recipe (12 epochs, batch 64, AdamW with weight decay 0.05, one-cycle lr 2e-3) is the one measured in the
model card; the last epoch is kept (in that run the held-out loss was lowest there).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..heads.presence_window import DEFAULT_CONTEXT, WindowNet, lesion_window
from ..preprocessing import ModelFrame, model_input
from .batches import BOX_MARGINS, union_box

#: Epochs over the window crops, and crops per step.
WINDOW_EPOCHS, WINDOW_BATCH = 12, 64


def crop_windows(images: np.ndarray, masks: np.ndarray, rows: np.ndarray, image_size: int,
                 rng: np.random.Generator, context: float = DEFAULT_CONTEXT,
                 batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Lesion windows (N, 2, 48, 48) of `rows` (`context` times the box, presence_window.py), through the same
    model input the head reads at run time, and the share of raters who marked each (N,)."""
    windows, marked = [], []
    for start in range(0, len(rows), batch_size):
        inputs, boxes = [], []
        for row in rows[start:start + batch_size]:
            frame = ModelFrame.for_image(masks[row].shape[-2:], image_size)
            box = union_box(masks[row], rng.integers(BOX_MARGINS[0], BOX_MARGINS[1] + 1, size=4))
            inputs.append(model_input(images[row], image_size)[0][:, :1])
            boxes.append(torch.from_numpy(frame.box_to_model(box)))
            marked.append(float(masks[row].reshape(len(masks[row]), -1).any(axis=1).mean()))
        windows.append(lesion_window(torch.cat(inputs), torch.stack(boxes), image_size, context))
    return torch.cat(windows), torch.tensor(marked, dtype=torch.float32)


def _flipped_and_turned(windows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flips = [dim for dim in (2, 3) if float(torch.rand(1, generator=generator)) < 0.5]
    windows = windows.flip(flips) if flips else windows
    return torch.rot90(windows, int(torch.randint(4, (1,), generator=generator)), (2, 3))


def fit_window_net(windows: torch.Tensor, marked_fraction: torch.Tensor, seed: int = 0,
                   epochs: int = WINDOW_EPOCHS, progress: Callable[[int, int, float], None] | None = None) -> WindowNet:
    """Train the CNN (batch-normalised) against the share of raters, then fold it into the stored, plain form.
    `progress(epoch, epochs, mean_loss)` is called after each epoch."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    trained = WindowNet(normalised=True)
    steps = epochs * -(-len(windows) // WINDOW_BATCH)
    optimizer = torch.optim.AdamW(trained.parameters(), lr=2e-3, weight_decay=5e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=steps)
    for epoch in range(epochs):
        trained.train()
        order, losses = torch.randperm(len(windows), generator=generator), []
        for start in range(0, len(windows), WINDOW_BATCH):
            batch = order[start:start + WINDOW_BATCH]
            loss = F.binary_cross_entropy_with_logits(trained(_flipped_and_turned(windows[batch], generator)),
                                                      marked_fraction[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
        if progress is not None:
            progress(epoch + 1, epochs, float(np.mean(losses)))
    trained.eval()
    plain = WindowNet().eval()
    plain.fold_from(trained)
    return plain
