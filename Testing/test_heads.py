"""Ambiguity heads and baselines: K samples per box, seeded, batched; both injections behind one interface."""

from __future__ import annotations

import io
import lzma

import pytest
import torch

from AmbiguousSAMLib.heads.baselines import BoxJitter, Deterministic, MCDropout, Multimask
from AmbiguousSAMLib.heads.checkpoint import XZ_MAGIC, DEFAULT_HEAD, copy_matching_weights, load_head, save_head
from AmbiguousSAMLib.heads.latent import box_channel, kl_divergence
from AmbiguousSAMLib.heads.presence import EMPTY_LOGIT, gate_logits, presence_features, stratified_ranks
from AmbiguousSAMLib.heads.probabilistic_sam import ProbabilisticSAM
from AmbiguousSAMLib.errors import CheckpointError
from AmbiguousSAMLib.modeling.backbone import Backbone


BOX = torch.tensor([[80.0, 90.0, 160.0, 170.0]])


def set_presence(head: ProbabilisticSAM, logit: float) -> None:
    """Make the presence gate return `logit` for every box (an untrained gate blanks samples at random)."""
    with torch.no_grad():
        head.presence.mlp[-1].weight.zero_()
        head.presence.mlp[-1].bias.fill_(logit)


def test_box_channel_marks_the_box_on_the_embedding_grid() -> None:
    grid = box_channel(torch.tensor([[0.0, 0.0, 63.0, 127.0]]), image_size=256)
    assert grid.shape == (1, 1, 64, 64)
    assert grid[0, 0, :32, :16].all() and not grid[0, 0, 32:, :].any() and not grid[0, 0, :, 16:].any()


def test_kl_of_identical_gaussians_is_zero_and_known_otherwise() -> None:
    mu, log_sigma = torch.zeros(1, 6), torch.zeros(1, 6)
    assert float(kl_divergence((mu, log_sigma), (mu, log_sigma))) == 0.0
    # KL(N(1, 1) || N(0, 1)) = 0.5 per dimension.
    assert float(kl_divergence((mu + 1, log_sigma), (mu, log_sigma))) == pytest.approx(3.0)


@pytest.mark.parametrize("injection", ["hypernetwork", "prompt"])
def test_probabilistic_sam_samples_are_seeded_and_diverse(backbone: Backbone, embedding: torch.Tensor,
                                                          injection: str) -> None:
    head = ProbabilisticSAM(backbone, injection=injection).eval()
    set_presence(head, 30.0)
    with torch.no_grad():  # make z matter visibly, as a trained head does
        branch = head.z_to_prompt if injection == "prompt" else head.z_to_weights
        branch[-1].weight.normal_(std=0.5)
    first = head.sample(embedding, BOX, k=5, seed=7)
    again = head.sample(embedding, BOX, k=5, seed=7)
    other = head.sample(embedding, BOX, k=5, seed=8)
    assert first.logits.shape == (5, 256, 256) and first.scores.shape == (5,)
    assert torch.equal(first.logits, again.logits)
    assert not torch.equal(first.logits, other.logits)
    assert float((first.logits[0] - first.logits[1]).abs().max()) > 1e-3


def test_chosen_noise_rows_give_the_same_hypotheses(backbone: Backbone, embedding: torch.Tensor) -> None:
    """The 3D path keeps rows of a seeded noise pool; each kept row must be the very sample `sample` drew."""
    head = ProbabilisticSAM(backbone, injection="hypernetwork").eval()
    set_presence(head, 0.0)  # half the samples blank: the kept rows must also keep their blanking
    with torch.no_grad():
        head.z_to_weights[-1].weight.normal_(std=0.5)
    pool = head.draw_noise(6, seed=3)
    again = head.draw_noise(6, seed=3)
    assert torch.equal(pool.normal, again.normal) and torch.equal(pool.ranks, again.ranks)
    everything = head.sample(embedding, BOX, k=6, seed=3)
    chosen = head.sample_with_noise(embedding, BOX, pool[[4, 1]])
    torch.testing.assert_close(chosen.logits, everything.logits[[4, 1]])


