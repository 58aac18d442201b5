"""UA-SAM: zero-initialised adapters leave the encoder as it was; same seed, same samples; any K; head files
round-trip and bad ones are refused clearly; each image of a batch keeps its own box; the trainer's loss and one
resumable training step on a tiny early-feature cache; the shipped UA-SAM head's 3D candidates on LIDC-IDRI-0001
beside the shipped Probabilistic SAM head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AmbiguousSAMLib.errors import CheckpointError, InvalidSettingError
from AmbiguousSAMLib.heads.checkpoint import load_any_head, load_head, read_checkpoint, HEAD, save_ua_sam
from AmbiguousSAMLib.heads.ua_sam import UASAM
from AmbiguousSAMLib.modeling.backbone import Backbone
from AmbiguousSAMLib.training.ua_sam_loss import ua_sam_loss

from test_segmenter import lidc  # noqa: F401 (fixture)

BOX = torch.tensor([[80.0, 90.0, 160.0, 170.0]])


def blob_image(centre: tuple[int, int], radius: int, seed: int) -> torch.Tensor:
    """A (1, 3, 256, 256) model input: a bright disc on seeded noise, so two images differ where it matters."""
    noise = torch.rand((1, 1, 256, 256), generator=torch.Generator().manual_seed(seed)) * 0.2
    rows, cols = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    disc = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2).float()
    return (noise + 0.7 * disc).clamp(0, 1).expand(-1, 3, -1, -1)


def trained_like(head: UASAM, seed: int = 0) -> UASAM:
    """The head with its adapters' up-projections off zero, as after training: z then changes the masks."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for adapter in head.adapters:
            adapter.up.weight.copy_(torch.randn(adapter.up.weight.shape, generator=generator) * 0.05)
    return head.eval()


@pytest.fixture(scope="module")
def head(backbone: Backbone) -> UASAM:
    return trained_like(UASAM(backbone))


@pytest.mark.parametrize("adapted_blocks", [1, 2])
def test_zero_initialised_adapters_reproduce_the_plain_encoder(backbone: Backbone, adapted_blocks: int) -> None:
    image = blob_image((128, 128), 20, seed=1)
    fresh = UASAM(backbone, adapted_blocks=adapted_blocks).eval()
    with torch.no_grad():
        plain = backbone.encode(image)
        adapted = fresh.adapted_embedding(fresh.early_features(image), torch.randn(1, 6) * 3)
    difference = float((plain - adapted).abs().max())
    print(f"adapted_blocks={adapted_blocks}: max |adapted - plain embedding| = {difference:.3g}")
    assert difference < 1e-5


def test_same_seed_same_samples_and_any_k(head: UASAM) -> None:
    image = blob_image((128, 128), 20, seed=2)
    first, again = head.sample(None, BOX, 3, seed=3, image=image), head.sample(None, BOX, 3, seed=3, image=image)
    other = head.sample(None, BOX, 3, seed=4, image=image)
    assert torch.equal(first.logits, again.logits) and torch.equal(first.scores, again.scores)
    assert not torch.equal(first.logits, other.logits)
    assert (first.logits[0] - first.logits[1]).abs().max() > 1e-3, "z must change the masks"
    for k in (1, 5):  # 5: one more than a chunk of SAMPLE_CHUNK samples
        drawn = head.sample(None, BOX, k, seed=0, image=image)
        assert drawn.logits.shape == (k, 256, 256) and drawn.scores.shape == (k,)
    # The 3D path: sample i is row i of the noise, whichever rows of a pool are decoded together.
    pool = head.draw_noise(5, seed=3)
    chosen = head.sample_with_noise(None, BOX, pool[torch.tensor([4, 0])], image)
    assert torch.allclose(chosen.logits, head.sample_with_noise(None, BOX, pool, image).logits[[4, 0]], atol=1e-4)


