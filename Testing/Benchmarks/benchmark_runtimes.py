"""Encoder runtimes side by side, in one run: the encoder alone, one click (16 candidates + heatmap on one slice),
the whole LIDC-IDRI-0001 nodule in 3D and the deterministic single mask, for PyTorch and OpenVINO at fp32 and
bf16; each as a ratio to PyTorch fp32 measured in the same run, with the masks' agreement with PyTorch fp32 on
real validation slices and the peak memory. Each configuration runs in its own process, so its peak memory is
its own and no runtime warms another's caches.
Usage: python Testing/Benchmarks/benchmark_runtimes.py [--threads 2] [--slices 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import median_seconds, peak_rss_gb, print_table

CONFIGURATIONS = (("torch", "fp32"), ("torch", "bf16"), ("openvino", "fp32"), ("openvino", "bf16"))


def measure(runtime: str, precision: str, threads: int, slices: int, repeats: int, masks_out: Path) -> dict:
    """One configuration's timings (seconds) and its masks on the validation slices (saved to `masks_out`)."""
    import SimpleITK as sitk
    import torch

    torch.set_num_threads(threads)
    from AmbiguousSAMLib import metrics
    from AmbiguousSAMLib.demo import LIDC_DEMO_BOX, LIDC_DEMO_SLICE, shared_data_folder
    from AmbiguousSAMLib.predictor import Predictor
    from AmbiguousSAMLib.segmenter import LesionSegmenter

    data = shared_data_folder()
    with np.load(data / "lidc-crops" / "val.npz") as crops:
        rows = np.nonzero(crops["masks"].reshape(len(crops["masks"]), -1).any(axis=1))[0]
        rows = rows[np.linspace(0, len(rows) - 1, slices).astype(int)]
        images, raters = crops["images"][rows], crops["masks"][rows]
    predictor = Predictor(device="cpu", precision=precision, runtime=runtime)
    model_input = predictor.prepare(images[0])[0]
    encoder = median_seconds(lambda: predictor.encode(model_input), repeats=10)
    embedding = predictor.encode(model_input).numpy()
    masks = []
    for image, rater_masks in zip(images, raters):
        predictor.set_image(image)
        masks.append(predictor.predict(metrics.protocol_box(rater_masks)).mask)
    np.savez_compressed(masks_out, masks=np.stack(masks), embedding=embedding)

    ct = sitk.ReadImage(str(data / "lidc-volumes" / "LIDC-IDRI-0001" / "ct.nrrd"))
    volume, spacing = sitk.GetArrayFromImage(ct), ct.GetSpacing()
    ambiguous = LesionSegmenter(precision=precision, runtime=runtime)
    single = LesionSegmenter(head="deterministic", precision=precision, runtime=runtime)

    def click(segmenter: LesionSegmenter, samples: int, propagate: bool):
        segmenter.clear_cache()  # every repeat encodes again: the encoder is part of a click
        return segmenter.segment(volume, LIDC_DEMO_BOX, LIDC_DEMO_SLICE, spacing, samples=samples, seed=0,
                                 propagate=propagate)

    return {"encoder": encoder, "runs_in": getattr(predictor.encoder(), "precision", precision),
            "engine": predictor.encoder().name,
            "click": median_seconds(lambda: click(ambiguous, 16, False), repeats=repeats),
            "nodule": median_seconds(lambda: click(ambiguous, 16, True), repeats=max(1, repeats // 2), warmup=1),
            "nodule_deterministic": median_seconds(lambda: click(single, 1, True), repeats=max(1, repeats // 2),
                                                   warmup=1),
            "slices": len(click(ambiguous, 16, True).info["slices"]),
            "deterministic": median_seconds(lambda: click(single, 1, False), repeats=repeats),
            "peak_gb": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slices", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="runs/benchmark_runtimes", help="folder for the per-configuration results")
    parser.add_argument("--one", nargs=2, metavar=("RUNTIME", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    out = Path(args.out)
    if args.one:
        runtime, precision = args.one
        result = measure(runtime, precision, args.threads, args.slices, args.repeats, out / f"{runtime}-{precision}.npz")
        (out / f"{runtime}-{precision}.json").write_text(json.dumps(result))
        return
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for runtime, precision in CONFIGURATIONS:
        subprocess.run([sys.executable, __file__, "--one", runtime, precision, "--threads", str(args.threads),
                        "--slices", str(args.slices), "--repeats", str(args.repeats), "--out", str(out)], check=True)
        results[runtime, precision] = json.loads((out / f"{runtime}-{precision}.json").read_text())
    reference = results["torch", "fp32"]
    with np.load(out / "torch-fp32.npz") as saved:
        reference_masks, reference_embedding = saved["masks"], saved["embedding"]
    from AmbiguousSAMLib import metrics

    rows = []
    for (runtime, precision), result in results.items():
        with np.load(out / f"{runtime}-{precision}.npz") as saved:
            dices = np.array([metrics.dice(a, b) for a, b in zip(saved["masks"], reference_masks)])
            difference = float(np.abs(saved["embedding"] - reference_embedding).max())
        rows.append([f"{runtime} {precision} (runs {result['engine']} {result['runs_in']})",
                     f"{result['encoder'] * 1000:.0f}", f"{result['encoder'] / reference['encoder']:.2f}x",
                     f"{difference:.1e}", f"{dices.mean():.3f} / {dices.min():.3f} / {(dices >= 0.98).mean():.0%}",
                     f"{result['click']:.2f} ({result['click'] / reference['click']:.2f}x)",
                     f"{result['nodule']:.1f} ({result['nodule'] / reference['nodule']:.2f}x)",
                     f"{result['nodule'] / result['nodule_deterministic']:.2f}x",
                     f"{result['deterministic']:.2f} ({result['deterministic'] / reference['deterministic']:.2f}x)",
                     f"{result['peak_gb']:.2f}"])
    print(f"CPU, {args.threads} threads; encoder: median of 10 after warm-up; masks: {args.slices} val slices "
          f"against torch fp32; LIDC-IDRI-0001 nodule: {reference['slices']} slices; clicks: median of {args.repeats}")
    print_table(["runtime", "encoder ms", "vs torch fp32", "max abs diff", "Dice mean / min / >= 0.98",
                 "one click s", "whole nodule s", "nodule 16 vs 1 candidate", "single mask s", "peak GB"], rows)


if __name__ == "__main__":
    main()
