"""Write one lesion's result next to its CT: Slicer-readable files on the CT's exact geometry.

- `candidates.seg.nrrd`: one segment per candidate + "Consensus", each its own layer (they overlap), stored
  for the lesion's box with Slicer's extent offset, so Slicer and slicerio place it on the CT grid; every segment
  carries the candidate table's role, score and expected-quality tags (the consensus the review flag), so Slicer's
  module opens the file as a candidate set;
- `uncertainty.nrrd`: float32 entropy of the mean, exactly the CT's size, origin, spacing and direction;
- `summary.json`: candidate volumes (mm^3), typicality and expected quality, the order to offer them in, the
  lesion's review flag with its value, threshold and rule, the lesion box, provenance;
- `montage.png`: the clicked slice with candidate outlines, and the heatmap.

An output folder belongs to its result. The files are written into a temporary folder first, so a failure never
leaves a half-written result; a new folder then appears complete in one rename, and in an existing one (only
with overwrite) each of the four files is replaced by its new version. Nothing else is ever deleted or replaced:
a folder that holds the input or any file that is not one of the four is refused, overwrite or not, because
those files are the user's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from .candidate_table import best_first, candidate_table
from .errors import AmbiguousSAMError
from .lesion import LesionResult

SEGMENTATION_FILE = "candidates.seg.nrrd"
HEATMAP_FILE = "uncertainty.nrrd"
SUMMARY_FILE = "summary.json"
MONTAGE_FILE = "montage.png"
#: Everything `write_outputs` writes into an output folder, and therefore all that overwrite may replace.
OUTPUT_FILES = (SEGMENTATION_FILE, HEATMAP_FILE, SUMMARY_FILE, MONTAGE_FILE)
#: Prefix of the temporary folders the files are written into before they are moved into place.
STAGING_PREFIX = ".ambiguous-sam-"


def _is_own_output(entry: Path, names: tuple[str, ...]) -> bool:
    return entry.name in names and entry.is_file() and not entry.is_symlink()


def _contains(folder: Path, path: Path) -> bool:
    folder, path = folder.resolve(), path.resolve()
    return path == folder or folder in path.parents


def _check_writable(folder: Path) -> None:
    """Try what writing will do (create a temporary folder there): permission bits alone do not tell, e.g. for
    root, on read-only file systems or on special folders."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    except OSError as error:
        raise AmbiguousSAMError(
            f"Cannot write into {folder} ({error.strerror or error}). Choose an output folder where you can write."
        ) from error


