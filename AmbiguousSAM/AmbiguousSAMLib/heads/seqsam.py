"""SeqSAM: SAM's decoder unrolled as a recurrent network, one mask per step, any number of steps.

Step 1 decodes the box with no mask prompt; step t feeds step t-1's low-resolution logits through SAM's own
dense (mask) prompt encoder. A recurrent cell of two parallel 3x3 convolutions over concat[dense embedding,
hidden state] (512 -> 256 channels each, no activation, as in the authors' code) gives this step's dense prompt
and the next hidden state; h0 = 0. The hidden state remembers which outlines were already given, so the next
step can give another; trained with a Hungarian-matched set loss (training/seqsam_loss.py), the sequence becomes
a canonical list of the raters' opinions.

Deterministic: the same embedding and box give the same M masks; `sample` ignores its seed. The sequence is
canonical, so mask m is "the m-th opinion" on every slice of a lesion. M masks cost M decoder passes (the
transformer must re-read each new dense prompt) after the one encoder pass.

The decoder and prompt encoder are copies of the backbone's; only the cell and the single-mask hypernetwork MLP
are trained, so a head file holds ~2.5 M numbers, not SAM's whole decoder.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..modeling.backbone import Backbone
from ..modeling.decoding import mask_weights, masks_from_weights, run_transformer
from .sampler import Samples

#: Name prefixes of the parameters training updates and a head file stores.
TRAINED = ("cell.", "mask_decoder.output_hypernetworks_mlps.0.")


class RecurrentCell(nn.Module):
    """Two parallel 3x3 convolutions over concat[dense prompt embedding, hidden state]: the prompt the decoder
    reads at this step, and the hidden state of the next.

    The prompt convolution starts as the identity on the dense embedding (and near zero on the hidden state), so
    an untrained head gives SAM's own mask first and then SAM's refinement of it: training starts from a working
    decoder instead of one whose dense prompt is noise (the authors' randomly initialised cell had the whole
    decoder to fine-tune for that; here only the cell and one MLP are trained).
    """

    def __init__(self, *, channels: int = 256) -> None:
        super().__init__()
        self.channels = channels
        self.to_prompt = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1)
        self.to_hidden = nn.Conv2d(2 * channels, channels, kernel_size=3, padding=1)
        with torch.no_grad():
            self.to_prompt.weight.normal_(std=1e-3)
            self.to_prompt.weight[:, :channels] = 0
            self.to_prompt.weight[:, :channels, 1, 1] = torch.eye(channels)
            self.to_prompt.bias.zero_()

    def forward(self, dense: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) dense embedding and hidden state -> (this step's dense prompt, next hidden state)."""
        combined = torch.cat([dense, hidden], dim=1)
        return self.to_prompt(combined), self.to_hidden(combined)


class SeqSAM(nn.Module):
    """SAM's prompt encoder and mask decoder with a recurrent cell between steps (see the module docstring)."""

    name = "seqsam"

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.prompt_encoder = copy.deepcopy(backbone.prompt_encoder)
        self.mask_decoder = copy.deepcopy(backbone.mask_decoder)
        self.cell = RecurrentCell(channels=self.prompt_encoder.embed_dim)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """What training updates and a head file stores; the rest is the backbone's decoder, unchanged."""
        return {name: p for name, p in self.named_parameters() if name.startswith(TRAINED)}

    def unroll(self, embeddings: torch.Tensor, boxes: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings (B, 256, 64, 64), boxes (B, 4) -> `steps` masks per box: logits (B, M, 256, 256) and the
        decoder's IoU estimates (B, M). Differentiable end to end: training back-propagates through time."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        image_pe = self.prompt_encoder.get_dense_pe()
        hidden = torch.zeros_like(dense)
        logits, ious = [], []
        for step in range(steps):
            if step:  # SAM's mask input and its low-resolution output are both 4x the embedding's size
                dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=logits[-1][:, None])[1]
            prompt, hidden = self.cell(dense, hidden)
            state = run_transformer(self.mask_decoder, embeddings, image_pe, sparse, prompt)
            weights = mask_weights(self.mask_decoder, state.mask_tokens)[:, :1]
            logits.append(masks_from_weights(weights, state.upscaled)[:, 0])
            ious.append(self.mask_decoder.iou_prediction_head(state.iou_token)[:, 0])
        return torch.stack(logits, dim=1), torch.stack(ious, dim=1)

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        """The first k masks of the sequence for one box. `seed` is ignored (SeqSAM draws nothing at random: the
        same box gives the same masks under every seed) and so is `image`."""
        logits, ious = self.unroll(embedding, box, k)
        return Samples(logits=logits[0], scores=ious[0])
