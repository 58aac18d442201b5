"""How well a set of sampled masks matches a set of raters' masks: the scoring protocol of METHODS.md.

Published numbers for ambiguous segmentation are hard to compare because each paper's code settles small
questions differently (is the distance between two empty masks 0 or 1? is the majority of 2-of-4 raters
marked?). This module settles them once, as METHODS.md's "Scoring protocol" says, so every head and baseline
is scored by the same code:

- IoU and Dice of two empty masks are 1: both say "nothing here" and agree. Empty rater masks are part of the
  distribution (a rater who did not mark the nodule), so they are always scored, never dropped.
- A majority is "more than half": >= 3 of 4 raters, >= 9 of 16 samples; a tie stays empty.
- NCC is undefined (nan) when one of its cross-entropy maps is constant; `aggregate` counts those slices.

An evaluation scores each slice with `score_slice`, keeps the small per-slice dicts, streams every pixel into a
`CalibrationAccumulator` for the ECE, and summarises with `aggregate`.
The per-slice scores are vectorised over (n, pixels) stacks: a few small matrix products and one Hungarian
assignment per slice, no loop over pixels, because an evaluation scores 1,746 slices x 16 samples.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Pixels the protocol adds on every side of the raters' union to make the prompt box.
BOX_MARGIN = 3
#: Probabilities are clipped to [LOG_EPS, 1 - LOG_EPS] so a binary sample has a finite cross-entropy.
LOG_EPS = 1e-6
#: A cross-entropy map whose values spread less than this (nats) is constant. The maps are float32 with values
#: up to -ln(LOG_EPS) ~ 14 nats, so round-off alone reaches ~1e-6; one disagreeing sample in 16 moves a pixel
#: by more than 0.5 nats, so real variation is far above this.
CONSTANT_MAP_TOLERANCE = 1e-5
#: Per-slice scores that `aggregate` averages over all slices.
MEAN_SCORES = ("ged", "hm_iou", "d_avg", "majority_dice")


def _as_masks(masks: np.ndarray, name: str) -> np.ndarray:
    """Return a stack (n, ...) of masks as bool; refuse floats, which are probabilities that need binarising."""
    masks = np.asarray(masks)
    if np.issubdtype(masks.dtype, np.floating):
        raise TypeError(f"{name} has dtype {masks.dtype}; binarise probabilities (p > 0.5) before scoring masks.")
    if masks.ndim < 2:
        raise ValueError(f"{name} must be a stack (n, ...) of masks; got shape {masks.shape}.")
    return masks.astype(bool, copy=False)


def _as_flat_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two mask stacks on the same grid, flattened to (n, pixels) and (m, pixels)."""
    a, b = _as_masks(a, "the first stack"), _as_masks(b, "the second stack")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"The masks are on different grids: {a.shape[1:]} and {b.shape[1:]}.")
    pixels = math.prod(a.shape[1:])
    return a.reshape(a.shape[0], pixels), b.reshape(b.shape[0], pixels)


