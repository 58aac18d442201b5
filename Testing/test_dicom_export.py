"""DICOM in, DICOM out, on the real LIDC-IDRI-0001 DICOM slab: every object written is read back with highdicom and
with pydicom (and dcmqi where it is installed) and compared with the result it was made from, voxel for voxel on
the source grid; dciodvfy validates every file where it is installed; bad DICOM input and failed writes.

The model runs once for the module: `ambiguous-sam segment --dicom-out` on the slab, with a pass-through spy on
`write_dicom_outputs` that keeps the LesionResult it writes (the files are compared with those exact arrays).
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

import AmbiguousSAMLib.dicom_export as dicom_export
from AmbiguousSAMLib import __version__
from AmbiguousSAMLib.candidate_table import format_score
from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.dicom_export import (COLOURS_FILE, DICOM_FILES, PROBABILITY_FILE, SEGMENTATION_FILE,
                                          UNCERTAINTY_FILE, UNCERTAINTY_LEVELS, read_source_datasets,
                                          write_dicom_outputs)
from AmbiguousSAMLib.errors import AmbiguousSAMError, InvalidImageError
from AmbiguousSAMLib.heatmap_colours import INFERNO_STOPS, MAX_ENTROPY_NATS, heatmap_colour_table
from AmbiguousSAMLib.lesion import LesionResult
from AmbiguousSAMLib.outputs import OUTPUT_FILES, STAGING_PREFIX
from AmbiguousSAMLib.volume_io import Volume, read_volume
from conftest import SHARED_DATA
from test_cli_segment import segment_in_fresh_process, snapshot

SLAB = SHARED_DATA / "lidc-dicom" / "LIDC-IDRI-0001-slab"
#: The nodule of LIDC-IDRI-0001 (box and slice 89 of the whole CT; the slab starts at its slice 83).
BOX, SLICE = ("296", "338", "338", "388"), "6"
#: dcmqi's command-line tools come with its wheel, into the environment's bin folder (on PATH only once activated).
DCMQI_SEG_READER = shutil.which("segimage2itkimage",
                                path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))


@dataclass
class Exported:
    dicom: Path
    files: Path
    result: LesionResult
    volume: Volume
    sources: list[pydicom.Dataset]


@pytest.fixture(scope="module")
def slab() -> Volume:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data outside the repository, absent in a fresh clone)")
    return read_volume(SLAB)


@pytest.fixture(scope="module")
def exported(slab, tmp_path_factory) -> Exported:
    real, written = dicom_export.write_dicom_outputs, []

    def spy(out, result, *args, **kwargs):
        written.append(result)
        return real(out, result, *args, **kwargs)

    root = tmp_path_factory.mktemp("dicom-export")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dicom_export, "write_dicom_outputs", spy)
        code = main(["segment", str(SLAB), "--box", *BOX, "--slice", SLICE, "--samples", "4", "--seed", "0",
                     "-o", str(root / "files"), "--dicom-out", str(root / "dicom")])
    assert code == 0 and len(written) == 1
    return Exported(root / "dicom", root / "files", written[0], slab, read_source_datasets(slab.files))


def on_source_grid(volume: hd.Volume, image: sitk.Image) -> np.ndarray:
    """A re-read object's volume placed on the CT's voxels by its own geometry (nearest voxel; 0 outside)."""
    return sitk.GetArrayFromImage(sitk.Resample(volume.to_simpleitk(), image, sitk.Transform(),
                                                sitk.sitkNearestNeighbor, 0.0))


def segment_masks(result: LesionResult) -> np.ndarray:
    """(K + 1, nk, nj, ni): the candidates and the consensus on the full grid, in the SEG's segment order."""
    return np.concatenate([result.paste(result.candidates), result.paste(result.consensus)[None]])


