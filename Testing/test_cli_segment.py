"""`ambiguous-sam segment`: files on the input's exact geometry, readable by SimpleITK and slicerio; batches
that survive a failing case; output folders that are never half-written or silently replaced."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.volume_io import physical_box_to_ijk, read_volume

from test_segmenter import OBLIQUE, synthetic_ct

BOX = ("28", "36", "52", "60")


@pytest.fixture(scope="module")
def oblique_ct(tmp_path_factory) -> tuple[str, sitk.Image]:
    image = synthetic_ct(OBLIQUE, (0.6, 0.8, 1.5))
    path = tmp_path_factory.mktemp("ct") / "oblique.nrrd"
    sitk.WriteImage(image, str(path))
    return str(path), image


@pytest.fixture(scope="module")
def segmented(oblique_ct, tmp_path_factory):
    path, image = oblique_ct
    out = tmp_path_factory.mktemp("runs") / "first"
    assert main(["segment", path, "--box", *BOX, "--slice", "6", "--samples", "4", "--seed", "1", "-o", str(out)]) == 0
    return out, image


def same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-6)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-6)


def test_outputs_are_complete_and_on_the_ct_geometry(segmented) -> None:
    out, image = segmented
    assert sorted(p.name for p in out.iterdir()) == ["candidates.seg.nrrd", "montage.png", "summary.json",
                                                     "uncertainty.nrrd"]
    heat = sitk.ReadImage(str(out / "uncertainty.nrrd"))
    same_geometry(heat, image)
    assert heat.GetPixelID() == sitk.sitkFloat32 and sitk.GetArrayFromImage(heat).max() > 0
    summary = json.loads((out / "summary.json").read_text())
    volumes = [c["volume_mm3"] for c in summary["candidates"]]
    # A candidate may be empty ("this rater would not mark it" is part of what the head learned), but the set
    # as a whole must find the lesion.
    assert len(volumes) == 4 and min(volumes) >= 0 and max(volumes) > 0


def test_segmentation_reads_back_with_slicerio_on_the_ct_grid(segmented) -> None:
    import slicerio

    out, image = segmented
    segmentation = slicerio.read_segmentation(str(out / "candidates.seg.nrrd"))
    names = [s["name"] for s in segmentation["segments"]]
    assert names == ["Candidate 1", "Candidate 2", "Candidate 3", "Candidate 4", "Consensus"]
    # The file stores the lesion box; its voxel (0, 0, 0) must sit on a voxel of the CT grid.
    ijk_to_lps = np.asarray(segmentation["ijkToLPS"])
    first = image.TransformPhysicalPointToContinuousIndex(tuple(ijk_to_lps[:3, 3]))
    np.testing.assert_allclose(first, np.round(first), atol=1e-4)
    np.testing.assert_allclose(ijk_to_lps[:3, :3], np.array(image.GetDirection()).reshape(3, 3) * image.GetSpacing(),
                               atol=1e-6)
    consensus = slicerio.extract_segments(segmentation, [("Consensus", 1)])["voxels"]
    truth = sitk.GetArrayFromImage(image).transpose(2, 1, 0) == 30  # (i, j, k)
    offset = np.round(first).astype(int)
    placed = np.zeros(truth.shape, bool)
    placed[tuple(slice(o, o + s) for o, s in zip(offset, consensus.shape))] = consensus > 0
    assert 2 * (placed & truth).sum() / (placed.sum() + truth.sum()) > 0.6


def test_same_seed_writes_identical_files(oblique_ct, segmented, tmp_path) -> None:
    path, _ = oblique_ct
    out, _ = segmented
    again = tmp_path / "again"
    assert main(["segment", path, "--box", *BOX, "--slice", "6", "--samples", "4", "--seed", "1", "-o", str(again)]) == 0
    for name in ("candidates.seg.nrrd", "uncertainty.nrrd"):
        a = sitk.GetArrayFromImage(sitk.ReadImage(str(out / name)))
        b = sitk.GetArrayFromImage(sitk.ReadImage(str(again / name)))
        np.testing.assert_array_equal(a, b)


def test_physical_box_matches_voxel_box(oblique_ct) -> None:
    _, image = oblique_ct
    corner_a = image.TransformContinuousIndexToPhysicalPoint((28.0, 36.0, 6.0))
    corner_b = image.TransformContinuousIndexToPhysicalPoint((52.0, 60.0, 6.0))
    box, k = physical_box_to_ijk(image, corner_a, corner_b, "LPS")
    assert k == 6
    ras = [(-a[0], -a[1], a[2]) for a in (corner_a, corner_b)]
    box_ras, k_ras = physical_box_to_ijk(image, *ras, space="RAS")
    np.testing.assert_allclose(box, box_ras)
    # The axis-aligned physical box around two oblique corners covers at least the voxel box.
    assert box[0] <= 28 + 1e-6 and box[1] <= 36 + 1e-6 and box[2] >= 52 - 1e-6 and box[3] >= 60 - 1e-6


def test_existing_output_is_not_replaced_and_failures_leave_nothing(oblique_ct, segmented, tmp_path, capsys) -> None:
    path, _ = oblique_ct
    out, _ = segmented
    before = (out / "summary.json").read_text()
    assert main(["segment", path, "--box", *BOX, "--slice", "6", "-o", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    failed = tmp_path / "failed"
    assert main(["segment", path, "--box", "500", "500", "520", "520", "--slice", "6", "-o", str(failed)]) == 2
    assert not failed.exists() and not list(tmp_path.glob(".failed*"))


def test_batch_skips_a_failing_case_and_finishes_the_others(oblique_ct, tmp_path, capsys) -> None:
    path, _ = oblique_ct
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice,samples\n"
                    f"{path},ok,28,36,52,60,6,2\n"
                    f"{tmp_path / 'missing.nrrd'},bad,28,36,52,60,6,2\n")
    with pytest.raises(SystemExit, match="1 of 2 cases failed"):
        main(["segment", "--batch", str(jobs)])
    assert (tmp_path / "ok" / "candidates.seg.nrrd").is_file() and not (tmp_path / "bad").exists()
    assert "missing.nrrd: skipped" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [(b"not an image", "Could not read"), (None, "does not exist")])
def test_unreadable_inputs(tmp_path, content, message: str) -> None:
    from AmbiguousSAMLib.errors import InvalidImageError

    path = tmp_path / "broken.nrrd"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InvalidImageError, match=message):
        read_volume(path)


def test_2d_file_is_refused(tmp_path) -> None:
    from AmbiguousSAMLib.errors import InvalidImageError

    path = tmp_path / "slice.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((32, 32), np.int16)), str(path))
    with pytest.raises(InvalidImageError, match="2D image"):
        read_volume(path)
