"""One click on a CT volume -> K coherent 3D candidates, a consensus and uncertainty maps.

The data flow of DESIGN.md: the box on slice k is followed up and down through the slices. Each slice is
cropped around the lesion at native resolution (like the training crops: at least 128 px, ~2.7x the box)
and min-max normalised as the crops were. The K latent draws are fixed per lesion (one seed for every
slice), so candidate i is one 3D hypothesis. The next slice's box surrounds the pixels that a quarter of the
marked candidates mark (the analogue of the raters' union the head was trained with) plus a margin;
propagation stops when every candidate has vanished, when the consensus shrinks to a fifth of its
clicked-slice area, or at 0.6 box diameters from the clicked slice (the crop and extent rules live in
region.py, which cuts out everything a click can read). Embeddings are cached by the content of the encoded
crop, and the crop window is fixed per lesion, so re-running with another K or seed only decodes.

A box drawn by a user says "there is a lesion here", which a radiologist who left the slice unmarked did not.
The head learnt from such radiologists that a faint lesion is often left unmarked: its presence gate gives
each sample a rank and leaves it empty where the rank is above the chance pi that an expert marks the slice.
The K hypotheses are therefore drawn *given a non-empty mask on the clicked slice* (click_conditioning.py:
the first K non-empty ones of a seeded pool decoded there). A kept sample's rank is below pi on the clicked slice, so it stays marked on every slice
where the gate is at least as sure, and drops out where pi falls below its rank: candidates disagree about
the lesion's extent above and below, as the raters do.

SeqSAM (heads/seqsam.py) draws nothing at random: candidate m is step m of its recurrence on every slice, the
m-th opinion of one canonical sequence, and the seed changes nothing. Its candidates are not conditioned on the
clicked slice: a pool to choose from would be more steps of the recurrence (4K decoder passes where K already cost
K, on steps far beyond the 8 it was trained on), and candidate m would no longer be its m-th opinion. A step left
empty on the clicked slice stays in the set as that opinion ("not marked here"); on LIDC-IDRI-0001 none is
(Testing/test_seqsam_3d.py).

The UncertainSAM scorer (heads/scorer.py) rates every slice's candidates from the z-free decoder pass the head
already ran for its gate (no second pass): each candidate's expected IoU with the raters' majority, combined over
the slices into an expected 3D IoU (`expected_3d_quality`), and the raters' expected disagreement, whose value on
the clicked slice sets the lesion's review flag (review_flag.py). Without a scorer file the segmentation runs
unchanged and the flag says "not available".
"""

from __future__ import annotations

import hashlib
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .click_conditioning import CONDITIONING_POOL, marked_first
from .errors import CancelledError, CheckpointError
from .heads.baselines import Deterministic
from .head_names import DETERMINISTIC
from .heads.checkpoint import head_file, load_any_head
from .heads.probabilistic_sam import LatentNoise
from .heads.sampler import Sampler, Samples
from .heads.scorer import UncertainSAMScorer
from .heads.scorer_checkpoint import DEFAULT_SCORER, load_scorer
from .lesion import LesionResult
from .limits import check_samples, check_seed
from .metrics import majority_vote, pairwise_iou
from .predictor import Predictor
from .preprocessing import ModelFrame
from .region import LesionRegion, check_region, lesion_region
from .review_flag import ReviewFlag
from .uncertainty import compute_uncertainty

#: Pixels added around the marked area (see BOX_SHARE) to make the next slice's box (training used 1-6).
PROPAGATION_MARGIN = 3
#: The next slice's box covers pixels marked by at least this share of the marked candidates. Training boxes
#: surround the union of four radiologists, i.e. pixels that one in four marked; the union of all K candidates
#: reaches further the more (and the more diverse) they are, and a box that grows makes every candidate on the
#: next slice grow with it.
BOX_SHARE = 0.25
#: Propagation also stops when the consensus shrinks below this fraction of its area on the clicked slice.
MIN_AREA_FRACTION = 0.2
#: Latents decoded at once: memory stays flat in K (the default 4 x 16 pool is one chunk).
DECODE_CHUNK = 64

ProgressCallback = Callable[[float, str], None]