def _listing(entries: list[Path], shown: int = 5) -> str:
    names = sorted(entry.name for entry in entries)
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_output_folder(out: str | Path, overwrite: bool = False, source: str | Path | None = None,
                        names: tuple[str, ...] = OUTPUT_FILES) -> None:
    """Refuse an output folder that cannot take a result, before any model work (a full CT takes minutes).

    `source` is the input file or folder: an output folder that holds it is refused, so no run can ever replace
    or delete its own input. With `overwrite`, an existing folder is accepted only if it holds nothing but the
    output files `names` (the four result files, or the DICOM files of dicom_export), which are then replaced.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AmbiguousSAMError(f"The output {out} is a file; the output is a folder that will hold the "
                                f"{len(names)} result files. Choose a folder path (new or empty).")
    if not out.exists():
        ancestor = out.absolute().parent
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise AmbiguousSAMError(f"Cannot create the output folder {out}: {ancestor} is a file, not a folder. "
                                    "Choose an output folder whose parents are folders.")
        _check_writable(ancestor)
        return
    if source is not None and _contains(out, Path(source)):
        raise AmbiguousSAMError(
            f"The output folder {out} holds the input {source}. Results go into a folder of their own, so that "
            f"writing (or --overwrite) can never touch your files; choose another output folder, e.g. "
            f"{out / 'ambiguous-sam'}."
        )
    entries = list(out.iterdir())
    foreign = [entry for entry in entries if not _is_own_output(entry, names)]
    if foreign:
        raise AmbiguousSAMError(
            f"The output folder {out} holds files that AmbiguousSAM did not write ({_listing(foreign)}). "
            f"Results go into a folder of their own, and --overwrite only ever replaces {', '.join(names)}; "
            "choose a new or empty output folder."
        )
    if entries and not overwrite:
        raise AmbiguousSAMError(f"The output folder {out} already holds a result. Choose another output folder, or "
                                f"pass --overwrite (overwrite=True) to replace its {len(names)} files.")
    _check_writable(out)


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_segmentation(path: Path, result: LesionResult, image: sitk.Image) -> None:
    import slicerio

    masks = np.concatenate([result.candidates, result.consensus[None]]).astype(np.uint8)  # (L, dk, dj, di)
    k0, j0, i0 = result.offset
    matrix = ijk_to_lps(image)
    matrix[:3, 3] = matrix[:3, :3] @ np.array([i0, j0, k0], dtype=float) + matrix[:3, 3]
    segmentation = {
        "voxels": np.ascontiguousarray(masks.transpose(0, 3, 2, 1)),  # slicerio: (layer, i, j, k)
        "ijkToLPS": matrix,
        "referenceImageExtentOffset": [i0, j0, k0],
        "segments": [{"id": f"segment_{n}", "name": entry.name, "color": entry.colour, "labelValue": 1, "layer": n,
                      "tags": entry.tags}
                     for n, entry in enumerate(candidate_table(result.scores, result.quality, result.review))],
    }
    slicerio.write_segmentation(str(path), segmentation)


def write_heatmap(path: Path, result: LesionResult, image: sitk.Image) -> None:
    heat = sitk.GetImageFromArray(result.paste(result.entropy.astype(np.float32)))
    heat.CopyInformation(image)
    sitk.WriteImage(heat, str(path), useCompression=True)


def summarise(result: LesionResult, image: sitk.Image, source: str) -> dict:
    voxel_mm3 = float(np.prod(image.GetSpacing()))
    k0, j0, i0 = result.offset
    dk, dj, di = result.consensus.shape
    entries = candidate_table(result.scores, result.quality, result.review)
    return {
        "input": source,
        "candidates": [{"name": entry.name, "volume_mm3": float(mask.sum() * voxel_mm3), "score": entry.score,
                        "expected_quality": entry.quality} for entry, mask in zip(entries, result.candidates)],
        "candidates_best_first": [entries[index].name for index in best_first(result.scores, result.quality)],
        "consensus_volume_mm3": float(result.consensus.sum() * voxel_mm3),
        "lesion_box_ijk": {"min": [i0, j0, k0], "max": [i0 + di - 1, j0 + dj - 1, k0 + dk - 1]},
        "score_meaning": "mean 3D IoU of the candidate with the other candidates",
        "expected_quality_meaning": "the UncertainSAM scorer's expected 3D IoU of the candidate with the raters' "
                                    "majority: its per-slice estimates weighted by the slice's union of the candidate "
                                    "and the consensus (null: no scorer ran)",
        "review": result.review.as_dict(),
        "uncertainty": "entropy of the mean probability (nats), in uncertainty.nrrd",
        **{key: value for key, value in result.info.items()},
    }


def write_montage(path: Path, result: LesionResult, volume: np.ndarray) -> None:
    from .overlay import save_overlay  # imports torch (via the lung window); output checks must not wait for it

    k = int(result.info.get("slice", result.offset[0]))
    box = result.info.get("box_ijk")
    on_lesion = result.offset[0] <= k < result.offset[0] + result.consensus.shape[0]
    candidates = result.paste(result.candidates)[:, k] if on_lesion \
        else np.zeros((result.num_candidates, *volume.shape[1:]), bool)
    heat = result.paste(result.entropy)[k] if candidates.any() else np.zeros(volume.shape[1:], np.float32)
    save_overlay(path, volume[k], list(candidates), tuple(box), heatmap=heat,
                 title=f"slice {k}: {result.num_candidates} candidates ({result.info.get('sampler', '')})")


def _make_missing_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; return the ones created, innermost first (to undo on failure)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for created in reversed(missing):
        created.mkdir()
    return missing


def write_outputs(out: str | Path, result: LesionResult, volume: np.ndarray, image: sitk.Image, source: str,
                  overwrite: bool = False) -> Path:
    """Write the four outputs into `out`, which `check_output_folder` must accept; `source` names the input.

    A new folder appears complete or not at all; in an existing folder (overwrite) each output file is replaced
    by its complete new version. On failure, every folder and file this call created is removed again.
    """

    def write(staging: Path) -> None:
        write_segmentation(staging / SEGMENTATION_FILE, result, image)
        write_heatmap(staging / HEATMAP_FILE, result, image)
        (staging / SUMMARY_FILE).write_text(json.dumps(summarise(result, image, source), indent=2))
        write_montage(staging / MONTAGE_FILE, result, volume)

    return write_folder_atomically(out, OUTPUT_FILES, write, overwrite, source)


def write_folder_atomically(out: str | Path, names: tuple[str, ...], write: Callable[[Path], None],
                            overwrite: bool = False, source: str | Path | None = None) -> Path:
    """`write(staging)` puts the files `names` into a temporary folder, which then becomes `out` in one rename
    (or, with overwrite, whose files replace those of an existing `out`): the rule of every output folder here.

    `out` must pass `check_output_folder(out, overwrite, source, names)`. On failure, every folder and file this
    call created is removed again and the exception goes on.
    """
    out = Path(out)
    check_output_folder(out, overwrite, source, names)
    replacing = out.is_dir()
    created = [] if replacing else _make_missing_folders(out.parent)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out if replacing else out.parent))
    try:
        write(staging)
        if replacing:
            for name in names:
                os.replace(staging / name, out / name)
            staging.rmdir()
        else:
            # mkdtemp makes its folder private (0700); the result folder gets the permissions any new folder of
            # this user gets (the umask), so a colleague or a PACS exporter can read it as they could read the CT.
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # the temporary folder mkdtemp made for this call
        for folder in created:
            try:
                folder.rmdir()
            except OSError:
                break  # something else appeared in it meanwhile: not ours to remove
        raise
    return out
