"""AmbiguousSAMLogic end to end: prompts from the scene, failures that leave the scene alone, the real model on LIDC.

The last tests run the real LesionSegmenter (AmbiguousSAMLib.segmenter) in this process on the LIDC-IDRI-0001 demo
CT (the `segmenter=` path of scripts that hold a model): the model is loaded once for the module. The same logic
through the inference server is tested in test_mrml_session.py.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import slicer

from AmbiguousSAMLib.errors import CancelledError, InvalidBoxError, InvalidImageError
from AmbiguousSAMLogic import BACKBONE_CHOICES, AmbiguousSAMLogic, ModelSettings, missingPackages
from AmbiguousSAMLogic.geometry import ijkToRasMatrix
from AmbiguousSAMLogic.rollback import nodeIds

MODULE_DIR = Path(__file__).resolve().parents[1] / "AmbiguousSAM"
#: The LIDC-IDRI-0001 nodule spans k = 86..93, i ~ 298..336, j ~ 341..388 (shared/data/README.md).
NODULE_SLICE = 89
NODULE_BOX_IJK = ((293.0, 336.0), (341.0, 393.0))


def roiOverIjkBox(scene, volumeNode, low: np.ndarray, high: np.ndarray):
    """An ROI aligned with the volume's axes covering the continuous IJK box [low, high]."""
    ijkToRas = ijkToRasMatrix(volumeNode)
    spacing = np.linalg.norm(ijkToRas[:3, :3], axis=0)
    objectToNode = np.eye(4)
    objectToNode[:3, :3] = ijkToRas[:3, :3] / spacing
    objectToNode[:3, 3] = (ijkToRas @ np.append((low + high) / 2, 1.0))[:3]
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "Lesion ROI")
    roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(objectToNode))
    roi.SetSize(*((high - low) * spacing))
    return roi


def test_prompt_from_an_roi_is_a_copy_of_the_lesion_s_block_with_the_box_and_slice(mrml_scene, oblique_volume):
    roi = roiOverIjkBox(mrml_scene, oblique_volume, np.array([10.0, 5.0, 11.0]), np.array([30.0, 25.0, 13.0]))
    region = AmbiguousSAMLogic().preparePrompt(oblique_volume, roi)
    np.testing.assert_allclose(region.box, (10.0, 5.0, 30.0, 25.0), atol=1e-4)
    assert region.slice_k == 12
    assert region.spacing == pytest.approx((0.7, 0.9, 2.5))
    voxels = slicer.util.arrayFromVolume(oblique_volume)
    assert region.volume_shape == voxels.shape and region.fill == voxels.min()
    (k0, j0, i0), (dk, dj, di) = region.offset, region.voxels.shape
    assert dk < voxels.shape[0], "only the slices the lesion can reach are copied"
    np.testing.assert_array_equal(region.voxels, voxels[k0:k0 + dk, j0:j0 + dj, i0:i0 + di])
    assert not np.shares_memory(region.voxels, voxels)


def test_prompt_from_rectangle_corners_drawn_on_a_slice(oblique_volume, oblique_ijk_to_ras):
    """A rectangle on slice 11, over the edge of the volume's ball (a box over nothing but lung is refused)."""
    corners = np.array([[12.0, 8.0, 11.0, 1.0], [31.0, 8.0, 11.0, 1.0], [31.0, 22.5, 11.0, 1.0],
                        [12.0, 22.5, 11.0, 1.0]])
    region = AmbiguousSAMLogic().preparePrompt(oblique_volume, (corners @ oblique_ijk_to_ras.T)[:, :3])
    np.testing.assert_allclose(region.box, (12.0, 8.0, 31.0, 22.5), atol=1e-9)
    assert region.slice_k == 11


@pytest.mark.parametrize("box, message", [
    (None, "No ROI is selected"),
    (np.zeros((1, 3)), "two or more finite RAS points"),
    (np.zeros((4, 2)), "two or more finite RAS points"),
    (np.array([[0.0, 0.0, np.nan], [1.0, 1.0, 1.0]]), "two or more finite RAS points"),
])
def test_malformed_boxes_are_refused_with_a_clear_message(oblique_volume, box, message):
    with pytest.raises(InvalidBoxError, match=message):
        AmbiguousSAMLogic().preparePrompt(oblique_volume, box)


def test_a_missing_or_non_scalar_volume_is_refused(mrml_scene):
    logic = AmbiguousSAMLogic()
    with pytest.raises(InvalidImageError, match="No input volume"):
        logic.preparePrompt(None, np.zeros((2, 3)))
    segmentation = mrml_scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Not a CT")
    with pytest.raises(InvalidImageError, match="select a scalar volume"):
        logic.preparePrompt(segmentation, np.zeros((2, 3)))


