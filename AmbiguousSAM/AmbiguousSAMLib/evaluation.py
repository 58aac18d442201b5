"""Score several samplers on the same multi-rater slices with METHODS.md's protocol, in one run.

Each slice is encoded once and every method samples from the same embedding with the same prompt box and
seed, so the table compares methods and nothing else. Decode time per slice is measured per method.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from scipy import ndimage

from . import metrics
from .crops import load_crops, open_crop_file, rows_with_raters
from .errors import InvalidImageError, InvalidSettingError
from .heads.sampler import Sampler
from .predictor import Predictor
from .preprocessing import ModelFrame
from .training.embedding_cache import EmbeddingCache


@dataclass
class MethodResult:
    name: str
    per_slice: list[dict] = field(default_factory=list)
    calibration: metrics.CalibrationAccumulator = field(default_factory=metrics.CalibrationAccumulator)
    decode_seconds: list[float] = field(default_factory=list)
    samples: list[np.ndarray] = field(default_factory=list)
    #: Per slice: how many raters marked it (1-4), and the share of this method's samples that are non-empty.
    raters_marked: list[int] = field(default_factory=list)
    nonempty_share: list[float] = field(default_factory=list)
    #: Per slice: the lesion's margin contrast (lesion_contrast), the same for every method.
    contrast: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        return {**metrics.aggregate(self.per_slice), "ece": self.calibration.value(),
                "decode_ms_median": 1000 * float(np.median(self.decode_seconds))}


def lesion_contrast(image: np.ndarray, raters: np.ndarray) -> float:
    """Mean intensity inside the raters' union minus that of a 3-pixel ring around it, in units of the crop's
    5th-95th percentile range: low for ground-glass and faint nodules, high for solid ones. A crop's min-max
    scaling (one bright rib) does not move it, so it ranks lesions across crops."""
    union = raters.any(axis=0)
    ring = ndimage.binary_dilation(union, iterations=3) & ~union
    low, high = np.percentile(image, [5, 95])
    return float((image[union].mean() - image[ring].mean()) / max(float(high - low), 1.0))


def evaluation_rows(masks: np.ndarray, limit: int | None) -> np.ndarray:
    """Rows a box can be drawn on; with `limit`, an evenly spaced subset (every ceil(n/limit)-th row)."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidSettingError(f"--limit must be a whole number of slices, at least 1; got {limit!r}.")
    rows = rows_with_raters(masks)
    if not len(rows):
        raise InvalidImageError("No slice of the crop file has a rater's mark, so no box can be drawn; check 'masks'.")
    if limit is not None and limit < len(rows):
        rows = rows[:: math.ceil(len(rows) / limit)][:limit]
    return rows


def check_half(half: str | None) -> None:
    """Refuse a half that is neither "even" nor "odd" (None: everything)."""
    if half not in (None, "even", "odd"):
        raise InvalidSettingError(f"half must be 'even' or 'odd', not {half!r}.")


def cached_embeddings(data: str | Path, rows: np.ndarray, predictor: Predictor, cache: str | Path | None,
                      seed: int) -> np.ndarray | None:
    """The embeddings (N, 256, 64, 64) of `rows` from the evaluation cache `cache`, encoded there on first use (no
    shift: evaluation scores the crops as they are), or None without a cache (the caller encodes each slice)."""
    if cache is None:
        return None
    store = EmbeddingCache(cache)
    store.build(data, rows, predictor, max_shift=0, seed=seed)
    return store.embeddings()


def evaluate(data: str | Path, samplers: list[Sampler], predictor: Predictor, samples: int = 16, seed: int = 0,
             limit: int | None = None, cache: str | Path | None = None, keep_samples: bool = False,
             progress: Callable[[int, int], None] | None = None,
             half: str | None = None) -> tuple[np.ndarray, list[MethodResult]]:
    """Run every sampler on every protocol slice of `data`; return the rows used and one result per method.

    `half` "even" or "odd" scores only every other protocol slice (the 0th, 2nd, ... or the 1st, 3rd, ...), the
    halves `tune-sampling` chooses on and checks on, so a tuned head is reported on slices it was not tuned on.
    """
    check_half(half)
    with open_crop_file(data) as file:
        rows = evaluation_rows(file["masks"], limit)
    crops = load_crops(data, rows)
    embeddings = cached_embeddings(data, rows, predictor, cache, seed)
    results = [MethodResult(s.name) for s in samplers]
    frame = ModelFrame.for_image(crops.images.shape[1:], predictor.backbone.image_size)
    scored = range(len(rows)) if half is None else range(0 if half == "even" else 1, len(rows), 2)
    for done, n in enumerate(scored):
        image, raters = crops.images[n], crops.masks[n]
        model_input = predictor.prepare(image)[0].to(predictor.device)
        if embeddings is not None:
            embedding = torch.from_numpy(np.asarray(embeddings[n], dtype=np.float32))[None].to(predictor.device)
        else:
            embedding = predictor.encode(model_input)
        box_t = torch.from_numpy(frame.box_to_model(metrics.protocol_box(raters)))[None].to(predictor.device)
        contrast = lesion_contrast(image.astype(np.float64), raters)
        for sampler, result in zip(samplers, results):
            start = time.perf_counter()
            drawn = sampler.sample(embedding, box_t, samples, seed + int(crops.index[n]), image=model_input)
            probs = torch.sigmoid(frame.logits_to_image(drawn.logits.cpu())).numpy()
            result.decode_seconds.append(time.perf_counter() - start)
            binary = probs > 0.5
            result.per_slice.append(metrics.score_slice(binary, probs, raters))
            result.calibration.add(probs.mean(axis=0), metrics.rater_frequency(raters))
            result.raters_marked.append(int(raters.reshape(len(raters), -1).any(axis=1).sum()))
            result.nonempty_share.append(float(binary.reshape(len(binary), -1).any(axis=1).mean()))
            result.contrast.append(contrast)
            if keep_samples:
                result.samples.append(binary)
        if progress is not None:
            progress(done + 1, len(scored))
    return crops.index[list(scored)], results


