"""One click on LIDC-IDRI-0001: (a) 16 candidates + heatmap on the clicked slice, (b) the whole nodule in 3D,
(c) the deterministic single mask on the same slice; and the ratio (a)/(c). Median of repeats after warm-up;
every repeat starts from an empty embedding cache, so the encoder is always included.
Usage: python Testing/Benchmarks/benchmark_lesion.py [--threads 2] [--precision bf16] [--repeats 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from common import median_seconds, print_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import SimpleITK as sitk

    from AmbiguousSAMLib.demo import LIDC_DEMO_BOX, LIDC_DEMO_SLICE, shared_data_folder
    from AmbiguousSAMLib.segmenter import LesionSegmenter

    ct_path = shared_data_folder() / "lidc-volumes" / "LIDC-IDRI-0001" / "ct.nrrd"
    if not ct_path.is_file():
        raise SystemExit(f"{ct_path} is missing: this benchmark needs ../shared/data.")
    image = sitk.ReadImage(str(ct_path))
    volume, spacing = sitk.GetArrayFromImage(image), image.GetSpacing()
    ambiguous = LesionSegmenter(precision=args.precision)
    single = LesionSegmenter(head="deterministic", precision=args.precision)

    def click(segmenter: LesionSegmenter, samples: int, propagate: bool):
        segmenter.clear_cache()
        return segmenter.segment(volume, LIDC_DEMO_BOX, LIDC_DEMO_SLICE, spacing, samples=samples, seed=0,
                                 propagate=propagate)

    one_slice = median_seconds(lambda: click(ambiguous, args.samples, False), repeats=args.repeats)
    whole = median_seconds(lambda: click(ambiguous, args.samples, True), repeats=args.repeats, warmup=1)
    slices = len(click(ambiguous, args.samples, True).info["slices"])
    deterministic = median_seconds(lambda: click(single, 1, False), repeats=args.repeats)
    print(f"LIDC-IDRI-0001, {ambiguous.predictor.device}, {args.precision}, {args.threads} threads, "
          f"median of {args.repeats}")
    print_table(["case", "seconds", "vs (c)"], [
        [f"(a) one click, one slice, {args.samples} candidates + heatmap", f"{one_slice:.2f}", f"{one_slice / deterministic:.2f}x"],
        [f"(b) whole nodule in 3D ({slices} slices), {args.samples} candidates", f"{whole:.2f}", f"{whole / deterministic:.2f}x"],
        ["(c) deterministic single mask, same slice", f"{deterministic:.2f}", "1.00x"],
    ])


if __name__ == "__main__":
    main()
