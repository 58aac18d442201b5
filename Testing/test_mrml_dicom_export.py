"""Export to DICOM from the scene (AmbiguousSAMLogic.dicomexport) on the real slicer-core MRML scene.

The LIDC-IDRI-0001 DICOM slab is loaded as Slicer's DICOM module loads a series (the volumes logic's archetype
reader over the series' files, and the "DICOM.instanceUIDs" attribute in slice order), the real logic makes a
candidate set on it with the real model (4 samples), and the export is read back with highdicom and pydicom: its
segments equal the scene's segments voxel for voxel (as Slicer's own arrayFromSegmentBinaryLabelmap gives them), its
probability SEG the set's mean-probability volume (to its 1/255 steps), its uncertainty map the heatmap, and every
object references the slab's series. A set that keeps no mean probability exports the other three objects and says
why. Refusals leave the scene and the folder as they were.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import slicer
import vtk

from AmbiguousSAMLib.candidate_table import CANDIDATE_ROLE, CONSENSUS_ROLE, SCORE_TAG
from AmbiguousSAMLib.dicom_export import (COLOURS_FILE, DICOM_FILES, PROBABILITY_FILE, SEGMENTATION_FILE,
                                          UNCERTAINTY_FILE, UNCERTAINTY_LEVELS)
from AmbiguousSAMLib.errors import AmbiguousSAMError, CandidateSetError, DicomSourceError, OutputFolderError
from AmbiguousSAMLib.heatmap_colours import MAX_ENTROPY_NATS
from AmbiguousSAMLogic import AmbiguousSAMLogic, exportCandidateSetToDicom, segmentIdsWithRole
from AmbiguousSAMLogic.dicomexport import INSTANCE_UIDS_ATTRIBUTE, DicomExport, candidateSetVolume
from AmbiguousSAMLogic.geometry import ijkToRasMatrix
from AmbiguousSAMLogic.nodes import PROBABILITY_REFERENCE_ROLE, candidateSetProbability
from AmbiguousSAMLogic.rollback import nodeIds
from conftest import OBLIQUE_SHAPE, SHARED_DATA
from test_cli_segment import snapshot
from test_mrml_logic import roiOverIjkBox
from test_mrml_nodes import probabilityOnCtGrid

SLAB = SHARED_DATA / "lidc-dicom" / "LIDC-IDRI-0001-slab"
#: The nodule of LIDC-IDRI-0001 in the slab (slice 89 of the whole CT; the slab starts at its slice 83).
NODULE_SLICE = 6
NODULE_BOX_IJK = ((296.0, 338.0), (338.0, 388.0))
#: A hand-built candidate set on the slab, over the nodule (no model needed for the refusals).
HAND_BUILT_OFFSET = (3, 345, 305)


@pytest.fixture
def slab_files() -> list[str]:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data outside the repository, absent in a fresh clone)")
    from AmbiguousSAMLib.volume_io import series_files

    return list(series_files(SLAB))


def instanceUids(files: list[str]) -> list[str]:
    return [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]


@pytest.fixture
def slab_node(mrml_scene, slab_files):
    """The slab loaded the way Slicer's DICOMScalarVolumePlugin does (loadFilesWithArchetype: the volumes logic's
    AddArchetypeScalarVolume over the series' files; setVolumeNodeProperties: the SOP Instance UIDs of the files,
    in slice order, as "DICOM.instanceUIDs")."""
    fileList = vtk.vtkStringArray()
    for path in slab_files:
        fileList.InsertNextValue(path)
    volumeNode = slicer.modules.volumes.logic().AddArchetypeScalarVolume(slab_files[0], "LIDC-IDRI-0001 slab", 0,
                                                                         fileList)
    assert volumeNode is not None and volumeNode.GetImageData().GetDimensions() == (512, 512, 16)
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    assert slicer.vtkMRMLVolumeNode.IsIJKCoordinateSystemRightHanded(matrix), "the plugin would reverse the UIDs"
    volumeNode.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(instanceUids(slab_files)))
    return volumeNode


@pytest.fixture(scope="module")
def segmenter():
    from AmbiguousSAMLib.segmenter import LesionSegmenter

    return LesionSegmenter()


def sceneState(scene) -> list[tuple[str, int]]:
    """Every node and its modification time: what "the scene is unchanged" means."""
    return [(nodeId, scene.GetNodeByID(nodeId).GetMTime()) for nodeId in nodeIds(scene)]


def frameSlices(dataset: pydicom.Dataset, files: list[str]) -> list[int]:
    """The source slice k of each frame of a multi-frame object, from the image each frame names."""
    uids = instanceUids(files)
    return [uids.index(group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for group in dataset.PerFrameFunctionalGroupsSequence]


def test_a_real_candidate_set_exports_as_the_scenes_segments_voxel_for_voxel(mrml_scene, slab_node, slab_files,
                                                                           segmenter, tmp_path) -> None:
    (i0, i1), (j0, j1) = NODULE_BOX_IJK
    roi = roiOverIjkBox(mrml_scene, slab_node, np.array([i0, j0, NODULE_SLICE - 0.4]),
                        np.array([i1, j1, NODULE_SLICE + 0.4]))
    logic = AmbiguousSAMLogic()  # process()'s stages, to keep the model's result
    result = logic.segment(logic.preparePrompt(slab_node, roi), samples=4, seed=0, segmenter=segmenter)
    segmentationNode, heatmapNode = logic.createOutputNodes(slab_node, result)
    assert candidateSetVolume(segmentationNode) is slab_node
    probabilityNode = candidateSetProbability(segmentationNode)
    assert probabilityNode is not None, "the set keeps the model's mean probability"
    np.testing.assert_array_equal(probabilityOnCtGrid(probabilityNode, slab_node),
                                  result.paste(result.mean_probability))
    before = sceneState(mrml_scene)
    # The files in reverse order, as a script may list them: the export puts them in slice order.
    exported = exportCandidateSetToDicom(segmentationNode, heatmapNode, None, tmp_path / "dicom",
                                         sourceFiles=slab_files[::-1])
    out = exported.folder
    assert out == tmp_path / "dicom"
    assert sceneState(mrml_scene) == before, "the export only reads the scene"
    assert sorted(path.name for path in out.iterdir()) == sorted(DICOM_FILES) == sorted(exported.files)
    assert exported.leftOut == {}

    segmentIds = [*segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE),
                  *segmentIdsWithRole(segmentationNode, CONSENSUS_ROLE)]
    assert len(segmentIds) == 5
    inScene = np.stack([slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, slab_node) > 0
                        for segmentId in segmentIds])
    assert inScene[-1, NODULE_SLICE].any(), "the consensus covers the slice the box was drawn on"

    uids = instanceUids(slab_files)  # k order
    seg = hd.seg.segread(out / SEGMENTATION_FILE)
    assert seg.number_of_segments == 5
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.moveaxis(pixels, -1, 0).astype(bool), inScene)

    header = pydicom.dcmread(out / SEGMENTATION_FILE, stop_before_pixels=True)
    segmentation = segmentationNode.GetSegmentation()
    assert [s.SegmentLabel for s in header.SegmentSequence] == \
        [segmentation.GetSegment(segmentId).GetName() for segmentId in segmentIds]
    for item, segmentId in zip(header.SegmentSequence, segmentIds[:-1]):
        score = vtk.reference("")
        assert segmentation.GetSegment(segmentId).GetTag(SCORE_TAG, score)
        assert f"score {str(score)}" in item.SegmentDescription

    source = pydicom.dcmread(slab_files[0], stop_before_pixels=True)
    for name in (SEGMENTATION_FILE, PROBABILITY_FILE, UNCERTAINTY_FILE):
        dataset = pydicom.dcmread(out / name, stop_before_pixels=True)
        assert (dataset.StudyInstanceUID, dataset.FrameOfReferenceUID, dataset.PatientID) == \
            (source.StudyInstanceUID, source.FrameOfReferenceUID, source.PatientID), name
        (series,) = dataset.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.SeriesInstanceUID, name
        assert {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence} == set(uids), name

    probability = pydicom.dcmread(out / PROBABILITY_FILE, stop_before_pixels=True)
    assert (probability.SegmentationType, probability.SegmentationFractionalType, probability.MaximumFractionalValue,
            len(probability.SegmentSequence)) == ("FRACTIONAL", "PROBABILITY", 255, 1)
    fractions = hd.seg.segread(out / PROBABILITY_FILE).get_pixels_by_source_instance(uids, segment_numbers=[1])[..., 0]
    expected = result.paste(result.mean_probability)
    assert np.abs(fractions - expected).max() <= 0.5 / 255 + 1e-6, "the mean probability, in 1/255 steps"
    assert fractions.max() > 0.5

    heatmap = slicer.util.arrayFromVolume(heatmapNode)
    parametric = pydicom.dcmread(out / UNCERTAINTY_FILE)
    slope = parametric.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0].RealWorldValueSlope
    assert slope == pytest.approx(MAX_ENTROPY_NATS / UNCERTAINTY_LEVELS)
    stored = parametric.pixel_array.reshape(-1, parametric.Rows, parametric.Columns)
    slices = frameSlices(parametric, slab_files)
    assert np.abs(stored * slope - heatmap[slices]).max() <= slope / 2 + 1e-6
    assert not heatmap[[k for k in range(16) if k not in slices]].any(), "the map covers every uncertain slice"


@pytest.fixture
def hand_built_set(mrml_scene, slab_node, make_lesion_result):
    """A candidate set made by the logic's node builder from a hand-built result on the slab."""
    result = make_lesion_result((16, 512, 512), offset=HAND_BUILT_OFFSET)
    return AmbiguousSAMLogic().createOutputNodes(slab_node, result)


