"""What each segment of a result is called, how it is coloured and how it is tagged: one table for every output.

The Slicer nodes, the `candidates.seg.nrrd` file and the PNG montage all show "Candidate 1".."Candidate K" and the
"Consensus"; reading the names, colours and tags from here keeps candidate 3 the same colour in Slicer, in a file
opened later and in the picture, and lets Slicer recognise a file the command line wrote as a candidate set.
The tags are Slicer segment tags (`vtkSegment::SetTag`; stored in a .seg.nrrd as `SegmentN_Tags`), so their
names are Slicer-style and must stay as they are for files already written.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

#: Segment tag saying what a segment is (CANDIDATE_ROLE or CONSENSUS_ROLE), so browsers need not parse names.
ROLE_TAG = "AmbiguousSAM.Role"
#: Segment tag with the candidate's score (how typical it is: its mean 3D IoU with the other candidates).
SCORE_TAG = "AmbiguousSAM.Score"
CANDIDATE_ROLE = "candidate"
CONSENSUS_ROLE = "consensus"
CANDIDATE_NAME = "Candidate {number}"
CONSENSUS_NAME = "Consensus"
#: White: the consensus is drawn over the saturated candidate colours, so it must be none of them.
CONSENSUS_COLOUR = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class SegmentEntry:
    """One row of the table: a candidate (with its score) or the consensus (without one)."""

    name: str
    colour: tuple[float, float, float]
    role: str
    score: float | None = None

    @property
    def tags(self) -> dict[str, str]:
        """The segment tags that carry the role and the score through Slicer nodes and .seg.nrrd files."""
        tags = {ROLE_TAG: self.role}
        if self.score is not None:
            tags[SCORE_TAG] = format_score(self.score)
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


def candidate_table(scores: np.ndarray) -> list[SegmentEntry]:
    """The K candidates (scores (K,)) and then the consensus, in the order every output lists them."""
    return [SegmentEntry(candidate_name(index), candidate_colour(index), CANDIDATE_ROLE, float(score))
            for index, score in enumerate(np.asarray(scores).reshape(-1))] + \
        [SegmentEntry(CONSENSUS_NAME, CONSENSUS_COLOUR, CONSENSUS_ROLE)]