def test_an_roi_off_the_volume_fails_before_the_model_and_adds_nothing(mrml_scene, oblique_volume):
    roi = roiOverIjkBox(mrml_scene, oblique_volume, np.array([60.0, 5.0, 6.0]), np.array([80.0, 25.0, 8.0]))
    before = nodeIds(mrml_scene)
    with pytest.raises(InvalidBoxError, match="does not intersect"):
        AmbiguousSAMLogic().process(oblique_volume, roi)
    assert nodeIds(mrml_scene) == before


def test_a_run_cancelled_before_it_starts_adds_nothing(mrml_scene, oblique_volume):
    roi = roiOverIjkBox(mrml_scene, oblique_volume, np.array([10.0, 5.0, 11.0]), np.array([30.0, 25.0, 13.0]))
    cancel = threading.Event()
    cancel.set()
    before = nodeIds(mrml_scene)
    with pytest.raises(CancelledError, match="nothing was added"):
        AmbiguousSAMLogic().process(oblique_volume, roi, cancel=cancel)
    assert nodeIds(mrml_scene) == before


def test_this_environment_has_every_package_the_module_installs_in_slicer():
    assert missingPackages() == []


def test_model_choices_and_defaults_follow_the_core():
    from AmbiguousSAMLib.modeling.backbone import BACKBONES
    from AmbiguousSAMLib.segmenter import LesionSegmenter

    assert BACKBONE_CHOICES == tuple(BACKBONES)
    defaults = inspect.signature(LesionSegmenter).parameters
    assert ModelSettings().precision == defaults["precision"].default
    assert ModelSettings().runtime == defaults["runtime"].default
    assert ModelSettings(runtime="torch").modelOptions()["runtime"] == "torch"  # a change starts a new server


def test_the_logic_does_not_import_torch():
    """Inside Slicer the GUI process may not have PyTorch (the server process does): the MRML layer must load."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import AmbiguousSAMLogic; "
            "assert 'torch' not in sys.modules, sorted(name for name in sys.modules if name.startswith('torch'))")
    completed = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True)
    assert completed.returncode == 0, completed.stderr[-2000:]


# --- The real model on the LIDC-IDRI demo CT ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lidc_segmenter():
    """One in-process model for the file, loaded once."""
    from AmbiguousSAMLib.segmenter import LesionSegmenter

    return LesionSegmenter()


@pytest.fixture
def nodule_roi(mrml_scene, lidc_ct_node):
    (i0, i1), (j0, j1) = NODULE_BOX_IJK
    return roiOverIjkBox(mrml_scene, lidc_ct_node, np.array([i0, j0, NODULE_SLICE - 0.4]),
                         np.array([i1, j1, NODULE_SLICE + 0.4]))


def raterUnion(lidc_ct_path) -> np.ndarray:
    import SimpleITK as sitk

    raters = sorted((lidc_ct_path.parent / "nodule-1").glob("rater-*.nrrd"))
    assert len(raters) == 4
    return np.any([sitk.GetArrayFromImage(sitk.ReadImage(str(path))) > 0 for path in raters], axis=0)


def test_end_to_end_on_the_lidc_demo_ct(mrml_scene, lidc_ct_node, lidc_ct_path, nodule_roi, lidc_segmenter):
    progress = []
    before = nodeIds(mrml_scene)
    segmentationNode, heatmapNode = AmbiguousSAMLogic().process(
        lidc_ct_node, nodule_roi, samples=4, seed=0, segmenter=lidc_segmenter,
        progress=lambda fraction, message: progress.append(fraction))
    assert nodeIds(mrml_scene)[:len(before)] == before
    assert progress and all(0.0 <= fraction <= 1.0 for fraction in progress)

    segmentation = segmentationNode.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 5
    assert segmentation.GetSegment(segmentation.GetNthSegmentID(4)).GetName() == "Consensus"
    np.testing.assert_allclose(ijkToRasMatrix(heatmapNode), ijkToRasMatrix(lidc_ct_node), atol=1e-9)
    assert slicer.util.arrayFromVolume(heatmapNode).shape == (133, 512, 512)

    consensus = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(4),
                                                           lidc_ct_node) > 0
    assert consensus[NODULE_SLICE].any(), "the consensus must cover the slice the box was drawn on"
    inExperts = (consensus & raterUnion(lidc_ct_path)).sum() / consensus.sum()
    assert inExperts >= 0.5, f"only {inExperts:.0%} of the consensus lies inside any expert's outline"


def test_cancelling_a_real_run_leaves_the_scene_unchanged(mrml_scene, lidc_ct_node, nodule_roi, lidc_segmenter):
    cancel = threading.Event()
    before = nodeIds(mrml_scene)
    with pytest.raises(CancelledError):
        AmbiguousSAMLogic().process(lidc_ct_node, nodule_roi, samples=4, segmenter=lidc_segmenter, cancel=cancel,
                                    progress=lambda fraction, message: cancel.set())
    assert nodeIds(mrml_scene) == before