def test_a_volume_that_did_not_come_from_dicom_is_refused(mrml_scene, oblique_volume, make_lesion_result,
                                                          tmp_path) -> None:
    segmentationNode, heatmapNode = AmbiguousSAMLogic().createOutputNodes(oblique_volume,
                                                                         make_lesion_result(OBLIQUE_SHAPE))
    before = sceneState(mrml_scene)
    with pytest.raises(DicomSourceError, match="was not loaded from DICOM.*Load the CT through the DICOM module "
                                               "to export DICOM"):
        exportCandidateSetToDicom(segmentationNode, heatmapNode, oblique_volume, tmp_path / "dicom")
    # Loaded by the DICOM module, but its database is not there (this headless scene has none).
    oblique_volume.SetAttribute(INSTANCE_UIDS_ATTRIBUTE, " ".join(pydicom.uid.generate_uid() for _ in range(24)))
    before = sceneState(mrml_scene)
    with pytest.raises(DicomSourceError, match="DICOM database is not open"):
        exportCandidateSetToDicom(segmentationNode, heatmapNode, oblique_volume, tmp_path / "dicom")
    assert sceneState(mrml_scene) == before and not list(tmp_path.iterdir())


def shifted_copy(folder: Path, files: list[str], millimetres: float, new_uids: bool) -> list[str]:
    """The slab's files moved along the slice normal (another series' geometry), optionally as new images."""
    folder.mkdir()
    copies = []
    for path in files:
        dataset = pydicom.dcmread(path)
        position = [float(v) for v in dataset.ImagePositionPatient]
        dataset.ImagePositionPatient = [position[0], position[1], position[2] + millimetres]
        if new_uids:
            dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        dataset.save_as(folder / Path(path).name)
        copies.append(str(folder / Path(path).name))
    return copies