def format_table(results: list[MethodResult], samples: int) -> str:
    header = f"| method | GED | HM-IoU | D_avg | majority Dice | NCC (undefined) | ECE | decode ms ({samples} samples) |"
    lines = [header, "|" + "---|" * 8]
    for result in results:
        s = result.summary()
        lines.append(f"| {result.name} | {s['ged']:.3f} | {s['hm_iou']:.3f} | {s['d_avg']:.3f} | "
                     f"{s['majority_dice']:.3f} | {s['ncc']:.3f} ({s['ncc_undefined']}) | {s['ece']:.4f} | "
                     f"{s['decode_ms_median']:.0f} |")
    return "\n".join(lines)


def by_rater_count(result: MethodResult) -> dict[int, dict[str, float]]:
    """GED and the share of non-empty samples on the slices marked by 1, 2, ... raters.

    Where the error is: a sampler that matches the raters leaves about n/R of its samples non-empty on slices n of
    R raters marked (0.25 / 0.50 / 0.75 / 1.00 for LIDC's four).
    """
    counts = np.array(result.raters_marked)
    geds = np.array([scores["ged"] for scores in result.per_slice])
    shares = np.array(result.nonempty_share)
    return {int(n): {"slices": int((counts == n).sum()), "ged": float(geds[counts == n].mean()),
                     "nonempty_share": float(shares[counts == n].mean())} for n in np.unique(counts)}


def format_rater_table(results: list[MethodResult]) -> str:
    """One row per method: GED and non-empty share by the number of raters who marked the slice."""
    counts = sorted({n for result in results for n in result.raters_marked})
    lines = ["| method | " + " | ".join(f"{n} rater{'s' if n > 1 else ''}: GED / non-empty" for n in counts) + " |",
             "|" + "---|" * (1 + len(counts))]
    for result in results:
        table = by_rater_count(result)
        cells = [f"{table[n]['ged']:.3f} / {table[n]['nonempty_share']:.2f}" if n in table else "-" for n in counts]
        lines.append(f"| {result.name} | " + " | ".join(cells) + " |")
    slices = by_rater_count(results[0])
    lines.append("| slices | " + " | ".join(str(slices[n]["slices"]) if n in slices else "0" for n in counts) + " |")
    return "\n".join(lines)


def by_contrast(result: MethodResult) -> dict[str, dict[str, float | None]]:
    """GED and rater counts on the faint, middle and high thirds of the slices by lesion contrast (tertiles of
    these slices): where ground-glass and part-solid nodules land."""
    contrast = np.array(result.contrast)
    edges = np.quantile(contrast, [1 / 3, 2 / 3])
    group = np.digitize(contrast, edges)
    geds = np.array([scores["ged"] for scores in result.per_slice])
    raters = np.array(result.raters_marked)
    return {name: {"slices": int((group == g).sum()), "contrast_below": float(edges[g]) if g < 2 else None,
                   "ged": float(geds[group == g].mean()) if (group == g).any() else math.nan,
                   "mean_raters": float(raters[group == g].mean()) if (group == g).any() else math.nan}
            for g, name in enumerate(("faint", "middle", "high"))}


def format_contrast_table(results: list[MethodResult]) -> str:
    """One row per method: GED on the faint / middle / high-contrast thirds of the slices."""
    lines = ["| method | faint: GED | middle: GED | high contrast: GED |", "|---|---|---|---|"]
    for result in results:
        table = by_contrast(result)
        lines.append(f"| {result.name} | " + " | ".join(f"{table[n]['ged']:.3f}" for n in ("faint", "middle", "high")) + " |")
    table = by_contrast(results[0])
    lines.append("| slices (mean raters who marked) | " + " | ".join(
        f"{table[n]['slices']} ({table[n]['mean_raters']:.2f})" for n in ("faint", "middle", "high")) + " |")
    return "\n".join(lines)


def save_samples(path: str | Path, index: np.ndarray, results: list[MethodResult]) -> None:
    """`samples` (N, K, H, W) bool of the first method and `samples_<name>` of the others, plus `index`."""
    arrays = {"index": index}
    for i, result in enumerate(results):
        arrays["samples" if i == 0 else f"samples_{result.name}"] = np.stack(result.samples)
    np.savez_compressed(path, **arrays)
