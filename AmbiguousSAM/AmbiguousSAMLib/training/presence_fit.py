"""Second training stage: fit the presence gate on the trained decoder's own view of every cached crop.

The gate's nine inputs have very different ranges (log box size around -3, IoU estimates near 0.9 that vary
by hundredths), and learnt inside the outline training, at its learning rate and batch of 8, it settled on the
average share of raters and told no slice from another (seen here: pi 0.58-0.62 whatever the number of raters).
Here the features of all crops are computed once, standardised, and the gate is fitted on the full set, which
takes seconds; the standardisation is then folded into the first layer, so the stored gate is a plain MLP and
a head file holds no statistics besides its weights.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ..heads.checkpoint import copy_matching_weights, load_head
from ..heads.presence import IMAGE_EVIDENCE, PresenceGate, presence_loss
from ..heads.presence_window import DEFAULT_CONTEXT
from ..heads.probabilistic_sam import ProbabilisticSAM
from ..modeling.backbone import Backbone
from .batches import make_batch
from .embedding_cache import EmbeddingCache
from .window_fit import crop_windows, fit_window_net


@torch.no_grad()
def crop_features(head: ProbabilisticSAM, embeddings: np.ndarray, masks: np.ndarray, rows: np.ndarray,
                  rng: np.random.Generator, images: np.ndarray, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate features (N, F) and marked fractions (N,) for `rows` of the cache, boxes drawn as in training."""
    device = next(head.parameters()).device
    features, marked = [], []
    needs_images = head.presence_evidence in IMAGE_EVIDENCE
    for start in range(0, len(rows), batch_size):
        batch = make_batch(rng, embeddings, masks, np.sort(rows[start:start + batch_size]), head.image_size,
                           images=images if needs_images else None)
        features.append(head.presence_inputs(batch.embeddings.to(device), batch.boxes.to(device),
                                             None if batch.images is None else batch.images.to(device)).cpu())
        marked.append(batch.marked_fraction)
    return torch.cat(features), torch.cat(marked)


def fit_presence_gate(head: ProbabilisticSAM, features: torch.Tensor, marked_fraction: torch.Tensor,
                      iterations: int = 600, lr: float = 3e-3, seed: int = 0) -> float:
    """Fit a fresh gate (seeded) on standardised features, fold the scaling in, install it with the features'
    range as its clipping bounds (presence.py); return its BCE."""
    torch.manual_seed(seed)
    mean, std = features.mean(dim=0), features.std(dim=0).clamp(min=1e-6)
    standard = (features - mean) / std
    gate = PresenceGate(features.shape[1])
    optimizer = torch.optim.AdamW(gate.parameters(), lr=lr, weight_decay=1e-2)
    gate.train()
    for _ in range(iterations):
        loss = presence_loss(gate(standard), marked_fraction)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    gate.eval()
    first = gate.mlp[0]
    with torch.no_grad():  # W (x - m) / s + b = (W / s) x + (b - W m / s)
        first.bias.sub_(first.weight @ (mean / std))
        first.weight.div_(std)
        head.presence.load_state_dict(gate.state_dict())  # copies onto the head's device
        head.presence.set_bounds(features.min(dim=0).values, features.max(dim=0).values)
        return float(presence_loss(gate(features), marked_fraction))


def refit_gate(backbone: Backbone, head_path: str, cache: EmbeddingCache, rows: np.ndarray, evidence: str,
               seed: int = 0, window_rows: np.ndarray | None = None, window_context: float = DEFAULT_CONTEXT,
               progress: Callable[[int, int, float], None] | None = None) -> tuple[ProbabilisticSAM, float]:
    """A trained head with a new gate reading `evidence`, fitted on `rows` of the cache; its outline unchanged.

    Why a separate step: a gate fitted on the crops the outline was trained on reads a decoder that has seen
    them and is surer there than on new patients; rows the outline never saw (the next nested prefix of the
    cache) give it the view it will have in use. The gate's logit offset is reset to 0: it was tuned for the
    old gate, so the new head is tuned again (tune-sampling). A "window" gate's CNN is fitted first, on
    `window_rows` (crops the gate is not fitted on, window_fit.py), on windows of `window_context` times the box;
    `progress` reports its epochs.
    """
    if (evidence == "window") != (window_rows is not None):
        raise ValueError("window_rows are given exactly when the evidence is 'window'")
    trained = load_head(backbone, head_path)
    head = ProbabilisticSAM(backbone, injection=trained.injection, latent_dim=trained.latent_dim,
                            prior_temperature=trained.prior_temperature, presence_evidence=evidence,
                            window_context=window_context, latent_draws=trained.latent_draws)
    copy_matching_weights(head, head_path)
    head = head.to(next(trained.parameters()).device).eval()
    crops = cache.crops()
    if window_rows is not None:
        windows, marked = crop_windows(crops["images"], crops["masks"], window_rows, head.image_size,
                                       np.random.default_rng([seed, len(window_rows)]), window_context)
        head.window_net.load_state_dict(fit_window_net(windows, marked, seed=seed, progress=progress).state_dict())
    features, marked = crop_features(head, cache.embeddings(), crops["masks"], rows,
                                     np.random.default_rng([seed, len(rows)]), crops["images"])
    return head, fit_presence_gate(head, features, marked, seed=seed)
