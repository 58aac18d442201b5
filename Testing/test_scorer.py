"""The UncertainSAM scorer: its targets on constructed masks, a fit and a score on real crops, its checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from AmbiguousSAMLib import metrics
from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.errors import CheckpointError, InvalidSettingError
from AmbiguousSAMLib.heads.checkpoint import DEFAULT_HEAD, load_head, read_checkpoint
from AmbiguousSAMLib.heads.scorer import UncertainSAMScorer
from AmbiguousSAMLib.heads.scorer_checkpoint import SCORER, load_scorer, save_scorer
from AmbiguousSAMLib.heads.scorer_inputs import candidate_features, decoder_readout
from AmbiguousSAMLib.preprocessing import ModelFrame, model_input
from AmbiguousSAMLib.training.scorer_fit import fit_scorer, per_estimate_mse, split_patients
from AmbiguousSAMLib.training.batches import BOX_MARGINS, union_box
from AmbiguousSAMLib.training.scorer_targets import (EMPTY_LOGIT, ScorerExamples, box_targets, candidate_quality,
                                                     dense_prompt_points)

from conftest import val_embedding_cache


def square(top: int, left: int, side: int, size: int = 32) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[top:top + side, left:left + side] = True
    return mask


EMPTY = np.zeros((32, 32), bool)


def test_disagreement_counts_empty_raters_and_reads_one_of_four_as_half() -> None:
    lesion = square(8, 8, 10)
    assert metrics.mean_pairwise_distance(np.stack([lesion] * 4)) == 0.0
    assert metrics.mean_pairwise_distance(np.stack([lesion, EMPTY, EMPTY, EMPTY])) == pytest.approx(0.5)
    assert metrics.mean_pairwise_distance(np.stack([EMPTY] * 4)) == 0.0
    # Two disjoint outlines and two empty raters: five of the six pairs disagree completely.
    assert metrics.mean_pairwise_distance(np.stack([lesion, square(20, 20, 5), EMPTY, EMPTY])) == pytest.approx(5 / 6)
    # Half-overlapping outlines (IoU 1/3) on all four raters.
    shifted = square(8, 13, 10)
    assert metrics.mean_pairwise_distance(np.stack([lesion, lesion, shifted, shifted])) == pytest.approx(4 / 6 * 2 / 3)


def test_task_and_prompt_gaps_of_known_masks() -> None:
    majority = square(8, 8, 10)
    raters = np.stack([majority, majority, majority, EMPTY])
    half = majority.copy()
    half[:, 13:] = False  # IoU 0.5 with the majority
    three_quarters = majority.copy()
    three_quarters[15:18] = False  # 70 of 100 pixels: IoU 0.7
    outputs = np.stack([half, EMPTY, majority, three_quarters])
    targets = box_targets(outputs, three_quarters, raters)
    assert targets["task_gap"] == pytest.approx(0.5)
    assert targets["prompt_gap"] == pytest.approx(0.2)
    assert targets["disagreement"] == pytest.approx(0.5)
    # A denser prompt that does worse is not kept (gap 0), nor is one that could not be drawn (empty majority).
    assert box_targets(np.stack([majority, half, half, half]), half, raters)["prompt_gap"] == 0.0
    assert box_targets(outputs, None, raters)["prompt_gap"] == 0.0
    assert box_targets(np.stack([majority] * 4), majority, raters)["task_gap"] == 0.0


def test_candidate_quality_scores_empty_masks_with_the_protocol_convention() -> None:
    lesion = square(8, 8, 10)
    one_rater = np.stack([lesion, EMPTY, EMPTY, EMPTY])  # majority empty
    quality = candidate_quality(np.stack([lesion, EMPTY]), one_rater)
    np.testing.assert_allclose(quality, [[0.0, 0.25], [1.0, 0.75]])


def test_dense_prompt_points_spread_inside_the_majority() -> None:
    majority = np.zeros((32, 32), bool)
    majority[4:12, 2:30] = True  # 8 rows x 28 columns
    points = dense_prompt_points(majority)
    assert points.shape == (3, 2)
    cols, rows = points[:, 0].astype(int), points[:, 1].astype(int)
    assert majority[rows, cols].all()
    assert rows[0] in (7, 8) and 5 <= cols[0] <= 26  # the deepest pixels first (4 px from the boundary)
    assert min(np.linalg.norm(points[i] - points[j]) for i in range(3) for j in range(i)) > 8
    assert dense_prompt_points(EMPTY).shape == (0, 2)
    single = np.zeros((32, 32), bool)
    single[5, 9] = True
    np.testing.assert_array_equal(dense_prompt_points(single), [[9, 5]])


def test_candidate_features_tell_candidates_of_one_box_apart() -> None:
    reference = torch.full((256, 256), -5.0)
    reference[100:140, 100:140] = 5.0
    grown = torch.full((256, 256), -5.0)
    grown[90:150, 90:150] = 5.0
    features = candidate_features(torch.stack([reference, grown, torch.full_like(reference, EMPTY_LOGIT)]), reference)
    np.testing.assert_allclose(features[0], [1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(features[1], [1600 / 3600, np.log(3601 / 1601), 0.0], rtol=1e-5)
    np.testing.assert_allclose(features[2], [0.0, np.log(1 / 1601), 1.0], rtol=1e-5)


@pytest.fixture(scope="module")
def real_cache(tmp_path_factory):
    return val_embedding_cache(tmp_path_factory.mktemp("cache"), 8)  # two patients: 7 + 1 crops


@pytest.fixture(scope="module")
def trained(real_cache, tmp_path_factory) -> tuple[ScorerExamples, Path]:
    """`ambiguous-sam train-scorer` on the small cache: its targets (read back) and the scorer file it wrote."""
    folder = tmp_path_factory.mktemp("scorer")
    assert main(["train-scorer", "--cache", str(real_cache.folder), "--rows", "8", "--epochs", "5", "--targets",
                 str(folder / "targets"), "--out", str(folder / "scorer.pt"), "--device", "cpu", "--threads", "2"]) == 0
    return ScorerExamples.load(next((folder / "targets").glob("rows-*.npz"))), folder / "scorer.pt"


def test_targets_of_real_crops_match_a_direct_decode(real_cache, trained, backbone) -> None:
    examples, _ = trained
    crops = real_cache.crops()
    assert examples.candidate_targets.shape == (8, 5, 2) and examples.box_targets.shape == (8, 3)
    np.testing.assert_allclose(examples.box_targets[:, 2], [metrics.mean_pairwise_distance(m) for m in crops["masks"]],
                               atol=1e-6)
    assert (examples.box_targets[:, :2] >= 0).all()
    # Crop 0's box as training draws it (seed 0, first chunk): the raters' union with random margins.
    rng = np.random.default_rng([0, 0])
    box = union_box(crops["masks"][0], rng.integers(BOX_MARGINS[0], BOX_MARGINS[1] + 1, size=4))
    frame = ModelFrame.for_image(crops["masks"].shape[-2:], backbone.image_size)
    embedding = torch.from_numpy(np.asarray(real_cache.embeddings()[0], dtype=np.float32))[None]
    readout = decoder_readout(backbone, embedding, torch.from_numpy(frame.box_to_model(box))[None])
    torch.testing.assert_close(readout.tokens[0], torch.from_numpy(examples.tokens[0]), atol=1e-3, rtol=1e-3)
    prediction = frame.logits_to_image(readout.logits[0, :1]).numpy() > 0
    np.testing.assert_allclose(examples.candidate_targets[0, 0], candidate_quality(prediction, crops["masks"][0])[0],
                               atol=1e-6)


def test_a_fit_learns_the_targets_and_the_checkpoint_round_trips(trained, backbone, tmp_path) -> None:
    examples, written = trained
    untrained = UncertainSAMScorer()
    scorer, report = fit_scorer(examples, epochs=30, held_out=0.5)
    assert report["fit_crops"] == 7 and report["held_out_crops"] == 1
    assert all(1 <= epoch <= 30 for epoch in report["best_epoch"].values())
    fit_rows, _ = split_patients(examples.patient, 0.5, 0)
    # On the crops it was fitted to, the estimates are closer than an untrained scorer's (outputs near 0.5).
    fitted = per_estimate_mse(scorer, examples.subset(fit_rows))
    assert sum(fitted.values()) < sum(per_estimate_mse(untrained, examples.subset(fit_rows)).values())
    save_scorer(scorer, tmp_path / "scorer.pt", backbone.spec.name, extra={"train": report})
    loaded = load_scorer(backbone, tmp_path / "scorer.pt")
    tokens, features = torch.from_numpy(examples.tokens), torch.from_numpy(examples.candidate_features)
    for before, after in zip(scorer(tokens, features), loaded(tokens, features)):
        torch.testing.assert_close(after, before, atol=2e-3, rtol=0)
    assert read_checkpoint(Path(written), SCORER)["extra"]["train"]["rows"] == 8


def test_score_rates_each_candidate_of_a_box(real_cache, trained, backbone) -> None:
    scorer = load_scorer(backbone, trained[1])
    crops = real_cache.crops()
    frame = ModelFrame.for_image(crops["masks"].shape[-2:], backbone.image_size)
    box = torch.from_numpy(frame.box_to_model(metrics.protocol_box(crops["masks"][0])))[None]
    embedding = torch.from_numpy(np.asarray(real_cache.embeddings()[0], dtype=np.float32))[None]
    plain = decoder_readout(backbone, embedding, box).logits[0]
    candidates = torch.stack([plain[0], plain[0] - 3, torch.full_like(plain[0], -9)])
    estimate = scorer.score(backbone, embedding, box, candidates)
    assert estimate.quality.shape == (3,) and len(set(np.round(estimate.quality, 6))) == 3
    assert all(0 <= value <= 1 for value in (estimate.disagreement, estimate.task_gap, estimate.prompt_gap))


def test_scoring_the_heads_own_z_free_pass_equals_the_scorers_pass(real_cache, backbone) -> None:
    """The product reads the transformer pass the shipped head ran for its gate instead of a second one: the
    estimates must be those of the scorer's own pass, although the head fine-tuned its copy of the single-mask
    hypernetwork (the reference mask comes from the backbone's)."""
    head, scorer = load_head(backbone), load_scorer(backbone)
    crops = real_cache.crops()
    frame = ModelFrame.for_image(crops["masks"].shape[-2:], backbone.image_size)
    box = torch.from_numpy(frame.box_to_model(metrics.protocol_box(crops["masks"][0])))[None]
    embedding = torch.from_numpy(np.asarray(real_cache.embeddings()[0], dtype=np.float32))[None]
    drawn = head.sample(embedding, box, 16, 0, image=model_input(crops["images"][0], backbone.image_size)[0])
    assert drawn.decoder_state is not None
    reused = scorer.score(backbone, embedding, box, drawn.logits, drawn.decoder_state)
    own = scorer.score(backbone, embedding, box, drawn.logits)
    np.testing.assert_allclose(reused.quality, own.quality, atol=1e-5)
    assert reused.disagreement == pytest.approx(own.disagreement, abs=1e-5) and np.ptp(reused.quality) > 0


def test_fitting_holds_out_whole_patients() -> None:
    patient = np.array(["a", "a", "b", "c", "c", "d"])
    fit, held_out = split_patients(patient, 0.25, seed=0)
    assert sorted(np.concatenate([fit, held_out]).tolist()) == list(range(6))
    assert not set(patient[fit]) & set(patient[held_out]) and len(set(patient[held_out])) == 1
    with pytest.raises(InvalidSettingError, match="at least two"):
        split_patients(np.array(["a", "a"]), 0.1, seed=0)


def test_bad_scorer_files_raise_checkpoint_errors(backbone, tmp_path) -> None:
    scorer = UncertainSAMScorer()
    save_scorer(scorer, tmp_path / "other.pt", "sam_vit_b")
    with pytest.raises(CheckpointError, match="trained on backbone 'sam_vit_b'"):
        load_scorer(backbone, tmp_path / "other.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable scorer file"):
        load_scorer(backbone, tmp_path / "corrupt.pt")
    with pytest.raises(CheckpointError, match="No trained scorer"):
        load_scorer(backbone, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="not an AmbiguousSAM scorer file"):
        load_scorer(backbone, DEFAULT_HEAD)


def test_train_scorer_command_refuses_bad_input(real_cache, tmp_path, capsys) -> None:
    assert main(["train-scorer", "--cache", str(tmp_path / "none"), "--out", str(tmp_path / "s.pt")]) == 2
    assert "holds no embedding cache" in capsys.readouterr().err
    assert main(["train-scorer", "--cache", str(real_cache.folder), "--rows", "99", "--out", str(tmp_path / "s.pt"),
                 "--targets", str(tmp_path / "targets"), "--device", "cpu"]) == 2
    assert "not between 1 and the 8 crops" in capsys.readouterr().err
    assert main(["train-scorer", "--cache", str(real_cache.folder), "--epochs", "0", "--out", "s.pt"]) == 2
