"""Uncertainty maps from sample sets whose answer is known: agreement, an even split, a coin-flip model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from AmbiguousSAMLib import uncertainty

LN2 = math.log(2)


def samples_of(*values: float) -> np.ndarray:
    """K samples (K, 2, 3), each a constant map, so every pixel of a result must hold the same value."""
    return np.array([np.full((2, 3), value) for value in values], dtype=np.float32)


def binary_entropy(p: float) -> float:
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def test_identical_binary_samples_carry_no_uncertainty():
    maps = uncertainty.compute_uncertainty(samples_of(1, 1, 1, 1))
    np.testing.assert_array_equal(maps.mean_probability, 1.0)
    uncertain = ["entropy_of_mean", "expected_entropy", "mutual_information"]
    disagreeing = ["majority_disagreement", "candidate_variance"]
    for name in uncertain + disagreeing:
        np.testing.assert_array_equal(getattr(maps, name), 0.0, err_msg=name)


def test_an_even_split_of_binary_samples_is_pure_disagreement():
    maps = uncertainty.compute_uncertainty(samples_of(1, 1, 0, 0))
    np.testing.assert_allclose(maps.mean_probability, 0.5)
    np.testing.assert_allclose(maps.entropy_of_mean, LN2, rtol=1e-6)
    np.testing.assert_array_equal(maps.expected_entropy, 0.0)  # each sample is certain
    np.testing.assert_allclose(maps.mutual_information, LN2, rtol=1e-6)
    np.testing.assert_allclose(maps.majority_disagreement, 0.5)  # tie: majority empty, half disagree
    np.testing.assert_allclose(maps.candidate_variance, 0.25)


def test_samples_that_all_say_one_half_are_unsure_but_agree():
    maps = uncertainty.compute_uncertainty(samples_of(0.5, 0.5, 0.5))
    np.testing.assert_allclose(maps.entropy_of_mean, LN2, rtol=1e-6)
    np.testing.assert_allclose(maps.expected_entropy, LN2, rtol=1e-6)
    np.testing.assert_allclose(maps.mutual_information, 0.0, atol=1e-7)
    np.testing.assert_array_equal(maps.majority_disagreement, 0.0)  # 0.5 binarises to 0 in every sample
    np.testing.assert_array_equal(maps.candidate_variance, 0.0)


def test_three_of_four_samples_marking():
    maps = uncertainty.compute_uncertainty(samples_of(1, 1, 1, 0))
    np.testing.assert_allclose(maps.mean_probability, 0.75)
    # h(0.75) = -(0.75 ln 0.75 + 0.25 ln 0.25) ~ 0.5623, all of it disagreement.
    np.testing.assert_allclose(maps.entropy_of_mean, binary_entropy(0.75), rtol=1e-6)
    np.testing.assert_allclose(maps.mutual_information, binary_entropy(0.75), rtol=1e-6)
    np.testing.assert_allclose(maps.majority_disagreement, 0.25)
    np.testing.assert_allclose(maps.candidate_variance, 0.1875)  # 0.75 * 0.25


def test_soft_samples_split_total_uncertainty_into_its_two_parts():
    maps = uncertainty.compute_uncertainty(samples_of(0.2, 0.8))
    # Mean 0.5 -> total ln 2; each sample has h(0.2) = h(0.8) ~ 0.5004; MI = ln 2 - h(0.2) ~ 0.1927.
    np.testing.assert_allclose(maps.expected_entropy, binary_entropy(0.2), rtol=1e-6)
    np.testing.assert_allclose(maps.mutual_information, LN2 - binary_entropy(0.2), rtol=1e-5)
    np.testing.assert_allclose(maps.candidate_variance, 0.09, rtol=1e-6)  # ((0.3)^2 + (0.3)^2) / 2
    np.testing.assert_allclose(maps.majority_disagreement, 0.5)  # binarised 0 and 1: a tie


def test_mutual_information_of_nearly_identical_samples_is_tiny_and_never_negative():
    # Samples 0.3 + up to 1e-6: the true MI is ~1e-12 nats, below float32 round-off, which without the clip
    # leaves about a quarter of these pixels at -1.2e-7.
    probs = (0.3 + 1e-6 * np.random.default_rng(0).random((8, 32, 32))).astype(np.float32)
    computed = (uncertainty.mutual_information(probs), uncertainty.compute_uncertainty(probs).mutual_information)
    for information in computed:
        assert information.min() >= 0.0
        np.testing.assert_allclose(information, 0.0, atol=1e-6)


def test_disagreement_on_boolean_masks_per_pixel():
    masks = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1], [1, 0, 0]], dtype=bool)
    # Pixel 0: all agree. Pixel 1: one of four marks -> majority empty, 1/4 disagree. Pixel 2: likewise.
    np.testing.assert_allclose(uncertainty.majority_disagreement(masks), [0.0, 0.25, 0.25])


@pytest.mark.parametrize("spatial_shape", [(5, 7), (3, 5, 7)])
def test_every_map_keeps_the_spatial_shape_as_float32(spatial_shape):
    probs = np.random.default_rng(2).random((6, *spatial_shape))
    maps = uncertainty.compute_uncertainty(probs)
    singles = {
        "mean_probability": uncertainty.mean_probability,
        "entropy_of_mean": uncertainty.entropy_of_mean,
        "expected_entropy": uncertainty.expected_entropy,
        "mutual_information": uncertainty.mutual_information,
        "majority_disagreement": uncertainty.majority_disagreement,
        "candidate_variance": uncertainty.candidate_variance,
    }
    for name, single in singles.items():
        combined = getattr(maps, name)
        assert combined.shape == spatial_shape and combined.dtype == np.float32, name
        np.testing.assert_array_equal(combined, single(probs), err_msg=name)


def test_a_single_map_without_a_sample_axis_is_refused():
    with pytest.raises(ValueError, match=r"\(K, \.\.\.\)"):
        uncertainty.compute_uncertainty(np.zeros(5))
