"""Which latent draws become the K candidates of a click: those that mark the lesion on the clicked slice.

A box drawn by a user says "there is a lesion here", which a radiologist who left the slice unmarked did not. The
head learnt from such radiologists that a faint lesion is often left unmarked, so some of its draws are empty on
the clicked slice. The K hypotheses are drawn *given a non-empty mask there*: a seeded pool of draws is decoded on
the clicked slice and the first K non-empty ones are kept (rejection sampling; empty ones fill up only if too few
are non-empty). The 3D path (segmenter.py) and the whole-nodule evaluation (nodule_evaluation.py) both use this
rule, so what the evaluation scores is what a click returns.
"""

from __future__ import annotations

import numpy as np

#: Latents drawn per wanted candidate on the clicked slice, from which the first K non-empty ones are kept.
CONDITIONING_POOL = 4


def marked_first(pool_probs: np.ndarray, samples: int) -> np.ndarray:
    """Indices of the `samples` draws to keep from a pool's probabilities (P, H, W) on the clicked slice: the
    non-empty ones (p > 0.5 somewhere) in pool order, then empty ones if fewer than `samples` are non-empty."""
    marked = (pool_probs > 0.5).reshape(len(pool_probs), -1).any(axis=1)
    return np.argsort(~marked, kind="stable")[:samples]