def test_each_image_of_a_batch_keeps_its_own_box(head: UASAM) -> None:
    """Two images, two boxes around two different lesions: swapping the images (with their boxes) swaps the
    masks, and each mask is the one its image gives alone (the public code mixed prompts across a batch)."""
    images = torch.cat([blob_image((80, 80), 18, seed=5), blob_image((170, 160), 28, seed=6)])
    boxes = torch.tensor([[56.0, 56.0, 104.0, 104.0], [126.0, 136.0, 194.0, 204.0]])
    z = torch.randn(2, 2, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        early = head.early_features(images)
        together = head.decode_latents(early, boxes, z)[0]
        swapped = head.decode_latents(early.flip(0), boxes.flip(0), z.flip(0))[0]
        alone = [head.decode_latents(early[i:i + 1], boxes[i:i + 1], z[i:i + 1])[0][0] for i in range(2)]
    masks = together > 0
    assert masks[0, :, 80, 80].all() and not masks[0, :, 170, 160].any()
    assert masks[1, :, 170, 160].all() and not masks[1, :, 80, 80].any()
    assert torch.allclose(swapped.flip(0), together, atol=1e-3)
    assert all(torch.allclose(alone[i], together[i], atol=1e-3) for i in range(2))


def test_head_file_round_trip(tmp_path, backbone: Backbone, head: UASAM) -> None:
    head.prior_temperature = 1.5
    save_ua_sam(head, tmp_path / "ua.pt", backbone.spec.name, extra={"note": "test"})
    payload = read_checkpoint(tmp_path / "ua.pt", HEAD)
    assert payload["head"] == "ua-sam" and set(payload["state"]) == set(head.trainable_parameters())
    assert not any(name.startswith(("encoder.", "mask_decoder.", "prompt_encoder.")) for name in payload["state"])
    loaded = load_any_head(backbone, tmp_path / "ua.pt")
    assert isinstance(loaded, UASAM) and loaded.prior_temperature == 1.5
    image = blob_image((128, 128), 20, seed=7)
    assert torch.equal(loaded.sample(None, BOX, 3, 0, image=image).logits, head.sample(None, BOX, 3, 0, image=image).logits)
    head.prior_temperature = 1.0
    print(f"UA-SAM head file: {(tmp_path / 'ua.pt').stat().st_size / 1e6:.2f} MB")


def test_bad_head_files_are_refused_clearly(tmp_path, backbone: Backbone, head: UASAM) -> None:
    good = tmp_path / "ua.pt"
    save_ua_sam(head, good, backbone.spec.name)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="is not a readable head file"):
        load_any_head(backbone, corrupt)
    payload = read_checkpoint(good, HEAD)
    payload["config"]["bottleneck"] = 32  # another layout: the stored tensors no longer fit
    torch.save(payload, tmp_path / "mismatched.pt")
    with pytest.raises(CheckpointError, match="does not match this version's head layout"):
        load_any_head(backbone, tmp_path / "mismatched.pt")
    payload["config"] = {"adapters_everywhere": True}
    torch.save(payload, tmp_path / "other_version.pt")
    with pytest.raises(CheckpointError, match="another version of AmbiguousSAM"):
        load_any_head(backbone, tmp_path / "other_version.pt")
    with pytest.raises(CheckpointError, match="is a UA-SAM head"):
        load_head(backbone, good)


def test_sampling_needs_the_image_and_a_known_layout(backbone: Backbone, head: UASAM) -> None:
    with pytest.raises(InvalidSettingError, match="pass the model input"):
        head.sample(torch.zeros(1, 256, 64, 64), BOX, 2, 0)
    with pytest.raises(InvalidSettingError, match="adapted_blocks"):
        UASAM(backbone, adapted_blocks=3)


def test_empty_rater_masks_are_targets() -> None:
    """An empty target is matched by an empty prediction (loss ~0) and penalised by a marked one."""
    empty = torch.zeros(1, 16, 16)
    kl = torch.zeros(1)
    quiet = ua_sam_loss(torch.full((1, 16, 16), -20.0), empty, kl, kl, beta=10.0, free_nats=3.0)
    loud = ua_sam_loss(torch.full((1, 16, 16), 20.0), empty, kl, kl, beta=10.0, free_nats=3.0)
    assert float(quiet["bce"] + quiet["dice"]) < 1e-3 < float(loud["bce"] + loud["dice"])


