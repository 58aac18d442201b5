"""What each segment of a result is called, how it is coloured and how it is tagged: one table for every output.

The Slicer nodes, the `candidates.seg.nrrd` file and the PNG montage all show "Candidate 1".."Candidate K" and the
"Consensus"; reading the names, colours and tags from here keeps candidate 3 the same colour in Slicer, in a file
opened later and in the picture, and lets Slicer recognise a file the command line wrote as a candidate set.
The tags are Slicer segment tags (`vtkSegment::SetTag`; stored in a .seg.nrrd as `SegmentN_Tags`), so their
names are Slicer-style and must stay as they are for files already written. A candidate carries its typicality
score and, when the UncertainSAM scorer ran, its expected quality; the consensus, which stands for the lesion,
carries the lesion's review flag. `best_first` is the one rule for the order candidates are offered in.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .review_flag import NEEDS_REVIEW, NO_REVIEW, ReviewFlag

#: Segment tag saying what a segment is (CANDIDATE_ROLE or CONSENSUS_ROLE), so browsers need not parse names.
ROLE_TAG = "AmbiguousSAM.Role"
#: Segment tag with the candidate's score (how typical it is: its mean 3D IoU with the other candidates).
SCORE_TAG = "AmbiguousSAM.Score"
#: Segment tag with the candidate's expected quality: the scorer's expected 3D IoU with the raters' majority
#: (absent when no scorer ran).
QUALITY_TAG = "AmbiguousSAM.ExpectedQuality"
#: Consensus tags: the lesion's review flag (a review_flag.STATES value), and when it is available the predicted
#: expert disagreement it was read from and the threshold applied.
REVIEW_TAG = "AmbiguousSAM.Review"
DISAGREEMENT_TAG = "AmbiguousSAM.ExpertDisagreement"
THRESHOLD_TAG = "AmbiguousSAM.ReviewThreshold"
CANDIDATE_ROLE = "candidate"
CONSENSUS_ROLE = "consensus"
CANDIDATE_NAME = "Candidate {number}"
CONSENSUS_NAME = "Consensus"
#: White: the consensus is drawn over the saturated candidate colours, so it must be none of them.
CONSENSUS_COLOUR = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class SegmentEntry:
    """One row of the table: a candidate (with its scores) or the consensus (with the lesion's review flag)."""

    name: str
    colour: tuple[float, float, float]
    role: str
    score: float | None = None
    #: The scorer's expected quality (candidates; None without a scorer).
    quality: float | None = None
    #: The lesion's review flag (the consensus only).
    review: ReviewFlag | None = None

    @property
    def tags(self) -> dict[str, str]:
        """The segment tags that carry the role, scores and review flag through Slicer nodes and .seg.nrrd files."""
        tags = {ROLE_TAG: self.role}
        if self.score is not None:
            tags[SCORE_TAG] = format_score(self.score)
        if self.quality is not None:
            tags[QUALITY_TAG] = format_score(self.quality)
        if self.review is not None:
            tags[REVIEW_TAG] = self.review.state
            if self.review.disagreement is not None:
                tags[DISAGREEMENT_TAG] = format_score(self.review.disagreement)
                tags[THRESHOLD_TAG] = format_score(self.review.threshold)
        return tags


def candidate_name(index: int) -> str:
    """The name of candidate `index` (0-based): "Candidate 1" for index 0."""
    return CANDIDATE_NAME.format(number=index + 1)


def candidate_colour(index: int) -> tuple[float, float, float]:
    """A saturated colour for candidate `index`; golden-ratio hue steps keep any number of colours far apart
    (a fixed palette such as tab20 repeats itself after 20 candidates)."""
    hue = (0.08 + index * 0.618033988749895) % 1.0
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue, 0.85, 1.0))  # type: ignore[return-value]


def format_score(score: float) -> str:
    """A score as tag text: the shortest decimal that reads back as the same float32 the core computed."""
    return str(np.float32(score))


def candidate_table(scores: np.ndarray, quality: np.ndarray | None = None,
                    review: ReviewFlag | None = None) -> list[SegmentEntry]:
    """The K candidates (typicality scores (K,), expected quality (K,) or None) and then the consensus with the
    lesion's review flag, in the order every output stores them (candidate i is the i-th hypothesis)."""
    scores = np.asarray(scores).reshape(-1)
    qualities = [None] * len(scores) if quality is None else [float(q) for q in np.asarray(quality).reshape(-1)]
    return [SegmentEntry(candidate_name(index), candidate_colour(index), CANDIDATE_ROLE, float(score), qualities[index])
            for index, score in enumerate(scores)] + \
        [SegmentEntry(CONSENSUS_NAME, CONSENSUS_COLOUR, CONSENSUS_ROLE, review=review)]


def best_first(scores: Sequence[float], quality: Sequence[float] | None = None) -> list[int]:
    """Candidate indices in the order a browser offers them: highest expected quality first when the scorer rated
    them (it estimates the IoU with the raters' majority), else most typical first; ties keep the stored order."""
    key = np.asarray(scores if quality is None else quality, dtype=np.float64).reshape(-1)
    return [int(index) for index in np.argsort(-key, kind="stable")]


def review_from_tags(tags: dict[str, str]) -> ReviewFlag:
    """The review flag a consensus segment's tags carry (the inverse of `SegmentEntry.tags`); "not available" for a
    set written without a scorer or before review flags existed."""
    state = tags.get(REVIEW_TAG)
    if state in (NEEDS_REVIEW, NO_REVIEW):
        try:
            return ReviewFlag(state, float(tags[DISAGREEMENT_TAG]), float(tags[THRESHOLD_TAG]))
        except (KeyError, ValueError):
            pass  # a flag without its numbers (a hand-edited file) says nothing reliable
    return ReviewFlag.not_available("the candidate set was saved without an expert disagreement estimate")
