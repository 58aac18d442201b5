"""How the K standard-normal latent draws and presence ranks of one click are laid out.

"random": independent normal rows and one rank per stratum in random order (the releases up to this one).
"sobol": row i is point i of a scrambled Sobol sequence mapped through the normal quantile, and its rank lies in
stratum i. Why: K = 16 independent draws of a 6-d latent leave gaps and near-duplicates, so the set of
candidates covers the prior unevenly and its pixel-wise majority is noisy; the points of a Sobol net are spread
evenly over every coordinate and pair of coordinates. Each row is still marginally N(0, I) with a uniform rank,
so each candidate has the law it had. Ranks rising with the index keep every prefix of the sequence together:
the gate marks the rows whose rank is below pi, i.e. the first ~pi * K points, which are themselves a well-spread
set, and a pool of n * K draws (the click conditioning's) keeps its first K, a Sobol net of its own.
"""

from __future__ import annotations

import torch
from torch.quasirandom import SobolEngine

from ..limits import LATENT_DRAWS
from .presence import stratified_ranks
from .sampler import generator_for

#: Keeps the normal quantile finite at a Sobol point on the cube's edge.
_EDGE = 1e-6


def seeded_draws(k: int, dim: int, seed: int, layout: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, dim) standard-normal rows and (k,) ranks in [0, 1) for `seed`; the same seed gives the same draws."""
    if layout not in LATENT_DRAWS:
        raise ValueError(f"latent draws must be one of {LATENT_DRAWS}, not '{layout}'")
    generator = generator_for(seed, torch.device("cpu"))
    if layout == "random":
        normal = torch.randn((k, dim), generator=generator)
        return normal, stratified_ranks(k, generator)
    sobol = SobolEngine(dim, scramble=True, seed=int(seed)).draw(k).to(torch.float32)
    normal = torch.special.ndtri(sobol.clamp(_EDGE, 1 - _EDGE))
    ranks = (torch.arange(k, dtype=torch.float32) + torch.rand(k, generator=generator)) / k
    return normal, ranks
