"""The README's first command: K candidate outlines and a heatmap for a real lung nodule, on the CPU.

Uses LIDC-IDRI-0001 from ../shared/data when present (a ~33 mm nodule four radiologists outlined), else the
CT slice that pydicom ships (`CT_small.dcm`, a vertebra), so a fresh clone without the data still runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: LIDC-IDRI-0001's nodule: central axial slice and a box (i0, j0, i1, j1) around it, read off the raters' masks.
LIDC_DEMO_SLICE = 89
LIDC_DEMO_BOX = (296, 338, 338, 388)
#: A box around the vertebral body of pydicom's CT_small.dcm (128 x 128).
CT_SMALL_BOX = (44, 8, 84, 48)


@dataclass
class DemoCase:
    name: str
    volume: np.ndarray  # (k, j, i) HU
    spacing: tuple[float, float, float]  # (si, sj, sk) mm
    slice_k: int
    box: tuple[int, int, int, int]
    source: str


def shared_data_folder() -> Path:
    """`../shared/data` next to the project checkout (the module lives in AmbiguousSAM/AmbiguousSAMLib)."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def demo_case() -> DemoCase:
    ct = shared_data_folder() / "lidc-volumes" / "LIDC-IDRI-0001" / "ct.nrrd"
    if ct.is_file():
        import SimpleITK as sitk

        image = sitk.ReadImage(str(ct))
        return DemoCase("LIDC-IDRI-0001", sitk.GetArrayFromImage(image), image.GetSpacing(), LIDC_DEMO_SLICE,
                        LIDC_DEMO_BOX, str(ct))
    import pydicom
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    dataset = pydicom.dcmread(path)
    hu = dataset.pixel_array * float(dataset.RescaleSlope) + float(dataset.RescaleIntercept)
    spacing = (float(dataset.PixelSpacing[1]), float(dataset.PixelSpacing[0]), float(dataset.SliceThickness))
    return DemoCase("pydicom CT_small", hu[None].astype(np.int16), spacing, 0, CT_SMALL_BOX, path)


def run_demo(out: str | Path, device: str | None = None, precision: str = "bf16", samples: int = 16,
             seed: int = 0, runtime: str = "auto") -> dict:
    """Segment the demo lesion from one box: K candidates, consensus and heatmap files plus a PNG montage.

    A demo run replaces the previous demo's files in `out`, and nothing else: a folder holding other files is
    refused before the model loads.
    """
    import SimpleITK as sitk

    from .outputs import check_output_folder, write_outputs

    case = demo_case()
    check_output_folder(out, overwrite=True, source=case.source)
    from .segmenter import LesionSegmenter

    image = sitk.GetImageFromArray(case.volume)
    image.SetSpacing(case.spacing)
    if case.name == "LIDC-IDRI-0001":
        image = sitk.ReadImage(case.source)  # keep the file's origin and direction
    segmenter = LesionSegmenter(device=device, precision=precision, runtime=runtime)
    result = segmenter.segment(case.volume, case.box, case.slice_k, case.spacing, samples=samples, seed=seed)
    write_outputs(out, result, case.volume, image, case.source, overwrite=True)
    return json.loads((Path(out) / "summary.json").read_text())