def _overlap_counts(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Intersections (n, m) and sizes (n, 1), (1, m) of flat mask stacks, from one matrix product.

    Only pixels that some mask marks can add to a count, and a nodule covers a small part of its crop, so the
    product runs over those pixels alone. float32 products are exact while every count stays below 2**24
    pixels (a 128 x 128 slice has 2**14); larger masks, such as whole volumes, switch to float64.
    """
    marked = a.any(axis=0) | b.any(axis=0)
    a, b = a[:, marked], b[:, marked]
    dtype = np.float32 if a.shape[1] < 2**24 else np.float64
    intersection = (a.astype(dtype) @ b.astype(dtype).T).astype(np.float64)
    return intersection, np.count_nonzero(a, axis=1)[:, None], np.count_nonzero(b, axis=1)[None, :]


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every mask in `a` (n, ...) with every mask in `b` (m, ...) as an (n, m) array; empty vs empty is 1."""
    intersection, size_a, size_b = _overlap_counts(*_as_flat_pair(a, b))
    union = size_a + size_b - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def pairwise_dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice of every mask in `a` (n, ...) with every mask in `b` (m, ...) as an (n, m) array; empty vs empty is 1."""
    intersection, size_a, size_b = _overlap_counts(*_as_flat_pair(a, b))
    total = size_a + size_b
    return np.where(total > 0, 2 * intersection / np.maximum(total, 1), 1.0)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two masks of the same shape; 1 when both are empty (they agree that nothing is there)."""
    return float(pairwise_iou(np.asarray(a)[None], np.asarray(b)[None])[0, 0])


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks of the same shape; 1 when both are empty (they agree that nothing is there)."""
    return float(pairwise_dice(np.asarray(a)[None], np.asarray(b)[None])[0, 0])


def majority_vote(masks: np.ndarray) -> np.ndarray:
    """Pixels marked by more than half of the masks (n, ...) -> (...).

    "More than half" is the protocol's rule for both sides: a sample majority is mean > 0.5, and a rater
    majority needs >= 3 of 4, so a pixel that 2 of 4 raters left empty stays empty.
    """
    masks = _as_masks(masks, "masks")
    return 2 * np.count_nonzero(masks, axis=0) > masks.shape[0]


def rater_frequency(raters: np.ndarray) -> np.ndarray:
    """Fraction of raters (R, ...) marking each pixel: the target the mean sample probability is calibrated to."""
    return _as_masks(raters, "raters").mean(axis=0, dtype=np.float64)


def protocol_box(rater_masks: np.ndarray, margin: int = BOX_MARGIN) -> tuple[int, int, int, int] | None:
    """The protocol's prompt: (x0, y0, x1, y1) around the union of the rater masks (R, H, W), or None if all are empty.

    x is the column and y the row; the corners are inclusive pixel indices of the union's first and last
    pixel, widened by `margin` on every side and clipped to the image. None means no box can be drawn, so the
    protocol skips the slice.
    """
    union = _as_masks(rater_masks, "rater_masks").any(axis=0)
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    if rows.size == 0:
        return None
    height, width = union.shape
    return (
        max(int(cols[0]) - margin, 0),
        max(int(rows[0]) - margin, 0),
        min(int(cols[-1]) + margin, width - 1),
        min(int(rows[-1]) + margin, height - 1),
    )


def mean_pairwise_distance(masks: np.ndarray) -> float:
    """Mean 1 - IoU over the distinct pairs of masks (n, ...), empty masks included (IoU(empty, empty) = 1).

    Over raters it is how much the experts disagree on a slice (one rater of four marking it gives 0.5: three
    pairs disagree completely, three empty pairs agree); over samples it is their spread. GED's rater term
    averages the same distances with the n zero diagonal terms included, i.e. this value times (n - 1) / n.
    """
    masks = _as_masks(masks, "masks")
    if masks.shape[0] < 2:
        raise ValueError(f"A spread needs at least two masks; got {masks.shape[0]}.")
    distance = 1 - pairwise_iou(masks, masks)
    return float(distance[~np.eye(len(masks), dtype=bool)].mean())


def _ged_from_iou(iou_samples_raters: np.ndarray, iou_samples: np.ndarray, iou_raters: np.ndarray) -> float:
    """Squared GED from the three IoU blocks, with d = 1 - IoU and the diagonal terms (d = 0) included."""
    return float(2 * (1 - iou_samples_raters).mean() - (1 - iou_samples).mean() - (1 - iou_raters).mean())


def _hungarian_from_iou(iou_samples_raters: np.ndarray) -> float:
    """Mean IoU of the best one-to-one match between N samples and the R raters repeated cyclically to N."""
    num_samples, num_raters = iou_samples_raters.shape
    replicated = iou_samples_raters[:, np.arange(num_samples) % num_raters]
    rows, cols = linear_sum_assignment(1 - replicated)
    return float(replicated[rows, cols].mean())


def generalized_energy_distance(samples: np.ndarray, raters: np.ndarray) -> float:
    """Squared GED between samples (N, ...) and raters (R, ...), as PHiSeg and SeqSAM compute it.

    2 * mean_ij d(s_i, y_j) - mean_ii' d(s_i, s_i') - mean_jj' d(y_j, y_j') with d = 1 - IoU. Every rater counts,
    empty ones included, and two empty masks are at distance 0 (UA-SAM's code scores them 1, which punishes a
    model for agreeing with a rater who saw nothing).
    """
    return _ged_from_iou(pairwise_iou(samples, raters), pairwise_iou(samples, samples), pairwise_iou(raters, raters))


def hungarian_matched_iou(samples: np.ndarray, raters: np.ndarray) -> float:
    """HM-IoU: repeat the R raters cyclically to N = len(samples), match one-to-one on cost 1 - IoU, mean IoU.

    Repeating the raters (4 -> 16 in the protocol) asks the samples to cover every rater in proportion, so a
    model that only ever draws the most common outline cannot score 1. When N is not a multiple of R the
    cyclic repetition is truncated at N, which favours the first raters by one copy.
    """
    return _hungarian_from_iou(pairwise_iou(samples, raters))


def average_dice(samples: np.ndarray, raters: np.ndarray) -> float:
    """D_avg: Dice of the samples' majority vote against each rater, averaged over raters (empty vs empty is 1).

    SeqSAM's code scores empty vs empty as 0; this project uses 1, so an empty vote on a slice that most
    raters left empty is rewarded, as it should be.
    """
    vote = majority_vote(samples)
    return float(pairwise_dice(vote[None], raters).mean())


def majority_dice(samples: np.ndarray, raters: np.ndarray) -> float:
    """Dice of the samples' majority against the raters' majority (>= 3 of 4), comparable to UA-SAM's DSC."""
    return dice(majority_vote(samples), majority_vote(raters))