@pytest.mark.parametrize("problem, error, message", [
    ("folder not empty", OutputFolderError, "is not empty \\(notes.txt\\).*choose an empty folder"),
    ("folder is a file", OutputFolderError, "is a file; choose a folder"),
    ("folder holds the images", OutputFolderError, "holds the CT's own DICOM images"),
    ("a slice missing", DicomSourceError, "has 16 slices but 15 DICOM files"),
    ("other images", DicomSourceError, "not the images 'LIDC-IDRI-0001 slab' was loaded from"),
    ("another geometry", DicomSourceError, "does not lie on slice 0 of 'LIDC-IDRI-0001 slab'"),
    ("another lesion's heatmap", CandidateSetError, "is not the uncertainty of"),
    ("no consensus", CandidateSetError, "holds 4 candidates and 0 consensus segments"),
    ("no score", CandidateSetError, "has no score"),
    ("another lesion's probability", CandidateSetError, "is not that of the heatmap"),
    ("probability off the grid", CandidateSetError, "is not on the grid of 'LIDC-IDRI-0001 slab'"),
    ("probability under a transform", CandidateSetError, "are under different transforms"),
    ("probability above 1", CandidateSetError, "holds values outside 0..1"),
])
def test_refusals_change_neither_the_scene_nor_the_folder(mrml_scene, slab_node, slab_files, hand_built_set,
                                                          make_lesion_result, tmp_path, problem, error,
                                                          message) -> None:
    segmentationNode, heatmapNode = hand_built_set
    folder, files, overwrite = tmp_path / "dicom", slab_files, False
    if problem == "folder not empty":
        folder.mkdir()
        (folder / "notes.txt").write_text("the user's notes")
    elif problem == "folder is a file":
        folder.write_text("a file where the folder should go")
    elif problem == "folder holds the images":
        files = [str(shutil.copy(path, tmp_path / Path(path).name)) for path in slab_files]
        folder, overwrite = tmp_path, True
    elif problem == "a slice missing":
        files = slab_files[1:]
    elif problem == "other images":
        files = shifted_copy(tmp_path / "other", slab_files, 0.0, new_uids=True)
    elif problem == "another geometry":
        files = shifted_copy(tmp_path / "moved", slab_files, 2.5, new_uids=False)
        slab_node.RemoveAttribute(INSTANCE_UIDS_ATTRIBUTE)  # a volume read from files: only its geometry can tell
    elif problem == "another lesion's heatmap":
        _, heatmapNode = AmbiguousSAMLogic().createOutputNodes(
            slab_node, make_lesion_result((16, 512, 512), offset=(3, 100, 100)))
    elif problem == "no consensus":
        segmentation = segmentationNode.GetSegmentation()
        segmentation.RemoveSegment(segmentIdsWithRole(segmentationNode, CONSENSUS_ROLE)[0])
    elif problem == "no score":
        segmentation = segmentationNode.GetSegmentation()
        segmentation.GetSegment(segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE)[2]).RemoveTag(SCORE_TAG)
    elif problem == "another lesion's probability":
        other, _ = AmbiguousSAMLogic().createOutputNodes(
            slab_node, make_lesion_result((16, 512, 512), offset=(3, 100, 100)))
        segmentationNode.SetNodeReferenceID(PROBABILITY_REFERENCE_ROLE, candidateSetProbability(other).GetID())
    elif problem == "probability off the grid":
        probabilityNode = candidateSetProbability(segmentationNode)
        matrix = ijkToRasMatrix(probabilityNode)
        matrix[:3, 3] += 0.5 * matrix[:3, 0]  # half a voxel along i
        probabilityNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
    elif problem == "probability under a transform":
        transformNode = mrml_scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        candidateSetProbability(segmentationNode).SetAndObserveTransformNodeID(transformNode.GetID())
    elif problem == "probability above 1":
        probabilityNode = candidateSetProbability(segmentationNode)
        slicer.util.arrayFromVolume(probabilityNode)[:] *= 2
        slicer.util.arrayFromVolumeModified(probabilityNode)
    before, onDisk = sceneState(mrml_scene), snapshot(tmp_path)
    with pytest.raises(error, match=message) as raised:
        exportCandidateSetToDicom(segmentationNode, heatmapNode, slab_node, folder, sourceFiles=files,
                                  overwrite=overwrite)
    assert isinstance(raised.value, AmbiguousSAMError)
    assert sceneState(mrml_scene) == before
    assert snapshot(tmp_path) == onDisk, "nothing was written, nothing removed"


