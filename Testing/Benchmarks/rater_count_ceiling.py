"""How well can any gate know how many radiologists mark a slice? An upper bound from the raters' own masks.

The presence gate predicts pi, the share of raters who mark the lesion on a slice, from that slice alone. The
majority-vote scores (D_avg, majority Dice) hinge on calling "3 or more raters" right, so this script asks how
far better inputs could take the gate: it fits the same kind of small MLP on geometry read from the *rater
masks themselves* (information no gate has at run time) and reports, on the validation patients, the Brier
score of pi against the true share and how often pi > 0.5 agrees with ">= 3 raters". The last row cheats on
purpose (the rater counts of the neighbouring slices) to show the count is a property of the nodule, not of
the slice's geometry. Needs no model; ~1 min on 2 CPU threads.
Usage: python Testing/Benchmarks/rater_count_ceiling.py [--data ../shared/data/lidc-crops]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from common import print_table

INPUTS = {
    "union area": ["area"],
    "+ nodule's largest area and extent": ["area", "nodule"],
    "+ neighbours' areas and position in the nodule": ["area", "nodule", "neighbours", "position"],
    "(cheat) + neighbours' rater counts": ["area", "neighbour_counts"],
}


def slice_geometry(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per marked slice: geometry features from the rater masks, and the number of raters who marked it."""
    with np.load(path) as data:
        masks, patients, nodules, slices = data["masks"], data["patient"], data["nodule"], data["slice"].astype(int)
    counts = masks.reshape(len(masks), 4, -1).any(-1).sum(1)
    area = masks.any(1).reshape(len(masks), -1).sum(1).astype(np.float32)
    nodule = np.array([f"{p}/{n}" for p, n in zip(patients, nodules)])
    row_of = {(k, s): i for i, (k, s) in enumerate(zip(nodule, slices))}
    first, last, largest = {}, {}, {}
    for k, s, a in zip(nodule, slices, area):
        first[k], last[k], largest[k] = min(first.get(k, s), s), max(last.get(k, s), s), max(largest.get(k, 0), a)

    def at(values: np.ndarray, step: int) -> np.ndarray:
        return np.array([values[row_of[(k, s + step)]] if (k, s + step) in row_of else 0
                         for k, s in zip(nodule, slices)], np.float32)

    features = {
        "area": np.log1p(area)[:, None],
        "nodule": np.stack([np.log1p([largest[k] for k in nodule]), [last[k] - first[k] for k in nodule]], 1),
        "neighbours": np.log1p(np.stack([at(area, step) for step in (-2, -1, 1, 2)], 1)),
        "position": np.array([[min(s - first[k], last[k] - s)] for k, s in zip(nodule, slices)]),
        "neighbour_counts": np.stack([at(counts, -1), at(counts, 1)], 1),
    }
    marked = counts > 0
    return {name: value[marked].astype(np.float32) for name, value in features.items()}, counts[marked]


def fit_and_predict(train_x: np.ndarray, train_counts: np.ndarray, val_x: np.ndarray) -> np.ndarray:
    """The gate's recipe (standardise, 64 hidden units, BCE against the share of raters) on other inputs."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    x, y = torch.from_numpy((train_x - mean) / std), torch.from_numpy(train_counts / 4).float()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimiser = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=1e-2)
    for _ in range(800):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x)[:, 0], y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy((val_x - mean) / std))[:, 0]).numpy()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[3] / "shared/data/lidc-crops")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, train_counts = slice_geometry(args.data / "train.npz")
    val, val_counts = slice_geometry(args.data / "val.npz")
    share = val_counts / 4
    rows = [["constant (train mean)", f"{np.mean((train_counts.mean() / 4 - share) ** 2):.4f}",
             f"{np.mean((train_counts.mean() / 4 > 0.5) == (val_counts >= 3)):.3f}", "-"]]
    for label, names in INPUTS.items():
        pi = fit_and_predict(np.concatenate([train[n] for n in names], 1), train_counts,
                             np.concatenate([val[n] for n in names], 1))
        by_count = " / ".join(f"{pi[val_counts == c].mean():.2f}" for c in range(1, 5))
        rows.append([label, f"{np.mean((pi - share) ** 2):.4f}", f"{np.mean((pi > 0.5) == (val_counts >= 3)):.3f}",
                     by_count])
    print(f"{len(val_counts)} marked val slices; raters per slice 1/2/3/4: {np.bincount(val_counts)[1:].tolist()}")
    print_table(["inputs (read from the rater masks)", "Brier", "pi > 0.5 agrees with >= 3 raters",
                 "mean pi for 1 / 2 / 3 / 4 raters"], rows)


if __name__ == "__main__":
    main()
