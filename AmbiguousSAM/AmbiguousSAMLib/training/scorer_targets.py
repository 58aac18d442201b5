"""What the UncertainSAM scorer learns to predict, computed once per crop from the decoder and the raters.

Per box (the prediction is the backbone's z-free single-mask output, what the deterministic sampler returns):
- quality: IoU with the raters' majority (metrics.majority_vote: >= 3 of 4, empty on a tie) and the mean IoU
  with each rater, empty raters included (IoU(empty, empty) = 1, metrics.py's convention);
- task gap: IoU of the best of the decoder's four outputs (single mask + SAM's three multimask masks) with the
  majority minus the single mask's, so >= 0: what choosing the right output would gain;
- prompt gap: how much a denser prompt (the same box plus `DENSE_PROMPT_POINTS` positive points inside the
  majority) raises the IoU with the majority, clipped at 0 (only the better mask would be kept). Where the
  majority is empty there are no interior points: the denser prompt is the box alone and the gap is 0;
- disagreement: the raters' mean pairwise 1 - IoU (metrics.mean_pairwise_distance), empty masks included.
Per candidate: the same two qualities for the z-free prediction, `prior_samples` ungated outlines of the head and
an empty mask (the head's gate empties candidates, and the product must score those too), with their
`candidate_features`.

The paper's model gap (a larger SAM's prediction) is left out: LiteMedSAM is the only backbone available here.
Training examples live in a folder of chunk files, so an interrupted run resumes at the next chunk.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from .. import metrics
from ..errors import InvalidSettingError
from ..heads.checkpoint import load_head
from ..heads.probabilistic_sam import ProbabilisticSAM
from ..heads.scorer import BOX_ESTIMATES
from ..heads.scorer_inputs import candidate_features, decoder_readout
from ..modeling.backbone import Backbone
from ..preprocessing import ModelFrame, model_input
from .batches import BOX_MARGINS, union_box
from .embedding_cache import EmbeddingCache

#: Positive points of the denser prompt: enough to pin down the majority's extent without tracing it.
DENSE_PROMPT_POINTS = 3
#: Logit of every pixel of the empty candidate.
EMPTY_LOGIT = -20.0
#: Crops per chunk file of a target folder (the unit of resuming).
CHUNK = 128


def dense_prompt_points(majority: np.ndarray, count: int = DENSE_PROMPT_POINTS) -> np.ndarray:
    """Up to `count` (x, y) points inside a (H, W) mask: its deepest pixel (farthest from the boundary), then
    farthest-point sampling over the pixels at least 2 px inside (all of its pixels when none is), so the
    points spread over the lesion instead of crowding its centre. (0, 2) when the mask is empty."""
    depth = ndimage.distance_transform_edt(majority)
    pool = np.argwhere(depth >= 2)
    if len(pool) == 0:
        pool = np.argwhere(majority)
    if len(pool) == 0:
        return np.zeros((0, 2), dtype=np.float32)
    chosen = [np.array(np.unravel_index(int(depth.argmax()), depth.shape))]
    distance = np.linalg.norm(pool - chosen[0], axis=1)
    while len(chosen) < count and distance.max() > 0:
        chosen.append(pool[int(distance.argmax())])
        distance = np.minimum(distance, np.linalg.norm(pool - chosen[-1], axis=1))
    return np.stack(chosen)[:, ::-1].astype(np.float32)


def candidate_quality(candidates: np.ndarray, raters: np.ndarray) -> np.ndarray:
    """(K, H, W) bool candidates, (R, H, W) raters -> (K, 2) in CANDIDATE_ESTIMATES order: IoU with the majority,
    mean IoU with each rater."""
    majority = metrics.majority_vote(raters)[None]
    return np.stack([metrics.pairwise_iou(candidates, majority)[:, 0],
                     metrics.pairwise_iou(candidates, raters).mean(axis=1)], axis=1)


def box_targets(outputs: np.ndarray, dense: np.ndarray | None, raters: np.ndarray) -> dict[str, float]:
    """The per-box targets (BOX_ESTIMATES) from the decoder's four masks (4, H, W) (single first), the denser
    prompt's single mask (None where the majority is empty) and the raters (R, H, W)."""
    majority = metrics.majority_vote(raters)[None]
    output_iou = metrics.pairwise_iou(outputs, majority)[:, 0]
    dense_iou = output_iou[0] if dense is None else metrics.pairwise_iou(dense[None], majority)[0, 0]
    return {"task_gap": float(output_iou.max() - output_iou[0]),
            "prompt_gap": float(max(dense_iou - output_iou[0], 0.0)),
            "disagreement": metrics.mean_pairwise_distance(raters)}