def test_segment_writes_the_dicom_objects_beside_the_files(exported) -> None:
    assert sorted(p.name for p in exported.dicom.iterdir()) == sorted(DICOM_FILES)
    assert sorted(p.name for p in exported.files.iterdir()) == sorted(OUTPUT_FILES)
    assert not list(exported.dicom.parent.glob(f"{STAGING_PREFIX}*")), "no temporary folder is left behind"
    assert exported.result.consensus.any() and exported.result.volume_shape == (16, 512, 512)


def test_every_object_references_the_source_series(exported) -> None:
    source = exported.sources[0]
    uids = {d.SOPInstanceUID for d in exported.sources}
    for name in (SEGMENTATION_FILE, PROBABILITY_FILE, UNCERTAINTY_FILE):
        dataset = pydicom.dcmread(exported.dicom / name, stop_before_pixels=True)
        assert (dataset.StudyInstanceUID, dataset.FrameOfReferenceUID, dataset.PatientID) == \
            (source.StudyInstanceUID, source.FrameOfReferenceUID, source.PatientID), name
        assert dataset.SeriesInstanceUID != source.SeriesInstanceUID, "a derived object is a series of its own"
        (series,) = dataset.ReferencedSeriesSequence
        assert series.SeriesInstanceUID == source.SeriesInstanceUID
        assert {item.ReferencedSOPInstanceUID for item in series.ReferencedInstanceSequence} == uids
        assert (dataset.Manufacturer, dataset.ManufacturerModelName, dataset.SoftwareVersions) == \
            ("AmbiguousSAM project", "AmbiguousSAM", __version__)
    state = pydicom.dcmread(exported.dicom / COLOURS_FILE)
    heatmap = pydicom.dcmread(exported.dicom / UNCERTAINTY_FILE, stop_before_pixels=True)
    (shown,) = state.ReferencedSeriesSequence
    assert shown.SeriesInstanceUID == heatmap.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in shown.ReferencedImageSequence] == [heatmap.SOPInstanceUID]


def test_candidate_seg_describes_each_segment(exported) -> None:
    result = exported.result
    seg = pydicom.dcmread(exported.dicom / SEGMENTATION_FILE, stop_before_pixels=True)
    assert (seg.Modality, seg.SegmentationType) == ("SEG", "BINARY")
    segments = seg.SegmentSequence
    assert [s.SegmentLabel for s in segments] == ["Candidate 1", "Candidate 2", "Candidate 3", "Candidate 4",
                                                  "Consensus"]
    for number, segment in enumerate(segments, start=1):
        assert segment.SegmentNumber == number
        assert (segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue,
                segment.SegmentedPropertyTypeCodeSequence[0].CodeValue,
                segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator,
                segment.AnatomicRegionSequence[0].CodeValue) == ("49755003", "27925004", "SCT", "39607008")
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion, algorithm.AlgorithmSource) == \
            ("AmbiguousSAM", __version__, result.info["sampler"])
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
        assert algorithm.AlgorithmParameters == f"backbone=litemedsam,samples=4,seed=0,slice={SLICE}"
    for segment, score in zip(segments, result.scores):
        assert f"score {format_score(score)}" in segment.SegmentDescription
    assert "Consensus" in segments[-1].SegmentDescription