def normalized_cross_correlation(sample_probs: np.ndarray, raters: np.ndarray) -> float:
    """PHiSeg's NCC: does the model's disagreement map point where the raters' disagreement is?

    The model map is E_s[CE(s_mean, s)], the expected cross-entropy of each sample against the sample mean;
    for each rater y the map is E_s[CE(y, s)]. NCC is the Pearson correlation of the model map with each
    rater map, averaged over raters. CE(t, s) = -(t log s + (1 - t) log(1 - s)) is linear in the target t, so
    the two per-pixel sums E_s[log s] and E_s[log(1 - s)] serve the mean and every rater at once.

    `sample_probs` (N, ...) are probabilities in [0, 1] (binary samples allowed). s and 1 - s are each clipped
    to [LOG_EPS, 1 - LOG_EPS] before logs, the same operation on both, so a binary sample gives bit-identical
    costs for its marked and unmarked pixels and a map that should be constant is. Returns nan when any map is
    constant (for example, all samples the same binary mask): a correlation with a constant is undefined, as
    in PHiSeg, where it also gives nan.
    """
    probs = np.asarray(sample_probs, dtype=np.float32)
    rater_masks = _as_masks(raters, "raters")
    if probs.shape[1:] != rater_masks.shape[1:]:
        raise ValueError(f"Samples and raters are on different grids: {probs.shape[1:]} and {rater_masks.shape[1:]}.")
    pixels = math.prod(probs.shape[1:])
    probs = probs.reshape(probs.shape[0], pixels)
    mean_log_foreground = np.log(np.clip(probs, LOG_EPS, 1 - LOG_EPS)).mean(axis=0)
    mean_log_background = np.log(np.clip(1 - probs, LOG_EPS, 1 - LOG_EPS)).mean(axis=0)
    targets = np.vstack([probs.mean(axis=0), rater_masks.reshape(-1, pixels)]).astype(np.float64)
    cross_entropy = -(targets * mean_log_foreground + (1 - targets) * mean_log_background)
    if np.any(np.ptp(cross_entropy, axis=1) <= CONSTANT_MAP_TOLERANCE):
        return float("nan")
    centred = cross_entropy - cross_entropy.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    correlations = (centred[1:] @ centred[0]) / (norms[1:] * norms[0])
    return float(correlations.mean())


