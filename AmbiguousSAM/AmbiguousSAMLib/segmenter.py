"""One click on a CT volume -> K coherent 3D candidates, a consensus and uncertainty maps.

The data flow of DESIGN.md: the box on slice k is followed up and down through the slices. Each slice is
cropped around the lesion at native resolution (like the training crops: at least 128 px, ~2.7x the box)
and min-max normalised as the crops were. The K latent draws are fixed per lesion (one seed for every
slice), so candidate i is one 3D hypothesis. The next slice's box surrounds the pixels that a quarter of the
marked candidates mark (the analogue of the raters' union the head was trained with) plus a margin;
propagation stops when every candidate has vanished, when the consensus shrinks to a fifth of its
clicked-slice area, or at 0.6 box diameters from the clicked slice. Embeddings are cached per (slice, crop
window), and the crop window is fixed per lesion, so re-running with another K or seed only decodes.

A box drawn by a user says "there is a lesion here", which a radiologist who left the slice unmarked did not.
The head learnt from such radiologists that a faint lesion is often left unmarked: its presence gate gives
each sample a rank and leaves it empty where the rank is above the chance pi that an expert marks the slice.
The K hypotheses are therefore drawn *given a non-empty mask on the clicked slice*: a seeded pool of samples
is decoded there and the first K non-empty ones are kept (rejection sampling; empty ones fill up only if too
few are non-empty). A kept sample's rank is below pi on the clicked slice, so it stays marked on every slice
where the gate is at least as sure, and drops out where pi falls below its rank: candidates disagree about
the lesion's extent above and below, as the raters do.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .errors import CancelledError, InvalidBoxError, InvalidImageError
from .heads.baselines import Deterministic
from .heads.checkpoint import DEFAULT_HEAD, load_head
from .heads.probabilistic_sam import LatentNoise
from .heads.sampler import Sampler
from .lesion import LesionResult
from .metrics import majority_vote, pairwise_iou
from .predictor import Predictor
from .preprocessing import postprocess_logits, resized_geometry
from .uncertainty import compute_uncertainty

#: The training crops were 128 px with the nodule at ~1/2.7 of the side; inference crops match that.
MIN_CROP = 128
CROP_TO_BOX = 2.7
#: Pixels added around the marked area (see BOX_SHARE) to make the next slice's box (training used 1-6).
PROPAGATION_MARGIN = 3
#: The next slice's box covers pixels marked by at least this share of the marked candidates. Training boxes
#: surround the union of four radiologists, i.e. pixels that one in four marked; the union of all K candidates
#: reaches further the more (and the more diverse) they are, and a box that grows makes every candidate on the
#: next slice grow with it.
BOX_SHARE = 0.25
#: A lesion is followed at most this many box diameters (mm) above and below the clicked slice: nodules are
#: roughly as deep as they are wide, and SAM, given a box, always finds *something* (vessels, pleura).
MAX_HALF_EXTENT_PER_DIAMETER = 0.6
#: Propagation also stops when the consensus shrinks below this fraction of its area on the clicked slice.
MIN_AREA_FRACTION = 0.2
#: Volumes whose darkest voxel is above this are not CT in HU (CT has air at about -1000 HU).
CT_AIR_THRESHOLD = -500.0
#: Latents drawn per wanted candidate on the clicked slice, from which the first K non-empty ones are kept.
CONDITIONING_POOL = 4

ProgressCallback = Callable[[float, str], None]


@dataclass
class _SliceResult:
    k: int
    origin: tuple[int, int]  # (j, i) of the crop window's first pixel, may be negative
    probs: np.ndarray  # (K, side, side) float32
    scores: np.ndarray  # (K,)


def validate_volume(volume: np.ndarray, allow_non_ct: bool = False) -> np.ndarray:
    volume = np.asarray(volume)
    if volume.ndim != 3:
        hint = " It looks like a single slice; load the whole series." if volume.ndim == 2 else \
            " Pick one channel/time point first." if volume.ndim == 4 else ""
        raise InvalidImageError(f"Expected a 3D volume (k, j, i) but got shape {volume.shape}.{hint}")
    if volume.dtype == bool or not np.issubdtype(volume.dtype, np.number) or np.iscomplexobj(volume):
        raise InvalidImageError(f"The volume has dtype {volume.dtype}; a CT in HU (integers or floats) is expected.")
    if min(volume.shape[1:]) < 8:
        raise InvalidImageError(f"The volume's slices {volume.shape[1:]} are too small to segment.")
    low = float(np.nanmin(volume))
    if not allow_non_ct and low > CT_AIR_THRESHOLD:
        raise InvalidImageError(
            f"The volume's darkest voxel is {low:g}, but CT in Hounsfield units has air near -1000. It may be MR "
            f"or a rescaled image; AmbiguousSAM's head was trained on chest CT. Pass allow_non_ct=True "
            f"(--allow-non-ct) to segment it anyway, with min-max normalisation per crop."
        )
    return volume


def validate_volume_box(box_ijk: tuple[float, float, float, float], slice_k: int, shape: tuple[int, int, int]) -> np.ndarray:
    box = np.asarray(box_ijk, dtype=np.float64).reshape(-1)
    if box.shape != (4,) or not np.isfinite(box).all():
        raise InvalidBoxError(f"A box is four finite numbers (i0, j0, i1, j1); got {list(np.ravel(box_ijk))}.")
    nk, nj, ni = shape
    if not 0 <= int(slice_k) < nk:
        raise InvalidBoxError(f"Slice {slice_k} is outside the volume's {nk} slices (0..{nk - 1}).")
    i0, j0, i1, j1 = box
    if i1 < i0 or j1 < j0:
        raise InvalidBoxError(f"The box {box.tolist()} is inverted; give (i0, j0, i1, j1) with i0 <= i1, j0 <= j1.")
    if i1 - i0 < 1 or j1 - j0 < 1:
        raise InvalidBoxError(f"The box {box.tolist()} has zero size; drag a box around the whole lesion.")
    if i1 < 0 or j1 < 0 or i0 > ni - 1 or j0 > nj - 1:
        raise InvalidBoxError(f"The box {box.tolist()} lies outside the {ni} x {nj} slice; draw it on the lesion.")
    return np.array([max(i0, 0), max(j0, 0), min(i1, ni - 1), min(j1, nj - 1)])


def crop_slice(plane: np.ndarray, origin: tuple[int, int], side: int, fill: float) -> np.ndarray:
    """A side x side window of `plane` starting at (j, i) = origin, padded with `fill` beyond the edges."""
    out = np.full((side, side), fill, dtype=np.float32)
    j0, i0 = origin
    sj, si = max(j0, 0), max(i0, 0)
    ej, ei = min(j0 + side, plane.shape[0]), min(i0 + side, plane.shape[1])
    if ej > sj and ei > si:
        out[sj - j0:ej - j0, si - i0:ei - i0] = plane[sj:ej, si:ei]
    return out


class LesionSegmenter:
    """A backbone + ambiguity head, ready to segment lesions in volumes (loads the models once)."""

    def __init__(self, backbone: str = "litemedsam", head: str | Path | None = "default",
                 checkpoint: str | Path | None = None, device: str | None = None, precision: str = "bf16",
                 cache_size: int = 128) -> None:
        self.predictor = Predictor(backbone=backbone, checkpoint=checkpoint, device=device, precision=precision,
                                   window=None)
        self.sampler: Sampler = self._load_sampler(head)
        self._embeddings: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size

    def _load_sampler(self, head: str | Path | None) -> Sampler:
        if head is None or head == "deterministic":
            return Deterministic(self.predictor.backbone)
        path = DEFAULT_HEAD if head == "default" else Path(head)
        return load_head(self.predictor.backbone, path).to(self.predictor.device)

    def clear_cache(self) -> None:
        """Forget cached slice embeddings (e.g. to time a cold click, or after the volume's voxels changed)."""
        self._embeddings.clear()

    def embedding(self, volume_key: int, plane: np.ndarray, k: int, origin: tuple[int, int], side: int,
                  fill: float) -> torch.Tensor:
        key = (volume_key, k, origin, side)
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        model_input, _ = self.predictor.prepare(crop_slice(plane, origin, side, fill))
        embedding = self.predictor.encode(model_input)
        self._embeddings[key] = embedding
        if len(self._embeddings) > self._cache_size:
            self._embeddings.popitem(last=False)
        return embedding

    def segment(self, volume: np.ndarray, box_ijk: tuple[float, float, float, float], slice_k: int,
                spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                allow_non_ct: bool = False, propagate: bool = True) -> LesionResult:
        """Segment the lesion inside `box_ijk` (i0, j0, i1, j1) on axial slice `slice_k` of `volume` (k, j, i)."""
        started = time.perf_counter()
        if samples < 1:
            raise ValueError("samples must be at least 1")
        volume = validate_volume(volume, allow_non_ct)
        box = validate_volume_box(box_ijk, slice_k, volume.shape)
        fill = float(np.nanmin(volume))
        side = max(MIN_CROP, int(math.ceil(CROP_TO_BOX * max(box[2] - box[0], box[3] - box[1]))))
        centre = ((box[1] + box[3]) / 2, (box[0] + box[2]) / 2)
        origin = (int(round(centre[0] - side / 2)), int(round(centre[1] - side / 2)))
        diameter_mm = max((box[2] - box[0]) * float(spacing[0]), (box[3] - box[1]) * float(spacing[1]))
        max_steps = max(1, int(round(MAX_HALF_EXTENT_PER_DIAMETER * diameter_mm / max(float(spacing[2]), 1e-3))))
        report = progress or (lambda fraction, message: None)
        volume_key = id(volume)

        def run_slice(k: int, slice_box: np.ndarray, noise: LatentNoise | None) -> _SliceResult:
            if cancel is not None and cancel.is_set():
                raise CancelledError("Cancelled by the user; nothing was changed.")
            plane = volume[k]
            if not np.isfinite(plane).all():
                raise InvalidImageError(f"Slice {k} contains NaN or infinite voxels; fix the volume first.")
            embedding = self.embedding(volume_key, plane, k, origin, side, fill)
            local = np.array([slice_box[0] - origin[1], slice_box[1] - origin[0],
                              slice_box[2] - origin[1], slice_box[3] - origin[0]], dtype=np.float32)
            geometry = resized_geometry((side, side), self.predictor.backbone.image_size)
            box_t = torch.from_numpy(np.clip(local, 0, side - 1) * geometry.scale)[None].to(self.predictor.device)
            if noise is None:
                drawn = self.sampler.sample(embedding, box_t, samples, seed)
            else:
                drawn = self.sampler.sample_with_noise(embedding, box_t, noise)
            probs = torch.sigmoid(postprocess_logits(drawn.logits.float().cpu(), geometry)).numpy()
            return _SliceResult(k, origin, probs.astype(np.float32), drawn.scores.float().cpu().numpy())

        report(0.0, f"slice {slice_k}")
        noise = None
        # Latent heads expose their noise (draw_noise / sample_with_noise); the deterministic baseline has none.
        if hasattr(self.sampler, "draw_noise"):
            pool = self.sampler.draw_noise(CONDITIONING_POOL * samples, seed)
            clicked = run_slice(slice_k, box, pool)
            marked = (clicked.probs > 0.5).reshape(len(pool), -1).any(axis=1)
            chosen = np.argsort(~marked, kind="stable")[:samples]
            noise = pool[torch.from_numpy(chosen)]
            results = [_SliceResult(slice_k, origin, clicked.probs[chosen], clicked.scores[chosen])]
        else:
            results = [run_slice(slice_k, box, None)]
        seed_area = max(int((results[0].probs.mean(axis=0) > 0.5).sum()), 1)
        if propagate:
            for direction in (1, -1):
                current = results[0]
                for step in range(1, max_steps + 1):
                    k = slice_k + direction * step
                    next_box = self._next_box(current, volume.shape)
                    if not 0 <= k < volume.shape[0] or next_box is None:
                        break
                    current = run_slice(k, next_box, noise)
                    results.append(current)
                    report(min(0.95, len(results) / (len(results) + 4)), f"slice {k}")
                    if (current.probs.mean(axis=0) > 0.5).sum() < MIN_AREA_FRACTION * seed_area:
                        break
        result = self._assemble(results, volume.shape, samples)
        result.info.update({"seed": seed, "samples": samples, "slice": int(slice_k), "box_ijk": box.tolist(),
                            "crop_side": side, "sampler": self.sampler.name,
                            "backbone": self.predictor.backbone.spec.name, "precision": self.predictor.precision,
                            "device": str(self.predictor.device), "seconds": time.perf_counter() - started})
        report(1.0, "done")
        return result

    @staticmethod
    def _next_box(current: _SliceResult, shape: tuple[int, int, int]) -> np.ndarray | None:
        """The box for the next slice: around the pixels that at least BOX_SHARE of the marked candidates mark
        (or, if none reach it, those the most do), plus a margin; None when every candidate has vanished."""
        masks = current.probs > 0.5
        marked = masks.reshape(len(masks), -1).any(axis=1)
        if not marked.any():
            return None
        share = masks[marked].mean(axis=0)
        rows, cols = np.nonzero(share >= min(BOX_SHARE, share.max()))
        j0, i0 = current.origin
        box = np.array([cols.min() + i0 - PROPAGATION_MARGIN, rows.min() + j0 - PROPAGATION_MARGIN,
                        cols.max() + i0 + PROPAGATION_MARGIN, rows.max() + j0 + PROPAGATION_MARGIN], dtype=np.float64)
        box[[0, 2]] = np.clip(box[[0, 2]], 0, shape[2] - 1)
        box[[1, 3]] = np.clip(box[[1, 3]], 0, shape[1] - 1)
        return box

    @staticmethod
    def _assemble(results: list[_SliceResult], shape: tuple[int, int, int], samples: int) -> LesionResult:
        """Place per-slice crops into one array covering just the lesion (where any sample has p > 0.01)."""
        results = sorted(results, key=lambda r: r.k)
        bounds = []
        for r in results:
            support = (r.probs > 0.01).any(axis=0)
            if support.any():
                rows, cols = np.nonzero(support)
                bounds.append((r.k, rows.min() + r.origin[0], cols.min() + r.origin[1],
                               rows.max() + r.origin[0], cols.max() + r.origin[1]))
        if not bounds:  # nothing anywhere: a one-voxel box at the click keeps shapes valid
            r = results[0]
            centre = (r.origin[0] + r.probs.shape[1] // 2, r.origin[1] + r.probs.shape[2] // 2)
            bounds = [(r.k, *centre, *centre)]
        b = np.array(bounds)
        k0, k1 = int(b[:, 0].min()), int(b[:, 0].max())
        j0, i0 = max(int(b[:, 1].min()), 0), max(int(b[:, 2].min()), 0)
        j1, i1 = min(int(b[:, 3].max()), shape[1] - 1), min(int(b[:, 4].max()), shape[2] - 1)
        probs = np.zeros((samples, k1 - k0 + 1, j1 - j0 + 1, i1 - i0 + 1), np.float32)
        slice_scores = []
        for r in results:
            if not k0 <= r.k <= k1:
                continue
            oj, oi = r.origin
            side = r.probs.shape[1]
            sj, si = max(j0, oj), max(i0, oi)
            ej, ei = min(j1 + 1, oj + side), min(i1 + 1, oi + side)
            probs[:, r.k - k0, sj - j0:ej - j0, si - i0:ei - i0] = r.probs[:, sj - oj:ej - oj, si - oi:ei - oi]
            slice_scores.append(r.scores)
        maps = compute_uncertainty(probs)
        candidates = probs > 0.5
        agreement = pairwise_iou(candidates, candidates)
        typicality = (agreement.sum(axis=1) - 1) / max(samples - 1, 1) if samples > 1 else np.ones(1)
        return LesionResult(
            candidates=candidates, consensus=majority_vote(candidates), mean_probability=maps.mean_probability,
            entropy=maps.entropy_of_mean, mutual_information=maps.mutual_information,
            scores=typicality.astype(np.float32), offset=(k0, j0, i0), volume_shape=tuple(shape),
            info={"decoder_iou": np.mean(slice_scores, axis=0).round(4).tolist(), "slices": [r.k for r in results]},
        )
