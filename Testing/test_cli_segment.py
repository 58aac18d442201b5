"""`ambiguous-sam segment`: files on the input's exact geometry, readable by SimpleITK and slicerio; batches
that survive a failing case; output folders that are never half-written or silently replaced, and in which
--overwrite replaces only the four outputs, never the input or anything else of the user's; output problems are
refused before the model is loaded."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio

from AmbiguousSAMLib.candidate_table import best_first
from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.heads.scorer_checkpoint import DEFAULT_SCORER
from AmbiguousSAMLib.outputs import OUTPUT_FILES, write_outputs
from AmbiguousSAMLib.review_flag import REVIEW_THRESHOLD, ReviewFlag, review_order
from AmbiguousSAMLib.volume_io import physical_box_to_ijk, read_volume

from test_segmenter import OBLIQUE, synthetic_ct

MODULE_DIR = Path(__file__).resolve().parents[1] / "AmbiguousSAM"

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
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # a new folder's usual permissions, not mkdtemp's 0700
    heat = sitk.ReadImage(str(out / "uncertainty.nrrd"))
    same_geometry(heat, image)
    assert heat.GetPixelID() == sitk.sitkFloat32 and sitk.GetArrayFromImage(heat).max() > 0
    summary = json.loads((out / "summary.json").read_text())
    volumes = [c["volume_mm3"] for c in summary["candidates"]]
    # A candidate may be empty ("this rater would not mark it" is part of what the head learned), but the set
    # as a whole must find the lesion.
    assert len(volumes) == 4 and min(volumes) >= 0 and max(volumes) > 0


def test_segmentation_reads_back_with_slicerio_on_the_ct_grid(segmented) -> None:
    out, image = segmented
    segmentation = slicerio.read_segmentation(str(out / "candidates.seg.nrrd"))
    names = [s["name"] for s in segmentation["segments"]]
    assert names == ["Candidate 1", "Candidate 2", "Candidate 3", "Candidate 4", "Consensus"]
    # Slicer's module recognises the file by these tags (role) and shows each candidate's score.
    tags = [s["tags"] for s in segmentation["segments"]]
    assert [t["AmbiguousSAM.Role"] for t in tags] == ["candidate"] * 4 + ["consensus"]
    scores = [c["score"] for c in json.loads((out / "summary.json").read_text())["candidates"]]
    assert [np.float32(t["AmbiguousSAM.Score"]) for t in tags[:4]] == [np.float32(s) for s in scores]
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
    # Placement, not outline quality (test_segmenter's synthetic test says why): the read-back consensus sits on
    # the ball, centred on it, and inside it on the clicked slice. A Dice with the ball graded the 4 candidates'
    # sizes instead (0.47-0.82 over seeds 0-2 for the shipped heads).
    centre_mm = [np.array(np.nonzero(mask)).mean(axis=1) * np.array(image.GetSpacing()) for mask in (placed, truth)]
    precision = (placed[:, :, 6] & truth[:, :, 6]).sum() / max(placed[:, :, 6].sum(), 1)
    assert np.linalg.norm(centre_mm[0] - centre_mm[1]) < 2.0 and precision > 0.9


def test_summary_and_segment_tags_hold_each_candidates_expected_quality_and_the_review_flag(segmented) -> None:
    out, _ = segmented
    summary = json.loads((out / "summary.json").read_text())
    quality = [c["expected_quality"] for c in summary["candidates"]]
    typicality = [c["score"] for c in summary["candidates"]]
    assert all(0 <= q <= 1 for q in quality) and summary["scorer"] == DEFAULT_SCORER.name
    assert summary["candidates_best_first"] == [f"Candidate {i + 1}" for i in best_first(typicality, quality)]
    assert quality[int(summary["candidates_best_first"][0].split()[1]) - 1] == max(quality)
    review = summary["review"]
    assert review["threshold"] == REVIEW_THRESHOLD and "clicked slice" in review["rule"]
    assert review["state"] == ("needs review" if review["predicted_disagreement"] >= REVIEW_THRESHOLD
                               else "no review needed")
    tags = [s["tags"] for s in slicerio.read_segmentation(str(out / "candidates.seg.nrrd"))["segments"]]
    assert [np.float32(t["AmbiguousSAM.ExpectedQuality"]) for t in tags[:4]] == [np.float32(q) for q in quality]
    assert tags[4]["AmbiguousSAM.Review"] == review["state"]
    assert np.float32(tags[4]["AmbiguousSAM.ExpertDisagreement"]) == np.float32(review["predicted_disagreement"])


@pytest.mark.parametrize("option", [["--no-scorer"], ["--scorer", "{tmp}/no-such-scorer.pt"]])
def test_without_a_scorer_the_run_succeeds_and_the_flag_is_not_available(oblique_ct, tmp_path, option) -> None:
    path, _ = oblique_ct
    option = [value.format(tmp=tmp_path) for value in option]
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        assert main(["segment", path, "--box", *BOX, "--slice", "6", "--samples", "2", "-o", str(tmp_path / "out"),
                     *option]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["review"]["state"] == "not available" and summary["review"]["predicted_disagreement"] is None
    assert all(c["expected_quality"] is None for c in summary["candidates"]) and summary["scorer"] is None
    scorer_warnings = [w for w in warned if "without the UncertainSAM scorer" in str(w.message)]
    assert len(scorer_warnings) == (1 if option[0] == "--scorer" else 0)
    tags = [s["tags"] for s in slicerio.read_segmentation(str(tmp_path / "out" / "candidates.seg.nrrd"))["segments"]]
    assert "AmbiguousSAM.ExpectedQuality" not in tags[0] and tags[-1]["AmbiguousSAM.Review"] == "not available"
    assert "AmbiguousSAM.ExpertDisagreement" not in tags[-1]


def test_the_batch_table_lists_flagged_lesions_first_and_is_written_as_csv(oblique_ct, tmp_path, capsys) -> None:
    path, _ = oblique_ct
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice,samples\n"
                    f"{path},nodule,28,36,52,60,6,2\n{path},edge,30,38,50,58,4,2\n{path},top,32,40,48,56,8,2\n")
    assert main(["segment", "--batch", str(jobs), "--review-table", str(tmp_path / "review.csv")]) == 0
    flags = {row: ReviewFlag.from_dict(json.loads((tmp_path / row / "summary.json").read_text())["review"])
             for row in ("nodule", "edge", "top")}
    with open(tmp_path / "review.csv", newline="") as handle:
        written = list(csv.DictReader(handle))
    listed = [Path(row["out"]).name for row in written]
    names = list(flags)
    assert listed == [names[index] for index in review_order(list(flags.values()))]
    assert [row["review"] for row in written] == [flags[name].state for name in listed]
    # On this CT the nodule's centre slice is not flagged and its edge slice is: the table must put the edge first.
    assert not flags["nodule"].needs_review and flags["edge"].needs_review and listed[0] != "nodule"
    printed = capsys.readouterr().out.split("Lesions to review first")[1].splitlines()[2:]
    assert [line.split()[:2] for line in printed[:3]] == [row["review"].split()[:2] for row in written]
    assert [line.split()[-4] for line in printed[:3]] == [row["out"] for row in written]
    assert printed[3] == f"wrote {tmp_path / 'review.csv'}"
    assert main(["segment", "--batch", str(jobs), "--review-table", str(tmp_path / "review.csv")]) == 2, \
        "an existing table is not replaced without --overwrite"


@pytest.mark.parametrize("target", ["the batch file", "the CT"])
def test_the_review_table_never_replaces_an_input_even_with_overwrite(oblique_ct, tmp_path, capsys, target) -> None:
    path, _ = oblique_ct
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"input,out,i0,j0,i1,j1,slice,samples\n{path},nodule,28,36,52,60,6,2\n")
    table = jobs if target == "the batch file" else Path(path)
    before = table.read_bytes()
    assert main(["segment", "--batch", str(jobs), "--review-table", str(table), "--overwrite"]) == 2
    assert "is an input of this run" in capsys.readouterr().err
    assert table.read_bytes() == before and not (tmp_path / "nodule").exists()


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
    assert "already holds a result" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before
    failed = tmp_path / "failed"
    assert main(["segment", path, "--box", "500", "500", "520", "520", "--slice", "6", "-o", str(failed)]) == 2
    assert not failed.exists() and not list(tmp_path.glob(".failed*"))


@pytest.mark.parametrize("existing", [False, True])
def test_a_write_that_fails_midway_removes_only_its_own_temporary_folder(oblique_ct, segmented, tmp_path, monkeypatch,
                                                                        make_lesion_result, existing) -> None:
    """write_outputs' one rmtree is of the staging folder mkdtemp made for that call: a failure while writing a
    new result or replacing one leaves the user's neighbouring files and the earlier result exactly as they were."""
    import AmbiguousSAMLib.outputs as outputs

    path, image = oblique_ct
    (tmp_path / "notes.txt").write_text("the user's own file next to the output")
    out = tmp_path / "result"
    if existing:
        shutil.copytree(segmented[0], out)
    before = snapshot(tmp_path)
    result = make_lesion_result(tuple(reversed(image.GetSize())), offset=(2, 30, 20), radii=(3.0, 5.0))
    result.info.update(slice=5, box_ijk=(24.0, 34.0, 36.0, 44.0))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_montage", broken)  # the last of the four files fails to write
    with pytest.raises(OSError, match="disk full"):
        outputs.write_outputs(out, result, sitk.GetArrayFromImage(image), image, path, overwrite=existing)
    assert snapshot(tmp_path) == before
    assert not list(tmp_path.rglob(f"{outputs.STAGING_PREFIX}*")), "the temporary folder is gone"