def test_candidate_seg_pixels_are_the_candidates_on_the_source_grid(exported) -> None:
    """Read back three ways: highdicom by source instance, highdicom's volume placed by its geometry, and pydicom
    frame by frame from each frame's own plane position and segment number."""
    masks, image = segment_masks(exported.result), exported.volume.image
    path = exported.dicom / SEGMENTATION_FILE
    seg = hd.seg.segread(path)
    assert seg.number_of_segments == len(masks)
    by_instance = seg.get_pixels_by_source_instance([d.SOPInstanceUID for d in exported.sources],
                                                    segment_numbers=list(range(1, len(masks) + 1)))
    np.testing.assert_array_equal(np.moveaxis(by_instance, -1, 0).astype(bool), masks)
    for number, mask in enumerate(masks, start=1):
        volume = seg.get_volume(segment_numbers=[number], combine_segments=False).squeeze_channel()
        np.testing.assert_array_equal(on_source_grid(volume, image).astype(bool), mask)

    dataset = pydicom.dcmread(path)
    frames = dataset.pixel_array
    rebuilt = np.zeros_like(masks)
    np.testing.assert_allclose(dataset.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
                               .ImageOrientationPatient, exported.sources[0].ImageOrientationPatient)
    for frame, group in zip(frames, dataset.PerFrameFunctionalGroupsSequence):
        i, j, k = image.TransformPhysicalPointToContinuousIndex(
            tuple(float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient))
        assert abs(i) < 1e-3 and abs(j) < 1e-3 and abs(k - round(k)) < 1e-3, "each frame lies on a CT slice"
        k = round(k)
        source = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert source == exported.sources[k].SOPInstanceUID, "each frame names the CT slice it lies on"
        rebuilt[group.SegmentIdentificationSequence[0].ReferencedSegmentNumber - 1, k] = frame.astype(bool)
    np.testing.assert_array_equal(rebuilt, masks)


def test_probability_seg_is_the_mean_probability(exported) -> None:
    result, image = exported.result, exported.volume.image
    dataset = pydicom.dcmread(exported.dicom / PROBABILITY_FILE, stop_before_pixels=True)
    assert (dataset.SegmentationType, dataset.SegmentationFractionalType, dataset.MaximumFractionalValue) == \
        ("FRACTIONAL", "PROBABILITY", 255)
    assert len(dataset.SegmentSequence) == 1
    volume = hd.seg.segread(exported.dicom / PROBABILITY_FILE).get_volume(combine_segments=False).squeeze_channel()
    read_back = on_source_grid(volume, image)
    expected = result.paste(result.mean_probability)
    assert np.abs(read_back - expected).max() <= 0.5 / 255 + 1e-6, "stored in 1/255 steps"
    assert read_back.max() > 0.9


def test_uncertainty_map_is_the_entropy_in_nats(exported) -> None:
    result, image = exported.result, exported.volume.image
    dataset = pydicom.dcmread(exported.dicom / UNCERTAINTY_FILE, stop_before_pixels=True)
    (mapping,) = dataset.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence
    unit = mapping.MeasurementUnitsCodeSequence[0]
    assert (unit.CodeValue, unit.CodingSchemeDesignator) == ("{nat}", "UCUM")
    assert mapping.RealWorldValueSlope == pytest.approx(MAX_ENTROPY_NATS / UNCERTAINTY_LEVELS)
    assert (mapping.RealWorldValueFirstValueMapped, mapping.RealWorldValueLastValueMapped) == (0, UNCERTAINTY_LEVELS)
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeMeaning.startswith("Entropy")
    in_nats = hd.imread(exported.dicom / UNCERTAINTY_FILE).get_volume()  # the real-world mapping applied
    read_back = on_source_grid(in_nats, image)
    expected = result.paste(result.entropy)
    assert np.abs(read_back - expected).max() <= MAX_ENTROPY_NATS / UNCERTAINTY_LEVELS / 2 + 1e-6
    assert read_back.max() > 0.5


def test_the_presentation_state_shows_the_map_in_the_heatmap_colours(exported) -> None:
    """pydicom applies the state's palette to every stored value of the map (highdicom 0.28's reading of a palette
    back, PaletteColorLUTTransformation.extract_from_dataset, fails with an AttributeError)."""
    from pydicom.pixels import apply_color_lut

    state = pydicom.dcmread(exported.dicom / COLOURS_FILE)
    assert state.SOPClassUID.name == "Pseudo-Color Softcopy Presentation State Storage"
    colours = apply_color_lut(np.arange(UNCERTAINTY_LEVELS + 1, dtype=np.uint16), state) / 65535.0
    np.testing.assert_allclose(colours, heatmap_colour_table(UNCERTAINTY_LEVELS + 1), atol=1 / 65535)
    np.testing.assert_allclose(colours[[0, -1]], np.array(INFERNO_STOPS)[[0, -1]], atol=1 / 65535)
    # The stop halfway (stored value 2048 of 4095 ~ ln 2 / 2 nats) is the fifth inferno stop, as in Slicer.
    np.testing.assert_allclose(colours[round(UNCERTAINTY_LEVELS / 2)], INFERNO_STOPS[4], atol=2e-3)


