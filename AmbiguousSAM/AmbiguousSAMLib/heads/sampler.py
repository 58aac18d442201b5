"""The one interface every way of drawing K masks implements, so one harness compares them all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from ..modeling.decoding import DecoderState


@dataclass
class Samples:
    """K hypotheses for one box, in the model frame (256 x 256 low-resolution logits)."""

    #: (K, 256, 256) logits; sigmoid gives the probability maps.
    logits: torch.Tensor
    #: (K,) expected quality of each hypothesis (the decoder's IoU estimate); higher is better.
    scores: torch.Tensor
    #: The box's z-free decoder transformer pass when the sampler ran one (a latent head does, for its presence
    #: gate): the UncertainSAM scorer reads its tokens instead of running the pass again. None otherwise.
    decoder_state: DecoderState | None = None
    #: The gate's probability (offset applied) that an expert marks this lesion at all, for a sampler with a
    #: presence gate: the click conditioning reads it (click_conditioning.py). None for a sampler without one.
    presence: float | None = None


class Sampler(Protocol):
    """Draws K masks for a box on an encoded image; the same seed gives the same samples."""

    name: str

    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        """`embedding` (1, 256, 64, 64), `box` (1, 4) in the model frame (x0, y0, x1, y1), `image` the model input
        (1, 3, S, S) the embedding was computed from, or its first channel alone (1, 1, S, S; the three are grey
        copies): samplers that read appearance need it, others ignore it."""
        ...


def generator_for(seed: int, device: torch.device) -> torch.Generator:
    """A private random stream, so sampling never disturbs (or depends on) torch's global RNG."""
    return torch.Generator(device=device).manual_seed(int(seed))
