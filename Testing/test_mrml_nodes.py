"""Candidates, heatmap and mean probability as Slicer nodes: voxel-exact on an oblique anisotropic CT, all or nothing,
savable (the mean probability found again from its set after the scene is saved and reopened), removed together,
and a command-line result opened in Slicer as a candidate set.

The LesionResults are built by hand (conftest.make_lesion_result) with real arrays, so these tests need no model.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import slicer
import slicerio
import vtk
from vtk.util import numpy_support

from AmbiguousSAMLib.candidate_table import ROLE_TAG, SCORE_TAG, candidate_colour
from AmbiguousSAMLib.errors import InvalidImageError
from AmbiguousSAMLib.outputs import write_outputs
from AmbiguousSAMLogic import (AmbiguousSAMLogic, acceptCandidate, adoptCandidateSet, overlayUncertainty,
                               removeOutputNodes, segmentIdsWithRole, setHeatmapColorNode, showCandidates)
from AmbiguousSAMLogic.colormap import uncertaintyColorNode
from AmbiguousSAMLogic.geometry import ijkToRasMatrix
from AmbiguousSAMLogic.nodes import (CANDIDATES_ATTRIBUTE, PROBABILITY_ATTRIBUTE, PROBABILITY_REFERENCE_ROLE,
                                     UNCERTAINTY_ATTRIBUTE, candidateSetProbability, createCandidateSegmentation,
                                     createUncertaintyVolume)
from AmbiguousSAMLogic.rollback import nodeIds, removeAddedNodesOnError

from test_prompt_box import savedAndReadBack


@pytest.fixture
def result(oblique_volume, make_lesion_result):
    return make_lesion_result(tuple(reversed(oblique_volume.GetImageData().GetDimensions())))


def segmentArray(segmentationNode, segmentId, volumeNode) -> np.ndarray:
    return slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)


def tag(segmentationNode, segmentId: str, name: str) -> str:
    value = vtk.reference("")
    assert segmentationNode.GetSegmentation().GetSegment(segmentId).GetTag(name, value)
    return str(value)


def test_one_segment_per_candidate_then_the_consensus(oblique_volume, result):
    segmentationNode = createCandidateSegmentation(oblique_volume, result)
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(index) for index in range(segmentation.GetNumberOfSegments())]
    assert [segmentation.GetSegment(i).GetName() for i in ids] == [
        "Candidate 1", "Candidate 2", "Candidate 3", "Candidate 4", "Consensus"]
    assert segmentIdsWithRole(segmentationNode, "candidate") == ids[:4]
    assert segmentIdsWithRole(segmentationNode, "consensus") == ids[4:]
    np.testing.assert_array_equal([np.float32(tag(segmentationNode, i, SCORE_TAG)) for i in ids[:4]], result.scores)
    assert tag(segmentationNode, ids[4], ROLE_TAG) == "consensus"
    colors = {tuple(round(c, 3) for c in segmentation.GetSegment(i).GetColor()) for i in ids}
    assert len(colors) == 5, "every segment needs its own colour"
    np.testing.assert_allclose(segmentation.GetSegment(ids[2]).GetColor(), candidate_colour(2))
    assert segmentationNode.GetName() == "Oblique CT candidates"
    assert segmentationNode.GetAttribute(CANDIDATES_ATTRIBUTE) == "1"
    assert segmentationNode.GetNodeReference(
        slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole()) is oblique_volume


def test_segment_labelmaps_equal_the_pasted_candidates_voxel_for_voxel(oblique_volume, result):
    segmentationNode = createCandidateSegmentation(oblique_volume, result)
    candidateIds = segmentIdsWithRole(segmentationNode, "candidate")
    for index, segmentId in enumerate(candidateIds):
        expected = result.paste(result.candidates[index]).astype(np.uint8)
        np.testing.assert_array_equal(segmentArray(segmentationNode, segmentId, oblique_volume), expected)
    consensusId = segmentIdsWithRole(segmentationNode, "consensus")[0]
    np.testing.assert_array_equal(segmentArray(segmentationNode, consensusId, oblique_volume),
                                  result.paste(result.consensus).astype(np.uint8))


def test_heatmap_has_the_ct_geometry_and_the_pasted_uncertainty(oblique_volume, oblique_ijk_to_ras, result):
    heatmapNode = createUncertaintyVolume(oblique_volume, result)
    np.testing.assert_allclose(ijkToRasMatrix(heatmapNode), oblique_ijk_to_ras, atol=1e-12)
    np.testing.assert_allclose(heatmapNode.GetOrigin(), oblique_volume.GetOrigin(), atol=1e-12)
    np.testing.assert_allclose(heatmapNode.GetSpacing(), oblique_volume.GetSpacing(), atol=1e-12)
    voxels = slicer.util.arrayFromVolume(heatmapNode)
    assert voxels.dtype == np.float32 and voxels.shape == (24, 40, 48)
    np.testing.assert_array_equal(voxels, result.paste(result.entropy))
    assert voxels.max() > 0.5, "the nested candidates disagree at their rims"
    display = heatmapNode.GetDisplayNode()
    assert display.GetColorNode() is uncertaintyColorNode(oblique_volume.GetScene())
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, math.log(2)))
    assert heatmapNode.GetName() == "Oblique CT uncertainty"
    assert heatmapNode.GetAttribute(UNCERTAINTY_ATTRIBUTE) == "entropy"


def probabilityOnCtGrid(probabilityNode, volumeNode) -> np.ndarray:
    """The mean-probability volume placed on the CT's grid through its own IJK-to-RAS matrix (zero outside it)."""
    toCt = np.linalg.inv(ijkToRasMatrix(volumeNode)) @ ijkToRasMatrix(probabilityNode)
    np.testing.assert_allclose(toCt[:3, :3], np.eye(3), atol=1e-9)  # the CT's axes and spacing
    np.testing.assert_allclose(toCt[:3, 3], np.round(toCt[:3, 3]), atol=1e-6)  # a whole-voxel offset
    i0, j0, k0 = (int(v) for v in np.round(toCt[:3, 3]))
    block = slicer.util.arrayFromVolume(probabilityNode)
    full = np.zeros(tuple(reversed(volumeNode.GetImageData().GetDimensions())), dtype=np.float32)
    full[k0:k0 + block.shape[0], j0:j0 + block.shape[1], i0:i0 + block.shape[2]] = block
    return full


