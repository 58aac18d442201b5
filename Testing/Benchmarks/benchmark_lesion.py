"""One click on LIDC-IDRI-0001: (a) 16 candidates + heatmap on the clicked slice, (b) the whole nodule in 3D,
(c) the deterministic single mask on the same slice; and the ratio (a)/(c). Median of repeats after warm-up;
every repeat starts from an empty embedding cache, so the encoder is always included.
What the UncertainSAM scorer adds to (a): its own time inside the click (every `score` call timed, median over the
repeats) as a share of (a), and (a) again without a scorer (`--no-scorer`) for the difference of the two medians.
Usage: python Testing/Benchmarks/benchmark_lesion.py [--threads 2] [--precision bf16] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
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
    from AmbiguousSAMLib.segmenter import CONDITIONING_POOL, LesionSegmenter

    ct_path = shared_data_folder() / "lidc-volumes" / "LIDC-IDRI-0001" / "ct.nrrd"
    if not ct_path.is_file():
        raise SystemExit(f"{ct_path} is missing: this benchmark needs ../shared/data.")
    image = sitk.ReadImage(str(ct_path))
    volume, spacing = sitk.GetArrayFromImage(image), image.GetSpacing()
    ambiguous = LesionSegmenter(precision=args.precision)
    unscored = LesionSegmenter(precision=args.precision, scorer=None)
    single = LesionSegmenter(head="deterministic", precision=args.precision)
    scoring: list[float] = []  # seconds in the scorer, per click of (a)
    score = ambiguous.scorer.score

    def timed_score(*inputs, **options):
        start = time.perf_counter()
        estimate = score(*inputs, **options)
        scoring[-1] += time.perf_counter() - start
        return estimate

    ambiguous.scorer.score = timed_score

    def click(segmenter: LesionSegmenter, samples: int, propagate: bool):
        segmenter.clear_cache()
        return segmenter.segment(volume, LIDC_DEMO_BOX, LIDC_DEMO_SLICE, spacing, samples=samples, seed=0,
                                 propagate=propagate)

    def scored_click():
        scoring.append(0.0)
        return click(ambiguous, args.samples, False)

    one_slice = median_seconds(scored_click, repeats=args.repeats)
    in_scorer = statistics.median(scoring[-args.repeats:])
    without = median_seconds(lambda: click(unscored, args.samples, False), repeats=args.repeats)
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
    print("\nThe UncertainSAM scorer in (a) (it reads the head's z-free decoder pass; the clicked slice scores the "
          f"{CONDITIONING_POOL * args.samples} pooled draws):")
    print_table(["measure", "ms", "share of (a)"], [
        ["scorer calls inside (a), median per click", f"{1000 * in_scorer:.1f}",
         f"{100 * in_scorer / one_slice:.1f} %"],
        ["(a) without a scorer (--no-scorer)", f"{1000 * without:.0f}",
         f"{100 * (one_slice - without) / one_slice:+.1f} % (difference of medians)"],
    ])


if __name__ == "__main__":
    main()
