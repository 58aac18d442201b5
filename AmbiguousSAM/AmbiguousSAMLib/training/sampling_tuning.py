"""Tune how the head samples on validation slices, choosing on one half and checking on the other.

Two numbers, both set after training:
- The presence gate's logit offset. The gate is fitted for calibration (BCE against the share of raters), but
  the protocol's scores are asymmetric: a sample drawn where most raters saw nothing costs GED and the majority
  vote more than an empty sample where they did.
- The prior's temperature. Outlines decoded at the prior's own spread vary less than the raters' outlines do,
  so sampling z with a wider sigma can match the raters better (HM-IoU shows whether the wider samples stay
  plausible).
The pair is chosen on the even slices of the tuning set and the odd slices are reported, so the choice is not
graded on the data it was made on: the lowest GED, where pairs within GED_TIE of it tie and the tie goes to the
best mean of the other three scores (`chosen_entry`). Outlines are decoded once per temperature; each offset
only re-applies the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import metrics
from ..heads.presence import presence_probability
from ..heads.probabilistic_sam import ProbabilisticSAM
from ..preprocessing import ModelFrame, model_input

@dataclass
class UngatedDraws:
    """Per protocol slice: K ungated outlines at crop resolution, their ranks, the gate's logit, the raters."""

    outlines: list[np.ndarray]  # (K, H, W) bool each
    ranks: list[np.ndarray]  # (K,) each
    presence_logits: np.ndarray  # (N,)
    raters: list[np.ndarray]  # (R, H, W) bool each


@torch.no_grad()
def draw_ungated(head: ProbabilisticSAM, embeddings: np.ndarray, images: np.ndarray, masks: np.ndarray,
                 rows: np.ndarray, samples: int, seed: int) -> UngatedDraws:
    """Decode every slice as `evaluate` does (protocol box, seed + row, the head's temperature) but keep the
    gate's decision apart. `images` are the crops the embeddings were computed from."""
    device = next(head.parameters()).device
    frame = ModelFrame.for_image(masks.shape[-2:], head.image_size)
    draws = UngatedDraws([], [], np.zeros(len(rows), np.float32), [])
    for n, row in enumerate(rows):
        box = frame.box_to_model(metrics.protocol_box(masks[n]))
        embedding = torch.from_numpy(np.asarray(embeddings[n], dtype=np.float32))[None].to(device)
        noise = head.draw_noise(samples, seed + int(row))
        image = model_input(images[n], head.image_size)[0].to(device)
        decoded = head.draw(embedding, torch.from_numpy(box)[None].to(device), noise, image)
        draws.outlines.append(frame.logits_to_image(decoded.logits[0].float().cpu()).numpy() > 0)
        draws.ranks.append(noise.ranks.numpy())
        draws.presence_logits[n] = float(decoded.presence_logit[0])
        draws.raters.append(masks[n].astype(bool))
    return draws


def score_offset(draws: UngatedDraws, offset: float, slices: range) -> dict[str, float]:
    """Mean protocol scores over `slices` with the gate's logit shifted by `offset`."""
    presence = presence_probability(torch.from_numpy(draws.presence_logits + offset)).numpy()
    per_slice = [metrics.mask_scores(draws.outlines[n] & (draws.ranks[n] < presence[n])[:, None, None],
                                     draws.raters[n]) for n in slices]
    return {key: float(np.mean([s[key] for s in per_slice])) for key in metrics.MEAN_SCORES}


def score_offsets(draws: UngatedDraws, offsets: list[float]) -> list[dict]:
    """Every offset's scores on the tuning (even) and the check (odd) slices."""
    count = len(draws.outlines)
    return [{"offset": float(o), "tune": score_offset(draws, o, range(0, count, 2)),
             "check": score_offset(draws, o, range(1, count, 2))} for o in offsets]


#: Even-half GEDs closer than this to the lowest are a tie (the rule the model card stated for choosing heads).
GED_TIE = 0.001
#: The scores that break a GED tie, by their mean (higher is better): the issue's other three targets.
TIE_BREAKERS = ("hm_iou", "d_avg", "majority_dice")


def chosen_entry(table: list[dict]) -> dict:
    """The table entry chosen on the tuning half (the check half plays no part): the lowest GED, and among the
    entries within GED_TIE of it the best mean of HM-IoU, D_avg and majority Dice.

    Why not the lowest GED alone: neighbouring offsets differ in GED by less than the seed's noise while the
    majority vote moves a lot. Measured on the 435 val slices with the 2x window gate at temperature 3: offset
    -0.15 had even GED 0.1958 and -0.30 0.1965, but majority Dice 0.695 against 0.712.
    """
    lowest = min(entry["tune"]["ged"] for entry in table)
    tied = [entry for entry in table if entry["tune"]["ged"] < lowest + GED_TIE]
    return max(tied, key=lambda entry: (float(np.mean([entry["tune"][key] for key in TIE_BREAKERS])),
                                        -entry["tune"]["ged"]))


def tune_sampling(head: ProbabilisticSAM, embeddings: np.ndarray, images: np.ndarray, masks: np.ndarray, rows: np.ndarray,
                  samples: int, seed: int, temperatures: list[float], offsets: list[float]) -> tuple[dict, list[dict]]:
    """Score every (temperature, offset) pair; return the chosen entry and the whole table. The head's own
    temperature is left as it was: the caller decides whether to keep the choice."""
    kept = head.prior_temperature
    table = []
    try:
        for temperature in temperatures:
            head.prior_temperature = float(temperature)
            draws = draw_ungated(head, embeddings, images, masks, rows, samples, seed)
            table += [{"temperature": float(temperature), **entry} for entry in score_offsets(draws, offsets)]
    finally:
        head.prior_temperature = kept
    return chosen_entry(table), table