def test_overwrite_replaces_the_four_outputs_in_place(oblique_ct, segmented, tmp_path, make_lesion_result) -> None:
    path, image = oblique_ct
    out = tmp_path / "previous"
    shutil.copytree(segmented[0], out)
    folder = out.stat().st_ino
    result = make_lesion_result(tuple(reversed(image.GetSize())), offset=(2, 30, 20), radii=(3.0, 5.0))
    result.info.update(slice=5, box_ijk=(24.0, 34.0, 36.0, 44.0), seed=3)
    write_outputs(out, result, sitk.GetArrayFromImage(image), image, path, overwrite=True)
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["seed"], len(summary["candidates"])) == (3, 2)
    assert len(slicerio.read_segmentation(str(out / "candidates.seg.nrrd"))["segments"]) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES), "no temporary folder is left behind"
    assert out.stat().st_ino == folder, "the folder itself is kept: only its four files are replaced"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["previous"]


def test_batch_skips_a_failing_case_and_finishes_the_others(oblique_ct, tmp_path, capsys) -> None:
    path, _ = oblique_ct
    (tmp_path / "taken").write_text("a file where a row wants its output folder")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice,samples\n"
                    f"{path},ok,28,36,52,60,6,2\n"
                    f"{tmp_path / 'missing.nrrd'},bad,28,36,52,60,6,2\n"
                    f"{path},taken,28,36,52,60,6,2\n")
    assert main(["segment", "--batch", str(jobs)]) == 2
    assert (tmp_path / "ok" / "candidates.seg.nrrd").is_file() and not (tmp_path / "bad").exists()
    assert (tmp_path / "taken").read_text() == "a file where a row wants its output folder"
    err = capsys.readouterr().err
    assert f"line 3: skipped: The input {tmp_path / 'missing.nrrd'} does not exist" in err
    assert f"The output {tmp_path / 'taken'} is a file" in err and "2 of 3 cases failed or were refused" in err