def test_a_hand_built_set_exports_its_exact_arrays(mrml_scene, slab_node, slab_files, make_lesion_result,
                                                   tmp_path) -> None:
    """The result read back from the scene is the result the nodes were made from (on the slab's grid)."""
    result = make_lesion_result((16, 512, 512), offset=HAND_BUILT_OFFSET)
    segmentationNode, heatmapNode = AmbiguousSAMLogic().createOutputNodes(slab_node, result)
    out = exportCandidateSetToDicom(segmentationNode, heatmapNode, slab_node, tmp_path / "dicom",
                                    sourceFiles=slab_files).folder
    pixels = hd.seg.segread(out / SEGMENTATION_FILE).get_pixels_by_source_instance(
        instanceUids(slab_files), segment_numbers=[1, 2, 3, 4, 5])
    expected = np.concatenate([result.paste(result.candidates), result.paste(result.consensus)[None]])
    np.testing.assert_array_equal(np.moveaxis(pixels, -1, 0).astype(bool), expected)
    fractions = hd.seg.segread(out / PROBABILITY_FILE).get_pixels_by_source_instance(
        instanceUids(slab_files), segment_numbers=[1])[..., 0]
    assert np.abs(fractions - result.paste(result.mean_probability)).max() <= 0.5 / 255 + 1e-6