@dataclass
class _SliceResult:
    k: int
    origin: tuple[int, int]  # (j, i) of the crop window's first pixel, may be negative
    probs: np.ndarray  # (K, side, side) float32
    scores: np.ndarray  # (K,)
    quality: np.ndarray | None = None  # (K,) the scorer's expected IoU with the raters' majority; None: no scorer
    disagreement: float | None = None  # the scorer's predicted expert disagreement on this slice
    presence: float | None = None  # the presence gate's pi for this slice's box; None: the sampler has no gate

    def rows(self, chosen: np.ndarray) -> "_SliceResult":
        """The same slice with only the candidates `chosen` (indices), in that order."""
        return _SliceResult(self.k, self.origin, self.probs[chosen], self.scores[chosen],
                            None if self.quality is None else self.quality[chosen], self.disagreement, self.presence)


def crop_slice(plane: np.ndarray, origin: tuple[int, int], side: int, fill: float) -> np.ndarray:
    """A side x side window of `plane` starting at (j, i) = origin, padded with `fill` beyond the edges."""
    out = np.full((side, side), fill, dtype=np.float32)
    j0, i0 = origin
    sj, si = max(j0, 0), max(i0, 0)
    ej, ei = min(j0 + side, plane.shape[0]), min(i0 + side, plane.shape[1])
    if ej > sj and ei > si:
        out[sj - j0:ej - j0, si - i0:ei - i0] = plane[sj:ej, si:ei]
    return out