def test_a_candidate_set_keeps_its_mean_probability_on_the_ct_grid_hidden_from_the_views(mrml_scene, oblique_volume,
                                                                                        result):
    views = [mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    segmentationNode, heatmapNode = AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)
    probabilityNode = candidateSetProbability(segmentationNode)
    assert probabilityNode is not None
    assert segmentationNode.GetNodeReferenceID(PROBABILITY_REFERENCE_ROLE) == probabilityNode.GetID()
    assert probabilityNode.GetName() == "Oblique CT candidates mean probability"
    assert probabilityNode.GetAttribute(PROBABILITY_ATTRIBUTE) == "1"
    assert probabilityNode.GetAttribute(UNCERTAINTY_ATTRIBUTE) is None, "not listed as a heatmap"
    voxels = slicer.util.arrayFromVolume(probabilityNode)
    assert voxels.dtype == np.float32 and voxels.shape == result.consensus.shape, "the lesion box only"
    np.testing.assert_array_equal(probabilityOnCtGrid(probabilityNode, oblique_volume),
                                  result.paste(result.mean_probability))
    assert probabilityNode.GetSaveWithScene() and not probabilityNode.GetHideFromEditors(), "saved with the scene"
    for view in views:  # a volume shows in a slice view only as one of its layers
        assert probabilityNode.GetID() not in (view.GetBackgroundVolumeID(), view.GetForegroundVolumeID(),
                                               view.GetLabelVolumeID())
    display = probabilityNode.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 1.0))