def test_slicer_shows_the_heatmap_in_the_colours_of_the_dicom_palette(mrml_scene) -> None:
    """One table for both: Slicer's colour node and the presentation state's palette give a value the same colour."""
    from AmbiguousSAMLogic.colormap import uncertaintyColorNode

    transfer = uncertaintyColorNode(mrml_scene).GetColorTransferFunction()
    in_slicer = np.array([transfer.GetColor(value) for value in np.linspace(0.0, MAX_ENTROPY_NATS, 33)])
    np.testing.assert_allclose(in_slicer, heatmap_colour_table(33), atol=1e-6)


@pytest.mark.skipif(shutil.which("dciodvfy") is None,
                    reason="dciodvfy not installed (Debian package dicom3tools; .ci/env installs it when it can)")
def test_dciodvfy_finds_no_errors_in_any_object(exported) -> None:
    for name in DICOM_FILES:
        run = subprocess.run(["dciodvfy", "-new", str(exported.dicom / name)], capture_output=True, text=True,
                             timeout=120)
        report = (run.stdout + run.stderr).splitlines()
        errors = [line for line in report if line.startswith("Error")]
        assert not errors, f"{name}:\n" + "\n".join(errors)
        assert any(line.strip() in ("Segmentation", "ParametricMap", "PseudoColorSoftcopyPresentationState")
                   for line in report), f"dciodvfy did not recognise {name} as the IOD it is:\n" + "\n".join(report)


@pytest.mark.skipif(DCMQI_SEG_READER is None,
                    reason="dcmqi's segimage2itkimage not installed (PyPI package dcmqi, x86-64 wheels only)")