def test_training_resumes_and_writes_a_head(tmp_path, backbone: Backbone) -> None:
    """Two steps on a four-crop early-feature cache, stopped after one and resumed: a loadable head, a loss curve."""
    from AmbiguousSAMLib.training.ua_sam_features import EarlyFeatureCache
    from AmbiguousSAMLib.training.ua_sam_trainer import UASAMTrainConfig, train_ua_sam

    crops = tmp_path / "crops.npz"
    images = np.stack([(blob_image((64, 64), 10, seed=i)[0, 0, ::2, ::2] * 255).numpy().astype(np.uint8)
                       for i in range(4)])
    masks = np.zeros((4, 4, 128, 128), dtype=bool)
    masks[:, :3, 26:38, 26:38] = True  # three raters mark it, the fourth leaves it empty
    np.savez(crops, images=images, masks=masks, patient=np.array(["a", "a", "b", "b"]))
    cache = EarlyFeatureCache(tmp_path / "cache")
    cache.build(crops, np.arange(4), UASAM(backbone).eval(), max_shift=2)
    assert cache.embeddings().shape == (4, 4096, 320) and cache.is_complete()
    config = UASAMTrainConfig(batch_size=2, steps=2, checkpoint_every=1)
    assert train_ua_sam(cache, backbone, config, tmp_path / "out", show_progress=False, stop_after=1) is None
    path = train_ua_sam(cache, backbone, config, tmp_path / "out", show_progress=False)
    assert isinstance(load_any_head(backbone, path), UASAM) and (tmp_path / "out" / "loss.png").is_file()
    with pytest.raises(InvalidSettingError, match="other settings"):
        cache.build(crops, np.arange(4), UASAM(backbone, adapted_blocks=2).eval(), max_shift=2)


def test_the_product_takes_a_ua_sam_file_and_keeps_each_candidates_z_on_every_slice(tmp_path, backbone: Backbone,
                                                                                    head: UASAM) -> None:
    """`LesionSegmenter(head=file)` (what `segment --head`, `serve --head` and the Slicer module's head choice
    build): the click conditioning decodes a pool of 4K draws on the clicked slice, keeps K, and every other slice
    is decoded with exactly those K noise rows, so candidate i is one z through the lesion."""
    import SimpleITK as sitk

    from AmbiguousSAMLib.segmenter import LesionSegmenter
    from test_segmenter import OBLIQUE, synthetic_ct

    path = tmp_path / "ua.pt"
    save_ua_sam(head, path, backbone.spec.name)
    segmenter = LesionSegmenter(head=str(path), device="cpu", runtime="torch", scorer=None)
    assert isinstance(segmenter.sampler, UASAM)
    rows = []
    decode = segmenter.sampler.sample_with_noise
    segmenter.sampler.sample_with_noise = lambda *args, **kwargs: (rows.append(args[2].normal)
                                                                  or decode(*args, **kwargs))
    image = synthetic_ct(OBLIQUE, (0.6, 0.8, 1.5))
    volume = sitk.GetArrayFromImage(image)
    first = segmenter.segment(volume, (28, 36, 52, 60), 6, image.GetSpacing(), samples=2, seed=0)
    pool, later = rows[0], rows[1:]
    assert first.info["sampler"] == "ua_sam" and first.candidates.shape[0] == 2 and len(pool) == 8 and later
    assert all(torch.equal(noise, later[0]) for noise in later)
    assert all(any(torch.equal(row, candidate) for candidate in pool) for row in later[0])
    again = segmenter.segment(volume, (28, 36, 52, 60), 6, image.GetSpacing(), samples=2, seed=0)
    np.testing.assert_array_equal(again.candidates, first.candidates)


def test_lidc_nodule_ua_sam_candidates_beside_the_shipped_head(lidc) -> None:  # noqa: F811 (fixture)
    """The shipped UA-SAM head on the click of the shipped head's 3D test, both in one run: 16 candidates, each
    marking the clicked slice (the click conditioning keeps draws of a marked lesion there) and the nodule; 3D GED
    and consensus Dice per radiologist printed for the README (UA_SAM_MODEL_CARD.md)."""
    from AmbiguousSAMLib.segmenter import LesionSegmenter
    from test_segmenter import LIDC_BOX, LIDC_SLICE
    from test_seqsam_product import three_d_report

    volume, spacing, raters = lidc
    runs = {name: LesionSegmenter(head=name, device="cpu").segment(volume, LIDC_BOX, LIDC_SLICE, spacing,
                                                                   samples=16, seed=0)
            for name in ("ua-sam", "default")}
    ua_sam = runs["ua-sam"]
    assert ua_sam.info["sampler"] == "ua_sam" and ua_sam.candidates.shape[0] == 16
    candidates = ua_sam.paste(ua_sam.candidates)
    union = raters.any(axis=0)
    assert all(c[LIDC_SLICE].any() and (c & union).any() for c in candidates)
    rows = three_d_report(runs, raters, spacing)
    # How close the 16 come to the radiologists is printed, not asserted beyond this: the consensus is the nodule.
    assert min(rows["ua-sam"]["dice"]) > 0.3