def test_the_mean_probability_is_found_again_after_the_scene_is_saved_and_reopened(mrml_scene, oblique_volume, result,
                                                                                  tmp_path):
    segmentationNode, heatmapNode = AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)
    for node in (oblique_volume, segmentationNode, heatmapNode, candidateSetProbability(segmentationNode)):
        assert node.AddDefaultStorageNode()  # as the Save dialog does
        storageNode = node.GetStorageNode()
        storageNode.SetFileName(str(tmp_path / f"{node.GetID()}.{storageNode.GetDefaultWriteFileExtension()}"))
        assert storageNode.WriteData(node)
    mrml_scene.SetRootDirectory(str(tmp_path))
    mrml_scene.SetURL(str(tmp_path / "scene.mrml"))
    assert mrml_scene.Commit()

    reopened = slicer.vtkMRMLScene()
    reopened.SetURL(str(tmp_path / "scene.mrml"))
    assert reopened.Import()
    probabilityNode = candidateSetProbability(reopened.GetNodeByID(segmentationNode.GetID()))
    assert probabilityNode is not None and probabilityNode.GetAttribute(PROBABILITY_ATTRIBUTE) == "1"
    np.testing.assert_array_equal(probabilityOnCtGrid(probabilityNode, reopened.GetNodeByID(oblique_volume.GetID())),
                                  result.paste(result.mean_probability))


def test_outputs_follow_the_ct_parent_transform(mrml_scene, oblique_volume, result):
    transformNode = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    oblique_volume.SetAndObserveTransformNodeID(transformNode.GetID())
    segmentationNode, heatmapNode = AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)
    assert segmentationNode.GetTransformNodeID() == transformNode.GetID()
    assert heatmapNode.GetTransformNodeID() == transformNode.GetID()
    assert candidateSetProbability(segmentationNode).GetTransformNodeID() == transformNode.GetID()


def test_existing_nodes_and_segments_are_untouched(mrml_scene, oblique_volume, result):
    ownSegmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Radiologist")
    ownSegmentation.SetReferenceImageGeometryParameterFromVolumeNode(oblique_volume)
    ownSegmentId = ownSegmentation.GetSegmentation().AddEmptySegment("", "Nodule")
    ownVoxels = np.zeros((24, 40, 48), dtype=np.uint8)
    ownVoxels[10:13, 15:20, 20:25] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(ownVoxels, ownSegmentation, ownSegmentId, oblique_volume)
    idsBefore = nodeIds(mrml_scene)
    modifiedBefore = {nodeId: mrml_scene.GetNodeByID(nodeId).GetMTime() for nodeId in idsBefore}
    ctBefore = slicer.util.arrayFromVolume(oblique_volume).copy()

    AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)

    assert nodeIds(mrml_scene)[:len(idsBefore)] == idsBefore
    changed = [nodeId for nodeId in idsBefore if mrml_scene.GetNodeByID(nodeId).GetMTime() != modifiedBefore[nodeId]]
    assert changed == []
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(oblique_volume), ctBefore)
    assert ownSegmentation.GetSegmentation().GetNumberOfSegments() == 1
    np.testing.assert_array_equal(segmentArray(ownSegmentation, ownSegmentId, oblique_volume), ownVoxels)


def test_repeated_runs_get_unique_names_and_share_one_colour_map(mrml_scene, oblique_volume, result):
    logic = AmbiguousSAMLogic()
    first = logic.createOutputNodes(oblique_volume, result)
    second = logic.createOutputNodes(oblique_volume, result)
    assert len({node.GetName() for node in first + second}) == 4
    assert candidateSetProbability(second[0]).GetName() == f"{second[0].GetName()} mean probability"
    assert candidateSetProbability(first[0]) is not candidateSetProbability(second[0])
    colorNodes = {node.GetDisplayNode().GetColorNodeID() for node in (first[1], second[1])}
    assert colorNodes == {uncertaintyColorNode(mrml_scene).GetID()}
    assert len(slicer.util.getNodes("AmbiguousSAM uncertainty*", scene=mrml_scene)) == 1