def test_dcmqi_reads_both_segmentations_back_onto_the_source_grid(exported, tmp_path) -> None:
    """dcmqi is a second reader, built on DCMTK rather than pydicom. (Its paramap2itkimage reads only float
    parametric maps that carry a Frame Anatomy functional group, which highdicom does not write; the uncertainty
    map is 16-bit, so it is read back with highdicom and pydicom only.)"""
    result, image = exported.result, exported.volume.image
    for name, prefix in ((SEGMENTATION_FILE, "candidates"), (PROBABILITY_FILE, "probability")):
        run = subprocess.run([DCMQI_SEG_READER, "--inputDICOM", str(exported.dicom / name), "--outputDirectory",
                              str(tmp_path), "--prefix", prefix, "--outputType", "nrrd"], capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr

    def placed(path: Path) -> np.ndarray:
        return sitk.GetArrayFromImage(sitk.Resample(sitk.ReadImage(str(path)), image, sitk.Transform(),
                                                    sitk.sitkNearestNeighbor, 0.0))

    for number, mask in enumerate(segment_masks(result), start=1):
        np.testing.assert_array_equal(placed(tmp_path / f"candidates-{number}.nrrd") > 0, mask)
    probability = placed(tmp_path / "probability-1.nrrd") / 255.0
    assert np.abs(probability - result.paste(result.mean_probability)).max() <= 0.5 / 255 + 1e-6


def test_the_source_slices_may_come_in_any_order(exported, tmp_path) -> None:
    """A caller (Slicer's DICOM database, a script) may hand the series over unsorted: the objects are the same."""
    shuffled = exported.sources[::-1][8:] + exported.sources[::-1][:8]
    out = write_dicom_outputs(tmp_path / "dicom", exported.result, shuffled)
    pixels = hd.seg.segread(out / SEGMENTATION_FILE).get_pixels_by_source_instance(
        [d.SOPInstanceUID for d in exported.sources], segment_numbers=[1, 2, 3, 4, 5])
    np.testing.assert_array_equal(np.moveaxis(pixels, -1, 0).astype(bool), segment_masks(exported.result))


def test_a_failed_write_leaves_no_dicom_files(exported, tmp_path, monkeypatch) -> None:
    (tmp_path / "notes.txt").write_text("the user's own file next to the output")
    before = snapshot(tmp_path)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(dicom_export, "uncertainty_colours", broken)  # the last object fails, three are written
    with pytest.raises(OSError, match="disk full"):
        write_dicom_outputs(tmp_path / "new" / "dicom", exported.result, exported.sources)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    previous = tmp_path / "previous"
    shutil.copytree(exported.dicom, previous)
    kept = snapshot(previous)
    with pytest.raises(OSError, match="disk full"):
        write_dicom_outputs(previous, exported.result, exported.sources, overwrite=True)
    assert snapshot(previous) == kept, "a failed --overwrite keeps the earlier objects as they were"
    assert not list(tmp_path.rglob(f"{STAGING_PREFIX}*"))


def test_sources_that_are_not_the_results_series_are_refused_before_writing(exported, tmp_path) -> None:
    with pytest.raises(InvalidImageError, match="source series has 15 slices of 512 x 512"):
        write_dicom_outputs(tmp_path / "dicom", exported.result, exported.sources[1:])
    other = copy.deepcopy(exported.sources)
    other[3].SeriesInstanceUID = pydicom.uid.generate_uid()
    with pytest.raises(InvalidImageError, match="belong to 2 series"):
        write_dicom_outputs(tmp_path / "dicom", exported.result, other)
    assert not list(tmp_path.iterdir())


def test_an_existing_dicom_folder_is_replaced_only_with_overwrite_and_only_if_it_is_ours(exported, tmp_path) -> None:
    out = tmp_path / "dicom"
    shutil.copytree(exported.dicom, out)
    first = pydicom.dcmread(out / SEGMENTATION_FILE, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(AmbiguousSAMError, match="already holds a result.*replace its 4 files"):
        write_dicom_outputs(out, exported.result, exported.sources)
    write_dicom_outputs(out, exported.result, exported.sources, overwrite=True)
    assert pydicom.dcmread(out / SEGMENTATION_FILE, stop_before_pixels=True).SOPInstanceUID != first
    assert sorted(p.name for p in out.iterdir()) == sorted(DICOM_FILES)
    (out / "report.pdf").write_bytes(b"the user's report")
    with pytest.raises(AmbiguousSAMError, match="did not write \\(report.pdf\\)"):
        write_dicom_outputs(out, exported.result, exported.sources, overwrite=True)


#
# DICOM input: choosing a series, refusing what cannot be segmented or referenced.
#


def copy_of_slab(folder: Path, change=None) -> Path:
    """The slab's files copied into `folder`, each passed through `change(k, dataset)` when given (k: the slice's
    index in the volume, from its position; the file names sort as text, not by position)."""
    folder.mkdir(parents=True, exist_ok=True)
    by_position = sorted(SLAB.glob("*.dcm"),
                         key=lambda path: float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2]))
    for index, path in enumerate(by_position):
        if change is None:
            shutil.copy(path, folder / path.name)
        else:
            dataset = pydicom.dcmread(path)
            if change(index, dataset) is not False:
                dataset.save_as(folder / path.name)
    return folder


def test_series_uid_chooses_one_of_several_series(slab, tmp_path) -> None:
    other = pydicom.uid.generate_uid()

    def split(index: int, dataset: pydicom.Dataset) -> None:
        if index >= 10:  # the last six slices become a second series
            dataset.SeriesInstanceUID = other

    folder = copy_of_slab(tmp_path / "two", split)
    with pytest.raises(InvalidImageError, match=f"holds 2 DICOM series .*{other} \\(6 files\\).*--series-uid"):
        read_volume(folder)
    chosen = read_volume(folder, series_uid=other)
    assert chosen.array.shape == (6, 512, 512) and len(chosen.files) == 6
    np.testing.assert_array_equal(chosen.array, slab.array[10:])
    with pytest.raises(InvalidImageError, match="holds no DICOM series 1.2.3; it holds"):
        read_volume(folder, series_uid="1.2.3")


