"""Fit the UncertainSAM scorer's MLPs with MSE on cached targets (scorer_targets.py): CPU minutes.

About a tenth of the training crops is held out (whole patients, so neighbouring slices of one nodule never sit on
both sides) and each MLP keeps the epoch of its lowest held-out MSE: five 512-wide MLPs on a few thousand crops
overfit within a few epochs at lr 1e-3 (seen here), and the gaps stop improving earlier than the qualities. The
report compares each estimate's held-out MSE with that of a constant (the training mean), the least a useful
estimate must beat.
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch

from ..errors import InvalidSettingError
from ..heads.scorer import BOX_ESTIMATES, CANDIDATE_ESTIMATES, UncertainSAMScorer
from .scorer_targets import ScorerExamples


def split_patients(patient: np.ndarray, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (fit, held out): whole patients, in a seeded order, go to the second while it holds at most a
    `held_out` share of the crops (at least the smallest patient), and at least one patient stays to fit on."""
    names, counts = np.unique(patient, return_counts=True)
    if len(names) < 2:
        raise InvalidSettingError(f"The {len(patient)} crops come from {len(names)} patient; fitting holds out whole "
                                  "patients, so give more crops (--rows) from at least two.")
    budget, chosen, total = max(held_out * len(patient), counts.min()), [], 0
    for i in np.random.default_rng(seed).permutation(len(names)):
        if total + counts[i] <= budget and len(chosen) < len(names) - 1:
            chosen.append(names[i])
            total += counts[i]
    mask = np.isin(patient, chosen)
    return np.flatnonzero(~mask), np.flatnonzero(mask)


def _tensors(examples: ScorerExamples) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.asarray(a, dtype=np.float32)) for a in
                 (examples.tokens, examples.candidate_features, examples.box_targets, examples.candidate_targets))


def per_estimate_mse(scorer: UncertainSAMScorer, examples: ScorerExamples) -> dict[str, float]:
    """MSE of every estimate on `examples` (candidate estimates over all candidates)."""
    tokens, features, box_targets, candidate_targets = _tensors(examples)
    with torch.no_grad():
        per_box, per_candidate = scorer(tokens, features)
    box = ((per_box - box_targets) ** 2).mean(dim=0)
    candidate = ((per_candidate - candidate_targets) ** 2).mean(dim=(0, 1))
    return {**dict(zip(BOX_ESTIMATES, box.tolist())), **dict(zip(CANDIDATE_ESTIMATES, candidate.tolist()))}


def constant_mse(fit: ScorerExamples, held_out: ScorerExamples) -> dict[str, float]:
    """Held-out MSE of predicting every estimate's mean over the fitting examples."""
    box = ((held_out.box_targets - fit.box_targets.mean(axis=0)) ** 2).mean(axis=0)
    candidate = ((held_out.candidate_targets - fit.candidate_targets.mean(axis=(0, 1))) ** 2).mean(axis=(0, 1))
    return {**dict(zip(BOX_ESTIMATES, box.tolist())), **dict(zip(CANDIDATE_ESTIMATES, candidate.tolist()))}


def _estimate_modules(scorer: UncertainSAMScorer) -> dict[str, torch.nn.Module]:
    """Each estimate's own MLP, by name (they share no parameters, so each can stop at its own best epoch)."""
    return {**dict(zip(BOX_ESTIMATES, scorer.box_mlps)), **dict(zip(CANDIDATE_ESTIMATES, scorer.candidate_mlps))}


def fit_scorer(examples: ScorerExamples, *, seed: int = 0, epochs: int = 40, batch_size: int = 64,
               lr: float = 3e-4, weight_decay: float = 5e-2, held_out: float = 0.1,
               progress: Callable[[int, int], None] | None = None) -> tuple[UncertainSAMScorer, dict]:
    """Train a fresh scorer (seeded); every MLP keeps the epoch of its lowest held-out MSE. Returns the scorer
    and a report (MSEs, best epochs, split)."""
    torch.manual_seed(seed)
    fit_rows, check_rows = split_patients(examples.patient, held_out, seed)
    fit, check = examples.subset(fit_rows), examples.subset(check_rows)
    tokens, features, box_targets, candidate_targets = _tensors(fit)
    scorer = UncertainSAMScorer()
    scorer.token_mean.copy_(tokens.mean(dim=0))
    scorer.token_std.copy_(tokens.std(dim=0).clamp(min=1e-6))
    optimizer = torch.optim.AdamW(scorer.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    modules = _estimate_modules(scorer)
    best = {name: (float("inf"), 0, copy.deepcopy(module.state_dict())) for name, module in modules.items()}
    for epoch in range(epochs):
        scorer.train()
        for rows in torch.randperm(len(tokens), generator=generator).split(batch_size):
            per_box, per_candidate = scorer(tokens[rows], features[rows])
            loss = ((per_box - box_targets[rows]) ** 2).mean() + ((per_candidate - candidate_targets[rows]) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        scorer.eval()
        for name, mse in per_estimate_mse(scorer, check).items():
            if mse < best[name][0]:
                best[name] = (mse, epoch + 1, copy.deepcopy(modules[name].state_dict()))
        if progress is not None:
            progress(epoch + 1, epochs)
    for name, module in modules.items():
        module.load_state_dict(best[name][2])
    scorer.eval()
    report = {"fit_crops": int(len(fit)), "held_out_crops": int(len(check)),
              "held_out_patients": int(len(np.unique(check.patient))), "epochs": epochs,
              "best_epoch": {name: entry[1] for name, entry in best.items()},
              "held_out_mse": per_estimate_mse(scorer, check), "constant_mse": constant_mse(fit, check),
              "settings": {"seed": seed, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
                           "held_out": held_out}}
    return scorer, report