def test_a_result_for_another_volume_is_refused_and_nothing_is_added(mrml_scene, oblique_volume, make_lesion_result):
    before = nodeIds(mrml_scene)
    with pytest.raises(InvalidImageError, match="Run the segmentation on this volume"):
        AmbiguousSAMLogic().createOutputNodes(oblique_volume, make_lesion_result((30, 40, 48)))
    assert nodeIds(mrml_scene) == before


def test_half_built_outputs_are_removed_when_building_fails(mrml_scene, oblique_volume, result):
    result.entropy = result.entropy[:, :-1]  # malformed: the heatmap cannot be pasted after the segmentation is built
    before = nodeIds(mrml_scene)
    with pytest.raises(ValueError):
        AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)
    assert nodeIds(mrml_scene) == before


def test_a_failure_building_the_mean_probability_removes_the_whole_set(mrml_scene, oblique_volume, result):
    result.mean_probability = result.mean_probability[:, :-1]  # the last node built fails: the others go too
    before = nodeIds(mrml_scene)
    with pytest.raises(ValueError, match="mean probability"):
        AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)
    assert nodeIds(mrml_scene) == before


def test_rollback_removes_every_node_added_in_the_block(mrml_scene, oblique_volume):
    before = nodeIds(mrml_scene)
    with pytest.raises(KeyboardInterrupt), removeAddedNodesOnError(mrml_scene):
        mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode").CreateDefaultDisplayNodes()
        mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        raise KeyboardInterrupt
    assert nodeIds(mrml_scene) == before


def test_saved_seg_nrrd_reads_back_with_segment_names_and_voxel_counts(mrml_scene, oblique_volume, result, tmp_path):
    segmentationNode = createCandidateSegmentation(oblique_volume, result)
    path = tmp_path / "candidates.seg.nrrd"
    storageNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storageNode.SetFileName(str(path))
    segmentationNode.SetAndObserveStorageNodeID(storageNode.GetID())
    assert storageNode.WriteData(segmentationNode)

    segmentation = slicerio.read_segmentation(str(path))
    voxels = segmentation["voxels"]
    layered = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    counts = {segment["name"]: int((layered[segment.get("layer", 0)] == segment["labelValue"]).sum())
              for segment in segmentation["segments"]}
    expected = {f"Candidate {index + 1}": int(mask.sum()) for index, mask in enumerate(result.candidates)}
    expected["Consensus"] = int(result.consensus.sum())
    assert counts == expected


def test_a_command_line_result_opens_in_slicer_as_a_candidate_set(mrml_scene, oblique_volume, result, tmp_path):
    ct = savedAndReadBack(oblique_volume, tmp_path)
    result.info.update(slice=11, box_ijk=(15.0, 12.0, 31.0, 26.0))
    out = write_outputs(tmp_path / "result", result, ct.array, ct.image, "oblique.nrrd")
    loaded = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Loaded result")
    storageNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storageNode.SetFileName(str(out / "candidates.seg.nrrd"))
    assert storageNode.ReadData(loaded)
    assert loaded.GetAttribute(CANDIDATES_ATTRIBUTE) is None

    assert adoptCandidateSet(loaded)

    assert loaded.GetAttribute(CANDIDATES_ATTRIBUTE) == "1"
    candidateIds = segmentIdsWithRole(loaded, "candidate")
    consensusIds = segmentIdsWithRole(loaded, "consensus")
    assert len(candidateIds) == result.num_candidates and len(consensusIds) == 1
    segmentation = loaded.GetSegmentation()
    assert [segmentation.GetSegment(i).GetName() for i in candidateIds + consensusIds] == [
        "Candidate 1", "Candidate 2", "Candidate 3", "Candidate 4", "Consensus"]
    np.testing.assert_array_equal([np.float32(tag(loaded, i, SCORE_TAG)) for i in candidateIds], result.scores)
    for index, segmentId in enumerate(candidateIds):
        np.testing.assert_array_equal(segmentArray(loaded, segmentId, oblique_volume),
                                      result.paste(result.candidates[index]).astype(np.uint8))
    np.testing.assert_array_equal(segmentArray(loaded, consensusIds[0], oblique_volume),
                                  result.paste(result.consensus).astype(np.uint8))
    # The same colours as the nodes the module builds itself.
    built = createCandidateSegmentation(oblique_volume, result).GetSegmentation()
    for index, segmentId in enumerate(candidateIds + consensusIds):
        np.testing.assert_allclose(segmentation.GetSegment(segmentId).GetColor(),
                                   built.GetSegment(built.GetNthSegmentID(index)).GetColor(), atol=1e-6)


