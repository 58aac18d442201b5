"""Which latent draws become the K candidates of a click, given that the lesion is marked on the clicked slice.

A box drawn by a user says "there is a lesion here", which a radiologist who left the slice unmarked did not. The
head learnt from such radiologists that a faint lesion is often left unmarked, so its presence gate blanks some
draws. The K hypotheses are drawn *given a marked lesion on the clicked slice*, exactly:
- the gate is not applied there (`sample_with_noise(..., gated=False)`): every draw is an outline of the lesion;
- the kept draws' presence ranks are put into [0, pi) of the clicked slice, one per stratum
  (`LatentNoise.given_marked`), the rank's law given "marked there", so on the other slices a candidate is
  blanked only where the gate is less sure of the lesion than on the clicked one;
- a seeded pool of CONDITIONING_POOL * K draws is decoded there, and the first K non-empty outlines are kept
  (rejection of the draws whose outline itself vanishes; empty ones fill up only if too few are non-empty).
The earlier rule rejected the gate's blanked draws instead: it has the same law while the gate gives pi > 0 to
the pool, but a gate that gave an obvious lesion pi = 0 (an input far from its training features) returned K
empty candidates. The 3D path (segmenter.py) and the whole-nodule evaluation (nodule_evaluation.py) both use
this rule, so what the evaluation scores is what a click returns.
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
