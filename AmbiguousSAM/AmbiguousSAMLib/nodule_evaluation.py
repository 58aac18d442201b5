"""Score samplers on whole nodules: a nodule's consecutive crops stacked into a small volume, scored in 3D.

The 3D path keeps candidate i one hypothesis through the slices (the same latent draw and presence rank on every
slice, conditioned on marking the clicked slice), and the per-slice table of `evaluation.py` cannot see whether
that works: a candidate may be right on each slice and still start and stop on the wrong ones. The only 3D case
with raters here is LIDC-IDRI-0001, a training patient, whereas the crop files hold every marked slice of each
nodule in order (`nodule`, `slice` keys): 299 val nodules. Each nodule's crops become a stack (slices, 128, 128),
the user clicks the slice most raters marked (the largest union among those), and each method's K candidates are
drawn as the 3D path draws them (click_conditioning.py for latent heads, the same seed on every slice for the
rest). Scores are the protocol's, on the stacks, against the raters who marked the nodule: a box asserts a lesion,
so a radiologist who marked none of its slices is no opinion about its outline (LIDC-IDRI-0001's four all
marked it).

What differs from a click on a volume, so read the numbers with it: every slice has its own crop, centred on the
nodule there, and its own protocol box (the 3D path derives the next box from the candidates), and the files hold
only slices some rater marked, so candidates that run on past a nodule's end cannot be caught here (stopping
short can).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import metrics
from .click_conditioning import CONDITIONING_POOL, marked_first
from .crops import load_crops, open_crop_file
from .errors import InvalidImageError
from .evaluation import cached_embeddings, check_half, evaluation_rows, lesion_contrast
from .heads.sampler import Sampler
from .predictor import Predictor
from .preprocessing import ModelFrame

#: Thirds of the nodules by their clicked slice's margin contrast (evaluation.lesion_contrast).
CONTRAST_GROUPS = ("faint", "middle", "high")


@dataclass
class NoduleScore:
    """One method on one nodule, all in 3D on the nodule's stack."""

    ged: float
    hm_iou: float
    #: Dice of the candidates' majority against the majority of the raters who marked the nodule.
    majority_dice: float
    #: Median candidate volume over the median volume of the raters who marked the nodule.
    volume_ratio: float
    #: Mean number of slices a candidate / a rater who marked the nodule marks.
    candidate_slices: float
    rater_slices: float
    slices: int
    raters: int
    contrast: float


def nodule_groups(patient: np.ndarray, nodule: np.ndarray, slice_index: np.ndarray) -> list[np.ndarray]:
    """Positions (into the given arrays) of each nodule's slices, in slice order, nodules in file order."""
    keys = np.array([f"{p}/{n}" for p, n in zip(patient, nodule)])
    groups = []
    for key in dict.fromkeys(keys):
        members = np.nonzero(keys == key)[0]
        groups.append(members[np.argsort(slice_index[members], kind="stable")])
    return groups


def clicked_slice(raters: np.ndarray) -> int:
    """The slice (of raters (S, R, H, W)) a user would box: the one most raters marked, the largest union of those."""
    marked = raters.reshape(*raters.shape[:2], -1).any(axis=2).sum(axis=1)
    union = raters.any(axis=1).reshape(len(raters), -1).sum(axis=1)
    return int(np.lexsort((union, marked))[-1])


def score_nodule(candidates: np.ndarray, raters: np.ndarray, contrast: float) -> NoduleScore:
    """Candidates (K, S, H, W) against the raters (R, S, H, W), keeping the raters who marked the nodule."""
    raters = raters[raters.reshape(len(raters), -1).any(axis=1)]
    rater_volume = raters.reshape(len(raters), -1).sum(axis=1)
    candidate_volume = candidates.reshape(len(candidates), -1).sum(axis=1)
    return NoduleScore(
        ged=metrics.generalized_energy_distance(candidates, raters),
        hm_iou=metrics.hungarian_matched_iou(candidates, raters),
        majority_dice=metrics.dice(metrics.majority_vote(candidates), metrics.majority_vote(raters)),
        volume_ratio=float(np.median(candidate_volume) / np.median(rater_volume)),
        candidate_slices=float(candidates.any(axis=(2, 3)).sum(axis=1).mean()),
        rater_slices=float(raters.any(axis=(2, 3)).sum(axis=1).mean()),
        slices=int(candidates.shape[1]), raters=int(len(raters)), contrast=contrast)


