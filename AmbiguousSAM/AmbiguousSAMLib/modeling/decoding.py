"""SAM's mask decoder split into its two halves, for one prompt per image.

`segment_anything.MaskDecoder.forward` repeats *one* image embedding for B prompts; training needs B images
with one prompt each, and the fast ambiguity head needs the transformer's outputs *before* the hypernetwork
turns the mask token into mask weights. Same weights, same arithmetic as `MaskDecoder.predict_masks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder


@dataclass
class DecoderState:
    """What the decoder's two-way transformer produced for B (image, prompt) pairs."""

    #: (B, 4, 256): the single-mask token, then SAM's three multimask tokens.
    mask_tokens: torch.Tensor
    #: (B, 256): the token the IoU head reads.
    iou_token: torch.Tensor
    #: (B, 32, 256, 256): upscaled image features that mask weights are dotted with.
    upscaled: torch.Tensor


def run_transformer(decoder: MaskDecoder, embeddings: torch.Tensor, image_pe: torch.Tensor,
                    sparse: torch.Tensor, dense: torch.Tensor) -> DecoderState:
    """Decoder transformer + upscaling for embeddings (B, 256, 64, 64) paired 1:1 with prompts (B, T, 256)."""
    batch = sparse.shape[0]
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat((output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse), dim=1)
    src = embeddings.expand(batch, -1, -1, -1) + dense
    pos = image_pe.expand(batch, -1, -1, -1)
    b, c, h, w = src.shape
    hs, src = decoder.transformer(src, pos, tokens)
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(b, c, h, w))
    return DecoderState(mask_tokens=hs[:, 1:1 + decoder.num_mask_tokens], iou_token=hs[:, 0], upscaled=upscaled)


def mask_weights(decoder: MaskDecoder, mask_tokens: torch.Tensor) -> torch.Tensor:
    """(B, 4, 256) mask tokens -> (B, 4, 32) per-mask weights through SAM's hypernetwork MLPs."""
    return torch.stack([mlp(mask_tokens[:, i]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)], dim=1)


def masks_from_weights(weights: torch.Tensor, upscaled: torch.Tensor) -> torch.Tensor:
    """(B, M, 32) weights . (B, 32, 256, 256) features -> (B, M, 256, 256) logits."""
    b, c, h, w = upscaled.shape
    return (weights @ upscaled.reshape(b, c, h * w)).reshape(b, -1, h, w)
