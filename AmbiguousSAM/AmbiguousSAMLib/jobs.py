"""Segmentation jobs: one (volume, box, output folder) each, from the command line or a CSV for batches.

A batch shares one loaded model; a failing case is reported and skipped so the others still finish. Output
folders are checked before the model loads, so a wrong -o costs nothing and never waits behind a segmentation; so
are a DICOM folder's headers (series, slice positions, modality), so a folder the reader would refuse exits fast,
and, for one input, its volume and box (`load_case`).
CSV columns: `input,out,i0,j0,i1,j1,slice` (voxel box on axial slice `slice`), optionally `samples,seed`.
A finished batch is listed lesion by lesion, those whose review flag is set first (`review_table`), so a reader
starts with the lesions radiologists would most likely disagree on.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .errors import AmbiguousSAMError
from .limits import check_samples, check_seed
from .outputs import check_output_folder, write_outputs
from .region import LesionRegion, lesion_region
from .review_flag import ReviewFlag, review_order
from .volume_io import Volume, check_dicom_series, physical_box_to_ijk, read_volume

if TYPE_CHECKING:
    from .segmenter import LesionSegmenter  # torch: loaded only once the jobs and their outputs are checked

REQUIRED_COLUMNS = ("input", "out", "i0", "j0", "i1", "j1", "slice")
#: Columns of the batch's review table (printed, and written with --review-table).
REVIEW_COLUMNS = ("review", "predicted_disagreement", "input", "out", "best_candidate", "expected_quality")


@dataclass
class SegmentJob:
    input: Path
    out: Path
    box_ijk: tuple[float, float, float, float] | None = None
    slice_k: int | None = None
    #: Two corners (x, y, z) in mm and their space ("LPS" or "RAS"), instead of a voxel box.
    corners: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    space: str = "LPS"
    samples: int = 16
    seed: int = 0
    #: The series to read when `input` is a DICOM folder holding several.
    series_uid: str | None = None
    #: Folder for DICOM SEG / Parametric Map outputs that reference the input series (DICOM input only).
    dicom_out: Path | None = None


def read_jobs(path: str | Path, samples: int, seed: int, allow_non_ct: bool = False
              ) -> tuple[list[SegmentJob], list[tuple[int, str]]]:
    """The CSV's jobs, each row checked before any model work: (good jobs, [(line number, reason)] of bad rows).

    A bad row (a word where a number belongs, a short row, samples 0, an input that does not exist, a DICOM folder
    its headers refuse, an output folder another row already writes) is reported with its line and skipped; the
    good rows still run.
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise AmbiguousSAMError(f"The batch file {path} {problem}; give a CSV with the columns "
                                f"{', '.join(REQUIRED_COLUMNS)}[,samples,seed].")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise AmbiguousSAMError(f"{path} lacks the column(s) {missing}; its first line must name the "
                                        f"columns {', '.join(REQUIRED_COLUMNS)}[,samples,seed].")
            rows = [(reader.line_num, row) for row in reader]
    except (UnicodeDecodeError, csv.Error) as error:
        raise AmbiguousSAMError(f"{path} is not a readable CSV file ({error}); save it as UTF-8 text.") from error
    if not rows:
        raise AmbiguousSAMError(f"{path} lists no jobs; add one row per lesion under the header "
                                f"({', '.join(REQUIRED_COLUMNS)}).")
    jobs, bad, outputs = [], [], {}
    for line, row in rows:
        try:
            job = job_from_row(row, path.parent, samples, seed, allow_non_ct)
            if job.out.resolve() in outputs:
                raise AmbiguousSAMError(f"its output folder {job.out} is already written by line "
                                        f"{outputs[job.out.resolve()]}; give each lesion its own 'out'.")
            outputs[job.out.resolve()] = line
            jobs.append(job)
        except AmbiguousSAMError as error:
            bad.append((line, str(error)))
    return jobs, bad


def job_from_row(row: dict, base: Path, samples: int, seed: int, allow_non_ct: bool = False) -> SegmentJob:
    """One CSV row as a job, or AmbiguousSAMError saying which cell is wrong and what it must hold."""
    if None in row or any(row.get(column) in (None, "") for column in REQUIRED_COLUMNS):
        empty = [column for column in REQUIRED_COLUMNS if row.get(column) in (None, "")]
        raise AmbiguousSAMError(f"the row has no value for {', '.join(empty)}" if empty else
                                "the row has more cells than the header has columns")

    def number(column: str, kind: type, default: int | None = None):
        text = (row.get(column) or "").strip()
        if not text and default is not None:
            return default
        try:
            value = kind(text)
        except ValueError:
            raise AmbiguousSAMError(f"'{column}' is {text!r}, not a{'n integer' if kind is int else ' number'}") \
                from None
        if kind is float and not math.isfinite(value):
            raise AmbiguousSAMError(f"'{column}' is {text!r}, not a finite number")
        return value

    box = tuple(number(column, float) for column in ("i0", "j0", "i1", "j1"))
    job = SegmentJob(input=base / row["input"].strip(), out=base / row["out"].strip(), box_ijk=box,  # type: ignore[arg-type]
                     slice_k=number("slice", int), samples=check_samples(number("samples", int, samples)),
                     seed=check_seed(number("seed", int, seed)))
    check_input(job.input)
    check_dicom_input(job, allow_non_ct)
    return job


def check_input(path: Path) -> None:
    """Refuse an input that does not exist, before any model work (the reader says what else is wrong with it)."""
    if not path.exists():
        raise AmbiguousSAMError(f"The input {path} does not exist; give a CT file (.nrrd, .nii.gz, .mha) or a "
                                "DICOM series folder.")


