"""Whole-nodule evaluation (nodule_evaluation.py): the click a user would make, 3D scores against the raters who
marked the nodule, and candidates drawn as a click on a volume draws them, on real LIDC validation nodules."""

from __future__ import annotations

import json

import numpy as np
import pytest

from AmbiguousSAMLib import metrics
from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.nodule_evaluation import clicked_slice, nodule_groups, score_nodule

from conftest import LIDC_VAL_CROPS


def test_nodules_are_grouped_per_patient_and_ordered_by_slice() -> None:
    patient = np.array(["A", "A", "B", "A", "A"])
    nodule = np.array([0, 0, 0, 1, 0])
    slice_index = np.array([2, 0, 0, 0, 1])
    groups = nodule_groups(patient, nodule, slice_index)
    assert [g.tolist() for g in groups] == [[1, 4, 0], [2], [3]]


def test_the_click_is_on_the_slice_most_raters_marked_then_the_largest() -> None:
    raters = np.zeros((3, 4, 8, 8), bool)
    raters[0, :2, 2:7, 2:7] = True  # two raters, large
    raters[1, :3, 3:5, 3:5] = True  # three raters, small
    raters[2, :3, 2:6, 2:6] = True  # three raters, larger: the click
    assert clicked_slice(raters) == 2


def test_a_rater_who_marked_none_of_the_nodule_is_not_scored_against() -> None:
    rng = np.random.default_rng(0)
    raters = rng.random((4, 3, 16, 16)) > 0.5
    raters[3] = False  # this radiologist did not mark the nodule at all
    candidates = np.concatenate([raters[:3]] * 5 + [raters[:1]])  # 16 candidates that are the three outlines
    score = score_nodule(candidates, raters, contrast=0.5)
    assert score.raters == 3
    assert score.ged == pytest.approx(metrics.generalized_energy_distance(candidates, raters[:3]))
    assert score.ged < 0.05 < metrics.generalized_energy_distance(candidates, raters)
    assert score.candidate_slices == score.rater_slices == 3


@pytest.fixture(scope="module")
def two_nodules(tmp_path_factory):
    """The first two multi-slice val nodules as their own crop file (real crops, all their keys)."""
    if not LIDC_VAL_CROPS.is_file():
        pytest.skip(f"LIDC crops are not at {LIDC_VAL_CROPS} (shared data absent in this checkout)")
    with np.load(LIDC_VAL_CROPS) as data:
        arrays = {key: data[key] for key in ("images", "masks", "patient", "nodule", "slice")}
    groups = [g for g in nodule_groups(arrays["patient"], arrays["nodule"], arrays["slice"]) if 3 <= len(g) <= 4][:2]
    rows = np.concatenate(groups)
    path = tmp_path_factory.mktemp("nodules") / "two.npz"
    np.savez(path, **{key: value[rows] for key, value in arrays.items()})
    return path


def test_evaluate_nodules_scores_every_method_on_every_nodule(two_nodules, tmp_path) -> None:
    out = tmp_path / "nodules.json"
    argv = ["evaluate", "--nodules", "--data", str(two_nodules), "--samples", "4", "--seed", "0",
            "--methods", "heads", "deterministic", "--cache", str(tmp_path / "cache"), "--json", str(out)]
    assert main(argv) == 0
    summary = json.loads(out.read_text())
    assert summary["unit"] == "nodule" and set(summary["methods"]) == {"probabilistic_sam_hypernetwork", "deterministic"}
    for scores in summary["methods"].values():
        assert scores["nodules"] == 2 and 0 <= scores["ged"] <= 2 and 0 <= scores["hm_iou"] <= 1
        assert 1 <= scores["candidate_slices"] <= 4 and 1 <= scores["rater_slices"] <= 4  # nodules of 3-4 slices
    # The deterministic prediction is one outline repeated: no spread, so its GED is at least the raters' own.
    assert summary["methods"]["deterministic"]["ged"] > summary["methods"]["probabilistic_sam_hypernetwork"]["ged"]
    again = tmp_path / "again.json"
    assert main(argv[:-1] + [str(again)]) == 0  # same seed, cached embeddings: the same numbers
    assert json.loads(again.read_text())["methods"] == summary["methods"]


def test_latent_candidates_all_mark_the_clicked_slice(two_nodules) -> None:
    import torch

    from AmbiguousSAMLib.heads.checkpoint import load_head
    from AmbiguousSAMLib.nodule_evaluation import nodule_candidates
    from AmbiguousSAMLib.predictor import Predictor
    from AmbiguousSAMLib.preprocessing import ModelFrame

    with np.load(two_nodules) as data:
        images, masks = data["images"][:3], data["masks"][:3]
    predictor = Predictor(device="cpu", precision="bf16", window=None)
    frame = ModelFrame.for_image(images.shape[1:], predictor.backbone.image_size)
    inputs = [predictor.prepare(image)[0] for image in images]
    embeddings = [predictor.encode(model_input) for model_input in inputs]
    boxes = [torch.from_numpy(frame.box_to_model(metrics.protocol_box(m)))[None] for m in masks]
    clicked = clicked_slice(masks)
    candidates = nodule_candidates(load_head(predictor.backbone), embeddings, boxes, inputs, clicked, 8, 3,
                                   frame.logits_to_image)
    assert candidates.shape == (8, 3, *images.shape[1:])
    assert candidates[:, clicked].reshape(8, -1).any(axis=1).all()


def test_slice_options_are_refused_with_nodules(capsys) -> None:
    assert main(["evaluate", "--nodules", "--data", "absent.npz", "--limit", "5"]) == 2
    assert "--nodules scores whole nodules, and --limit applies only to slices" in capsys.readouterr().err
