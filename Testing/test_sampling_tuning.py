"""Tuning how the head samples (gate offset, prior temperature): chosen on one half of the slices, by GED, stored
with the head and applied when sampling."""

from __future__ import annotations

import numpy as np
import torch

from AmbiguousSAMLib.heads.checkpoint import load_head, save_head
from AmbiguousSAMLib.heads.probabilistic_sam import ProbabilisticSAM
from AmbiguousSAMLib.modeling.backbone import build_backbone
from AmbiguousSAMLib.training.sampling_tuning import UngatedDraws, chosen_entry, score_offset, score_offsets


def constructed_draws() -> UngatedDraws:
    """Four slices, each with four identical outlines equal to the one marking rater's mask (three raters left
    it empty), and a gate that says 0.9 everywhere: the ideal is one marked sample of four, pi = 0.25."""
    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    raters = np.stack([mask, np.zeros_like(mask), np.zeros_like(mask), np.zeros_like(mask)])
    ranks = np.array([0.1, 0.35, 0.6, 0.85])
    return UngatedDraws(outlines=[np.stack([mask] * 4)] * 4, ranks=[ranks] * 4,
                        presence_logits=np.full(4, np.log(0.9 / 0.1), np.float32), raters=[raters] * 4)


def test_offset_scores_follow_the_protocol_on_a_constructed_case() -> None:
    draws = constructed_draws()
    # logit(0.9) - 2.5 -> pi ~ 0.17: only the sample ranked 0.1 stays marked, so the samples match the raters.
    exact = score_offset(draws, -np.log(9.0) - 1.6, range(4))
    assert exact["ged"] == 0.0 and exact["hm_iou"] == 1.0
    # No offset: three of four samples marked against one of four raters.
    assert score_offset(draws, 0.0, range(4))["ged"] > 0.3


def test_tuning_picks_the_lowest_ged_on_the_tuning_half() -> None:
    table = score_offsets(constructed_draws(), [0.0, -1.0, -np.log(9.0) - 1.6, -20.0])
    assert chosen_entry(table)["offset"] == -np.log(9.0) - 1.6
    assert [entry["offset"] for entry in table] == [0.0, -1.0, -np.log(9.0) - 1.6, -20.0]
    assert all(set(entry) == {"offset", "tune", "check"} for entry in table)


def scores(ged: float, others: float) -> dict[str, float]:
    return {"ged": ged, "hm_iou": others, "d_avg": others, "majority_dice": others}


def test_the_check_half_plays_no_part_in_the_choice() -> None:
    table = [{"offset": 0.0, "tune": scores(0.3, 0.9), "check": scores(0.1, 0.9)},
             {"offset": 1.0, "tune": scores(0.2, 0.5), "check": scores(0.9, 0.1)}]
    assert chosen_entry(table)["offset"] == 1.0


def test_a_ged_tie_goes_to_the_better_majority_vote() -> None:
    """Within 0.001 of the lowest even GED the other three even scores decide (the measured case: -0.15 at
    0.1958 and majority Dice 0.695 against -0.30 at 0.1965 and 0.712); a GED 0.001 or more worse never wins."""
    measured = [{"offset": -0.15, "tune": {"ged": 0.1958, "hm_iou": 0.6535, "d_avg": 0.5921, "majority_dice": 0.6951}},
                {"offset": -0.30, "tune": {"ged": 0.1965, "hm_iou": 0.6543, "d_avg": 0.5913, "majority_dice": 0.7120}},
                {"offset": -0.45, "tune": {"ged": 0.1980, "hm_iou": 0.6560, "d_avg": 0.5800, "majority_dice": 0.7150}}]
    assert chosen_entry(measured)["offset"] == -0.30
    far = [measured[0], {**measured[2], "tune": {**measured[2]["tune"], "majority_dice": 0.99}}]
    assert chosen_entry(far)["offset"] == -0.15
    equal = [{"offset": 0.1, "tune": scores(0.2004, 0.6)}, {"offset": 0.2, "tune": scores(0.2000, 0.6)}]
    assert chosen_entry(equal)["offset"] == 0.2  # the other three equal: the lower GED


def test_offset_is_stored_with_the_head_and_applied_when_sampling(tmp_path) -> None:
    backbone = build_backbone()
    head = ProbabilisticSAM(backbone).eval()
    with torch.no_grad():
        head.presence.mlp[-1].weight.zero_()
        head.presence.mlp[-1].bias.fill_(0.0)  # pi = 0.5
    embedding = torch.randn((1, 256, 64, 64), generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[80.0, 90.0, 160.0, 170.0]])
    head.presence_offset = float(np.log(3.0))  # pi = 0.75: 12 of 16 samples marked
    save_head(head, tmp_path / "tuned.pt", "litemedsam")
    loaded = load_head(backbone, tmp_path / "tuned.pt")
    assert loaded.presence_offset == head.presence_offset
    blank = (loaded.sample(embedding, box, k=16, seed=0).logits == -20.0).flatten(1).all(dim=1)
    assert int((~blank).sum()) == 12


def test_temperature_scales_the_prior_sigma_and_is_stored(tmp_path) -> None:
    """With the hypernetwork's z -> weights branch silenced, a sample's logits are the z-free mask plus a term
    linear in z, and z = mu + T * sigma * noise: so the shift away from the T = 0 sample doubles with T."""
    backbone = build_backbone()
    head = ProbabilisticSAM(backbone).eval()
    with torch.no_grad():
        head.z_to_weights[-1].weight.zero_()
        head.z_to_offset.weight.normal_(std=1.0, generator=torch.Generator().manual_seed(1))
    embedding = torch.randn((1, 256, 64, 64), generator=torch.Generator().manual_seed(0))
    box = torch.tensor([[80.0, 90.0, 160.0, 170.0]])
    noise = head.draw_noise(4, seed=3)
    logits = {}
    for temperature in (0.0, 1.0, 2.0):
        head.prior_temperature = temperature
        logits[temperature] = head.draw(embedding, box, noise).logits[0]
    assert torch.allclose(logits[0.0], logits[0.0][:1].expand_as(logits[0.0]))  # T = 0: every sample is mu's
    shift = logits[1.0] - logits[0.0]
    assert shift.abs().max() > 0.1
    torch.testing.assert_close(logits[2.0] - logits[0.0], 2 * shift, atol=1e-4, rtol=1e-4)
    head.prior_temperature = 2.5
    save_head(head, tmp_path / "tuned.pt", "litemedsam")
    assert load_head(backbone, tmp_path / "tuned.pt").prior_temperature == 2.5
