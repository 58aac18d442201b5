"""What a UA-SAM click costs: encoder-side ms per sample, and K samples against one deterministic prediction.

UA-SAM's z enters the image encoder, so each sample runs the adapted blocks and the neck (and the decoder) again;
the frozen blocks before the first adapted one run once per slice (heads/ua_sam.py). One run measures, with
PyTorch on the CPU: the plain encoder, one deterministic decode, the early (frozen) stages, one adapted pass per
sample at several chunk sizes, and the whole `sample` call for K; and, for comparison, what K samples would cost
without the early stages cached (K whole encoder passes). Median of `--repeats` after one warm-up.
Usage: python Testing/Benchmarks/uasam_cost.py [--threads 2] [--samples 16] [--precision fp32] [--head FILE]
(without --head, untrained heads of 1 and 2 adapted blocks: the cost does not depend on the weights).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from common import median_seconds, print_table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--head", help="a UA-SAM head file (default: untrained heads of 1 and 2 adapted blocks)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from AmbiguousSAMLib.device import autocast
    from AmbiguousSAMLib.heads import ua_sam
    from AmbiguousSAMLib.heads.baselines import Deterministic
    from AmbiguousSAMLib.heads.checkpoint import load_any_head
    from AmbiguousSAMLib.modeling.backbone import build_backbone
    from AmbiguousSAMLib.preprocessing import model_input

    backbone = build_backbone()
    cpu = torch.device("cpu")
    image = model_input(np.random.default_rng(0).integers(0, 255, size=(128, 128)).astype(np.uint8), 256)[0]
    box = torch.tensor([[80.0, 80.0, 170.0, 175.0]])
    k, repeats = args.samples, args.repeats

    def timed(run) -> float:
        def under_precision() -> None:
            with torch.no_grad(), autocast(cpu, args.precision):
                run()
        return median_seconds(under_precision, repeats=repeats, warmup=1)

    encode = timed(lambda: backbone.encode(image))
    embedding = backbone.encode(image)
    deterministic = Deterministic(backbone)
    decode = timed(lambda: deterministic.sample(embedding, box, 1, 0))
    reference = encode + decode
    heads = [load_any_head(backbone, args.head)] if args.head else [ua_sam.UASAM(backbone, adapted_blocks=n).eval()
                                                                   for n in ua_sam.ADAPTABLE_BLOCKS]
    passes, clicks = [], []
    for head in heads:
        early = timed(lambda: head.early_features(image))
        features = head.early_features(image)
        z = head.draw_noise(16, 0).normal
        for chunk in (1, ua_sam.SAMPLE_CHUNK, 16):
            per_sample = timed(lambda: head.adapted_embedding(features.expand(chunk, -1, -1), z[:chunk])) / chunk
            passes.append([f"{head.adapted_blocks}", f"{chunk}", f"{per_sample * 1000:.0f}"])

        def new_slice() -> None:
            head._early.clear()  # a slice never seen: its early stages run too
            head.sample(embedding, box, k, 0, image=image)
        fresh = timed(new_slice)
        again = timed(lambda: head.sample(embedding, box, k, 0, image=image))
        uncached = k * early + again  # every sample running the whole encoder
        clicks.append([f"{head.adapted_blocks}", f"{early * 1000:.0f}", f"{(again / k) * 1000:.0f}",
                       f"{fresh * 1000:.0f} ({fresh / reference:.2f}x)", f"{again * 1000:.0f} ({again / reference:.2f}x)",
                       f"{uncached * 1000:.0f} ({uncached / reference:.2f}x)"])
    print(f"torch, cpu, {args.precision}, {args.threads} threads; plain encoder {encode * 1000:.0f} ms, one "
          f"deterministic decode {decode * 1000:.0f} ms -> one deterministic prediction {reference * 1000:.0f} ms")
    print_table(["adapted blocks", "samples per pass", "encoder-side ms per sample (adapted blocks + neck)"], passes)
    print()
    print_table(["adapted blocks", "early stages ms (once per slice)", "ms per sample (adapted + neck + decode)",
                 f"{k} samples, new slice: ms (vs one prediction)", f"{k} samples, early stages cached",
                 f"{k} samples if every sample ran the whole encoder"], clicks)

if __name__ == "__main__":
    main()
