"""Training-free ways to get K masks from a deterministic SAM, behind the same `Sampler` interface.

They are the yardstick a trained head must beat in the same table: deterministic (one mask repeated K
times), box jitter (an ensemble over perturbed prompts), SAM's multimask output (its three masks, cycled)
and MC dropout. SAM's decoder has no dropout layers, so MC dropout here drops channels of the image
embedding before the decoder (p = 0.1), the closest equivalent that needs no retraining.
"""

from __future__ import annotations

import torch

from ..modeling.backbone import Backbone
from ..modeling.decoding import mask_weights, masks_from_weights, run_transformer
from .sampler import Samples, generator_for


class _DecoderSampler:
    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone

    def _decode(self, embedding: torch.Tensor, boxes: torch.Tensor, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Official decoder, one embedding repeated for B boxes: (B, M, 256, 256) logits, (B, M) IoU."""
        sparse, dense = self.backbone.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        return self.backbone.mask_decoder(image_embeddings=embedding, image_pe=self.backbone.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=multimask)


class Deterministic(_DecoderSampler):
    """The plain backbone: one mask, repeated K times (zero diversity, the reference for speed)."""

    name = "deterministic"

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        logits, iou = self._decode(embedding, box)
        return Samples(logits=logits[0, :1].expand(k, -1, -1), scores=iou[0, :1].expand(k))


class BoxJitter(_DecoderSampler):
    """K decodes of the box with each side moved by up to `fraction` of the box's width/height."""

    name = "box_jitter"

    def __init__(self, backbone: Backbone, fraction: float = 0.1) -> None:
        super().__init__(backbone)
        self.fraction = fraction

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        size = (box[:, 2:] - box[:, :2]).repeat(1, 2)
        noise = torch.rand((k, 4), generator=generator_for(seed, torch.device("cpu"))).to(box.device) * 2 - 1
        boxes = box + noise * self.fraction * size
        boxes = boxes.clamp(0, self.backbone.image_size - 1)
        logits, iou = self._decode(embedding, boxes)
        return Samples(logits=logits[:, 0], scores=iou[:, 0])


class Multimask(_DecoderSampler):
    """SAM's three multimask outputs, cycled to K."""

    name = "sam_multimask"

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        logits, iou = self._decode(embedding, box, multimask=True)
        order = torch.arange(k) % logits.shape[1]
        return Samples(logits=logits[0, order], scores=iou[0, order])


class MCDropout(_DecoderSampler):
    """K decodes of the box with a different channel-dropout mask on the image embedding each time."""

    name = "mc_dropout"

    def __init__(self, backbone: Backbone, p: float = 0.1) -> None:
        super().__init__(backbone)
        self.p = p

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        keep = torch.rand((k, embedding.shape[1], 1, 1), generator=generator_for(seed, torch.device("cpu")))
        dropped = embedding * (keep.to(embedding.device) >= self.p) / (1 - self.p)
        sparse, dense = self.backbone.prompt_encoder(points=None, boxes=box[:, None], masks=None)
        decoder = self.backbone.mask_decoder
        state = run_transformer(decoder, dropped, self.backbone.prompt_encoder.get_dense_pe(),
                                sparse.expand(k, -1, -1), dense.expand(k, -1, -1, -1))
        logits = masks_from_weights(mask_weights(decoder, state.mask_tokens)[:, :1], state.upscaled)[:, 0]
        return Samples(logits=logits, scores=decoder.iou_prediction_head(state.iou_token)[:, 0])


#: The training-free baselines every evaluation compares a head with, in table order.
BASELINES = (Deterministic, BoxJitter, Multimask, MCDropout)