def chunks(count: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) pairs covering range(count) in pieces of at most `size`."""
    return [(start, min(start + size, count)) for start in range(0, count, size)]


def expected_3d_quality(candidates: np.ndarray, consensus: np.ndarray, slice_quality: np.ndarray) -> np.ndarray:
    """(K, dk, dj, di) candidates, their (dk, dj, di) consensus and the scorer's (K, dk) expected IoU of each
    candidate with the raters' majority on each slice (NaN where a slice was not decoded) -> (K,) expected 3D IoU.

    A 3D IoU is the per-slice IoUs averaged with each slice's union of the two masks as weight (the sum of the
    intersections over the sum of the unions). The raters' majority is unknown, so the union is taken with the
    candidates' consensus, its stand-in: a slice where the candidate marks much, or misses much of the lesion,
    counts as much as it would in the 3D IoU, and one where both are empty counts nothing (a candidate's own area
    as the weight would ignore the slices it misses). A candidate with no union anywhere (it and the consensus
    empty) gets the plain mean over the decoded slices.
    """
    decoded = ~np.isnan(slice_quality)
    union = (candidates | consensus[None]).reshape(*candidates.shape[:2], -1).sum(axis=2) * decoded
    weights = np.where(union.sum(axis=1, keepdims=True) > 0, union, decoded).astype(np.float64)
    return ((weights * np.nan_to_num(slice_quality)).sum(axis=1) / weights.sum(axis=1)).astype(np.float32)


def content_key(crop: np.ndarray) -> bytes:
    """A digest of exactly what is encoded: two crops share an embedding only if their pixels are identical.

    Object ids or volume names are no key: CPython reuses the id of a freed array, and the same name can hold
    other voxels after an edit. Hashing a 128 x 128 float32 crop takes microseconds, encoding it ~0.5 s.
    """
    return hashlib.blake2b(np.ascontiguousarray(crop).tobytes() + repr(crop.shape).encode(), digest_size=20).digest()


class LesionSegmenter:
    """A backbone + ambiguity head, ready to segment lesions in volumes (loads the models once)."""

    def __init__(self, backbone: str = "litemedsam", head: str | Path | None = "default",
                 checkpoint: str | Path | None = None, device: str | None = None, precision: str = "bf16",
                 cache_size: int = 128, runtime: str = "auto", scorer: str | Path | None = "default") -> None:
        """`scorer`: "default" (the shipped LIDC scorer), a scorer file, or None for none (no expected quality,
        review flag "not available")."""
        self.predictor = Predictor(backbone=backbone, checkpoint=checkpoint, device=device, precision=precision,
                                   window=None, runtime=runtime)
        self.sampler: Sampler = self._load_sampler(head)
        #: Why there is no scorer (shown where the review flag would be); empty when it loaded.
        self.scorer_problem = ""
        #: The scorer file's name, for the results' provenance; None without a scorer.
        self.scorer_file: str | None = None
        self.scorer: UncertainSAMScorer | None = self._load_scorer(scorer)
        self._embeddings: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        #: How many crops went through the encoder (the rest came from the cache); for tests and the server.
        self.encoded_crops = 0

    def _load_sampler(self, head: str | Path | None) -> Sampler:
        """A name of head_names.HEAD_NAMES, a head file of any kind (Probabilistic SAM, SeqSAM or UA-SAM), or None
        for the deterministic backbone."""
        if head is None or head == DETERMINISTIC:
            return Deterministic(self.predictor.backbone)
        return load_any_head(self.predictor.backbone, head_file(head)).to(self.predictor.device)

    def _load_scorer(self, scorer: str | Path | None) -> UncertainSAMScorer | None:
        """The scorer, or None. A missing or unreadable file is one warning, not a failure: the candidates are
        worth having without their expected quality, and the review flag then says "not available" and why."""
        if scorer is None:
            self.scorer_problem = "the scorer was turned off (--no-scorer)"
            return None
        try:
            path = DEFAULT_SCORER if scorer == "default" else Path(scorer)
            loaded = load_scorer(self.predictor.backbone, path).to(self.predictor.device)
            self.scorer_file = path.name
            return loaded
        except CheckpointError as error:
            self.scorer_problem = str(error)
            warnings.warn(f"{error} AmbiguousSAM segments without the UncertainSAM scorer: no expected quality per "
                          "candidate, and the review flag is 'not available'.", RuntimeWarning, stacklevel=3)
            return None

    def _score(self, embedding: torch.Tensor, box: torch.Tensor, drawn: list[Samples]
               ) -> tuple[np.ndarray | None, float | None]:
        """The scorer's expected quality (K,) of one slice's candidates and its predicted disagreement there,
        reading the z-free pass the sampler already ran when it exposes one; (None, None) without a scorer."""
        if self.scorer is None:
            return None, None
        logits = torch.cat([d.logits for d in drawn]).float()
        estimate = self.scorer.score(self.predictor.backbone, embedding, box, logits, drawn[0].decoder_state)
        return estimate.quality.astype(np.float32), estimate.disagreement

    def clear_cache(self) -> None:
        """Forget cached slice embeddings (e.g. to time a cold click, or after the volume's voxels changed)."""
        self._embeddings.clear()

    def encoded(self, crop: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoder's output for one crop and the grey channel (1, 1, S, S) of the model input it read
        (appearance gates read that too; the input's three channels are copies of it, so a third is kept), from
        the cache when exactly these pixels were encoded before."""
        key = content_key(crop)
        if key in self._embeddings:
            self._embeddings.move_to_end(key)
            return self._embeddings[key]
        model_input, _ = self.predictor.prepare(crop)
        self._embeddings[key] = (self.predictor.encode(model_input), model_input[:, :1].to(self.predictor.device))
        self.encoded_crops += 1
        if len(self._embeddings) > self._cache_size:
            self._embeddings.popitem(last=False)
        return self._embeddings[key]

    def segment(self, volume: np.ndarray, box_ijk: tuple[float, float, float, float], slice_k: int,
                spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                allow_non_ct: bool = False, propagate: bool = True) -> LesionResult:
        """Segment the lesion inside `box_ijk` (i0, j0, i1, j1) on axial slice `slice_k` of `volume` (k, j, i)."""
        samples, seed = check_samples(samples), check_seed(seed)
        region = lesion_region(volume, box_ijk, slice_k, spacing, allow_non_ct)  # validated as it is cut out
        return self._segment_checked(region, samples, seed, progress, cancel, propagate)

    def segment_region(self, region: LesionRegion, samples: int = 16, seed: int = 0,
                       progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
                       propagate: bool = True) -> LesionResult:
        """Segment the lesion of a region cut by `lesion_region` (here, or by a client of the server).

        The result is in the full volume's coordinates, identical to `segment` on the whole volume. The region
        is checked first: it may come from anywhere (a client of the server, a script).
        """
        samples, seed = check_samples(samples), check_seed(seed)
        check_region(region)
        return self._segment_checked(region, samples, seed, progress, cancel, propagate)

    def _segment_checked(self, region: LesionRegion, samples: int, seed: int, progress: ProgressCallback | None,
                         cancel: threading.Event | None, propagate: bool) -> LesionResult:
        """The segmentation of a region, K and seed already checked."""
        started = time.perf_counter()
        window = region.window
        origin, side, slice_k = window.origin, window.side, region.slice_k
        box = np.array(region.box, dtype=np.float64)
        shape = tuple(region.volume_shape)
        frame = ModelFrame.for_image((side, side), self.predictor.backbone.image_size)
        local_origin = (origin[0] - region.offset[1], origin[1] - region.offset[2])
        report = progress or (lambda fraction, message: None)

        def run_slice(k: int, slice_box: np.ndarray, noise: LatentNoise | None, gated: bool = True) -> _SliceResult:
            if cancel is not None and cancel.is_set():
                raise CancelledError("Cancelled by the user; nothing was changed.")
            embedding, model_input = self.encoded(crop_slice(region.plane(k), local_origin, side, region.fill))
            local = np.array([slice_box[0] - origin[1], slice_box[1] - origin[0],
                              slice_box[2] - origin[1], slice_box[3] - origin[0]], dtype=np.float32)
            box_t = torch.from_numpy(frame.box_to_model(np.clip(local, 0, side - 1)))[None].to(self.predictor.device)
            if noise is None:
                drawn = [self.sampler.sample(embedding, box_t, samples, seed, image=model_input)]
            else:
                drawn = [self.sampler.sample_with_noise(embedding, box_t, noise[torch.arange(start, stop)], model_input,
                                                        gated=gated)
                         for start, stop in chunks(len(noise), DECODE_CHUNK)]
            probs = np.concatenate([torch.sigmoid(frame.logits_to_image(d.logits.float().cpu())).numpy() for d in drawn])
            scores = np.concatenate([d.scores.float().cpu().numpy() for d in drawn])
            return _SliceResult(k, origin, probs.astype(np.float32), scores, *self._score(embedding, box_t, drawn),
                                presence=drawn[0].presence)

        report(0.0, f"slice {slice_k}")
        noise = None
        # Latent heads expose their noise (draw_noise / sample_with_noise); the deterministic baseline has none, nor
        # has SeqSAM, whose candidate m is step m of its recurrence on every slice (module docstring).
        if hasattr(self.sampler, "draw_noise"):
            pool = self.sampler.draw_noise(CONDITIONING_POOL * samples, seed)
            clicked = run_slice(slice_k, box, pool, gated=False)  # given a marked lesion: click_conditioning.py
            chosen = marked_first(clicked.probs, samples)
            noise = pool[torch.from_numpy(chosen)].given_marked(clicked.presence)
            results = [clicked.rows(chosen)]
        else:
            results = [run_slice(slice_k, box, None)]
        seed_area = max(int((results[0].probs.mean(axis=0) > 0.5).sum()), 1)
        if propagate:
            for direction in (1, -1):
                current = results[0]
                for step in range(1, window.max_steps + 1):
                    k = slice_k + direction * step
                    next_box = self._next_box(current, shape)
                    if not region.has_slice(k) or next_box is None:
                        break
                    current = run_slice(k, next_box, noise)
                    results.append(current)
                    report(min(0.95, len(results) / (len(results) + 4)), f"slice {k}")
                    if (current.probs.mean(axis=0) > 0.5).sum() < MIN_AREA_FRACTION * seed_area:
                        break
        review = ReviewFlag.not_available(self.scorer_problem) if results[0].disagreement is None \
            else ReviewFlag.from_disagreement(results[0].disagreement)  # the clicked slice: review_flag.py says why
        result = self._assemble(results, shape, samples)
        result.review = review
        result.info.update({"seed": seed, "samples": samples, "slice": int(slice_k), "box_ijk": box.tolist(),
                            "crop_side": side, "sampler": self.sampler.name,
                            "backbone": self.predictor.backbone.spec.name, "precision": self.predictor.precision,
                            "runtime": self.predictor.encoder().name, "device": str(self.predictor.device),
                            "scorer": self.scorer_file,
                            "seconds": time.perf_counter() - started})
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
        slice_quality = np.full((samples, k1 - k0 + 1), np.nan)
        for r in results:
            if not k0 <= r.k <= k1:
                continue
            if r.quality is not None:
                slice_quality[:, r.k - k0] = r.quality
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
        consensus = majority_vote(candidates)
        quality = None if np.isnan(slice_quality).all() else expected_3d_quality(candidates, consensus, slice_quality)
        return LesionResult(
            candidates=candidates, consensus=consensus, mean_probability=maps.mean_probability,
            entropy=maps.entropy_of_mean, mutual_information=maps.mutual_information,
            scores=typicality.astype(np.float32), offset=(k0, j0, i0), volume_shape=tuple(shape),
            info={"decoder_iou": np.mean(slice_scores, axis=0).round(4).tolist(), "slices": [r.k for r in results]},
            quality=quality)