def test_a_series_that_is_not_ct_is_refused_unless_allowed(tmp_path) -> None:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data, absent in a fresh clone)")
    folder = copy_of_slab(tmp_path / "mr", lambda index, dataset: setattr(dataset, "Modality", "MR"))
    with pytest.raises(InvalidImageError, match="is MR, not CT.*--allow-non-ct"):
        read_volume(folder)
    assert read_volume(folder, allow_non_ct=True).array.shape == (16, 512, 512)


@pytest.mark.parametrize("problem, message", [
    ("MR", "is MR, not CT"),
    ("missing slice", "is not evenly spaced"),
])
def test_bad_dicom_input_exits_2_and_writes_nothing(tmp_path, capsys, problem, message) -> None:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data, absent in a fresh clone)")
    if problem == "MR":
        folder = copy_of_slab(tmp_path / "input", lambda index, dataset: setattr(dataset, "Modality", "MR"))
    else:
        folder = copy_of_slab(tmp_path / "input", lambda index, dataset: False if index == 7 else None)
    code = main(["segment", str(folder), "--box", *BOX, "--slice", SLICE, "--samples", "1",
                 "-o", str(tmp_path / "files"), "--dicom-out", str(tmp_path / "dicom")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"], "neither output folder was created"


def bad_dicom_folder(folder: Path, problem: str) -> Path:
    """A copy of the slab that the reader refuses for `problem`, by its headers alone."""
    if problem == "two series":
        other = pydicom.uid.generate_uid()
        return copy_of_slab(folder, lambda index, dataset: setattr(dataset, "SeriesInstanceUID", other)
                            if index >= 10 else None)
    if problem == "missing slice":
        return copy_of_slab(folder, lambda index, dataset: False if index == 7 else None)
    if problem == "repeated slice":  # a second copy of one slice, as a re-export into the same folder leaves it
        copy_of_slab(folder)
        dataset = pydicom.dcmread(sorted(folder.glob("*.dcm"))[3])
        dataset.SOPInstanceUID = pydicom.uid.generate_uid()
        dataset.save_as(folder / "copy-of-slice-3.dcm")
        return folder
    return copy_of_slab(folder, lambda index, dataset: setattr(dataset, "Modality", "MR"))


#: Each DICOM folder the reader refuses, and the words it is refused with.
BAD_DICOM_FOLDERS = {"two series": "holds 2 DICOM series", "missing slice": "is not evenly spaced",
                     "repeated slice": "is not evenly spaced", "MR": "is MR, not CT"}


@pytest.mark.parametrize("problem", BAD_DICOM_FOLDERS)
def test_a_bad_dicom_folder_exits_2_before_the_model_module_is_imported(tmp_path, problem) -> None:
    """Issue 17: these were refused only when the volume was read, after the model had loaded."""
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data, absent in a fresh clone)")
    folder = bad_dicom_folder(tmp_path / "input", problem)
    before = snapshot(tmp_path)
    code, err, model_loaded = segment_in_fresh_process(
        [str(folder), "--box", *BOX, "--slice", SLICE, "-o", str(tmp_path / "out")])
    assert code == 2 and not model_loaded, err
    assert BAD_DICOM_FOLDERS[problem] in err and "Traceback" not in err
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["input"]


def test_every_batch_row_with_a_bad_dicom_folder_is_refused_before_the_model_module_is_imported(tmp_path) -> None:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data, absent in a fresh clone)")
    rows = []
    for number, problem in enumerate(BAD_DICOM_FOLDERS):
        bad_dicom_folder(tmp_path / f"input{number}", problem)
        rows.append(f"input{number},out{number},{','.join(BOX)},{SLICE}")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice\n" + "\n".join(rows) + "\n")
    before = snapshot(tmp_path)
    code, err, model_loaded = segment_in_fresh_process(["--batch", str(jobs)])
    assert code == 2 and not model_loaded, err
    for line, message in enumerate(BAD_DICOM_FOLDERS.values(), start=2):
        assert any(text.startswith(f"{jobs}, line {line}: skipped:") and message in text
                   for text in err.splitlines()), err
    assert f"Every row of {jobs} was refused" in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_a_batch_row_with_a_series_that_is_not_ct_is_accepted_with_allow_non_ct(tmp_path) -> None:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data, absent in a fresh clone)")
    from AmbiguousSAMLib.jobs import read_jobs

    bad_dicom_folder(tmp_path / "mr", "MR")
    jobs = tmp_path / "jobs.csv"
    jobs.write_text(f"input,out,i0,j0,i1,j1,slice\nmr,out,{','.join(BOX)},{SLICE}\n")
    good, bad = read_jobs(jobs, samples=4, seed=0)
    assert not good and "is MR, not CT" in bad[0][1] and bad[0][0] == 2
    good, bad = read_jobs(jobs, samples=4, seed=0, allow_non_ct=True)
    assert [job.input for job in good] == [tmp_path / "mr"] and not bad


