"""The scoring protocol of METHODS.md, checked on masks small enough to score by hand.

Masks are written as strings of 0/1 pixels ("1100" is one row of four pixels, the first two marked), so every
expected value below can be recomputed on paper from the comment next to it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from AmbiguousSAMLib import metrics

VAL_CROPS = Path(__file__).resolve().parents[1].parent / "shared/data/lidc-crops/val.npz"


def stack(*rows: str) -> np.ndarray:
    """Masks (n, 1, pixels) from strings of 0/1."""
    return np.array([[[pixel == "1" for pixel in row]] for row in rows], dtype=bool)


def mask(row: str) -> np.ndarray:
    return stack(row)[0]


# --- IoU and Dice ---------------------------------------------------------------------------------------------


def test_iou_and_dice_of_overlapping_masks():
    # 1100 vs 0110: one shared pixel, three in the union, two + two marked.
    assert metrics.iou(mask("1100"), mask("0110")) == pytest.approx(1 / 3)
    assert metrics.dice(mask("1100"), mask("0110")) == pytest.approx(2 * 1 / (2 + 2))


def test_two_empty_masks_agree_and_empty_vs_marked_does_not():
    assert metrics.iou(mask("0000"), mask("0000")) == 1.0
    assert metrics.dice(mask("0000"), mask("0000")) == 1.0
    assert metrics.iou(mask("0000"), mask("0110")) == 0.0
    assert metrics.dice(mask("0110"), mask("0000")) == 0.0


def test_pairwise_scores_match_hand_computed_matrices():
    a = stack("1100", "0000")
    b = stack("0110", "0000", "1111")
    # Row 1100: IoU 1/3 with 0110, 0 with empty, 2/4 with 1111. Row 0000: 0, 1 (empty vs empty), 0.
    np.testing.assert_allclose(metrics.pairwise_iou(a, b), [[1 / 3, 0, 1 / 2], [0, 1, 0]])
    # Dice: 2*1/4, 0, 2*2/6; then 0, 1, 0.
    np.testing.assert_allclose(metrics.pairwise_dice(a, b), [[1 / 2, 0, 2 / 3], [0, 1, 0]])


def test_pairwise_iou_on_2d_masks():
    square = np.zeros((1, 6, 6), dtype=bool)
    square[0, 1:3, 1:3] = True  # 4 pixels
    shifted = np.zeros((1, 6, 6), dtype=bool)
    shifted[0, 2:4, 1:3] = True  # 4 pixels, 2 shared with `square`
    assert metrics.pairwise_iou(square, shifted)[0, 0] == pytest.approx(2 / 6)


def test_probabilities_are_refused_until_binarised():
    with pytest.raises(TypeError, match="binarise"):
        metrics.pairwise_iou(np.full((1, 4, 4), 0.3), np.zeros((1, 4, 4), dtype=bool))


def test_masks_on_different_grids_are_refused():
    with pytest.raises(ValueError, match="different grids"):
        metrics.pairwise_iou(np.zeros((1, 4, 4), dtype=bool), np.zeros((1, 4, 5), dtype=bool))


# --- Prompt box -----------------------------------------------------------------------------------------------


def test_protocol_box_widens_by_three_pixels():
    raters = np.zeros((4, 20, 20), dtype=bool)
    raters[2, 10, 5] = True  # row 10, column 5
    # x (columns) 5 - 3 .. 5 + 3, y (rows) 10 - 3 .. 10 + 3.
    assert metrics.protocol_box(raters) == (2, 7, 8, 13)


def test_protocol_box_covers_the_union_of_raters_and_clips_at_the_border():
    raters = np.zeros((4, 10, 8), dtype=bool)  # 10 rows, 8 columns
    raters[0, 1, 6] = True
    raters[1, 4, 2] = True
    # Union spans rows 1..4, columns 2..6. Widened: columns -1..9 -> clipped 0..7; rows -2..7 -> 0..7.
    assert metrics.protocol_box(raters) == (0, 0, 7, 7)


def test_protocol_box_is_none_when_no_rater_marked_anything():
    assert metrics.protocol_box(np.zeros((4, 10, 10), dtype=bool)) is None


# --- Majority -------------------------------------------------------------------------------------------------


def test_rater_majority_needs_three_of_four():
    # Pixel k is marked by k raters: 0, 1, 2, 3, 4 of 4.
    raters = stack("01111", "00111", "00011", "00001")
    np.testing.assert_array_equal(metrics.majority_vote(raters)[0], [False, False, False, True, True])


def test_sample_majority_needs_more_than_half_of_sixteen():
    samples = np.zeros((16, 1, 2), dtype=bool)
    samples[:8, 0, 0] = True  # 8 of 16: a tie, stays empty
    samples[:9, 0, 1] = True  # 9 of 16
    np.testing.assert_array_equal(metrics.majority_vote(samples)[0], [False, True])


def test_rater_frequency_counts_empty_raters():
    np.testing.assert_allclose(metrics.rater_frequency(stack("1100", "1000", "0000", "0000"))[0], [0.5, 0.25, 0, 0])


# --- GED ------------------------------------------------------------------------------------------------------


def test_ged_by_hand():
    samples = stack("1100", "1111")
    raters = stack("1100", "0000")
    # d(s, y): 1100-1100 = 0, 1100-empty = 1, 1111-1100 = 1 - 2/4 = 0.5, 1111-empty = 1 -> mean 0.625.
    # d(s, s'): [[0, 0.5], [0.5, 0]] -> mean 0.25.   d(y, y'): [[0, 1], [1, 0]] -> mean 0.5.
    # GED = 2 * 0.625 - 0.25 - 0.5 = 0.5.
    assert metrics.generalized_energy_distance(samples, raters) == pytest.approx(0.5)


def test_ged_is_zero_when_samples_are_the_raters():
    raters = stack("1100", "0110", "0000", "1111")
    assert metrics.generalized_energy_distance(raters, raters) == pytest.approx(0.0, abs=1e-12)
    identical = stack("0110", "0110", "0110", "0110")
    assert metrics.generalized_energy_distance(identical, identical) == 0.0


def test_ged_counts_two_empty_masks_as_distance_zero():
    samples = stack("0000", "0000")
    raters = stack("0000", "1100")
    # d(s, y) = [[0, 1], [0, 1]] -> 0.5; d(s, s') = 0; d(y, y') = [[0, 1], [1, 0]] -> 0.5. GED = 1 - 0 - 0.5 = 0.5.
    # UA-SAM's code (empty vs empty at distance 1) would give 2 * 1 - 1 - 0.75 = 0.25.
    assert metrics.generalized_energy_distance(samples, raters) == pytest.approx(0.5)


def test_ged_of_empty_samples_against_marked_raters():
    # Every d(s, y) = 1, d(s, s') = 0, d(y, y') = 0 (both raters 1100) -> GED = 2.
    assert metrics.generalized_energy_distance(stack("0000", "0000"), stack("1100", "1100")) == 2.0


# --- HM-IoU ---------------------------------------------------------------------------------------------------


def test_hm_iou_is_one_when_samples_are_each_rater_four_times_in_any_order():
    raters = stack("1100", "0110", "0000", "1111")
    order = np.random.default_rng(0).permutation(16)
    samples = np.repeat(raters, 4, axis=0)[order]
    assert metrics.hungarian_matched_iou(samples, raters) == 1.0


def test_hm_iou_finds_the_best_assignment_not_the_greedy_one():
    samples = stack("111111", "111100")
    raters = stack("111100", "000011")
    # IoU: s1-y1 = 4/6, s1-y2 = 2/6, s2-y1 = 1, s2-y2 = 0.
    # Greedy (s1 takes its best, y1) leaves s2-y2: mean 1/3. Optimal s1-y2 + s2-y1: (1/3 + 1) / 2 = 2/3.
    assert metrics.hungarian_matched_iou(samples, raters) == pytest.approx(2 / 3)


def test_hm_iou_tiles_raters_cyclically_and_truncates():
    first, second = "1100", "0011"
    # Three samples, two raters -> raters tiled to [first, second, first].
    assert metrics.hungarian_matched_iou(stack(first, first, second), stack(first, second)) == 1.0
    # Two copies of `second` but only one in the tiled raters: one sample must take `first` (IoU 0) -> 2/3.
    assert metrics.hungarian_matched_iou(stack(second, second, first), stack(first, second)) == pytest.approx(2 / 3)


# --- D_avg and majority Dice ----------------------------------------------------------------------------------


def test_average_dice_by_hand():
    samples = stack("1100", "1100", "1000")  # per-pixel mean 1, 2/3, 0, 0 -> vote 1100
    raters = stack("1100", "1000", "0000", "0000")
    # Dice of 1100 with each rater: 1, 2*1/3, 0, 0 -> mean 5/12.
    assert metrics.average_dice(samples, raters) == pytest.approx(5 / 12)


def test_average_dice_rewards_an_empty_vote_where_raters_saw_nothing():
    # Empty vote: Dice 0 with the two marked raters, 1 with the two empty ones -> 0.5 (SeqSAM's code: 0).
    assert metrics.average_dice(stack("0000", "0000"), stack("1100", "1000", "0000", "0000")) == 0.5


def test_majority_dice_by_hand():
    samples = stack("1100", "1100", "1000")  # vote 1100
    raters = stack("1100", "1100", "1000", "0000")  # pixel 0 by 3 raters, pixel 1 by 2 -> majority 1000
    assert metrics.majority_dice(samples, raters) == pytest.approx(2 * 1 / (2 + 1))


def test_two_of_four_raters_give_an_empty_majority():
    raters = stack("1100", "1100", "0000", "0000")
    assert metrics.majority_dice(stack("0000"), raters) == 1.0
    assert metrics.majority_dice(stack("1100"), raters) == 0.0


# --- NCC ------------------------------------------------------------------------------------------------------


def test_ncc_is_undefined_when_all_samples_are_the_same_binary_mask():
    samples = stack("0110", "0110", "0110")
    assert math.isnan(metrics.normalized_cross_correlation(samples, stack("0110", "1100")))


def test_ncc_is_undefined_for_one_mask_drawn_by_saturated_sigmoids():
    # Every sample is the mask 0110, with probabilities up to 1e-7 away from 0 and 1 as a sigmoid gives them.
    # All clip to the same values; what is left of the model map is < 1e-6 nats of noise, not a signal.
    noise = 1e-7 * np.random.default_rng(0).random((16, 1, 4))
    # (The raters differ from 0110, so their maps are not constant: only the model map makes NCC undefined.)
    probs = np.abs(stack(*["0110"] * 16) - noise)
    assert math.isnan(metrics.normalized_cross_correlation(probs, stack("1100", "1000")))


def test_ncc_by_hand():
    samples = stack("110", "100").astype(np.float32)
    # With L = -ln(eps) and ln(1 - eps) ~ 0: per pixel E[ln s] = 0, -L/2, -L and E[ln(1 - s)] = -L, -L/2, 0.
    # Sample mean 1, 0.5, 0 -> model map -(m E[ln s] + (1 - m) E[ln(1 - s)]) = 0, L/2, 0.
    # Rater 100 -> map 0, L/2, 0: correlation 1. Rater 111 -> map 0, L/2, L: centred model map
    # (-L/6, L/3, -L/6) . (-L/2, 0, L/2) = 0, correlation 0. Mean over raters: 0.5.
    assert metrics.normalized_cross_correlation(samples, stack("100", "111")) == pytest.approx(0.5, abs=1e-5)
    assert metrics.normalized_cross_correlation(samples, stack("100")) == pytest.approx(1.0, abs=1e-9)


# --- Calibration ----------------------------------------------------------------------------------------------


def test_ece_is_zero_when_the_mean_probability_is_the_rater_frequency():
    frequency = np.array([0, 0.25, 0.5, 0.75, 1.0, 0, 0, 1.0])
    assert metrics.expected_calibration_error(frequency, frequency) == 0.0


def test_ece_compares_bin_means_not_pixels():
    # Both predictions fall in bin [0.4, 0.5): mean prediction 0.45, mean frequency 0.45 -> gap 0.
    assert metrics.expected_calibration_error(np.array([0.41, 0.49]), np.array([0.31, 0.59])) == pytest.approx(0)


def test_ece_of_a_miscalibrated_prediction():
    predicted = np.array([0.15, 0.15, 0.15, 0.15, 0.85, 0.85, 0.85, 0.85])
    frequency = np.array([0.5, 0.5, 0.0, 0.0, 1.0, 0.5, 0.5, 0.0])
    # Bin [0.1, 0.2): |0.15 - 0.25| = 0.10, weight 1/2. Bin [0.8, 0.9): |0.85 - 0.5| = 0.35, weight 1/2.
    # ECE = 0.225 (one bin for all pixels would let the gaps cancel: |0.5 - 0.375| = 0.125).
    assert metrics.expected_calibration_error(predicted, frequency) == pytest.approx(0.225)


def test_calibration_accumulator_streams_the_same_value_as_one_call():
    rng = np.random.default_rng(1)
    slices = [(rng.random((8, 8)), rng.integers(0, 5, (8, 8)) / 4) for _ in range(3)]
    accumulator = metrics.CalibrationAccumulator(bins=10)
    for predicted, frequency in slices:
        accumulator.add(predicted, frequency)
    all_predicted = np.concatenate([p.ravel() for p, _ in slices])
    all_frequency = np.concatenate([f.ravel() for _, f in slices])
    assert accumulator.value() == pytest.approx(metrics.expected_calibration_error(all_predicted, all_frequency))


def test_calibration_accumulator_without_pixels_refuses_to_report():
    with pytest.raises(ValueError, match="No pixels"):
        metrics.CalibrationAccumulator().value()


# --- Per-slice scores and their summary -----------------------------------------------------------------------


def test_score_slice_agrees_with_each_metric():
    samples = stack("1100", "1111", "0110", "0000")
    probs = np.where(samples, 0.9, 0.2).astype(np.float32)
    raters = stack("1100", "0000", "0110", "1110")
    scores = metrics.score_slice(samples, probs, raters)
    assert scores == pytest.approx(
        {
            "ged": metrics.generalized_energy_distance(samples, raters),
            "hm_iou": metrics.hungarian_matched_iou(samples, raters),
            "d_avg": metrics.average_dice(samples, raters),
            "majority_dice": metrics.majority_dice(samples, raters),
            "ncc": metrics.normalized_cross_correlation(probs, raters),
        }
    )


def test_aggregate_averages_and_counts_undefined_ncc():
    per_slice = [
        {"ged": 0.2, "hm_iou": 0.5, "d_avg": 1.0, "majority_dice": 0.0, "ncc": 0.4},
        {"ged": 0.4, "hm_iou": 1.0, "d_avg": 0.5, "majority_dice": 1.0, "ncc": float("nan")},
    ]
    assert metrics.aggregate(per_slice) == pytest.approx(
        {"ged": 0.3, "hm_iou": 0.75, "d_avg": 0.75, "majority_dice": 0.5, "ncc": 0.4, "ncc_undefined": 1, "slices": 2}
    )


def test_aggregate_reports_nan_ncc_when_it_is_never_defined():
    per_slice = [{"ged": 0.0, "hm_iou": 1.0, "d_avg": 1.0, "majority_dice": 1.0, "ncc": float("nan")}] * 2
    summary = metrics.aggregate(per_slice)
    assert math.isnan(summary["ncc"]) and summary["ncc_undefined"] == 2


def test_aggregate_of_no_slices_is_refused():
    with pytest.raises(ValueError, match="No slices"):
        metrics.aggregate([])


# --- Real raters ----------------------------------------------------------------------------------------------


def test_raters_scored_as_their_own_samples_on_lidc_val():
    if not VAL_CROPS.exists():
        pytest.skip(f"LIDC validation crops not found at {VAL_CROPS} (they are not shipped with the repository)")
    masks = np.load(VAL_CROPS)["masks"]
    marked = np.flatnonzero(masks.any(axis=(1, 2, 3)))[:50]
    rng = np.random.default_rng(0)
    for index in marked:
        raters = masks[index]
        assert metrics.protocol_box(raters) is not None
        samples = np.repeat(raters, 4, axis=0)[rng.permutation(16)]
        scores = metrics.score_slice(samples, samples.astype(np.float32), raters)
        assert scores["hm_iou"] == 1.0
        assert scores["ged"] == pytest.approx(0.0, abs=1e-12)
        # Four copies of each rater: > 8 of 16 samples is >= 3 of 4 raters, the raters' own majority.
        assert scores["majority_dice"] == 1.0
        assert 0.0 <= scores["d_avg"] <= 1.0


def test_the_reliability_curve_is_the_binned_means_behind_the_ece() -> None:
    accumulator = metrics.CalibrationAccumulator(bins=4)
    accumulator.add(np.array([0.1, 0.2, 0.9, 0.95]), np.array([0.0, 0.25, 1.0, 0.5]))
    predicted, observed, share = accumulator.curve()
    np.testing.assert_allclose(predicted, [0.15, 0.925])  # bins [0, .25) and [.75, 1]; the middle two are empty
    np.testing.assert_allclose(observed, [0.125, 0.75])
    np.testing.assert_allclose(share, [0.5, 0.5])
    assert accumulator.value() == pytest.approx(0.5 * abs(0.15 - 0.125) + 0.5 * abs(0.925 - 0.75))
    with pytest.raises(ValueError, match="no reliability curve"):
        metrics.CalibrationAccumulator().curve()
