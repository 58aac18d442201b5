"""A candidate set read back from its segment tags: best first by expected quality (by typicality without a scorer)
and its review flag, for nodes the module builds and for a candidates.seg.nrrd the command line wrote."""

from __future__ import annotations

import numpy as np

from AmbiguousSAMLib.outputs import write_outputs
from AmbiguousSAMLib.review_flag import REVIEW_THRESHOLD, ReviewFlag
from AmbiguousSAMLogic import candidateIdsBestFirst, candidateScores, candidateSetReview, segmentIdsWithRole
from AmbiguousSAMLogic.nodes import createCandidateSegmentation

from test_prompt_box import savedAndReadBack


def names(segmentationNode, segmentIds: list[str]) -> list[str]:
    return [segmentationNode.GetSegmentation().GetSegment(segmentId).GetName() for segmentId in segmentIds]


def scored(make_lesion_result, oblique_volume):
    result = make_lesion_result(tuple(reversed(oblique_volume.GetImageData().GetDimensions())))
    result.quality = np.array([0.41, 0.77, 0.18, 0.63], np.float32)  # typicality falls 0.9 -> 0.6
    result.review = ReviewFlag.from_disagreement(0.58)
    return result


def test_candidates_are_offered_best_first_by_expected_quality(oblique_volume, make_lesion_result):
    result = scored(make_lesion_result, oblique_volume)
    segmentationNode = createCandidateSegmentation(oblique_volume, result)
    ordered = candidateIdsBestFirst(segmentationNode)
    assert names(segmentationNode, ordered) == ["Candidate 2", "Candidate 4", "Candidate 1", "Candidate 3"]
    assert sorted(ordered) == sorted(segmentIdsWithRole(segmentationNode, "candidate"))
    quality, typicality = candidateScores(segmentationNode, ordered[0])
    assert np.float32(quality) == result.quality[1] and np.float32(typicality) == result.scores[1]
    review = candidateSetReview(segmentationNode)
    assert review.needs_review and np.float32(review.disagreement) == np.float32(0.58)
    assert review.threshold == REVIEW_THRESHOLD


def test_without_a_scorer_the_most_typical_comes_first_and_no_flag_is_available(oblique_volume, make_lesion_result):
    result = make_lesion_result(tuple(reversed(oblique_volume.GetImageData().GetDimensions())))
    result.scores = np.array([0.6, 0.9, 0.7, 0.8], np.float32)
    segmentationNode = createCandidateSegmentation(oblique_volume, result)
    assert names(segmentationNode, candidateIdsBestFirst(segmentationNode)) == [
        "Candidate 2", "Candidate 4", "Candidate 3", "Candidate 1"]
    assert candidateScores(segmentationNode, candidateIdsBestFirst(segmentationNode)[0])[0] is None
    assert candidateSetReview(segmentationNode).state == "not available"


def test_a_command_line_file_is_browsed_in_the_same_order_with_its_flag(mrml_scene, oblique_volume, make_lesion_result,
                                                                         tmp_path):
    result = scored(make_lesion_result, oblique_volume)
    result.info.update(slice=11, box_ijk=(15.0, 12.0, 31.0, 26.0))
    ct = savedAndReadBack(oblique_volume, tmp_path)
    out = write_outputs(tmp_path / "result", result, ct.array, ct.image, "oblique.nrrd")
    loaded = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Loaded result")
    storageNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storageNode.SetFileName(str(out / "candidates.seg.nrrd"))
    assert storageNode.ReadData(loaded)
    built = createCandidateSegmentation(oblique_volume, result)
    assert names(loaded, candidateIdsBestFirst(loaded)) == names(built, candidateIdsBestFirst(built))
    assert candidateSetReview(loaded) == candidateSetReview(built)