#: Bad batch rows (after a good one on line 2) and the reason each must be reported with.
BAD_ROWS = [
    ("{ct},a,abc,36,52,60,6", "'i0' is 'abc', not a number"),
    ("{ct},b,28,36,52,60", "the row has no value for slice"),
    ("{ct},c,28,36,52,60,6.5", "'slice' is '6.5', not an integer"),
    ("{ct},d,28,36,52,60,6,0", "The number of samples must be from 1 to 256; got 0"),
    ("{ct},e,28,36,52,60,6,4,-3", "The seed must be a whole number"),
    ("{ct},f,28,nan,52,60,6", "'j0' is 'nan', not a finite number"),
    ("{ct},g,28,36,52,60,6,4,0,extra", "the row has more cells than the header"),
    ("{ct},ok,28,36,52,60,6", "already written by line 2"),
    ("{missing},h,28,36,52,60,6", "The input {missing} does not exist"),
]


def test_bad_batch_rows_are_reported_with_their_lines_and_the_good_row_still_runs(oblique_ct, tmp_path,
                                                                                  capsys) -> None:
    """Issue 11: one bad row stopped the whole batch with a traceback and the good rows after it never ran."""
    path, _ = oblique_ct
    names = {"ct": path, "missing": tmp_path / "missing.nrrd"}
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice,samples,seed\n" f"{path},ok,28,36,52,60,6,2,0\n"
                    + "".join(row.format(**names) + "\n" for row, _ in BAD_ROWS))
    assert main(["segment", "--batch", str(jobs), "--samples", "2"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    reported = {int(text.split(", line ")[1].split(":")[0]): text for text in err.splitlines() if ", line " in text}
    for line, (_, reason) in enumerate(BAD_ROWS, start=3):
        assert reason.format(**names) in reported[line] and reported[line].startswith(f"{jobs}, line {line}: skipped")
    assert f"{len(BAD_ROWS)} of {len(BAD_ROWS) + 1} cases failed or were refused" in err
    assert (tmp_path / "ok" / "candidates.seg.nrrd").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["jobs.csv", "ok"], "nothing written for the bad rows"


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under the folder with its bytes and modification time: what "unchanged" means."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in folder.rglob("*") if path.is_file()}


def segment_in_fresh_process(args: list[str]) -> tuple[int, str, bool]:
    """Run `ambiguous-sam segment ARGS` in a new interpreter: exit code, stderr, and whether the segmenter (the
    model's module) was imported at all: an output problem must be refused before any model work."""
    code = "\n".join([
        "import sys",
        "from AmbiguousSAMLib.cli import main",
        "code = main(sys.argv[1:])",
        "print('segmenter imported' if 'AmbiguousSAMLib.segmenter' in sys.modules else 'no segmenter', file=sys.stderr)",
        "sys.exit(code)",
    ])
    run = subprocess.run([sys.executable, "-c", code, "segment", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(MODULE_DIR)})
    return run.returncode, run.stderr, run.stderr.splitlines()[-1:] != ["no segmenter"]


@pytest.fixture
def patient_folder(oblique_ct, tmp_path) -> Path:
    """A user's folder: the CT and a file of their own."""
    folder = tmp_path / "patient"
    folder.mkdir()
    shutil.copy(oblique_ct[0], folder / "ct.nrrd")
    (folder / "notes.txt").write_text("reader 2: nodule grew 2 mm since last year")
    return folder


def test_overwrite_into_the_folder_of_the_input_is_refused_and_deletes_nothing(patient_folder) -> None:
    before = snapshot(patient_folder)
    code, err, model_loaded = segment_in_fresh_process([str(patient_folder / "ct.nrrd"), "--box", *BOX, "--slice", "6",
                                                        "-o", str(patient_folder), "--overwrite"])
    assert code == 2 and not model_loaded
    assert f"The output folder {patient_folder} holds the input {patient_folder / 'ct.nrrd'}" in err
    assert "choose another output folder" in err and "Traceback" not in err
    assert snapshot(patient_folder) == before


def test_an_input_series_folder_is_never_its_own_output(patient_folder) -> None:
    before = snapshot(patient_folder)
    code, err, model_loaded = segment_in_fresh_process([str(patient_folder), "--box", *BOX, "--slice", "6",
                                                        "-o", str(patient_folder), "--overwrite"])
    assert code == 2 and not model_loaded and "holds the input" in err
    assert snapshot(patient_folder) == before


def test_overwrite_refuses_a_folder_holding_files_that_are_not_ours(oblique_ct, patient_folder, tmp_path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    (out / "report.docx").write_bytes(b"the user's report")
    before = snapshot(out), snapshot(patient_folder)
    code, err, model_loaded = segment_in_fresh_process([str(patient_folder / "ct.nrrd"), "--box", *BOX, "--slice", "6",
                                                        "-o", str(out), "--overwrite"])
    assert code == 2 and not model_loaded
    assert "holds files that AmbiguousSAM did not write (report.docx)" in err
    assert "--overwrite only ever replaces candidates.seg.nrrd, uncertainty.nrrd, summary.json, montage.png" in err
    assert (snapshot(out), snapshot(patient_folder)) == before


@pytest.mark.parametrize("volume, box, message", [
    ("slice", BOX, "is a 2D image with 1 component(s); AmbiguousSAM needs one 3D scalar volume"),
    ("ct", ("200", "200", "240", "240"), "lies outside the 96 x 96 slice; draw it on the lesion"),
    ("ct", ("28", "36", "52", "60", "--slice", "40"), "Slice 40 is outside the volume's"),
])
def test_a_wrong_volume_or_box_exits_before_the_model_loads(oblique_ct, tmp_path, volume, box, message) -> None:
    path, image = oblique_ct
    if volume == "slice":  # one axial slice saved on its own: a 2D file
        path = str(tmp_path / "slice.nrrd")
        sitk.WriteImage(image[:, :, 6], path)
    args = [path, "--box", *box] + ([] if "--slice" in box else ["--slice", "6"]) + ["-o", str(tmp_path / "out")]
    code, err, model_loaded = segment_in_fresh_process(args)
    assert code == 2 and not model_loaded, err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder this process cannot write into: read-only permissions, or for root (who ignores them) /sys."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").mkdir()
    except OSError:
        yield folder
    else:
        (folder / "probe").rmdir()
        if not Path("/sys").is_dir():
            pytest.skip("running as root without /sys: no folder here refuses writing")
        yield Path("/sys")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("problem", ["existing file", "inside a file", "unwritable", "previous result"])
def test_output_problems_are_refused_before_any_model_work(problem, oblique_ct, tmp_path, request) -> None:
    path, _ = oblique_ct
    if problem == "existing file":
        out, expected = tmp_path / "result.nrrd", f"The output {tmp_path / 'result.nrrd'} is a file"
        out.write_text("a file of the user's")
    elif problem == "inside a file":
        (tmp_path / "notes.txt").write_text("a file of the user's")
        out = tmp_path / "notes.txt" / "result"
        expected = f"Cannot create the output folder {out}: {tmp_path / 'notes.txt'} is a file, not a folder"
    elif problem == "unwritable":
        folder = request.getfixturevalue("unwritable_folder")
        out, expected = folder / "result", f"Cannot write into {folder} ("
    else:
        out, expected = tmp_path / "result", "already holds a result"
        out.mkdir()
        for name in OUTPUT_FILES:
            (out / name).write_text("an earlier result")
    before = snapshot(tmp_path)
    code, err, model_loaded = segment_in_fresh_process([path, "--box", *BOX, "--slice", "6", "-o", str(out)])
    assert code == 2 and not model_loaded
    assert expected in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_batch_whose_every_output_is_refused_loads_no_model(oblique_ct, tmp_path) -> None:
    path, _ = oblique_ct
    (tmp_path / "taken").write_text("a file of the user's")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"input,out,i0,j0,i1,j1,slice\n{path},taken,28,36,52,60,6\n{path},.,28,36,52,60,6\n")
    code, err, model_loaded = segment_in_fresh_process(["--batch", str(jobs)])
    assert code == 2 and not model_loaded
    assert "All 2 cases were refused" in err and "is a file" in err and "did not write (jobs.csv, taken)" in err


def test_a_batch_without_rows_says_so(tmp_path, capsys) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice\n")
    assert main(["segment", "--batch", str(jobs)]) == 2
    assert "lists no jobs" in capsys.readouterr().err


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
