"""Read a candidate set back from its segment tags: the order to browse its candidates in, and its review flag.

A set in the scene may come from this module, from a `candidates.seg.nrrd` the command line wrote or from a saved
scene; all carry the candidate table's tags, which are all that is read here, so every set is browsed alike.
"""

from __future__ import annotations

import slicer
import vtk

from AmbiguousSAMLib.candidate_table import (CANDIDATE_ROLE, CONSENSUS_ROLE, DISAGREEMENT_TAG, QUALITY_TAG,
                                             REVIEW_TAG, SCORE_TAG, THRESHOLD_TAG, best_first, review_from_tags)
from AmbiguousSAMLib.review_flag import ReviewFlag

from .nodes import segmentIdsWithRole


def segmentTag(segmentationNode: slicer.vtkMRMLSegmentationNode, segmentId: str, tag: str) -> str | None:
    """The text of one of a segment's tags, or None when the segment has no such tag."""
    value = vtk.reference("")
    found = segmentationNode.GetSegmentation().GetSegment(segmentId).GetTag(tag, value)
    return str(value) if found else None


def segmentNumber(segmentationNode: slicer.vtkMRMLSegmentationNode, segmentId: str, tag: str) -> float | None:
    """The number in one of a segment's tags, or None when the tag is missing or holds no number."""
    text = segmentTag(segmentationNode, segmentId, tag)
    try:
        return None if text is None else float(text)
    except ValueError:
        return None


def candidateScores(segmentationNode: slicer.vtkMRMLSegmentationNode, segmentId: str
                    ) -> tuple[float | None, float | None]:
    """A candidate's (expected quality, typicality) from its tags; None for one it lacks (no scorer ran)."""
    return (segmentNumber(segmentationNode, segmentId, QUALITY_TAG),
            segmentNumber(segmentationNode, segmentId, SCORE_TAG))


def candidateIdsBestFirst(segmentationNode: slicer.vtkMRMLSegmentationNode) -> list[str]:
    """The candidate segment IDs in the order to offer them (candidate_table.best_first): by expected quality when
    every candidate has one, else by typicality when every candidate has that, else as stored."""
    candidateIds = segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE)
    keys = {tag: [segmentNumber(segmentationNode, segmentId, tag) for segmentId in candidateIds]
            for tag in (QUALITY_TAG, SCORE_TAG)}
    if None not in keys[QUALITY_TAG]:
        order = best_first(keys[SCORE_TAG], keys[QUALITY_TAG])
    elif None not in keys[SCORE_TAG]:
        order = best_first(keys[SCORE_TAG])
    else:
        return candidateIds
    return [candidateIds[index] for index in order]


def candidateSetReview(segmentationNode: slicer.vtkMRMLSegmentationNode) -> ReviewFlag:
    """The lesion's review flag, from the consensus segment's tags ("not available" when it has none)."""
    tags = {}
    for consensusId in segmentIdsWithRole(segmentationNode, CONSENSUS_ROLE)[:1]:
        tags = {tag: segmentTag(segmentationNode, consensusId, tag) for tag in (REVIEW_TAG, DISAGREEMENT_TAG,
                                                                                 THRESHOLD_TAG)}
    return review_from_tags({tag: value for tag, value in tags.items() if value is not None})
