"""What the UncertainSAM scorer reads: the z-free decoder pass of a box, and how a candidate differs from it.

The paper's MLPs read the IoU token and a mask token of SAM's decoder. Both come from the decoder's two-way
transformer, which every ambiguity head here keeps frozen (the shipped head's copy is the backbone's), so one
z-free pass of the backbone gives the same tokens whatever head drew the candidates.

Tokens alone cannot rank candidates: with the hypernetwork injection every sample of a box shares them (z only
shifts the mask weights and the logits). A candidate is therefore also described by how it departs from the
z-free prediction of its box: their IoU, the log ratio of their areas and whether it is empty. These three
numbers exist for any candidate of any sampler (SAM's multimask outputs, box jitter, a head's samples), which the
head's own 32 mask weights and logit offset would not (they are specific to one injection and one head file).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics
from ..modeling.backbone import Backbone
from ..modeling.decoding import DecoderState, mask_weights, masks_from_weights, run_transformer

#: Width of the scorer's token input: the IoU token and the single-mask token, 256 each for SAM's decoder.
TOKEN_WIDTH = 512
#: Per-candidate numbers `candidate_features` returns.
CANDIDATE_FEATURES = 3


@dataclass
class DecoderReadout:
    """One z-free decoder pass for B boxes."""

    #: (B, 512): concat[IoU token, single-mask token], the scorer's input.
    tokens: torch.Tensor
    #: (B, 4, 256, 256): low-resolution logits of the single mask, then SAM's three multimask outputs.
    logits: torch.Tensor
    #: (B, 4): the decoder's own IoU estimate of each of the four masks.
    iou: torch.Tensor


@torch.no_grad()
def decoder_readout(backbone: Backbone, embeddings: torch.Tensor, boxes: torch.Tensor,
                    points: tuple[torch.Tensor, torch.Tensor] | None = None) -> DecoderReadout:
    """Embeddings (B, 256, 64, 64) and boxes (B, 4) in the model frame, optionally with points ((B, P, 2) as
    (x, y) in the model frame, labels (B, P): 1 positive, -1 padding) -> all four masks and the tokens."""
    sparse, dense = backbone.prompt_encoder(points=points, boxes=boxes[:, None], masks=None)
    state = run_transformer(backbone.mask_decoder, embeddings, backbone.prompt_encoder.get_dense_pe(), sparse, dense)
    return readout_from_state(backbone, state)


@torch.no_grad()
def readout_from_state(backbone: Backbone, state: DecoderState) -> DecoderReadout:
    """The readout of a z-free transformer pass that already ran (a head's, for its presence gate), so scoring a
    box costs no second pass. The masks come from the backbone's hypernetworks, the ones the scorer was trained
    with: the shipped head fine-tunes its own copy of the single-mask one, which would move the reference mask."""
    decoder = backbone.mask_decoder
    logits = masks_from_weights(mask_weights(decoder, state.mask_tokens), state.upscaled)
    return DecoderReadout(tokens=torch.cat([state.iou_token, state.mask_tokens[:, 0]], dim=1), logits=logits,
                          iou=decoder.iou_prediction_head(state.iou_token))


def candidate_features(candidate_logits: torch.Tensor, reference_logits: torch.Tensor) -> torch.Tensor:
    """(K, 256, 256) candidate logits and the z-free prediction's (256, 256) -> (K, 3) features: IoU with the
    z-free mask (1 when both are empty), log((area + 1) / (z-free area + 1)) and 1 for an empty candidate."""
    candidates = (candidate_logits > 0).cpu().numpy()
    reference = (reference_logits > 0).cpu().numpy()[None]
    overlap = metrics.pairwise_iou(candidates, reference)[:, 0]
    areas = candidates.reshape(len(candidates), -1).sum(axis=1)
    area_ratio = np.log((areas + 1.0) / (reference.sum() + 1.0))
    features = np.stack([overlap, area_ratio, (areas == 0).astype(np.float64)], axis=1)
    return torch.from_numpy(features.astype(np.float32))
