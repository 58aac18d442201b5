"""Segmentation jobs: one (volume, box, output folder) each, from the command line or a CSV for batches.

A batch shares one loaded model; a failing case is reported and skipped so the others still finish. Output
folders are checked before the model loads, so a wrong -o costs nothing and never waits behind a segmentation.
CSV columns: `input,out,i0,j0,i1,j1,slice` (voxel box on axial slice `slice`), optionally `samples,seed`.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AmbiguousSAMError
from .outputs import check_output_folder, write_outputs
from .volume_io import physical_box_to_ijk, read_volume

if TYPE_CHECKING:
    from .segmenter import LesionSegmenter  # torch: loaded only once the jobs and their outputs are checked

REQUIRED_COLUMNS = ("input", "out", "i0", "j0", "i1", "j1", "slice")


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


def read_jobs(path: str | Path, samples: int, seed: int) -> list[SegmentJob]:
    path = Path(path)
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AmbiguousSAMError(f"{path} lacks the column(s) {missing}; expected {', '.join(REQUIRED_COLUMNS)}.")
        base = path.parent
        jobs = [SegmentJob(input=base / row["input"], out=base / row["out"],
                           box_ijk=tuple(float(row[c]) for c in ("i0", "j0", "i1", "j1")),  # type: ignore[arg-type]
                           slice_k=int(row["slice"]), samples=int(row.get("samples") or samples),
                           seed=int(row.get("seed") or seed)) for row in reader]
    if not jobs:
        raise AmbiguousSAMError(f"{path} lists no jobs; add one row per lesion under the header "
                                f"({', '.join(REQUIRED_COLUMNS)}).")
    return jobs


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


def run_job(segmenter: LesionSegmenter, job: SegmentJob, overwrite: bool = False, allow_non_ct: bool = False) -> dict:
    """Segment one case and write its outputs; returns the summary written to summary.json."""
    import json

    volume = read_volume(job.input)
    if job.corners is not None:
        box, slice_k = physical_box_to_ijk(volume.image, job.corners[0], job.corners[1], job.space)
    else:
        box, slice_k = job.box_ijk, job.slice_k
    result = segmenter.segment(volume.array, box, slice_k, volume.spacing, samples=job.samples, seed=job.seed,
                               allow_non_ct=allow_non_ct)
    out = write_outputs(job.out, result, volume.array, volume.image, str(job.input), overwrite=overwrite)
    return json.loads((out / "summary.json").read_text())