def test_a_segmentation_without_candidates_is_not_adopted(mrml_scene, oblique_volume):
    ownSegmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Radiologist")
    ownSegmentation.GetSegmentation().AddEmptySegment("", "Nodule")
    assert not adoptCandidateSet(ownSegmentation)
    assert ownSegmentation.GetAttribute(CANDIDATES_ATTRIBUTE) is None


def test_accepting_a_candidate_replaces_the_target_segment_or_adds_one(mrml_scene, oblique_volume, result):
    candidatesNode = createCandidateSegmentation(oblique_volume, result)
    secondCandidate = segmentIdsWithRole(candidatesNode, "candidate")[1]
    target = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Radiologist")
    target.SetReferenceImageGeometryParameterFromVolumeNode(oblique_volume)
    noduleId = target.GetSegmentation().AddEmptySegment("", "Nodule")
    otherId = target.GetSegmentation().AddEmptySegment("", "Other")
    oldNodule = np.zeros((24, 40, 48), dtype=np.uint8)
    oldNodule[1:3, 1:3, 1:3] = 1
    other = np.zeros((24, 40, 48), dtype=np.uint8)
    other[20:23, 30:35, 40:45] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(oldNodule, target, noduleId, oblique_volume)
    slicer.util.updateSegmentBinaryLabelmapFromArray(other, target, otherId, oblique_volume)

    assert acceptCandidate(candidatesNode, secondCandidate, target, noduleId) == noduleId
    expected = result.paste(result.candidates[1]).astype(np.uint8)
    np.testing.assert_array_equal(segmentArray(target, noduleId, oblique_volume), expected)
    np.testing.assert_array_equal(segmentArray(target, otherId, oblique_volume), other)

    newId = acceptCandidate(candidatesNode, secondCandidate, target)
    assert target.GetSegmentation().GetSegment(newId).GetName() == "Candidate 2"
    np.testing.assert_array_equal(segmentArray(target, newId, oblique_volume), expected)


def filledVoxelsInCtIndices(labelmap, ctIjkToRas: np.ndarray) -> set[tuple[int, int, int]]:
    """CT (i, j, k) indices of a labelmap's nonzero voxels, located through the labelmap's own geometry."""
    extent = labelmap.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(shape)
    ijk = (np.argwhere(voxels) + [extent[4], extent[2], extent[0]])[:, ::-1]
    imageToWorld = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(imageToWorld)
    toCt = np.linalg.inv(ctIjkToRas) @ slicer.util.arrayFromVTKMatrix(imageToWorld)
    inCt = (np.hstack([ijk, np.ones((len(ijk), 1))]) @ toCt.T)[:, :3]
    np.testing.assert_allclose(inCt, np.round(inCt), atol=1e-6)
    return {tuple(int(v) for v in row) for row in np.round(inCt)}


