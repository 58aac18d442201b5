"""UncertainSAM's scorer: small MLPs on the decoder's tokens that say how good a prediction is and how much better
it could be, and how much experts would disagree on the lesion.

One MLP (512 -> 512 -> 512 -> 1, sigmoid) per estimate, as in the paper, all reading concat[IoU token,
single-mask token] of the z-free decoder pass of the box (scorer_inputs.py):
- per box: the task gap (the best of the decoder's four outputs against the single mask), the prompt gap (a box
  plus interior points against the box alone) and the raters' disagreement (mean pairwise 1 - IoU);
- per candidate: the expected quality, as IoU with the raters' majority and as the mean IoU with each rater. The
  tokens are shared by every candidate of a box, so these two MLPs also read the candidate's three
  `candidate_features` (how it departs from the z-free prediction); for the z-free prediction itself those are
  (1, 0, empty?) and the MLP is the paper's token-only one.
The paper's fourth gap, the model gap (how much a larger SAM would improve the mask), is left out: it needs a
second, larger backbone's predictions on the training crops, and LiteMedSAM is the only backbone available
here. All targets are defined in training/scorer_targets.py. The tokens are standardised with statistics of the
training set, kept as buffers so a checkpoint carries them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..modeling.backbone import Backbone
from ..modeling.decoding import DecoderState
from .scorer_inputs import CANDIDATE_FEATURES, TOKEN_WIDTH, candidate_features, decoder_readout, readout_from_state

#: Estimates per box, in the order of the scorer's box output.
BOX_ESTIMATES = ("task_gap", "prompt_gap", "disagreement")
#: Estimates per candidate, in the order of the scorer's candidate output.
CANDIDATE_ESTIMATES = ("quality_majority", "quality_raters")


def _mlp(inputs: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 1), nn.Sigmoid())


@dataclass
class ScorerEstimate:
    """What the scorer says about one box and its K candidates (all in [0, 1])."""

    #: (K,) expected IoU of each candidate with the raters' majority: the score to rank candidates by.
    quality: np.ndarray
    #: (K,) expected mean IoU of each candidate with each rater (empty raters included).
    quality_raters: np.ndarray
    #: Expected raters' mean pairwise 1 - IoU on this slice: how much experts would disagree.
    disagreement: float
    #: Expected IoU gain of the best decoder output over the single mask.
    task_gap: float
    #: Expected IoU gain of a denser prompt (box + interior points) over the box alone.
    prompt_gap: float


class UncertainSAMScorer(nn.Module):
    """The MLPs and the token standardisation; `score` runs the z-free pass and reads a box's candidates."""

    def __init__(self, *, hidden: int = 512) -> None:
        super().__init__()
        self.hidden = hidden
        self.register_buffer("token_mean", torch.zeros(TOKEN_WIDTH))
        self.register_buffer("token_std", torch.ones(TOKEN_WIDTH))
        self.box_mlps = nn.ModuleList(_mlp(TOKEN_WIDTH, hidden) for _ in BOX_ESTIMATES)
        self.candidate_mlps = nn.ModuleList(_mlp(TOKEN_WIDTH + CANDIDATE_FEATURES, hidden) for _ in CANDIDATE_ESTIMATES)

    def forward(self, tokens: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens (B, 512), candidate features (B, C, 3) -> box estimates (B, 3), candidate estimates (B, C, 2)."""
        standard = (tokens - self.token_mean) / self.token_std
        per_box = torch.cat([mlp(standard) for mlp in self.box_mlps], dim=1)
        paired = torch.cat([standard[:, None].expand(-1, features.shape[1], -1), features], dim=2)
        per_candidate = torch.cat([mlp(paired) for mlp in self.candidate_mlps], dim=2)
        return per_box, per_candidate

    @torch.no_grad()
    def score(self, backbone: Backbone, embedding: torch.Tensor, box: torch.Tensor, candidate_logits: torch.Tensor,
              state: DecoderState | None = None) -> ScorerEstimate:
        """Estimates for one box: `embedding` (1, 256, 64, 64), `box` (1, 4) in the model frame and the K
        candidates' (K, 256, 256) low-resolution logits from any sampler. `state` is the box's z-free transformer
        pass when the sampler already ran it (`Samples.decoder_state`); without it the scorer runs its own."""
        readout = decoder_readout(backbone, embedding, box) if state is None else readout_from_state(backbone, state)
        features = candidate_features(candidate_logits, readout.logits[0, 0])[None]
        device = self.token_mean.device
        per_box, per_candidate = self(readout.tokens.float().to(device), features.to(device))
        per_box, per_candidate = per_box[0].cpu().numpy(), per_candidate[0].cpu().numpy()
        return ScorerEstimate(quality=per_candidate[:, 0], quality_raters=per_candidate[:, 1],
                              **{name: float(value) for name, value in zip(BOX_ESTIMATES, per_box)})
