"""Training on real multi-rater crops: embedding cache, random rater targets, resume, loss curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from AmbiguousSAMLib.heads.checkpoint import load_head
from AmbiguousSAMLib.predictor import Predictor
from AmbiguousSAMLib.training.batches import make_batch, union_box
from AmbiguousSAMLib.training.embedding_cache import EmbeddingCache, shift_crop
from AmbiguousSAMLib.heads.probabilistic_sam import ProbabilisticSAM
from AmbiguousSAMLib.modeling.backbone import build_backbone
from AmbiguousSAMLib.training.losses import probabilistic_sam_loss, soft_dice_loss
from AmbiguousSAMLib.training.presence_fit import fit_presence_gate
from AmbiguousSAMLib.training.trainer import TrainConfig, train

from conftest import val_embedding_cache



def test_shift_moves_content_and_repeats_the_border() -> None:
    a = np.arange(25).reshape(5, 5)
    shifted = shift_crop(a, 1, -2)
    assert shifted[1, 0] == a[0, 2] and shifted[0, 0] == a[0, 2] and shifted[4, 4] == a[3, 4]


def test_box_surrounds_all_raters_not_the_chosen_one() -> None:
    masks = np.zeros((4, 32, 32), bool)
    masks[0, 10:12, 10:12] = True
    masks[2, 8:20, 9:14] = True
    np.testing.assert_array_equal(union_box(masks, np.array([1, 2, 3, 4])), [8, 6, 16, 23])


def test_dice_loss_rewards_empty_for_empty() -> None:
    empty = torch.zeros(1, 8, 8)
    assert float(soft_dice_loss(torch.full((1, 8, 8), -20.0), empty)) == pytest.approx(0.0, abs=1e-6)
    assert float(soft_dice_loss(torch.full((1, 8, 8), 20.0), empty)) > 0.9


@pytest.fixture(scope="module")
def backbone_head() -> ProbabilisticSAM:
    return ProbabilisticSAM(build_backbone(), injection="hypernetwork").eval()


def test_unmarked_examples_leave_the_outline_model_alone() -> None:
    """Hurdle likelihood: an empty rater mask is the presence gate's to learn; the outline loss ignores it."""
    targets = torch.zeros(2, 8, 8)
    targets[0, 2:5, 2:5] = 1.0
    logits = torch.randn(2, 8, 8, requires_grad=True)
    kl_prior = torch.tensor([4.0, 100.0], requires_grad=True)
    losses = probabilistic_sam_loss(logits, targets, kl_prior, torch.tensor([4.0, 100.0]), beta=10.0, free_nats=3.0)
    losses["total"].backward()
    assert logits.grad[1].abs().max() == 0 and logits.grad[0].abs().max() > 0
    assert kl_prior.grad[1] == 0 and float(losses["kl"]) == pytest.approx(4.0)
    single = probabilistic_sam_loss(logits[:1], targets[:1], kl_prior[:1], torch.tensor([4.0]), 10.0, 3.0)
    assert single["total"].item() == pytest.approx(losses["total"].item())


def test_presence_gate_fit_separates_marked_from_unmarked_and_folds_the_scaling(backbone_head) -> None:
    """Features with very different scales (as the real ones have): the fitted gate must rank by the one
    that matters, and the stored MLP must give the same answer on raw features as on standardised ones."""
    generator = torch.Generator().manual_seed(0)
    features = torch.randn((400, 9), generator=generator) * torch.tensor([0.01, 1, 1, 1, 1, 1, 1, 1, 1]) - 3
    marked = (features[:, 0] > -3).float() * 0.75 + 0.25  # 1.0 or 0.25 of the raters, told by a 0.01-wide feature
    bce = fit_presence_gate(backbone_head, features, marked, iterations=300)
    pi = torch.sigmoid(backbone_head.presence(features)).detach()
    assert pi[marked == 1].mean() > 0.9 and pi[marked < 1].mean() < 0.35
    assert bce < float(torch.nn.functional.binary_cross_entropy(torch.full_like(marked, float(marked.mean())), marked))


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> EmbeddingCache:
    return val_embedding_cache(tmp_path_factory.mktemp("cache"), 6)


def test_cache_is_complete_resumable_and_fp16(tiny_cache: EmbeddingCache) -> None:
    assert tiny_cache.is_complete()
    embeddings = tiny_cache.embeddings()
    assert embeddings.shape == (6, 256, 64, 64) and embeddings.dtype == np.float16
    assert np.abs(np.asarray(embeddings[5], dtype=np.float32)).sum() > 0


def test_batches_use_every_rater_including_empty_ones(tiny_cache: EmbeddingCache) -> None:
    crops = tiny_cache.crops()
    rng = np.random.default_rng(0)
    seen_empty = seen_full = False
    for _ in range(30):
        batch = make_batch(rng, tiny_cache.embeddings(), crops["masks"], np.arange(6), 256)
        areas = batch.targets.sum(dim=(1, 2))
        seen_empty |= bool((areas == 0).any())
        seen_full |= bool((areas > 0).any())
        assert batch.embeddings.shape == (6, 256, 64, 64) and batch.boxes.shape == (6, 4)
        expected = crops["masks"][np.arange(6)].reshape(6, 4, -1).any(-1).mean(-1)
        np.testing.assert_allclose(batch.marked_fraction.numpy(), expected)
    assert seen_full and (seen_empty or crops["masks"].reshape(6, 4, -1).any(-1).all())


def test_training_resumes_and_writes_curves_and_a_loadable_head(tiny_cache: EmbeddingCache, tmp_path) -> None:
    predictor = Predictor(device="cpu")
    config = TrainConfig(steps=6, batch_size=2, checkpoint_every=2)
    assert train(tiny_cache, predictor.backbone, config, tmp_path, show_progress=False, stop_after=4) is None
    first = torch.load(tmp_path / "last.pt", weights_only=False)["history"]
    assert len(first) == 4 and not (tmp_path / "head.pt").exists()
    # The same command again continues from step 4 instead of starting over.
    assert train(tiny_cache, predictor.backbone, config, tmp_path, show_progress=False) == tmp_path / "head.pt"
    history = json.loads((tmp_path / "history.json").read_text())
    assert [h["step"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert history[:4] == first
    assert (tmp_path / "loss.png").stat().st_size > 1000
    assert load_head(predictor.backbone, tmp_path / "head.pt").injection == "hypernetwork"
