"""Where K sampled segmentations are unsure, and why: the maps shown as the heatmap over the CT.

Total uncertainty (entropy of the mean) splits into two parts that mean different things to a reader:
the expected entropy is what every sample is unsure about by itself (a blurred edge, aleatoric), and the
mutual information is what the samples disagree about (competing outlines, the raters' ambiguity). The
disagreement fraction and the candidate variance say the same as the mutual information in units that need no
explanation. Every map has the sample's spatial shape, 2D slice or 3D lesion box alike.

Inputs are K probability maps (K, ...) in [0, 1]; binary masks are allowed. Entropies are in nats.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import entr


@dataclass(frozen=True)
class UncertaintyMaps:
    """All maps from one set of K samples, each (...) float32 on the samples' grid."""

    #: Mean foreground probability over the samples.
    mean_probability: np.ndarray
    #: Binary entropy of the mean probability (total uncertainty), in nats.
    entropy_of_mean: np.ndarray
    #: Mean of the samples' own binary entropies (aleatoric: each sample unsure by itself), in nats.
    expected_entropy: np.ndarray
    #: entropy_of_mean - expected_entropy (epistemic: the samples disagree), in nats, >= 0.
    mutual_information: np.ndarray
    #: Fraction of samples whose binarised mask differs from the pixel-wise majority.
    majority_disagreement: np.ndarray
    #: Variance of the probability across samples.
    candidate_variance: np.ndarray


def _as_probabilities(probs: np.ndarray) -> np.ndarray:
    """Samples (K, ...) as float32; at least one sample and one spatial axis."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim < 2 or probs.shape[0] == 0:
        raise ValueError(f"Expected K >= 1 sampled maps stacked as (K, ...); got shape {probs.shape}.")
    return probs


def _binary_entropy(probs: np.ndarray) -> np.ndarray:
    """-(p ln p + (1 - p) ln(1 - p)), exactly 0 at p = 0 and 1 (scipy's entr defines 0 ln 0 = 0, so no eps bias).

    Clipping to [0, 1] first keeps round-off just outside the interval from turning into -inf.
    """
    probs = np.clip(probs, 0, 1)
    return entr(probs) + entr(1 - probs)


def _majority_disagreement(probs: np.ndarray) -> np.ndarray:
    masks = probs > 0.5
    majority = masks.mean(axis=0, dtype=np.float32) > 0.5
    return (masks != majority).mean(axis=0, dtype=np.float32)


def mean_probability(probs: np.ndarray) -> np.ndarray:
    """Mean foreground probability over the K samples: the soft consensus."""
    return _as_probabilities(probs).mean(axis=0)


def entropy_of_mean(probs: np.ndarray) -> np.ndarray:
    """Binary entropy (nats) of the mean probability: total uncertainty, ln 2 where the samples average to 0.5."""
    return _binary_entropy(mean_probability(probs))


def expected_entropy(probs: np.ndarray) -> np.ndarray:
    """Mean of the per-sample binary entropies (nats): the aleatoric part, 0 wherever every sample is binary."""
    return _binary_entropy(_as_probabilities(probs)).mean(axis=0)


def mutual_information(probs: np.ndarray) -> np.ndarray:
    """Entropy of the mean minus expected entropy (nats): the disagreement between samples.

    It is >= 0 in exact arithmetic (entropy is concave); round-off can make it slightly negative, so it is
    clipped at 0 to keep a heatmap free of meaningless negative specks.
    """
    return np.maximum(entropy_of_mean(probs) - expected_entropy(probs), 0)


def majority_disagreement(masks_or_probs: np.ndarray) -> np.ndarray:
    """Fraction of samples that disagree with the pixel-wise majority, after binarising at 0.5 (0 to 0.5)."""
    return _majority_disagreement(_as_probabilities(masks_or_probs))


def candidate_variance(probs: np.ndarray) -> np.ndarray:
    """Variance of the probability across the K samples (population variance, 0.25 at most)."""
    return _as_probabilities(probs).var(axis=0)


def compute_uncertainty(probs: np.ndarray) -> UncertaintyMaps:
    """Every map from one set of samples (K, ...), each intermediate computed once."""
    probs = _as_probabilities(probs)
    mean = probs.mean(axis=0)
    total = _binary_entropy(mean)
    aleatoric = _binary_entropy(probs).mean(axis=0)
    return UncertaintyMaps(
        mean_probability=mean,
        entropy_of_mean=total,
        expected_entropy=aleatoric,
        mutual_information=np.maximum(total - aleatoric, 0),
        majority_disagreement=_majority_disagreement(probs),
        candidate_variance=probs.var(axis=0),
    )
