"""Write one lesion's result next to its CT: Slicer-readable files on the CT's exact geometry.

- `candidates.seg.nrrd`: one segment per candidate + "Consensus", each its own layer (they overlap), stored
  for the lesion's box with Slicer's extent offset, so Slicer and slicerio place it on the CT grid;
- `uncertainty.nrrd`: float32 entropy of the mean, exactly the CT's size, origin, spacing and direction;
- `summary.json`: candidate volumes (mm^3) and scores, the lesion box, provenance;
- `montage.png`: the clicked slice with candidate outlines, and the heatmap.
Everything is written to a temporary sibling folder and moved into place at the end, so a failure never
leaves a half-written OUT/.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import AmbiguousSAMError
from .lesion import LesionResult
from .overlay import save_overlay

CONSENSUS_NAME = "Consensus"


def candidate_colours(count: int) -> list[tuple[float, float, float]]:
    """Distinct colours for the candidates (matplotlib's tab20), white-ish yellow for the consensus."""
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    return [tuple(float(c) for c in palette(i % 20)[:3]) for i in range(count)]


def ijk_to_lps(image: sitk.Image) -> np.ndarray:
    direction = np.array(image.GetDirection()).reshape(3, 3)
    matrix = np.eye(4)
    matrix[:3, :3] = direction * np.array(image.GetSpacing())[None, :]
    matrix[:3, 3] = image.GetOrigin()
    return matrix


def write_segmentation(path: Path, result: LesionResult, image: sitk.Image) -> None:
    import slicerio

    masks = np.concatenate([result.candidates, result.consensus[None]]).astype(np.uint8)  # (L, dk, dj, di)
    names = [f"Candidate {i + 1}" for i in range(result.num_candidates)] + [CONSENSUS_NAME]
    colours = candidate_colours(result.num_candidates) + [(1.0, 0.9, 0.2)]
    k0, j0, i0 = result.offset
    matrix = ijk_to_lps(image)
    matrix[:3, 3] = matrix[:3, :3] @ np.array([i0, j0, k0], dtype=float) + matrix[:3, 3]
    segmentation = {
        "voxels": np.ascontiguousarray(masks.transpose(0, 3, 2, 1)),  # slicerio: (layer, i, j, k)
        "ijkToLPS": matrix,
        "referenceImageExtentOffset": [i0, j0, k0],
        "segments": [{"id": f"segment_{n}", "name": name, "color": colour, "labelValue": 1, "layer": n}
                     for n, (name, colour) in enumerate(zip(names, colours))],
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
    return {
        "input": source,
        "candidates": [{"name": f"Candidate {i + 1}", "volume_mm3": float(c.sum() * voxel_mm3),
                        "score": float(s)} for i, (c, s) in enumerate(zip(result.candidates, result.scores))],
        "consensus_volume_mm3": float(result.consensus.sum() * voxel_mm3),
        "lesion_box_ijk": {"min": [i0, j0, k0], "max": [i0 + di - 1, j0 + dj - 1, k0 + dk - 1]},
        "score_meaning": "mean 3D IoU of the candidate with the other candidates",
        "uncertainty": "entropy of the mean probability (nats), in uncertainty.nrrd",
        **{key: value for key, value in result.info.items()},
    }


def write_montage(path: Path, result: LesionResult, volume: np.ndarray) -> None:
    k = int(result.info.get("slice", result.offset[0]))
    box = result.info.get("box_ijk")
    candidates = result.paste(result.candidates)[:, k] if result.offset[0] <= k < result.offset[0] + result.consensus.shape[0] \
        else np.zeros((result.num_candidates, *volume.shape[1:]), bool)
    heat = result.paste(result.entropy)[k] if candidates.any() else np.zeros(volume.shape[1:], np.float32)
    save_overlay(path, volume[k], list(candidates), tuple(box), heatmap=heat,
                 title=f"slice {k}: {result.num_candidates} candidates ({result.info.get('sampler', '')})")


def write_outputs(out: str | Path, result: LesionResult, volume: np.ndarray, image: sitk.Image, source: str,
                  overwrite: bool = False) -> Path:
    """Write all four outputs into `out` atomically; refuse to replace an existing folder unless asked."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise AmbiguousSAMError(f"{out} already exists and is not empty; choose another -o or pass --overwrite.")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_segmentation(staging / "candidates.seg.nrrd", result, image)
        write_heatmap(staging / "uncertainty.nrrd", result, image)
        (staging / "summary.json").write_text(json.dumps(summarise(result, image, source), indent=2))
        write_montage(staging / "montage.png", result, volume)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out