def nodule_candidates(sampler: Sampler, embeddings: list[torch.Tensor], boxes: list[torch.Tensor],
                      images: list[torch.Tensor], clicked: int, samples: int, seed: int,
                      to_image: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
    """K candidates (K, S, H, W) on a nodule's S slices, drawn the way the 3D path draws them."""
    def probabilities(drawn) -> np.ndarray:
        return torch.sigmoid(to_image(drawn.logits.float().cpu())).numpy()

    if hasattr(sampler, "draw_noise"):  # latent heads: one pool, conditioned on the clicked slice
        pool = sampler.draw_noise(CONDITIONING_POOL * samples, seed)
        drawn = sampler.sample_with_noise(embeddings[clicked], boxes[clicked], pool, images[clicked], gated=False)
        clicked_probs = probabilities(drawn)
        chosen = marked_first(clicked_probs, samples)
        noise = pool[torch.from_numpy(chosen)].given_marked(drawn.presence)
        per_slice = [clicked_probs[chosen] if s == clicked else
                     probabilities(sampler.sample_with_noise(embeddings[s], boxes[s], noise, images[s]))
                     for s in range(len(embeddings))]
    else:
        per_slice = [probabilities(sampler.sample(embeddings[s], boxes[s], samples, seed, image=images[s]))
                     for s in range(len(embeddings))]
    return np.stack(per_slice, axis=1) > 0.5


def evaluate_nodules(data: str | Path, samplers: list[Sampler], predictor: Predictor, samples: int = 16,
                     seed: int = 0, cache: str | Path | None = None, half: str | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, list[NoduleScore]]:
    """Every sampler on every nodule of `data` (or its even / odd nodules); one score list per method name."""
    check_half(half)
    with open_crop_file(data) as file:
        if not {"nodule", "slice", "patient"} <= set(file.files):
            raise InvalidImageError(f"{data} has no 'patient', 'nodule' and 'slice' keys, so its slices cannot be "
                                    "grouped into nodules; scoring whole nodules needs them (shared/data/README.md).")
        rows = evaluation_rows(file["masks"], None)
        groups = nodule_groups(file["patient"][rows], file["nodule"][rows], file["slice"][rows])
    crops = load_crops(data, rows)
    embeddings = cached_embeddings(data, rows, predictor, cache, seed)
    frame = ModelFrame.for_image(crops.images.shape[1:], predictor.backbone.image_size)
    chosen = groups if half is None else groups[0 if half == "even" else 1::2]
    scores: dict[str, list[NoduleScore]] = {sampler.name: [] for sampler in samplers}
    for done, members in enumerate(chosen):
        inputs = [predictor.prepare(crops.images[n])[0].to(predictor.device) for n in members]
        encoded = [torch.from_numpy(np.asarray(embeddings[n], dtype=np.float32))[None].to(predictor.device)
                   if embeddings is not None else predictor.encode(model_input)
                   for n, model_input in zip(members, inputs)]
        boxes = [torch.from_numpy(frame.box_to_model(metrics.protocol_box(crops.masks[n])))[None].to(predictor.device)
                 for n in members]
        raters = crops.masks[members]  # (S, R, H, W)
        clicked = clicked_slice(raters)
        contrast = lesion_contrast(crops.images[members[clicked]].astype(np.float64), raters[clicked])
        for sampler in samplers:
            candidates = nodule_candidates(sampler, encoded, boxes, inputs, clicked, samples,
                                           seed + int(crops.index[members[0]]), frame.logits_to_image)
            scores[sampler.name].append(score_nodule(candidates, raters.transpose(1, 0, 2, 3), contrast))
        if progress is not None:
            progress(done + 1, len(chosen))
    return scores


def summarise(scores: list[NoduleScore]) -> dict[str, float]:
    """Means over nodules (medians for the volume ratio, which is skewed by tiny nodules)."""
    return {"nodules": len(scores), "ged": float(np.mean([s.ged for s in scores])),
            "hm_iou": float(np.mean([s.hm_iou for s in scores])),
            "majority_dice": float(np.mean([s.majority_dice for s in scores])),
            "volume_ratio": float(np.median([s.volume_ratio for s in scores])),
            "candidate_slices": float(np.mean([s.candidate_slices for s in scores])),
            "rater_slices": float(np.mean([s.rater_slices for s in scores]))}


def by_contrast(scores: list[NoduleScore]) -> dict[str, dict[str, float]]:
    """The summary per third of the nodules by contrast (the thresholds come from these nodules)."""
    contrast = np.array([s.contrast for s in scores])
    edges = np.nanpercentile(contrast, [100 / 3, 200 / 3])
    group = np.digitize(contrast, edges)
    return {name: summarise([s for s, g in zip(scores, group) if g == i])
            for i, name in enumerate(CONTRAST_GROUPS) if (group == i).any()}


def format_nodule_table(results: dict[str, list[NoduleScore]], samples: int) -> str:
    """A markdown table: each method overall and by contrast third."""
    lines = [f"| method ({samples} candidates per nodule) | nodules | 3D GED | HM-IoU | majority Dice | volume ratio "
             "(median) | slices marked, candidates / raters |", "|---|---|---|---|---|---|---|"]
    for name, scores in results.items():
        for label, summary in (("all", summarise(scores)), *by_contrast(scores).items()):
            lines.append(f"| {name}, {label} | {summary['nodules']} | {summary['ged']:.3f} | {summary['hm_iou']:.3f} | "
                         f"{summary['majority_dice']:.3f} | {summary['volume_ratio']:.2f} | "
                         f"{summary['candidate_slices']:.2f} / {summary['rater_slices']:.2f} |")
    return "\n".join(lines)
