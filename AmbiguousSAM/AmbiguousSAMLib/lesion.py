"""The result of one click on a volume: K 3D candidates and their uncertainty, stored for the lesion only.

A chest CT is ~35 M voxels and a nodule a few thousand, so every array here covers just the lesion's
bounding box; `offset` places it in the volume and `paste` expands one array to full size on demand.
Arrays are in numpy (k, j, i) order, the order of Slicer's `arrayFromVolume` and SimpleITK's
`GetArrayFromImage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .review_flag import ReviewFlag


@dataclass
class LesionResult:
    """K candidate segmentations of one lesion and the maps derived from them (all cropped to the lesion box)."""

    #: (K, dk, dj, di) bool: candidate i is one coherent 3D hypothesis (one latent sample for all slices).
    candidates: np.ndarray
    #: (dk, dj, di) bool: pixel-wise majority of the candidates.
    consensus: np.ndarray
    #: (dk, dj, di) float32: mean foreground probability over the K samples.
    mean_probability: np.ndarray
    #: (dk, dj, di) float32 in nats: entropy of the mean probability (total uncertainty).
    entropy: np.ndarray
    #: (dk, dj, di) float32 in nats: mutual information between samples and pixels (disagreement).
    mutual_information: np.ndarray
    #: (K,) float32: how typical each candidate is: its mean 3D IoU with the other candidates (higher = more
    #: of the other hypotheses agree with it; an outlier hypothesis scores low).
    scores: np.ndarray
    #: (k0, j0, i0): index of the crop's first voxel in the full volume.
    offset: tuple[int, int, int]
    #: (nk, nj, ni): shape of the full volume.
    volume_shape: tuple[int, int, int]
    #: Free-form provenance (backbone, head, seed, slices visited, timings).
    info: dict = field(default_factory=dict)
    #: (K,) float32: the UncertainSAM scorer's expected 3D IoU of each candidate with the raters' majority
    #: (segmenter.expected_3d_quality); None when no scorer ran. Candidates are browsed best first by it.
    quality: np.ndarray | None = None
    #: Whether radiologists would disagree about this lesion (review_flag.py); "not available" without a scorer.
    review: ReviewFlag = field(default_factory=lambda: ReviewFlag.not_available("no scorer ran"))

    @property
    def num_candidates(self) -> int:
        return int(self.candidates.shape[0])

    @property
    def slices(self) -> tuple[slice, slice, slice]:
        """Index expression of the lesion box in the full volume."""
        shape = self.consensus.shape
        return tuple(slice(o, o + s) for o, s in zip(self.offset, shape))  # type: ignore[return-value]

    def paste(self, array: np.ndarray, fill: float | bool = 0) -> np.ndarray:
        """Place a lesion-box array (..., dk, dj, di) into a full-volume array (..., nk, nj, ni)."""
        lead = array.shape[:-3]
        full = np.full(lead + tuple(self.volume_shape), fill, dtype=array.dtype)
        full[(Ellipsis, *self.slices)] = array
        return full
