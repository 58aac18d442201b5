"""The review flag, the best-first order and the expected 3D quality, on constructed values: the rules themselves,
apart from any model (test_segmenter and test_cli_segment check them on real clicks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from AmbiguousSAMLib.candidate_table import (CONSENSUS_ROLE, DISAGREEMENT_TAG, QUALITY_TAG, REVIEW_TAG, best_first,
                                             candidate_table, review_from_tags)
from AmbiguousSAMLib.jobs import SegmentJob, review_table
from AmbiguousSAMLib.metrics import pairwise_iou
from AmbiguousSAMLib.review_flag import (NEEDS_REVIEW, NO_REVIEW, NOT_AVAILABLE, REVIEW_THRESHOLD, ReviewFlag,
                                         review_order)
from AmbiguousSAMLib.segmenter import expected_3d_quality


@pytest.mark.parametrize("disagreement, state", [(REVIEW_THRESHOLD, NEEDS_REVIEW), (np.nextafter(REVIEW_THRESHOLD, 0),
                                                  NO_REVIEW), (0.9, NEEDS_REVIEW), (0.0, NO_REVIEW)])
def test_the_flag_is_set_at_and_above_the_threshold_chosen_on_val(disagreement: float, state: str) -> None:
    flag = ReviewFlag.from_disagreement(disagreement)
    assert flag.state == state and flag.needs_review == (state == NEEDS_REVIEW)
    assert flag.threshold == REVIEW_THRESHOLD and flag.disagreement == pytest.approx(disagreement)
    assert ReviewFlag.from_dict(flag.as_dict()) == flag


def test_without_a_scorer_the_flag_is_not_available_and_says_why() -> None:
    flag = ReviewFlag.not_available("no scorer file at /nowhere")
    described = flag.as_dict()
    assert described["state"] == NOT_AVAILABLE and described["predicted_disagreement"] is None
    assert described["reason"] == "no scorer file at /nowhere" and "clicked slice" in described["rule"]
    assert not flag.needs_review and ReviewFlag.from_dict(described) == flag
    with pytest.raises(ValueError, match="exactly when the flag is available"):
        ReviewFlag.from_dict({**described, "state": NEEDS_REVIEW})


def test_flagged_lesions_come_first_then_by_predicted_disagreement() -> None:
    flags = [ReviewFlag.from_disagreement(value) for value in (0.2, 0.6, 0.45, 0.8, 0.5)]
    flags.append(ReviewFlag.not_available("no scorer"))
    assert review_order(flags) == [3, 1, 4, 2, 0, 5]


def test_best_first_ranks_by_expected_quality_and_by_typicality_without_it() -> None:
    typicality = np.array([0.9, 0.5, 0.7, 0.7], np.float32)
    quality = np.array([0.3, 0.8, 0.3, 0.6], np.float32)
    assert best_first(typicality, quality) == [1, 3, 0, 2]  # a tie keeps the stored order
    assert best_first(typicality) == [0, 2, 3, 1]


def test_tags_carry_quality_and_the_review_flag_and_read_back() -> None:
    flag = ReviewFlag.from_disagreement(0.61)
    entries = candidate_table(np.array([0.8, 0.7]), np.array([0.42, 0.55]), flag)
    assert [np.float32(entry.tags[QUALITY_TAG]) for entry in entries[:2]] == [np.float32(0.42), np.float32(0.55)]
    consensus = entries[-1]
    assert consensus.role == CONSENSUS_ROLE and consensus.tags[REVIEW_TAG] == NEEDS_REVIEW
    back = review_from_tags(consensus.tags)
    assert back.state == NEEDS_REVIEW and back.disagreement == pytest.approx(0.61)
    assert back.threshold == REVIEW_THRESHOLD
    unscored = candidate_table(np.array([0.8, 0.7]))
    assert QUALITY_TAG not in unscored[0].tags and REVIEW_TAG not in unscored[-1].tags
    assert review_from_tags(unscored[-1].tags).state == NOT_AVAILABLE
    assert review_from_tags({REVIEW_TAG: NO_REVIEW}).state == NOT_AVAILABLE  # a flag without its number
    assert DISAGREEMENT_TAG not in candidate_table(np.ones(1), None, ReviewFlag.not_available("x"))[-1].tags


def test_expected_3d_quality_weights_each_slice_as_a_3d_iou_does() -> None:
    """With the per-slice IoU against the consensus as the 'estimate', the weighted mean is exactly the 3D IoU."""
    rng = np.random.default_rng(3)
    consensus = np.zeros((4, 12, 12), bool)
    consensus[:, 3:9, 3:9] = True
    candidates = np.stack([consensus, np.roll(consensus, 2, axis=2), consensus & (rng.random(consensus.shape) < 0.5)])
    candidates[1, 3] = False  # one candidate ends a slice early: that slice still counts (it misses the lesion)
    per_slice = np.array([[pairwise_iou(c[k][None], consensus[k][None])[0, 0] for k in range(4)] for c in candidates])
    expected = pairwise_iou(candidates, consensus[None])[:, 0]
    np.testing.assert_allclose(expected_3d_quality(candidates, consensus, per_slice), expected, rtol=1e-6)


def test_expected_3d_quality_skips_undecoded_slices_and_empty_sets() -> None:
    consensus = np.zeros((3, 4, 4), bool)
    candidates = np.zeros((2, 3, 4, 4), bool)
    candidates[0, 1, :2, :2] = True
    quality = np.array([[np.nan, 0.7, 0.2], [np.nan, 0.4, 0.6]])
    np.testing.assert_allclose(expected_3d_quality(candidates, consensus, quality), [0.7, 0.5])


def test_the_batch_review_table_lists_flagged_lesions_first() -> None:
    def summary(state: str, disagreement: float | None, qualities: list[float]) -> dict:
        names = [f"Candidate {n + 1}" for n in range(len(qualities))]
        order = [names[i] for i in np.argsort(qualities)[::-1]]
        flag = ReviewFlag(state, disagreement)
        return {"review": flag.as_dict(), "candidates_best_first": order,
                "candidates": [{"name": name, "expected_quality": q} for name, q in zip(names, qualities)]}

    done = [(SegmentJob(Path("a.nrrd"), Path("a")), summary(NO_REVIEW, 0.3, [0.4, 0.6])),
            (SegmentJob(Path("b.nrrd"), Path("b")), summary(NEEDS_REVIEW, 0.55, [0.7, 0.2])),
            (SegmentJob(Path("c.nrrd"), Path("c")), summary(NEEDS_REVIEW, 0.7, [0.1, 0.3]))]
    rows = review_table(done)
    assert [row["input"] for row in rows] == ["c.nrrd", "b.nrrd", "a.nrrd"]
    assert [row["review"] for row in rows] == [NEEDS_REVIEW, NEEDS_REVIEW, NO_REVIEW]
    assert [(row["best_candidate"], row["expected_quality"]) for row in rows] == [
        ("Candidate 2", "0.300"), ("Candidate 1", "0.700"), ("Candidate 2", "0.600")]