def check_dicom_input(job: SegmentJob, allow_non_ct: bool = False) -> None:
    """Refuse a DICOM folder input whose headers say it cannot be read as one CT series, before any model work:
    several series and no series UID, slices missing or repeated, not CT unless `allow_non_ct`. The reader's own
    checks (`volume_io.check_dicom_series`), on headers only: no voxel is read."""
    if job.input.is_dir():
        check_dicom_series(job.input, job.series_uid, allow_non_ct)


def check_dicom_options(job: SegmentJob, overwrite: bool = False) -> None:
    """Refuse a series UID or a DICOM output the input cannot serve, before any model work: a series UID needs a
    DICOM folder (`check_dicom_input` checks that the series is in it), and DICOM outputs need a DICOM input to
    reference."""
    if job.series_uid is not None and not job.input.is_dir():
        raise AmbiguousSAMError(f"--series-uid chooses one series of a DICOM folder, but {job.input} is a file; "
                                "leave out --series-uid.")
    if job.dicom_out is not None:
        from .dicom_export import check_dicom_output

        check_dicom_output(job.dicom_out, job.input, job.out, overwrite)


def check_outputs(jobs: list[SegmentJob], overwrite: bool = False
                  ) -> tuple[list[SegmentJob], list[tuple[SegmentJob, AmbiguousSAMError]]]:
    """Split jobs into those whose output folder can take a result and those refused, with the reason."""
    ready, refused = [], []
    for job in jobs:
        try:
            check_output_folder(job.out, overwrite, job.input)
            ready.append(job)
        except AmbiguousSAMError as error:
            refused.append((job, error))
    return ready, refused


@dataclass
class LoadedCase:
    """A job's volume, read, and its lesion region, cut out and checked: whatever is wrong with the volume or the
    box has been found once this exists."""

    volume: Volume
    region: LesionRegion


def load_case(job: SegmentJob, allow_non_ct: bool = False) -> LoadedCase:
    """Read a job's volume and cut out its box's region with every check of the reader and of
    `region.lesion_region` (2D or multi-component files, non-CT values, spacing, a box or slice off the volume),
    all without torch: one input is loaded before the model, so a wrong file exits in a second, not after the
    model has loaded."""
    volume = read_volume(job.input, series_uid=job.series_uid, allow_non_ct=allow_non_ct)
    if job.corners is not None:
        box, slice_k = physical_box_to_ijk(volume.image, job.corners[0], job.corners[1], job.space)
    else:
        box, slice_k = job.box_ijk, job.slice_k
    return LoadedCase(volume=volume, region=lesion_region(volume.array, box, slice_k, volume.spacing, allow_non_ct))


def run_job(segmenter: LesionSegmenter, job: SegmentJob, overwrite: bool = False, allow_non_ct: bool = False,
            case: LoadedCase | None = None) -> dict:
    """Segment one case (`case`: its volume already loaded by `load_case`, else read here) and write its outputs
    (and its DICOM outputs when asked); returns the summary written to summary.json."""
    import json

    case = case or load_case(job, allow_non_ct)
    volume = case.volume
    result = segmenter.segment_region(case.region, samples=job.samples, seed=job.seed)
    out = write_outputs(job.out, result, volume.array, volume.image, str(job.input), overwrite=overwrite)
    if job.dicom_out is not None:
        from .dicom_export import read_source_datasets, write_dicom_outputs

        write_dicom_outputs(job.dicom_out, result, read_source_datasets(volume.files), overwrite, job.input)
    return json.loads((out / "summary.json").read_text())


def review_table(done: list[tuple[SegmentJob, dict]]) -> list[dict[str, str]]:
    """One row per segmented lesion (its job and summary.json), flagged lesions first (review_flag.review_order):
    the flag, the predicted disagreement behind it, where the result is, and its best candidate."""
    flags = [ReviewFlag.from_dict(summary["review"]) for _job, summary in done]
    rows = []
    for index in review_order(flags):
        job, summary = done[index]
        best = summary["candidates_best_first"][0]
        quality = next(c["expected_quality"] for c in summary["candidates"] if c["name"] == best)
        disagreement = flags[index].disagreement
        rows.append({"review": flags[index].state,
                     "predicted_disagreement": "" if disagreement is None else f"{disagreement:.3f}",
                     "input": str(job.input), "out": str(job.out), "best_candidate": best,
                     "expected_quality": "" if quality is None else f"{quality:.3f}"})
    return rows


def check_review_table(path: Path, overwrite: bool = False, inputs: Sequence[Path] = ()) -> None:
    """Refuse a review table path that cannot be written, or that is one of the run's `inputs` (the batch file, a
    CT), which --overwrite must never replace, before any model work."""
    if any(path.resolve() == Path(given).resolve() for given in inputs):
        raise AmbiguousSAMError(f"--review-table {path} is an input of this run; the review table never replaces an "
                                "input. Choose another file.")
    if path.is_dir():
        raise AmbiguousSAMError(f"--review-table {path} is a folder; give the path of a .csv file.")
    if path.exists() and not overwrite:
        raise AmbiguousSAMError(f"--review-table {path} exists; choose another file, or pass --overwrite to replace "
                                "it.")
    if not path.absolute().parent.is_dir():
        raise AmbiguousSAMError(f"The folder of --review-table {path} does not exist; create it or choose another "
                                "path.")


def write_review_table(path: Path, rows: list[dict[str, str]]) -> None:
    """The review table as CSV (a temporary file moved into place, so a reader never sees half of it)."""
    staging = path.with_name(f".{path.name}.tmp")
    with staging.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=REVIEW_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    staging.replace(path)