def test_given_marked_draws_unblanked_outlines_and_conditions_the_ranks(backbone: Backbone,
                                                                       embedding: torch.Tensor) -> None:
    """The click path: on the clicked slice no draw is blanked, and each rank is scaled into [0, pi) there, so a
    slice where the gate is as sure keeps every candidate and one where it is surer cannot blank more."""
    head = ProbabilisticSAM(backbone, injection="hypernetwork").eval()
    set_presence(head, -1.0)  # pi = 0.27: most of a plain draw is blanked
    pool = head.draw_noise(16, seed=2)
    plain, given = head.sample_with_noise(embedding, BOX, pool), head.sample_with_noise(embedding, BOX, pool, gated=False)
    blank = lambda drawn: int((drawn.logits == EMPTY_LOGIT).flatten(1).all(dim=1).sum())
    assert blank(plain) == 12 and blank(given) == 0
    assert given.presence == pytest.approx(float(torch.sigmoid(torch.tensor(-1.0))))
    conditioned = pool.given_marked(given.presence)
    assert torch.equal(torch.argsort(conditioned.ranks), torch.argsort(pool.ranks))  # the nesting is kept
    torch.testing.assert_close(conditioned.ranks.sort().values, (torch.arange(16) + 0.5) / 16 * given.presence)
    assert torch.equal(conditioned.normal, pool.normal) and pool.given_marked(None) is pool
    assert blank(head.sample_with_noise(embedding, BOX, conditioned)) == 0
    set_presence(head, -2.0)  # a neighbour the gate doubts more: 16 * 0.119 / 0.269 = 7.1 candidates go on
    assert blank(head.sample_with_noise(embedding, BOX, conditioned)) == 16 - 7


def test_the_gate_clips_its_inputs_to_the_fitted_range(backbone: Backbone, tmp_path) -> None:
    """A ReLU gate extrapolates linearly; clipped to the range it was fitted on, a far-off input reads as the
    nearest fitted one. The range travels in the head file; a file without one (written before) is not clipped."""
    head = ProbabilisticSAM(backbone, injection="hypernetwork").eval()
    features = torch.randn(32, 9, generator=torch.Generator().manual_seed(0))
    low, high = features.min(dim=0).values, features.max(dim=0).values
    far = high[None] + 100.0
    unclipped = head.presence(far)
    head.presence.set_bounds(low, high)
    torch.testing.assert_close(head.presence(far), head.presence(high[None]))
    assert not torch.allclose(unclipped, head.presence(far))
    torch.testing.assert_close(head.presence(features), head.presence.mlp(features)[:, 0])  # inside: unchanged
    save_head(head, tmp_path / "bounded.pt", "litemedsam")
    loaded = load_head(backbone, tmp_path / "bounded.pt")
    torch.testing.assert_close(loaded.presence.low, low)
    torch.testing.assert_close(loaded.presence(far), head.presence(far))
    with pytest.raises(ValueError, match="low <= high"):
        head.presence.set_bounds(high, low)
    assert ProbabilisticSAM(backbone).presence.bounds() is None


def test_stratified_ranks_put_one_sample_in_each_stratum() -> None:
    ranks = stratified_ranks(16, torch.Generator().manual_seed(0))
    assert sorted((ranks * 16).floor().int().tolist()) == list(range(16))
    assert not torch.equal(ranks, stratified_ranks(16, torch.Generator().manual_seed(1)))


def test_gate_blanks_exactly_the_samples_ranked_above_presence() -> None:
    logits = torch.full((4, 8, 8), 3.0)
    gated = gate_logits(logits, torch.tensor([0.1, 0.6, 0.3, 0.9]), torch.tensor(0.5))
    assert gated[[0, 2]].eq(3.0).all() and gated[[1, 3]].eq(EMPTY_LOGIT).all()


def test_presence_features_measure_the_mask_inside_the_box() -> None:
    logits = torch.full((1, 256, 256), -10.0)
    logits[0, 100:120, 100:180] = 10.0  # the top half of the 80 x 40 px box
    box = torch.tensor([[100.0, 100.0, 179.0, 139.0]])
    features = presence_features(logits, torch.tensor([[0.9, 0.8, 0.7, 0.6]]), box, image_size=256)
    assert features.shape == (1, 9)
    torch.testing.assert_close(features[0, :2], torch.log(torch.tensor([79.0, 39.0]) / 256))
    assert features[0, 2].item() == pytest.approx(0.5, abs=0.02)  # pixel centres on the box edge count once
    assert features[0, 4].item() == pytest.approx(1.0)  # largest logit / 10
    torch.testing.assert_close(features[0, 5:], torch.tensor([0.9, 0.8, 0.7, 0.6]))