@dataclass
class ScorerExamples:
    """Inputs and targets of N boxes with C candidates each (candidate 0 is the z-free prediction)."""

    tokens: np.ndarray  # (N, 512) float32
    candidate_features: np.ndarray  # (N, C, 3) float32
    candidate_targets: np.ndarray  # (N, C, 2): heads.scorer.CANDIDATE_ESTIMATES
    box_targets: np.ndarray  # (N, 3): BOX_ESTIMATES
    decoder_iou: np.ndarray  # (N,): the decoder's IoU estimate of the z-free prediction (a baseline)
    patient: np.ndarray  # (N,) str: to hold out whole patients when fitting

    def __len__(self) -> int:
        return len(self.tokens)

    def subset(self, rows: np.ndarray) -> "ScorerExamples":
        return ScorerExamples(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concatenate(parts: list["ScorerExamples"]) -> "ScorerExamples":
        return ScorerExamples(**{f.name: np.concatenate([getattr(part, f.name) for part in parts])
                                 for f in fields(ScorerExamples)})

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.stem + ".tmp.npz")
        np.savez(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})
        tmp.replace(path)

    @staticmethod
    def load(path: Path) -> "ScorerExamples":
        with np.load(path) as data:
            return ScorerExamples(**{f.name: data[f.name] for f in fields(ScorerExamples)})


@torch.no_grad()
def scorer_examples(backbone: Backbone, head: ProbabilisticSAM, embeddings: np.ndarray, images: np.ndarray,
                    masks: np.ndarray, patient: np.ndarray, boxes: np.ndarray, noise_seeds: np.ndarray,
                    prior_samples: int, batch_size: int = 16) -> ScorerExamples:
    """Targets of N crops: embeddings (N, 256, 64, 64), crops (N, H, W), rater masks (N, R, H, W), boxes (N, 4)
    in crop pixels; crop n's head samples are drawn with seed `noise_seeds[n]`. Two backbone passes per batch
    (box, box + points) and one head pass per crop."""
    device = next(backbone.mask_decoder.parameters()).device
    frame = ModelFrame.for_image(masks.shape[-2:], backbone.image_size)
    parts: dict[str, list] = {"tokens": [], "features": [], "candidates": [], "box": [], "iou": []}
    for start in range(0, len(boxes), batch_size):
        batch = range(start, min(start + batch_size, len(boxes)))
        embedding = torch.from_numpy(np.asarray(embeddings[batch.start:batch.stop], dtype=np.float32)).to(device)
        box = torch.from_numpy(np.stack([frame.box_to_model(boxes[n]) for n in batch])).to(device)
        majorities = [metrics.majority_vote(masks[n]) for n in batch]
        points, labels = _padded_points([frame.points_to_model(dense_prompt_points(m)) for m in majorities])
        plain = decoder_readout(backbone, embedding, box)
        dense = decoder_readout(backbone, embedding, box, (points.to(device), labels.to(device)))
        outputs = frame.logits_to_image(plain.logits.float().cpu()).numpy() > 0
        dense_masks = frame.logits_to_image(dense.logits[:, 0].float().cpu()).numpy() > 0
        for i, n in enumerate(batch):
            drawn = head.draw(embedding[i:i + 1], box[i:i + 1], head.draw_noise(prior_samples, int(noise_seeds[n])),
                              model_input(images[n], backbone.image_size)[0].to(device)).logits[0]
            reference = plain.logits[i, 0]
            logits = torch.cat([reference[None], drawn, torch.full_like(reference, EMPTY_LOGIT)[None]]).float()
            parts["features"].append(candidate_features(logits, reference))
            parts["candidates"].append(candidate_quality(frame.logits_to_image(logits.cpu()).numpy() > 0, masks[n]))
            targets = box_targets(outputs[i], dense_masks[i] if majorities[i].any() else None, masks[n])
            parts["box"].append([targets[name] for name in BOX_ESTIMATES])
        parts["tokens"].append(plain.tokens.float().cpu())
        parts["iou"].append(plain.iou[:, 0].float().cpu())
    return ScorerExamples(tokens=torch.cat(parts["tokens"]).numpy(),
                          candidate_features=torch.stack(parts["features"]).numpy(),
                          candidate_targets=np.stack(parts["candidates"]).astype(np.float32),
                          box_targets=np.asarray(parts["box"], dtype=np.float32),
                          decoder_iou=torch.cat(parts["iou"]).numpy(), patient=np.asarray(patient).astype(str))


