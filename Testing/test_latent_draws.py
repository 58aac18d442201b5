"""The layout of a latent head's K draws: seeded, marginally standard normal, and (Sobol) evenly spread."""

from __future__ import annotations

import pytest
import torch

from AmbiguousSAMLib.heads.checkpoint import HEAD, load_head, read_checkpoint, save_head, write_checkpoint
from AmbiguousSAMLib.heads.latent_draws import seeded_draws
from AmbiguousSAMLib.heads.probabilistic_sam import ProbabilisticSAM
from AmbiguousSAMLib.modeling.backbone import Backbone


def strata_per_coordinate(normal: torch.Tensor) -> torch.Tensor:
    """(K, D) -> (K, D): which of K equal-probability strata of N(0, 1) each coordinate of each row falls in."""
    return (torch.special.ndtr(normal.double()) * len(normal)).floor().long()


@pytest.mark.parametrize("layout", ["random", "sobol"])
def test_draws_are_seeded(layout: str) -> None:
    first, again, other = (seeded_draws(16, 6, seed, layout) for seed in (3, 3, 4))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    assert first[0].shape == (16, 6) and first[1].shape == (16,)
    assert bool(((first[1] >= 0) & (first[1] < 1)).all())


def test_sobol_draws_fill_every_stratum_of_every_coordinate_and_ranks_rise_with_the_row() -> None:
    """A Sobol net of 16 points puts exactly one point in each sixteenth of each coordinate's range, for every
    seed; independent draws almost never do (the chance is 16!/16^16 ~ 1e-6 per coordinate). The first 16 of a
    64-draw pool (what the click conditioning keeps) are the same net."""
    for seed in range(5):
        normal, ranks = seeded_draws(16, 6, seed, "sobol")
        assert all(sorted(column.tolist()) == list(range(16)) for column in strata_per_coordinate(normal).T)
        assert torch.equal((ranks * 16).floor().long(), torch.arange(16))
        pool, _ = seeded_draws(64, 6, seed, "sobol")
        assert torch.equal(pool[:16], normal)
        random, _ = seeded_draws(16, 6, seed, "random")
        assert not all(sorted(column.tolist()) == list(range(16)) for column in strata_per_coordinate(random).T)


def test_sobol_draws_are_standard_normal_over_seeds() -> None:
    """Each row keeps the law of an independent draw: over many seeds, mean 0 and variance 1 per coordinate."""
    normal = torch.cat([seeded_draws(16, 6, seed, "sobol")[0] for seed in range(400)])
    print(f"\nmean {normal.mean(0).abs().max():.3f}, std {normal.std(0).min():.3f}-{normal.std(0).max():.3f}")
    assert float(normal.mean(0).abs().max()) < 0.03
    assert float((normal.std(0) - 1).abs().max()) < 0.03


def test_an_unknown_layout_is_refused(backbone: Backbone) -> None:
    with pytest.raises(ValueError, match="random"):
        seeded_draws(4, 6, 0, "halton")
    with pytest.raises(ValueError, match="latent_draws"):
        ProbabilisticSAM(backbone, latent_draws="halton")


def test_the_layout_travels_in_the_head_file_and_older_files_read_as_random(backbone: Backbone, tmp_path) -> None:
    head = ProbabilisticSAM(backbone, latent_draws="sobol")
    save_head(head, tmp_path / "head.pt", "litemedsam")
    loaded = load_head(backbone, tmp_path / "head.pt")
    assert loaded.latent_draws == "sobol"
    assert torch.equal(loaded.draw_noise(16, 5).normal, seeded_draws(16, 6, 5, "sobol")[0])
    older = read_checkpoint(tmp_path / "head.pt", HEAD)  # a file written before the layout was a setting
    del older["config"]["latent_draws"]
    write_checkpoint(older, tmp_path / "older.pt")
    assert load_head(backbone, tmp_path / "older.pt").latent_draws == "random"