@pytest.mark.parametrize("how", ["its volume deleted", "loaded from a .seg.nrrd"])
def test_a_set_without_its_mean_probability_exports_the_other_three_and_says_why(
        mrml_scene, slab_node, slab_files, hand_built_set, tmp_path, how) -> None:
    segmentationNode, heatmapNode = hand_built_set
    if how == "its volume deleted":
        mrml_scene.RemoveNode(candidateSetProbability(segmentationNode))
    else:  # what `segment` writes, opened in Slicer: segments and tags only
        storageNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
        storageNode.SetFileName(str(tmp_path / "candidates.seg.nrrd"))
        assert storageNode.WriteData(segmentationNode)
        segmentationNode = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Loaded candidates")
        assert storageNode.ReadData(segmentationNode)
    assert candidateSetProbability(segmentationNode) is None
    before = sceneState(mrml_scene)
    exported = exportCandidateSetToDicom(segmentationNode, heatmapNode, slab_node, tmp_path / "dicom",
                                         sourceFiles=slab_files)
    assert sceneState(mrml_scene) == before
    assert isinstance(exported, DicomExport)
    assert sorted(path.name for path in exported.folder.iterdir()) == \
        sorted([SEGMENTATION_FILE, UNCERTAINTY_FILE, COLOURS_FILE]) == sorted(exported.files)
    assert list(exported.leftOut) == [PROBABILITY_FILE]
    assert f"'{segmentationNode.GetName()}' keeps no mean probability" in exported.leftOut[PROBABILITY_FILE]
    assert "run the segmentation again" in exported.leftOut[PROBABILITY_FILE]
    assert hd.seg.segread(exported.folder / SEGMENTATION_FILE).number_of_segments == 5


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian package dicom3tools; .ci/env installs it when it can)")
def test_dciodvfy_finds_no_errors_in_the_export(mrml_scene, slab_node, slab_files, hand_built_set, tmp_path) -> None:
    import subprocess

    exported = exportCandidateSetToDicom(*hand_built_set, slab_node, tmp_path / "dicom", sourceFiles=slab_files)
    out = exported.folder
    assert exported.files == DICOM_FILES, "the probability SEG too"
    for name in DICOM_FILES:
        run = subprocess.run(["dciodvfy", "-new", str(out / name)], capture_output=True, text=True, timeout=120)
        errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{name}:\n" + "\n".join(errors)