def _padded_points(points: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-box point lists of different lengths -> (B, P, 2) coordinates and (B, P) labels, padded with label -1
    (segment_anything's "not a point")."""
    width = max(1, max(len(p) for p in points))
    coords = torch.zeros((len(points), width, 2))
    labels = torch.full((len(points), width), -1, dtype=torch.int64)
    for i, p in enumerate(points):
        coords[i, :len(p)] = torch.from_numpy(p)
        labels[i, :len(p)] = 1
    return coords, labels


def training_examples(folder: str | Path, cache: EmbeddingCache, backbone: Backbone, head_file: str | Path,
                      rows: int, seed: int, prior_samples: int = 3,
                      progress: Callable[[int, int], None] | None = None) -> ScorerExamples:
    """Targets of the first `rows` encoded crops of a training cache, boxes drawn as training draws them
    (union of the raters, random margins of BOX_MARGINS px per side), written in chunks to `folder` and read
    back from there on the next call (it resumes at the first missing chunk). `head_file` draws the candidates."""
    done = cache.meta().get("done", 0)
    if not 1 <= rows <= done:
        raise InvalidSettingError(f"--rows {rows} is not between 1 and the {done} crops encoded in {cache.folder}; "
                                  "encode more with 'ambiguous-sam train --encode-limit' or ask for fewer.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {"cache": cache.meta()["settings"], "seed": seed, "prior_samples": prior_samples, "chunk": CHUNK,
                "backbone": backbone.spec.name, "dense_prompt_points": DENSE_PROMPT_POINTS,
                "head_sha1": hashlib.sha1(Path(head_file).read_bytes()).hexdigest()}
    settings_file = folder / "settings.json"
    if settings_file.exists() and json.loads(settings_file.read_text()) != settings:
        raise InvalidSettingError(f"{folder} holds targets computed with other settings; choose another "
                                  "--targets folder or delete it.")
    settings_file.write_text(json.dumps(settings))
    head = load_head(backbone, head_file).to(next(backbone.mask_decoder.parameters()).device)
    crops, embeddings = cache.crops(), cache.embeddings()
    parts = []
    for start in range(0, rows, CHUNK):
        stop = min(start + CHUNK, rows)
        path = folder / f"rows-{start:05d}-{stop:05d}.npz"
        if not path.exists():
            rng = np.random.default_rng([seed, start])
            masks = crops["masks"][start:stop]
            boxes = np.stack([union_box(m, rng.integers(BOX_MARGINS[0], BOX_MARGINS[1] + 1, size=4)) for m in masks])
            scorer_examples(backbone, head, embeddings[start:stop], crops["images"][start:stop], masks,
                            crops["patient"][start:stop], boxes, seed + np.arange(start, stop),
                            prior_samples).save(path)
        parts.append(ScorerExamples.load(path))
        if progress is not None:
            progress(stop, rows)
    return ScorerExamples.concatenate(parts)
