"""Encoder time, decoder time per box and peak memory of LiteMedSAM, fp32 and bf16, CPU (and CUDA if present).

Each configuration runs in a fresh process so its peak RSS is its own. Median of 10 runs after 2 warm-ups.
Usage: python Testing/Benchmarks/benchmark_backbone.py [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import torch

from common import median_seconds, peak_rss_gb, print_table


def measure(device: str, precision: str, threads: int) -> dict:
    from AmbiguousSAMLib.predictor import Predictor

    torch.set_num_threads(threads)
    predictor = Predictor(device=device, precision=precision)
    image = np.random.default_rng(0).normal(-600, 300, size=(512, 512)).astype(np.float32)
    model_input, _ = predictor.prepare(image)
    predictor.set_image(image)
    box = (200, 200, 260, 270)
    return {"encoder_s": median_seconds(lambda: predictor.encode(model_input)),
            "decoder_s": median_seconds(lambda: predictor.predict(box)),
            "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("DEVICE", "PRECISION"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.threads)))
        return
    configs = [("cpu", "fp32"), ("cpu", "bf16")] + ([("cuda", "fp32"), ("cuda", "bf16")] if torch.cuda.is_available() else [])
    rows = []
    for device, precision in configs:
        output = subprocess.run([sys.executable, __file__, "--one", device, precision, "--threads", str(args.threads)],
                                check=True, capture_output=True, text=True).stdout
        r = json.loads(output.strip().splitlines()[-1])
        rows.append([device, precision, str(args.threads) if device == "cpu" else "-", f"{r['encoder_s'] * 1000:.0f}",
                     f"{r['decoder_s'] * 1000:.1f}", f"{r['peak_rss_gb']:.2f}"])
    print_table(["device", "precision", "threads", "encoder ms", "decoder ms / box", "peak RSS GB"], rows)


if __name__ == "__main__":
    main()
