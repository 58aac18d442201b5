"""What K = 16 samples cost against one deterministic prediction (encoder + one decode), side by side.

For every sampler: time to draw 16 samples from a cached embedding, and the total "encode + sample" against
"encode + one deterministic decode" measured in the same run. Median of 10 after 2 warm-ups.
Usage: python Testing/Benchmarks/benchmark_sampling.py [--threads 2] [--precision bf16] [--head PATH ...]
(any head file: a SeqSAM head's 16 masks are 16 decoder passes, so its row shows what the recurrence costs).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import median_seconds, print_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--head", action="append", help="head files (default: the shipped head)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from AmbiguousSAMLib.heads.baselines import BASELINES, Deterministic
    from AmbiguousSAMLib.heads.checkpoint import DEFAULT_HEAD, load_any_head
    from AmbiguousSAMLib.predictor import Predictor

    predictor = Predictor(device=None, precision=args.precision, window=None)
    crop = np.random.default_rng(0).integers(0, 255, size=(128, 128)).astype(np.uint8)
    model_input, _ = predictor.prepare(crop)
    embedding = predictor.encode(model_input)
    box = torch.tensor([[80.0, 80.0, 170.0, 175.0]], device=predictor.device)
    backbone = predictor.backbone
    samplers = [load_any_head(backbone, p).to(predictor.device) for p in (args.head or [DEFAULT_HEAD])]
    samplers += [baseline(backbone) for baseline in BASELINES]

    encode = median_seconds(lambda: predictor.encode(model_input))
    deterministic = Deterministic(backbone)
    one = median_seconds(lambda: deterministic.sample(embedding, box, 1, 0))
    reference = encode + one
    rows = []
    for sampler in samplers:
        seconds = median_seconds(lambda: sampler.sample(embedding, box, args.samples, 0, image=model_input))
        rows.append([sampler.name, f"{seconds * 1000:.0f}", f"{(encode + seconds) * 1000:.0f}",
                     f"{(encode + seconds) / reference:.2f}x"])
    print(f"device {predictor.device}, {args.precision}, {args.threads} threads; encoder {encode * 1000:.0f} ms, "
          f"one deterministic decode {one * 1000:.0f} ms -> one prediction {reference * 1000:.0f} ms")
    print_table(["sampler", f"{args.samples} samples ms", "encode + samples ms", "vs one prediction"], rows)


if __name__ == "__main__":
    main()