def test_accepting_into_a_segmentation_under_another_transform_keeps_the_world_position(
        mrml_scene, oblique_volume, oblique_ijk_to_ras, result):
    candidatesNode = createCandidateSegmentation(oblique_volume, result)
    # The target sits under a shift of exactly one voxel along i, so in its own frame the same world voxels are
    # one index lower along i.
    shift = np.eye(4)
    shift[:3, 3] = oblique_ijk_to_ras[:3, 0]
    transformNode = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transformNode.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(shift))
    target = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Registered")
    target.SetAndObserveTransformNodeID(transformNode.GetID())
    segmentId = acceptCandidate(candidatesNode, segmentIdsWithRole(candidatesNode, "candidate")[0], target)

    local = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(target, segmentId, local, False)
    k0, j0, i0 = result.offset
    expected = {(int(i) + i0 - 1, int(j) + j0, int(k) + k0) for k, j, i in np.argwhere(result.candidates[0])}
    assert filledVoxelsInCtIndices(local, oblique_ijk_to_ras) == expected


def test_show_one_candidate_or_all_of_them(oblique_volume, result):
    segmentationNode = createCandidateSegmentation(oblique_volume, result)
    display = segmentationNode.GetDisplayNode()
    candidateIds = segmentIdsWithRole(segmentationNode, "candidate")
    consensusId = segmentIdsWithRole(segmentationNode, "consensus")[0]
    showCandidates(segmentationNode, 2)
    assert [display.GetSegmentVisibility(i) for i in candidateIds] == [False, False, True, False]
    assert not display.GetSegmentVisibility(consensusId)
    showCandidates(segmentationNode, None)
    assert all(display.GetSegmentVisibility(i) for i in candidateIds + [consensusId])
    with pytest.raises(IndexError, match="4 candidates"):
        showCandidates(segmentationNode, 4)


def test_heatmap_overlay_and_colour_map_in_the_slice_views(mrml_scene, oblique_volume, result):
    heatmapNode = createUncertaintyVolume(oblique_volume, result)
    views = [mrml_scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode") for _ in range(3)]
    overlayUncertainty(oblique_volume, heatmapNode, 0.4)
    for view in views:
        assert view.GetBackgroundVolumeID() == oblique_volume.GetID()
        assert view.GetForegroundVolumeID() == heatmapNode.GetID()
        assert view.GetForegroundOpacity() == pytest.approx(0.4)
    grey = mrml_scene.GetFirstNodeByName("Grey")
    setHeatmapColorNode(heatmapNode, grey)
    assert heatmapNode.GetDisplayNode().GetColorNodeID() == grey.GetID()


def test_removing_outputs_takes_their_display_nodes_but_keeps_the_shared_colour_map(mrml_scene, oblique_volume, result):
    before = nodeIds(mrml_scene)
    outputs = AmbiguousSAMLogic().createOutputNodes(oblique_volume, result)
    colorNodeId = uncertaintyColorNode(mrml_scene).GetID()
    removeOutputNodes(list(outputs))
    assert nodeIds(mrml_scene) == before + [colorNodeId]


def test_removing_a_set_takes_its_mean_probability_but_never_a_node_it_does_not_own(mrml_scene, oblique_volume,
                                                                                  result):
    logic = AmbiguousSAMLogic()
    segmentationNode, heatmapNode = logic.createOutputNodes(oblique_volume, result)
    probabilityNode = candidateSetProbability(segmentationNode)
    # A clone of the set (as Data's "Clone" copies node references) keeps the volume while it stays.
    clone = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Clone")
    clone.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, probabilityNode.GetID())
    removeOutputNodes([segmentationNode, heatmapNode])
    assert segmentationNode.GetScene() is None and probabilityNode.GetScene() is mrml_scene
    removeOutputNodes([clone])
    assert probabilityNode.GetScene() is None
    # A reference pointed at the user's own volume: removing the set leaves that volume alone.
    other, otherHeatmap = logic.createOutputNodes(oblique_volume, result)
    userVolume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "The user's volume")
    other.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, userVolume.GetID())
    removeOutputNodes([other, otherHeatmap])
    assert userVolume.GetScene() is mrml_scene and oblique_volume.GetScene() is mrml_scene