class CalibrationAccumulator:
    """ECE of the mean sample probability against the rater frequency, streamed over slices.

    Choice: equal-width bins over [0, 1] by predicted probability (the last bin includes 1); per bin the gap
    |mean predicted - mean rater frequency|, weighted by the bin's share of all pixels. The target is the
    fraction of raters marking the pixel (0, 1/4, ..., 1), not a single label, because with several raters a
    calibrated model should say 0.25 where one rater in four drew. Every pixel of every scored slice counts,
    background included, as the protocol says; the many confident background pixels keep the value small, so
    compare ECEs only between runs on the same slices.
    Only three sums per bin are kept, so an evaluation never holds the pixels: count * |mean p - mean f| equals
    |sum p - sum f| within a bin.
    """

    def __init__(self, bins: int = 10) -> None:
        self.bins = bins
        self._pixels = np.zeros(bins, dtype=np.int64)
        self._predicted = np.zeros(bins)
        self._observed = np.zeros(bins)

    def add(self, mean_probability: np.ndarray, rater_frequency: np.ndarray) -> None:
        """Add one slice (or any array) of mean probabilities and the matching rater frequencies."""
        predicted = np.asarray(mean_probability, dtype=np.float64).ravel()
        observed = np.asarray(rater_frequency, dtype=np.float64).ravel()
        if predicted.shape != observed.shape:
            raise ValueError(f"{predicted.size} probabilities but {observed.size} rater frequencies were given.")
        bin_index = np.clip((predicted * self.bins).astype(np.intp), 0, self.bins - 1)
        self._pixels += np.bincount(bin_index, minlength=self.bins)
        self._predicted += np.bincount(bin_index, weights=predicted, minlength=self.bins)
        self._observed += np.bincount(bin_index, weights=observed, minlength=self.bins)

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The reliability diagram: per non-empty bin, the mean predicted probability, the mean rater frequency
        and the bin's share of all pixels (a calibrated model has the first two equal)."""
        filled = self._pixels > 0
        if not filled.any():
            raise ValueError("No pixels were added, so there is no reliability curve to draw.")
        count = self._pixels[filled]
        return self._predicted[filled] / count, self._observed[filled] / count, count / count.sum()

    def value(self) -> float:
        """The ECE over everything added so far."""
        total = int(self._pixels.sum())
        if total == 0:
            raise ValueError("No pixels were added, so there is no calibration error to report.")
        return float(np.abs(self._predicted - self._observed).sum() / total)


def expected_calibration_error(mean_probability: np.ndarray, rater_frequency: np.ndarray, bins: int = 10) -> float:
    """ECE of one array of mean probabilities against rater frequencies; see `CalibrationAccumulator`."""
    accumulator = CalibrationAccumulator(bins)
    accumulator.add(mean_probability, rater_frequency)
    return accumulator.value()


def mask_scores(samples: np.ndarray, raters: np.ndarray) -> dict[str, float]:
    """The protocol's scores of binary samples (N, H, W) against all raters (R, H, W): ged, hm_iou, d_avg,
    majority_dice. One IoU matrix over samples and raters together serves both GED and HM-IoU."""
    flat_samples, flat_raters = _as_flat_pair(samples, raters)
    num_samples = flat_samples.shape[0]
    samples_and_raters = np.concatenate([flat_samples, flat_raters])
    iou_all = pairwise_iou(samples_and_raters, samples_and_raters)
    iou_samples_raters = iou_all[:num_samples, num_samples:]
    iou_samples, iou_raters = iou_all[:num_samples, :num_samples], iou_all[num_samples:, num_samples:]
    return {
        "ged": _ged_from_iou(iou_samples_raters, iou_samples, iou_raters),
        "hm_iou": _hungarian_from_iou(iou_samples_raters),
        "d_avg": average_dice(flat_samples, flat_raters),
        "majority_dice": majority_dice(flat_samples, flat_raters),
    }


def score_slice(samples: np.ndarray, sample_probs: np.ndarray, raters: np.ndarray) -> dict[str, float]:
    """Every per-slice score of the protocol: those of `mask_scores` and ncc (nan when undefined).

    `samples` (N, H, W) are the binarised samples, `sample_probs` the same samples as probabilities (for NCC),
    `raters` (R, H, W) all rater masks, empty ones included.
    """
    return {**mask_scores(samples, raters), "ncc": normalized_cross_correlation(sample_probs, raters)}


def aggregate(per_slice: list[dict[str, float]]) -> dict[str, float | int]:
    """Mean of each score over slices; NCC over the slices where it is defined, with the undefined ones counted."""
    if not per_slice:
        raise ValueError("No slices were scored, so there is nothing to summarise.")
    summary: dict[str, float | int] = {key: float(np.mean([s[key] for s in per_slice])) for key in MEAN_SCORES}
    ncc = np.array([s["ncc"] for s in per_slice], dtype=np.float64)
    defined = ncc[~np.isnan(ncc)]
    summary["ncc"] = float(defined.mean()) if defined.size else float("nan")
    summary["ncc_undefined"] = int(ncc.size - defined.size)
    summary["slices"] = len(per_slice)
    return summary