@pytest.mark.parametrize("presence_bias, marked", [(30.0, 16), (-30.0, 0), (0.0, 8)])
def test_presence_gate_sets_how_many_samples_are_marked(backbone: Backbone, embedding: torch.Tensor,
                                                        presence_bias: float, marked: int) -> None:
    """pi = 1 marks every sample, pi = 0 none, pi = 0.5 exactly half of them (stratified ranks)."""
    head = ProbabilisticSAM(backbone, injection="hypernetwork").eval()
    set_presence(head, presence_bias)
    drawn = head.sample(embedding, BOX, k=16, seed=0)
    blank = (drawn.logits == EMPTY_LOGIT).flatten(1).all(dim=1)
    assert int((~blank).sum()) == marked


@pytest.mark.parametrize("sampler_class", [Deterministic, BoxJitter, Multimask, MCDropout])
def test_baselines_share_the_interface(backbone: Backbone, embedding: torch.Tensor, sampler_class) -> None:
    sampler = sampler_class(backbone)
    drawn = sampler.sample(embedding, BOX, k=4, seed=0)
    assert drawn.logits.shape == (4, 256, 256) and drawn.scores.shape == (4,)
    assert torch.equal(drawn.logits, sampler.sample(embedding, BOX, k=4, seed=0).logits)
    distinct = len({tuple(l.flatten()[:4096].tolist()) for l in drawn.logits})
    assert distinct == (1 if sampler_class is Deterministic else 3 if sampler_class is Multimask else 4)


def test_head_checkpoint_round_trip_and_wrong_backbone(backbone: Backbone, tmp_path) -> None:
    head = ProbabilisticSAM(backbone, injection="hypernetwork", latent_dim=4)
    path = tmp_path / "head.pt"
    save_head(head, path, "litemedsam")
    loaded = load_head(backbone, path)
    assert loaded.latent_dim == 4 and loaded.injection == "hypernetwork"
    for name, p in head.trainable_parameters().items():
        assert torch.equal(p, loaded.trainable_parameters()[name])
    save_head(head, path, "sam_vit_b")
    with pytest.raises(CheckpointError, match="trained on backbone 'sam_vit_b'"):
        load_head(backbone, path)
    with pytest.raises(CheckpointError, match="No trained head"):
        load_head(backbone, tmp_path / "absent.pt")


def test_head_files_are_compressed_and_older_plain_files_still_load(backbone: Backbone, tmp_path) -> None:
    """Checkpoints are written xz-compressed (what keeps the shipped files under 5 MiB); a file written before, a
    plain torch.save, reads the same."""
    head = ProbabilisticSAM(backbone, injection="hypernetwork", latent_dim=4)
    compressed, plain = tmp_path / "head.pt", tmp_path / "plain.pt"
    save_head(head, compressed, "litemedsam")
    assert compressed.read_bytes().startswith(XZ_MAGIC)
    torch.save(torch.load(io.BytesIO(lzma.decompress(compressed.read_bytes())), weights_only=True), plain)
    for path in (compressed, plain):
        loaded = load_head(backbone, path)
        for name, p in head.trainable_parameters().items():
            assert torch.equal(p, loaded.trainable_parameters()[name])


def test_training_can_start_from_a_head_of_another_layout(backbone: Backbone, tmp_path) -> None:
    """Fine-tuning copies what fits and says what it left fresh (here: the latent nets' 4 -> 6 dims)."""
    old = ProbabilisticSAM(backbone, injection="hypernetwork", latent_dim=4)
    save_head(old, tmp_path / "old.pt", "litemedsam")
    new = ProbabilisticSAM(backbone, injection="hypernetwork", latent_dim=6)
    fresh = copy_matching_weights(new, tmp_path / "old.pt")
    assert "prior.out.weight" in fresh and "z_to_offset.weight" in fresh
    assert "presence.mlp.0.weight" not in fresh and "prior.features.0.weight" not in fresh
    assert torch.equal(new.prior.features[0].weight, old.prior.features[0].weight)
    with pytest.raises(CheckpointError, match="No trained head"):
        copy_matching_weights(new, tmp_path / "absent.pt")


def test_shipped_head_loads(backbone: Backbone) -> None:
    assert DEFAULT_HEAD.is_file(), f"the trained head must ship at {DEFAULT_HEAD}"
    head = load_head(backbone)
    assert head.injection in ("hypernetwork", "prompt") and head.latent_dim == 6
    assert float(head.presence.mlp[-1].weight.abs().sum()) > 0, "the shipped head must carry a trained presence gate"
