"""`ambiguous-sam evaluate` and `tune-sampling` end to end on a few real LIDC validation slices: one table row per
method, saved samples that re-score to the reported numbers, and a tuned head that loads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from AmbiguousSAMLib import metrics
from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.evaluation import evaluation_rows, lesion_contrast
from AmbiguousSAMLib.heads.checkpoint import HEAD, load_head, read_checkpoint
from AmbiguousSAMLib.modeling.backbone import build_backbone

from conftest import SHARED_DATA

VAL = SHARED_DATA / "lidc-crops" / "val.npz"
METHODS = ("probabilistic_sam_hypernetwork", "deterministic", "box_jitter", "sam_multimask", "mc_dropout")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    if not VAL.is_file():
        pytest.skip(f"LIDC crops are not at {VAL} (shared data absent in this checkout)")
    out = tmp_path_factory.mktemp("evaluate")
    argv = ["evaluate", "--data", str(VAL), "--samples", "4", "--limit", "3", "--seed", "0", "--precision", "bf16",
            "--cache", str(out / "cache"), "--json", str(out / "val.json"), "--save-samples", str(out / "samples.npz"),
            "--reliability", str(out / "reliability.png")]
    assert main(argv) == 0
    return out


def test_every_method_is_scored_on_the_same_slices(evaluated) -> None:
    summary = json.loads((evaluated / "val.json").read_text())
    assert tuple(summary["methods"]) == METHODS and summary["slices"] == 3
    for scores in summary["methods"].values():
        assert 0 <= scores["ged"] <= 2 and 0 <= scores["hm_iou"] <= 1 and scores["slices"] == 3
    assert summary["table"].count("\n") == 1 + len(METHODS)



def test_scores_by_rater_count_and_the_reliability_diagram(evaluated) -> None:
    """Issue 12: GED and the share of non-empty samples by how many raters marked the slice; issue 12's
    reliability diagram, drawn from the same bins as the ECE."""
    summary = json.loads((evaluated / "val.json").read_text())
    with np.load(VAL) as data:
        masks = data["masks"][evaluation_rows(data["masks"], 3)]
    marked = masks.reshape(3, 4, -1).any(axis=2).sum(axis=1)
    saved = np.load(evaluated / "samples.npz")
    for name, key in ((METHODS[0], "samples"), ("deterministic", "samples_deterministic")):
        table = summary["methods"][name]["by_raters_marked"]
        assert sum(entry["slices"] for entry in table.values()) == 3
        for count, entry in table.items():
            rows = marked == int(count)
            share = saved[key][rows].reshape(rows.sum(), 4, -1).any(axis=2).mean()
            assert entry["nonempty_share"] == pytest.approx(share) and entry["slices"] == rows.sum()
    assert summary["by_raters_marked"].count("\n") == 2 + len(METHODS)
    assert (evaluated / "reliability.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_methods_runs_only_the_rows_asked_for(evaluated, capsys) -> None:
    argv = ["evaluate", "--data", str(VAL), "--samples", "2", "--limit", "3", "--precision", "bf16",
            "--cache", str(evaluated / "cache"), "--json", str(evaluated / "one.json"), "--methods", "deterministic"]
    assert main(argv) == 0
    assert list(json.loads((evaluated / "one.json").read_text())["methods"]) == ["deterministic"]
    assert main(argv[:-1] + ["heads", "mc-dropout"]) == 2
    assert "Unknown method(s) mc-dropout for --methods; choose from heads, deterministic" in capsys.readouterr().err


def test_heads_are_picked_by_their_shipped_names_as_the_messages_say(evaluated, capsys) -> None:
    """The error for a missing head file offers 'default'; evaluate takes it (and 'seqsam') like segment does."""
    argv = ["evaluate", "--data", str(VAL), "--samples", "2", "--limit", "3", "--precision", "bf16",
            "--cache", str(evaluated / "cache"), "--json", str(evaluated / "named.json"), "--methods", "heads"]
    assert main(argv + ["--head", "no-such-head.pt"]) == 2
    assert "'default' for the shipped LIDC head" in capsys.readouterr().err
    assert main(argv + ["--head", "default", "--head", "seqsam"]) == 0
    methods = json.loads((evaluated / "named.json").read_text())["methods"]
    assert "probabilistic_sam_hypernetwork (probabilistic_sam_lidc.pt)" in methods
    assert any(name.startswith("seqsam") and "seqsam_lidc.pt" in name for name in methods)


def test_saved_samples_rescore_to_the_reported_numbers(evaluated) -> None:
    saved = np.load(evaluated / "samples.npz")
    summary = json.loads((evaluated / "val.json").read_text())
    with np.load(VAL) as data:
        masks = data["masks"]
    np.testing.assert_array_equal(saved["index"], evaluation_rows(masks, 3))
    assert saved["samples"].shape == (3, 4, 128, 128) and saved["samples"].dtype == bool
    raters = masks[saved["index"]].astype(bool)
    for key, name in (("samples", METHODS[0]), ("samples_deterministic", "deterministic")):
        ged = np.mean([metrics.generalized_energy_distance(s, r) for s, r in zip(saved[key], raters)])
        majority = np.mean([metrics.majority_dice(s, r) for s, r in zip(saved[key], raters)])
        assert ged == pytest.approx(summary["methods"][name]["ged"])
        assert majority == pytest.approx(summary["methods"][name]["majority_dice"])


def test_tune_sampling_writes_a_head_with_the_chosen_pair(evaluated, capsys) -> None:
    out = evaluated / "tuned.pt"
    argv = ["tune-sampling", "--data", str(VAL), "--limit", "3", "--samples", "4", "--cache", str(evaluated / "cache"),
            "--out", str(out), "--temperatures", "1", "2", "--offsets", "-0.5", "0.0", "0.5", "--latent-draws", "sobol"]
    assert main(argv) == 0
    head = load_head(build_backbone(), out)
    assert head.presence_offset in (-0.5, 0.0, 0.5) and head.prior_temperature in (1.0, 2.0)
    assert head.latent_draws == "sobol"
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.startswith(("| 1.00 |", "| 2.00 |"))]
    assert len(rows) == 6 and sum(line.count(" *") for line in rows) == 1
    chosen = next(line for line in rows if " *" in line)
    assert chosen.startswith(f"| {head.prior_temperature:.2f} | {head.presence_offset:+.2f} *")
    tuning = read_checkpoint(Path(out), HEAD)["extra"]["sampling_tuning"]
    assert len(tuning["table"]) == 6 and tuning["slices"] == 3 and tuning["latent_draws"] == "sobol"


def test_half_scores_only_the_odd_slices_with_the_full_runs_samples(evaluated) -> None:
    """--half odd reports a tuned head on the slices tune-sampling did not choose on: the same samples as the full
    run gives on those slices (same seed per row), nothing else."""
    out = evaluated / "odd.npz"
    argv = ["evaluate", "--data", str(VAL), "--samples", "4", "--limit", "3", "--precision", "bf16", "--half", "odd",
            "--cache", str(evaluated / "cache"), "--json", str(evaluated / "odd.json"), "--save-samples", str(out),
            "--methods", "heads"]
    assert main(argv) == 0
    full, odd = np.load(evaluated / "samples.npz"), np.load(out)
    np.testing.assert_array_equal(odd["index"], full["index"][1::2])
    np.testing.assert_array_equal(odd["samples"], full["samples"][1::2])
    summary = json.loads((evaluated / "odd.json").read_text())
    assert summary["slices"] == 1 and summary["half"] == "odd"


def test_lesion_contrast_ranks_solid_above_faint_and_the_breakdown_covers_every_slice(evaluated) -> None:
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 <= 64
    raters = np.stack([disc, disc, np.zeros_like(disc), disc])
    background = np.random.default_rng(0).uniform(20, 40, size=(64, 64))
    faint, solid = background + 15 * disc, background + 150 * disc
    faint[0, 0] = solid[0, 0] = 255  # one bright pixel (a rib) moves neither
    assert lesion_contrast(solid, raters) > 2 * lesion_contrast(faint, raters) > 0
    summary = json.loads((evaluated / "val.json").read_text())
    for scores in summary["methods"].values():
        thirds = scores["by_contrast"]
        assert list(thirds) == ["faint", "middle", "high"] and sum(t["slices"] for t in thirds.values()) == 3
    assert summary["by_contrast"].startswith("| method | faint: GED")