def test_the_dicom_checks_read_headers_only(slab, monkeypatch) -> None:
    """The early check reads no voxel: every pydicom read stops before the pixels, and no image is assembled."""
    from AmbiguousSAMLib.volume_io import check_dicom_series

    real, reads = pydicom.dcmread, []

    def spy(*args, **kwargs):
        reads.append(kwargs.get("stop_before_pixels", False))
        return real(*args, **kwargs)

    def no_voxels(*args, **kwargs):
        raise AssertionError("a voxel was read")

    monkeypatch.setattr(pydicom, "dcmread", spy)
    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", no_voxels)
    monkeypatch.setattr(sitk, "ReadImage", no_voxels)
    assert check_dicom_series(SLAB) == tuple(slab.files)
    assert reads and all(reads)


@pytest.mark.parametrize("argv, message", [
    (["{ct}", "--dicom-out", "{tmp}/dicom"], "--dicom-out needs a DICOM series as input"),
    (["{ct}", "--series-uid", "1.2.3"], "--series-uid chooses one series of a DICOM folder, but"),
    (["{slab}", "--series-uid", "1.2.3"], "holds no DICOM series 1.2.3; it holds 1.3.6.1.4.1.14519"),
    (["{slab}", "--dicom-out", "{tmp}/out/dicom"], "overlap; give the DICOM files a folder of their own"),
    (["{slab}", "--dicom-out", "{tmp}/taken"], "holds files that AmbiguousSAM did not write (notes.txt)"),
])
def test_dicom_options_are_refused_before_any_model_work(tmp_path, argv, message) -> None:
    if not SLAB.is_dir():
        pytest.skip(f"no DICOM slab at {SLAB} (shared data, absent in a fresh clone)")
    ct = tmp_path / "ct.nrrd"
    sitk.WriteImage(sitk.Image(8, 8, 8, sitk.sitkInt16), str(ct))
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("the user's notes")
    before = snapshot(tmp_path)
    names = {"ct": str(ct), "slab": str(SLAB), "tmp": str(tmp_path)}
    code, err, model_loaded = segment_in_fresh_process(
        [part.format(**names) for part in argv] + ["--box", *BOX, "--slice", SLICE, "-o", str(tmp_path / "out")])
    assert code == 2 and not model_loaded, err
    assert message in err and "Traceback" not in err
    assert snapshot(tmp_path) == before


def test_dicom_options_do_not_go_with_a_batch(tmp_path, capsys) -> None:
    jobs = tmp_path / "jobs.csv"
    jobs.write_text("input,out,i0,j0,i1,j1,slice\n")
    assert main(["segment", "--batch", str(jobs), "--dicom-out", str(tmp_path / "dicom")]) == 2
    assert "--series-uid and --dicom-out go with one INPUT, not with --batch" in capsys.readouterr().err
