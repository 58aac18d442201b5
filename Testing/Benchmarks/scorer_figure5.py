"""The UncertainSAM scorer on LIDC validation slices, measured as the paper's Figure 5 does, in one run.

The prediction is the backbone's single-mask output for the protocol box (the deterministic sampler). Slices are
ranked by each uncertainty measure, and the x % most uncertain predictions are replaced by a better alternative:
the best of the decoder's four outputs (task), the mask of a denser prompt (box + 3 interior points of the raters'
majority; prompt) or the raters' majority itself (oracle). A replacement is kept only where it is better, so each
gain is the matching target of training/scorer_targets.py. The curve is the mean IoU (with the majority) gained
over all slices; its area, x from 0 to 1, is reported raw and relative to random (0) and the oracle ranking (1).
Baselines: the decoder's IoU estimate, the mean pixel entropy of the prediction inside the box, the spread of the
shipped head's 16 samples (mean pairwise 1 - IoU), random (its expected curve) and the oracle.
Also: Spearman of each estimate with its true value, per-candidate quality on the head's 16 samples against their
typicality (the candidate score used so far), the review-flag threshold on predicted disagreement chosen on the even
slices and checked on the odd ones, and what the scorer adds to one click's time.

A script beside the other benchmarks rather than a command: it measures the shipped files for the README and
writes a figure; nothing in the product calls it.
Usage: python Testing/Benchmarks/scorer_figure5.py [--cache cache/val437] [--scorer PATH] [--threads 2]
       [--png Resources/Evaluation/uncertainsam-figure5-val435.png] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from common import median_seconds, print_table

REPOSITORY = Path(__file__).resolve().parents[2]
#: Raters "disagree" on a slice when their mean pairwise 1 - IoU is at least this: some expert left it empty
#: (one rater of four marking it alone gives exactly 0.5), or the outlines overlap by half or less on average.
DISAGREE = 0.5
FRACTIONS = np.linspace(0.0, 1.0, 101)


def gain_curve(uncertainty: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """Mean gain over all slices when the round(x * N) most uncertain ones are replaced, for each x of FRACTIONS."""
    order = np.argsort(-uncertainty, kind="stable")
    gained = np.concatenate([[0.0], np.cumsum(gain[order])])
    return gained[np.round(FRACTIONS * len(gain)).astype(int)] / len(gain)


def area(curve: np.ndarray) -> float:
    return float(np.trapezoid(curve, FRACTIONS))


def review_threshold(predicted: np.ndarray, disagree: np.ndarray) -> float:
    """The threshold on predicted disagreement with the largest Youden J (true minus false positive rate) for
    "raters disagree". Not F1: about two slices in three disagree, and F1 is then best when everything is flagged."""
    def youden(threshold: float) -> float:
        flagged = predicted >= threshold
        return flagged[disagree].mean() - flagged[~disagree].mean()
    return max(np.unique(predicted), key=youden)


def precision_recall(predicted: np.ndarray, disagree: np.ndarray, threshold: float) -> tuple[float, float, float]:
    flagged = predicted >= threshold
    hits = np.count_nonzero(flagged & disagree)
    return hits / max(np.count_nonzero(flagged), 1), hits / max(np.count_nonzero(disagree), 1), float(flagged.mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cache", default=str(REPOSITORY / "cache" / "val437"), help="validation embedding cache "
                        "(built by 'ambiguous-sam evaluate --limit 437 --cache ...')")
    parser.add_argument("--scorer", help="scorer file (default: the shipped one)")
    parser.add_argument("--head", help="head whose samples are the per-candidate rows: a head file or 'default' "
                        "(the shipped one)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--png", default=str(REPOSITORY / "Resources" / "Evaluation" /
                                             "uncertainsam-figure5-val435.png"))
    parser.add_argument("--json", help="write every number here")
    parser.add_argument("--limit", type=int, help="only the first N slices (a quick check of the script)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from AmbiguousSAMLib import metrics
    from AmbiguousSAMLib.heads.checkpoint import head_file, load_head
    from AmbiguousSAMLib.heads.scorer_checkpoint import DEFAULT_SCORER, load_scorer
    from AmbiguousSAMLib.heads.scorer_inputs import decoder_readout
    from AmbiguousSAMLib.modeling.backbone import build_backbone
    from AmbiguousSAMLib.preprocessing import ModelFrame, model_input
    from AmbiguousSAMLib.training.embedding_cache import EmbeddingCache
    from AmbiguousSAMLib.training.scorer_targets import candidate_quality, scorer_examples

    backbone = build_backbone()
    head = load_head(backbone, head_file(args.head))
    scorer = load_scorer(backbone, args.scorer or DEFAULT_SCORER)
    cache = EmbeddingCache(args.cache)
    crops, embeddings = cache.crops(), cache.embeddings()
    count = len(crops["masks"]) if args.limit is None else min(args.limit, len(crops["masks"]))
    masks = crops["masks"][:count]
    frame = ModelFrame.for_image(masks.shape[-2:], backbone.image_size)
    boxes = np.stack([metrics.protocol_box(m) for m in masks])
    start = time.perf_counter()
    truth = scorer_examples(backbone, head, embeddings[:count], crops["images"][:count], masks,
                            crops["patient"][:count], boxes, args.seed + crops["rows"][:count], prior_samples=1)
    target_seconds = time.perf_counter() - start
    names = ("quality_majority", "quality_raters", "task_gap", "prompt_gap", "disagreement")
    predicted = {name: np.zeros(count) for name in names}
    entropy, spread = np.zeros(count), np.zeros(count)
    candidates = {"predicted": [], "true": [], "typicality": []}
    for n in range(count):
        embedding = torch.from_numpy(np.asarray(embeddings[n], dtype=np.float32))[None]
        box = torch.from_numpy(frame.box_to_model(boxes[n]))[None]
        plain = decoder_readout(backbone, embedding, box).logits[0, 0]
        probability = torch.sigmoid(frame.logits_to_image(plain)).numpy()
        x0, y0, x1, y1 = boxes[n]
        inside = np.clip(probability[y0:y1 + 1, x0:x1 + 1], 1e-6, 1 - 1e-6)
        entropy[n] = float(-(inside * np.log(inside) + (1 - inside) * np.log(1 - inside)).mean())
        drawn = head.sample(embedding, box, args.samples, args.seed + int(crops["rows"][n]),
                            image=model_input(crops["images"][n], backbone.image_size)[0])
        sample_masks = frame.logits_to_image(drawn.logits.float()).numpy() > 0
        spread[n] = metrics.mean_pairwise_distance(sample_masks)
        estimate = scorer.score(backbone, embedding, box, torch.cat([plain[None], drawn.logits.float()]))
        predicted["quality_majority"][n] = estimate.quality[0]
        predicted["quality_raters"][n] = estimate.quality_raters[0]
        for name in ("task_gap", "prompt_gap", "disagreement"):
            predicted[name][n] = getattr(estimate, name)
        similarity = metrics.pairwise_iou(sample_masks, sample_masks)
        candidates["predicted"].append(estimate.quality[1:])
        candidates["true"].append(candidate_quality(sample_masks, masks[n])[:, 0])
        candidates["typicality"].append((similarity.sum(axis=1) - 1) / (len(similarity) - 1))
    true = {"quality_majority": truth.candidate_targets[:, 0, 0], "quality_raters": truth.candidate_targets[:, 0, 1],
            **{name: truth.box_targets[:, i] for i, name in enumerate(("task_gap", "prompt_gap", "disagreement"))}}

    halves = {"odd": np.arange(1, count, 2), "all": np.arange(count)}
    gains = {"task (best decoder output)": true["task_gap"], "prompt (box + 3 points)": true["prompt_gap"],
             "oracle (raters' majority)": 1 - true["quality_majority"]}
    own = {"task (best decoder output)": predicted["task_gap"], "prompt (box + 3 points)": predicted["prompt_gap"],
           "oracle (raters' majority)": 1 - predicted["quality_majority"]}
    measures = {"scorer (its gap / 1 - quality)": None, "scorer: disagreement": predicted["disagreement"],
                "decoder IoU estimate": 1 - truth.decoder_iou, "pixel entropy": entropy,
                f"spread of {args.samples} head samples": spread}
    areas: dict = {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(gains), figsize=(5.2 * len(gains), 4.2))
    for ax, (alternative, gain) in zip(axes, gains.items()):
        areas[alternative] = {}
        for half, rows in halves.items():
            curves = {name: gain_curve((own[alternative] if values is None else values)[rows], gain[rows])
                      for name, values in measures.items()}
            curves["random"] = FRACTIONS * gain[rows].mean()
            curves["oracle"] = gain_curve(gain[rows], gain[rows])
            random_area, oracle_area = area(curves["random"]), area(curves["oracle"])
            areas[alternative][half] = {name: {"auc": area(c), "relative": (area(c) - random_area) /
                                               max(oracle_area - random_area, 1e-12)} for name, c in curves.items()}
        for name, curve in curves.items():  # the last half: all slices
            ax.plot(100 * FRACTIONS, curve, "--" if name in ("random", "oracle") else "-", label=name,
                    linewidth=2.2 if name.startswith("scorer (") else 1.2)
        ax.set_title(alternative)
        ax.set_xlabel("% most uncertain predictions replaced")
        ax.set_ylabel("mean IoU gained (with the raters' majority)")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"UncertainSAM scorer, LIDC val: {count} slices, LiteMedSAM single-mask prediction, protocol box")
    fig.tight_layout()
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    plt.close(fig)

    print(f"\n{count} validation slices; targets {target_seconds:.0f} s\n\nArea under the gain curve "
          "(raw, and relative: random 0, oracle 1), odd half | all slices:")
    for alternative, by_half in areas.items():
        print(f"\n{alternative}")
        print_table(["measure", "AUC odd", "relative odd", "AUC all", "relative all"],
                    [[name, f"{by_half['odd'][name]['auc']:.4f}", f"{by_half['odd'][name]['relative']:.2f}",
                      f"{by_half['all'][name]['auc']:.4f}", f"{by_half['all'][name]['relative']:.2f}"]
                     for name in by_half["all"]])

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        return float(spearmanr(a, b).statistic)

    odd = halves["odd"]
    correlations = [[name, f"{rho(predicted[name][odd], true[name][odd]):.3f}",
                     f"{rho(predicted[name], true[name]):.3f}"] for name in names]
    correlations.append(["(baseline) decoder IoU estimate vs quality_majority",
                         f"{rho(truth.decoder_iou[odd], true['quality_majority'][odd]):.3f}",
                         f"{rho(truth.decoder_iou, true['quality_majority']):.3f}"])
    correlations.append(["(baseline) sample spread vs disagreement",
                         f"{rho(spread[odd], true['disagreement'][odd]):.3f}", f"{rho(spread, true['disagreement']):.3f}"])
    pooled = {key: np.concatenate(values) for key, values in candidates.items()}
    within = {key: [rho(p, t) for p, t in zip(candidates[key], candidates["true"]) if np.ptp(t) > 0 and np.ptp(p) > 0]
              for key in ("predicted", "typicality")}
    correlations.append([f"per candidate ({args.samples} head samples): predicted quality, pooled", "-",
                         f"{rho(pooled['predicted'], pooled['true']):.3f}"])
    correlations.append(["(baseline) per candidate: typicality, pooled", "-",
                         f"{rho(pooled['typicality'], pooled['true']):.3f}"])
    correlations.append([f"per candidate: predicted quality, within a slice (mean over {len(within['predicted'])})",
                         "-", f"{np.mean(within['predicted']):.3f}"])
    correlations.append([f"(baseline) typicality, within a slice (mean over {len(within['typicality'])})", "-",
                         f"{np.mean(within['typicality']):.3f}"])
    print("\nSpearman correlation with the true value (odd half | all):")
    print_table(["estimate", "odd", "all"], correlations)

    disagree = true["disagreement"] >= DISAGREE
    even = np.arange(0, count, 2)
    threshold = review_threshold(predicted["disagreement"][even], disagree[even])
    flag_rows = []
    for half, rows in {"even (chosen on)": even, **halves}.items():
        precision, recall, share = precision_recall(predicted["disagreement"][rows], disagree[rows], threshold)
        flag_rows.append([half, f"{disagree[rows].mean():.2f}", f"{share:.2f}", f"{precision:.2f}", f"{recall:.2f}"])
    print(f"\nReview flag: predicted disagreement >= {threshold:.3f} (best Youden J on the even slices) for "
          f"'raters disagree' = true disagreement >= {DISAGREE}:")
    print_table(["slices", "share that disagree", "share flagged", "precision", "recall"], flag_rows)

    image = model_input(crops["images"][0], backbone.image_size)[0]
    embedding = torch.from_numpy(np.asarray(embeddings[0], dtype=np.float32))[None]
    box = torch.from_numpy(frame.box_to_model(boxes[0]))[None]
    drawn = head.sample(embedding, box, args.samples, 0, image=image)
    encode = median_seconds(lambda: backbone.encode(image), repeats=5, warmup=1)
    sample = median_seconds(lambda: head.sample(embedding, box, args.samples, 0, image=image), repeats=5, warmup=1)
    score = median_seconds(lambda: scorer.score(backbone, embedding, box, drawn.logits.float()), repeats=5, warmup=1)
    print(f"\nOne click on one slice ({args.threads} threads, fp32, median of 5):")
    print_table(["step", "ms", "share of encode + sample"],
                [["encode", f"{1000 * encode:.0f}", "-"], [f"sample {args.samples}", f"{1000 * sample:.0f}", "-"],
                 ["scorer (z-free pass + MLPs)", f"{1000 * score:.0f}", f"{100 * score / (encode + sample):.1f} %"]])
    if args.json:
        Path(args.json).write_text(json.dumps({
            "slices": count, "areas": areas, "spearman": correlations, "review_threshold": float(threshold),
            "flag": flag_rows, "ms": {"encode": 1000 * encode, "sample": 1000 * sample, "score": 1000 * score},
            "per_slice": {"predicted": {k: v.tolist() for k, v in predicted.items()},
                          "true": {k: v.tolist() for k, v in true.items()}, "entropy": entropy.tolist(),
                          "spread": spread.tolist(), "decoder_iou": truth.decoder_iou.tolist()}}, indent=2))
    print(f"\nwrote {args.png}")


if __name__ == "__main__":
    main()
