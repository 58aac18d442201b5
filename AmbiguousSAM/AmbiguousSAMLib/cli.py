"""`ambiguous-sam`: the command line of the core (demo, train, fit-gate, tune-sampling, train-scorer, evaluate, segment,
serve)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import AmbiguousSAMError
from .head_names import HEAD_HELP, SHIPPED_HEAD_FILES
from .limits import LATENT_DRAWS, RUNTIMES

if TYPE_CHECKING:  # torch is imported by the commands that need it, not to parse arguments
    import numpy as np

    from .predictor import Predictor


def _demo(args: argparse.Namespace) -> None:
    from .demo import run_demo

    summary = run_demo(args.out, device=args.device, precision=args.precision, samples=args.samples, seed=args.seed,
                       runtime=args.runtime)
    volumes = ", ".join(f"{c['volume_mm3']:.0f}" for c in summary["candidates"])
    print(f"{summary['input']}: {len(summary['candidates'])} candidates ({volumes} mm^3) on slices "
          f"{min(summary['slices'])}-{max(summary['slices'])} in {summary['seconds']:.1f} s")
    print(f"wrote {Path(args.out).resolve()}/ (candidates.seg.nrrd, uncertainty.nrrd, summary.json, montage.png)")


def _train(args: argparse.Namespace) -> None:
    import torch

    from .crops import nested_order, open_crop_file, rows_with_raters
    from .predictor import Predictor
    from .training.embedding_cache import EmbeddingCache
    from .training.seqsam_trainer import SeqSAMTrainConfig, train_seqsam
    from .training.trainer import TrainConfig, train

    torch.set_num_threads(args.threads) if args.threads else None
    predictor = Predictor(backbone=args.backbone, checkpoint=args.checkpoint, device=args.device,
                          precision=args.precision, runtime=args.runtime)
    with open_crop_file(args.data) as data:
        rows = nested_order(rows_with_raters(data["masks"])[:: args.every])
    if args.head == "ua-sam":
        _train_ua_sam(args, predictor, rows)
        return
    cache = EmbeddingCache(args.cache)
    wanted = len(rows) if args.encode_limit is None else min(args.encode_limit, len(rows))
    if cache.meta().get("done", 0) < wanted or cache.meta()["settings"]["rows"] != len(rows):
        print(f"encoding {wanted} of {len(rows)} crops into {args.cache} (once; resumable)", file=sys.stderr)
        cache.build(args.data, rows, predictor, progress=_progress("encode"), limit=args.encode_limit)
    # Unset numbers take the chosen head's defaults: the two heads train at very different batch sizes and rates.
    given = {name: getattr(args, name) for name in ("batch_size", "steps", "lr") if getattr(args, name) is not None}
    if args.head == "seqsam":
        config = SeqSAMTrainConfig(train_length=args.train_length, empty_raters=args.empty_raters, seed=args.seed,
                                   device=str(predictor.device), precision=args.precision, **given)
        path = train_seqsam(cache, predictor.backbone, config, args.out, stop_after=args.stop_after, rows=wanted)
    else:
        config = TrainConfig(injection=args.injection, latent_dim=args.latent_dim, beta=args.beta, seed=args.seed,
                             set_weight=args.set_weight, set_samples=args.set_samples,
                             device=str(predictor.device), init=args.init, **given)
        path = train(cache, predictor.backbone, config, args.out, stop_after=args.stop_after, rows=wanted)
    print(f"wrote {path}" if path else f"stopped after {args.stop_after} steps; run the same command to continue")


def _train_ua_sam(args: argparse.Namespace, predictor: Predictor, rows: np.ndarray) -> None:
    """`train --head ua-sam`: its cache holds the encoder's features before the adapted blocks, not embeddings."""
    from .heads.ua_sam import UASAM
    from .training.ua_sam_features import EarlyFeatureCache
    from .training.ua_sam_trainer import UASAMTrainConfig, train_ua_sam

    cache = EarlyFeatureCache(args.cache)
    wanted = len(rows) if args.encode_limit is None else min(args.encode_limit, len(rows))
    if cache.meta().get("done", 0) < wanted or cache.meta()["settings"]["rows"] != len(rows):
        print(f"computing UA-SAM's early features of {wanted} of {len(rows)} crops into {args.cache} (once; "
              "resumable)", file=sys.stderr)
        features = UASAM(predictor.backbone, adapted_blocks=args.adapted_blocks).to(predictor.device).eval()
        cache.build(args.data, rows, features, progress=_progress("features"), limit=args.encode_limit)
    given = {name: getattr(args, name) for name in ("batch_size", "steps", "lr") if getattr(args, name) is not None}
    config = UASAMTrainConfig(latent_dim=args.latent_dim, adapted_blocks=args.adapted_blocks, beta=args.beta,
                              seed=args.seed, device=str(predictor.device), precision=args.precision, **given)
    path = train_ua_sam(cache, predictor.backbone, config, args.out, stop_after=args.stop_after, rows=wanted)
    print(f"wrote {path}" if path else f"stopped after {args.stop_after} steps; run the same command to continue")


def _fit_gate(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from .heads.checkpoint import HEAD, head_file, read_checkpoint, save_head
    from .heads.presence_window import DEFAULT_CONTEXT, FITTED_CONTEXT
    from .predictor import Predictor
    from .training.embedding_cache import EmbeddingCache
    from .training.presence_fit import refit_gate

    head_path = head_file(args.head)
    if Path(args.out).resolve() == head_path.resolve():
        raise AmbiguousSAMError(f"--out {args.out} is the head being refitted; write the new head to another file "
                                "(the input is never overwritten).")
    cache = EmbeddingCache(args.cache)
    meta = cache.meta()
    done = meta.get("done", 0)
    start, stop = args.rows
    if not 0 <= start < stop <= done:
        raise AmbiguousSAMError(f"--rows {start} {stop} is not a range of the {done} crops encoded in {args.cache}; "
                                f"give 0 <= START < STOP <= {done} (the cache is built by 'ambiguous-sam train').")
    window_rows = None
    if args.evidence == "window":
        window_rows = _window_rows(args.window_rows, (start, stop), meta.get("count", done), args.cache)
    elif args.window_rows is not None or args.window_context is not None:
        raise AmbiguousSAMError("--window-rows and --window-context are for --evidence window only (the other gates "
                                "have no CNN).")
    context = FITTED_CONTEXT if args.window_context is None else args.window_context
    if not 1.0 <= context <= 6.0:
        raise AmbiguousSAMError(f"--window-context {context} is out of range: give the window's side over the box's "
                                f"longer side, between 1 and 6 ({FITTED_CONTEXT:g} by default; {DEFAULT_CONTEXT:g} was "
                                "the first window gates').")
    torch.set_num_threads(args.threads) if args.threads else None
    predictor = Predictor(backbone=args.backbone, checkpoint=args.checkpoint, device=args.device,
                          precision=args.precision, runtime=args.runtime)

    def report(epoch: int, epochs: int, loss: float) -> None:
        print(f"window CNN on {len(window_rows)} crops: epoch {epoch}/{epochs}, BCE {loss:.4f}", flush=True)

    head, bce = refit_gate(predictor.backbone, str(head_path), cache, np.arange(start, stop), args.evidence,
                           seed=args.seed, window_rows=window_rows, window_context=context, progress=report)
    payload = read_checkpoint(head_path, HEAD)
    extra = {**payload["extra"], "gate": {"evidence": args.evidence, "cache": meta["settings"],
                                          "rows": [start, stop], "presence_bce": bce}}
    if window_rows is not None:
        extra["gate"]["window_rows"] = [int(window_rows[0]), int(window_rows[-1]) + 1]
        extra["gate"]["window_context"] = context
    save_head(head, args.out, predictor.backbone.spec.name, extra=extra)
    print(f"gate ({args.evidence} evidence) fitted on cached crops {start}-{stop}: BCE {bce:.4f}; wrote {args.out} "
          "(gate offset reset to 0: run tune-sampling on it)")


def _window_rows(asked: list[int] | None, gate_rows: tuple[int, int], count: int, cache: str) -> "np.ndarray":
    """The crops a window gate's CNN trains on: --window-rows, else every crop of the cache after the gate's rows.
    The CNN reads pixels only, so its crops need not be encoded yet: the cache holds all its crops' images from
    the start. They must not overlap the gate's rows: the gate has to read the CNN on crops it never trained on."""
    import numpy as np

    start, stop = asked if asked is not None else (gate_rows[1], count)
    if not 0 <= start < stop <= count:
        hint = "" if asked is not None else " (by default the crops after --rows: none are left, give --window-rows)"
        raise AmbiguousSAMError(f"--window-rows {start} {stop} is not a range of the {count} crops in "
                                f"{cache}; give 0 <= START < STOP <= {count}{hint}.")
    if start < gate_rows[1] and gate_rows[0] < stop:
        raise AmbiguousSAMError(f"--window-rows {start} {stop} overlaps --rows {gate_rows[0]} {gate_rows[1]}: the "
                                "gate must read the CNN on crops the CNN was not trained on; give disjoint ranges.")
    return np.arange(start, stop)


def _evaluate(args: argparse.Namespace) -> None:
    import torch

    from .evaluation import (by_contrast, by_rater_count, evaluate, format_contrast_table, format_rater_table,
                             format_table, save_samples)
    from .heads.baselines import BASELINES
    from .heads.checkpoint import head_file, load_any_head
    from .heads.seqsam import SeqSAM
    from .heads.seqsam_lengths import length_rows
    from .predictor import Predictor

    if any(not 1 <= m <= 256 for m in args.seqsam_lengths):
        raise AmbiguousSAMError(f"--seqsam-lengths takes numbers of masks from 1 to 256; got "
                                f"{' '.join(map(str, args.seqsam_lengths))}.")
    per_slice = [option for option, value in (("--limit", args.limit), ("--save-samples", args.save_samples),
                                              ("--reliability", args.reliability)) if value is not None]
    if args.nodules and per_slice:
        raise AmbiguousSAMError(f"--nodules scores whole nodules, and {', '.join(per_slice)} "
                                f"{'applies' if len(per_slice) == 1 else 'apply'} only to slices: "
                                f"leave {'it' if len(per_slice) == 1 else 'them'} out, or drop --nodules.")
    known = ("heads", *(baseline.name for baseline in BASELINES))
    methods = args.methods or list(known)
    unknown = [name for name in methods if name not in known]
    if unknown:
        raise AmbiguousSAMError(f"Unknown method(s) {', '.join(unknown)} for --methods; choose from "
                                f"{', '.join(known)} ('heads' are the --head files).")
    torch.set_num_threads(args.threads) if args.threads else None
    predictor = Predictor(backbone=args.backbone, checkpoint=args.checkpoint, device=args.device,
                          precision=args.precision, runtime=args.runtime)
    backbone = predictor.backbone
    paths = [head_file(head) for head in args.head or [None]]
    heads = [load_any_head(backbone, path).to(predictor.device) for path in paths] if "heads" in methods else []
    labels = [f" ({path.name})" if len(heads) > 1 else "" for path in paths]
    rows = []
    for head, label in zip(heads, labels):  # one row per file: the head's kind alone would name every row alike
        if isinstance(head, SeqSAM):  # deterministic: one row per sequence length instead of per seed
            rows += length_rows(head, args.seqsam_lengths, label)
        else:
            head.name += label
            rows.append(head)
    samplers = [*rows, *(baseline(backbone) for baseline in BASELINES if baseline.name in methods)]
    if args.nodules:
        _evaluate_nodules(args, samplers, predictor)
        return
    index, results = evaluate(args.data, samplers, predictor, samples=args.samples, seed=args.seed,
                              limit=args.limit, cache=args.cache, keep_samples=args.save_samples is not None,
                              progress=_progress("evaluate"), half=args.half)
    table, by_raters, contrast = format_table(results, args.samples), format_rater_table(results), \
        format_contrast_table(results)
    print(table, by_raters, contrast, sep="\n\n")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "data": str(args.data), "samples": args.samples, "seed": args.seed, "slices": int(len(index)),
            "half": args.half,
            "backbone": backbone.spec.name, "precision": args.precision,
            "methods": {r.name: {**r.summary(), "by_raters_marked": by_rater_count(r), "by_contrast": by_contrast(r)}
                        for r in results},
            "table": table, "by_raters_marked": by_raters, "by_contrast": contrast}, indent=2))
    if args.save_samples:
        save_samples(args.save_samples, index, results)
    if args.reliability:
        from .reliability import save_reliability_diagram

        save_reliability_diagram(args.reliability, results, f"{Path(args.data).name}: {len(index)} slices, "
                                                            f"{args.samples} samples, seed {args.seed}")


def _evaluate_nodules(args: argparse.Namespace, samplers: list, predictor: Predictor) -> None:
    """`evaluate --nodules`: every method on whole nodules (nodule_evaluation.py), one table and its JSON."""
    from .nodule_evaluation import by_contrast, evaluate_nodules, format_nodule_table, summarise

    results = evaluate_nodules(args.data, samplers, predictor, samples=args.samples, seed=args.seed, cache=args.cache,
                               half=args.half, progress=_progress("nodules"))
    table = format_nodule_table(results, args.samples)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "data": str(args.data), "samples": args.samples, "seed": args.seed, "half": args.half, "unit": "nodule",
            "backbone": predictor.backbone.spec.name, "precision": args.precision,
            "methods": {name: {**summarise(scores), "by_contrast": by_contrast(scores)}
                        for name, scores in results.items()},
            "table": table}, indent=2))


def _tune_sampling(args: argparse.Namespace) -> None:
    import torch

    from .evaluation import evaluation_rows
    from .heads.checkpoint import HEAD, head_file, load_head, read_checkpoint, save_head
    from .predictor import Predictor
    from .crops import load_crops, open_crop_file
    from .training.embedding_cache import EmbeddingCache
    from .metrics import MEAN_SCORES
    from .training.sampling_tuning import tune_sampling

    head_path = head_file(args.head)
    if Path(args.out).resolve() == head_path.resolve():
        raise AmbiguousSAMError(f"--out {args.out} is the head being tuned; write the tuned head to a new file "
                                "(the input is never overwritten).")
    torch.set_num_threads(args.threads) if args.threads else None
    predictor = Predictor(backbone=args.backbone, checkpoint=args.checkpoint, device=args.device,
                          precision=args.precision, runtime=args.runtime)
    head = load_head(predictor.backbone, head_path).to(predictor.device)
    head.latent_draws = args.latent_draws or head.latent_draws
    with open_crop_file(args.data) as file:
        rows = evaluation_rows(file["masks"], args.limit)
    cache = EmbeddingCache(args.cache)
    cache.build(args.data, rows, predictor, max_shift=0, seed=args.seed, progress=_progress("encode"))
    crops = load_crops(args.data, rows)
    best, table = tune_sampling(head, cache.embeddings(), crops.images, crops.masks, crops.index, args.samples, args.seed,
                                args.temperatures, args.offsets)
    print("| temperature | offset | " + " | ".join(f"{k} (tune)" for k in MEAN_SCORES) + " | "
          + " | ".join(f"{k} (check)" for k in MEAN_SCORES) + " |")
    print("|" + "---|" * (2 + 2 * len(MEAN_SCORES)))
    for entry in table:
        cells = [f"{entry[half][k]:.3f}" for half in ("tune", "check") for k in MEAN_SCORES]
        chosen = " *" if entry is best else ""
        print(f"| {entry['temperature']:.2f} | {entry['offset']:+.2f}{chosen} | " + " | ".join(cells) + " |")
    head.prior_temperature, head.presence_offset = best["temperature"], best["offset"]
    payload = read_checkpoint(head_path, HEAD)
    extra = {key: value for key, value in payload["extra"].items() if key != "presence_offset_tuning"}
    extra["sampling_tuning"] = {"data": str(args.data), "slices": int(len(rows)), "seed": args.seed,
                                "samples": args.samples, "latent_draws": head.latent_draws, "table": table}
    save_head(head, args.out, predictor.backbone.spec.name, extra=extra)
    print(f"temperature {best['temperature']:.2f}, offset {best['offset']:+.2f}, {head.latent_draws} latent draws "
          "(lowest GED on the even slices, a tie within 0.001 going to the best mean of HM-IoU, D_avg and majority "
          f"Dice there); wrote {args.out}")


def _train_scorer(args: argparse.Namespace) -> None:
    import time

    import torch

    from .heads.checkpoint import head_file
    from .heads.scorer_checkpoint import save_scorer
    from .predictor import Predictor
    from .training.embedding_cache import EmbeddingCache
    from .training.scorer_fit import fit_scorer
    from .training.scorer_targets import training_examples

    cache = EmbeddingCache(args.cache)
    if not cache.meta():
        raise AmbiguousSAMError(f"{args.cache} holds no embedding cache; build one with 'ambiguous-sam train' "
                                "(its --cache) first.")
    torch.set_num_threads(args.threads) if args.threads else None
    predictor = Predictor(backbone=args.backbone, checkpoint=args.checkpoint, device=args.device,
                          precision=args.precision, runtime=args.runtime)
    rows = cache.meta()["done"] if args.rows is None else args.rows
    targets = args.targets or Path(args.cache) / "scorer_targets"
    start = time.perf_counter()
    examples = training_examples(targets, cache, predictor.backbone, head_file(args.head), rows, args.seed,
                                 progress=_progress("targets"))
    target_seconds = time.perf_counter() - start
    scorer, report = fit_scorer(examples, seed=args.seed, epochs=args.epochs, progress=_progress("fit"))
    report.update(rows=rows, targets=str(targets), target_seconds=target_seconds,
                  fit_seconds=time.perf_counter() - start - target_seconds)
    save_scorer(scorer, args.out, predictor.backbone.spec.name, extra={"train": report,
                                                                        "cache": cache.meta()["settings"]})
    print("| estimate | held-out MSE | constant's MSE | best epoch |\n|---|---|---|---|")
    for name, mse in report["held_out_mse"].items():
        print(f"| {name} | {mse:.4f} | {report['constant_mse'][name]:.4f} | {report['best_epoch'][name]} |")
    print(f"targets of {rows} crops ({target_seconds:.0f} s, kept in {targets}), fit {report['fit_seconds']:.0f} s "
          f"({args.epochs} epochs, {report['held_out_patients']} patients held out); wrote {args.out}")


def _segment(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from .jobs import (REVIEW_COLUMNS, SegmentJob, check_dicom_input, check_dicom_options, check_input,
                       check_outputs, check_review_table, load_case, read_jobs, review_table, run_job,
                       write_review_table)

    bad_rows: list[tuple[int, str]] = []
    if args.review_table is not None:
        if not args.batch:
            raise AmbiguousSAMError("--review-table lists the lesions of a --batch; with one INPUT, its summary.json "
                                    "holds the review flag.")
    if args.batch:
        if args.series_uid is not None or args.dicom_out is not None:
            raise AmbiguousSAMError("--series-uid and --dicom-out go with one INPUT, not with --batch (each row has "
                                    "its own input and output).")
        jobs, bad_rows = read_jobs(args.batch, args.samples, args.seed, args.allow_non_ct)
        for line, reason in bad_rows:
            print(f"{args.batch}, line {line}: skipped: {reason.rstrip('.')}.", file=sys.stderr)
        if not jobs:
            raise AmbiguousSAMError(f"Every row of {args.batch} was refused (see above); nothing was run.")
        if args.review_table is not None:
            check_review_table(Path(args.review_table), args.overwrite,
                               inputs=[Path(args.batch), *(job.input for job in jobs)])
    else:
        if args.input is None or args.out is None:
            raise AmbiguousSAMError("Give INPUT and -o OUT (or --batch jobs.csv).")
        corners, space = None, "LPS"
        given = [name for name, value in (("--box", args.box), ("--box-ras", args.box_ras), ("--box-lps", args.box_lps))
                 if value is not None]
        if len(given) > 1:
            raise AmbiguousSAMError(f"Give one box, not {' and '.join(given)}: --box I0 J0 I1 J1 with --slice K "
                                    "(voxels), or --box-ras / --box-lps with two corners (mm).")
        if (args.box_ras or args.box_lps) and args.slice is not None:
            raise AmbiguousSAMError("--slice goes with --box (voxels); a --box-ras/--box-lps box picks its slice "
                                    "from its corners.")
        if args.box_ras or args.box_lps:
            values = args.box_ras or args.box_lps
            corners, space = (tuple(values[:3]), tuple(values[3:])), ("RAS" if args.box_ras else "LPS")
        elif args.box is None or args.slice is None:
            raise AmbiguousSAMError("Give --box I0 J0 I1 J1 with --slice K, or --box-ras/--box-lps with two corners.")
        jobs = [SegmentJob(input=Path(args.input), out=Path(args.out), box_ijk=args.box and tuple(args.box),
                           slice_k=args.slice, corners=corners, space=space, samples=args.samples, seed=args.seed,
                           series_uid=args.series_uid, dicom_out=args.dicom_out and Path(args.dicom_out))]
        check_input(jobs[0].input)
        check_dicom_options(jobs[0], args.overwrite)
    ready, refused = check_outputs(jobs, args.overwrite)  # before the model loads: a wrong -o costs nothing
    if refused and len(jobs) == 1:
        raise refused[0][1]
    loaded = None
    if not args.batch:  # a DICOM folder's headers (a batch checks them row by row in read_jobs), then the volume
        check_dicom_input(jobs[0], args.allow_non_ct)
        loaded = load_case(jobs[0], args.allow_non_ct)
    for job, error in refused:
        print(f"{job.input}: skipped: {error}", file=sys.stderr)
    if not ready:
        raise AmbiguousSAMError(f"All {len(jobs) + len(bad_rows)} cases were refused (see above); nothing was "
                                "written.")
    from .segmenter import LesionSegmenter

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    segmenter = LesionSegmenter(backbone=args.backbone, head=args.head, checkpoint=args.checkpoint,
                                device=args.device, precision=args.precision, runtime=args.runtime,
                                scorer=args.scorer)
    failures = len(refused) + len(bad_rows)
    done = []
    for job in tqdm(ready, desc="segment", disable=len(jobs) == 1):
        try:
            summary = run_job(segmenter, job, overwrite=args.overwrite, allow_non_ct=args.allow_non_ct,
                              case=loaded)
            done.append((job, summary))
            volumes = ", ".join(f"{c['volume_mm3']:.0f}" for c in summary["candidates"])
            print(f"{job.input} -> {job.out}: {len(summary['candidates'])} candidates ({volumes} mm^3), "
                  f"{summary['seconds']:.1f} s; review: {summary['review']['state']}"
                  + (f"; DICOM objects in {job.dicom_out}" if job.dicom_out else ""))
        except AmbiguousSAMError as error:
            if len(jobs) == 1:
                raise
            failures += 1
            print(f"{job.input}: skipped: {error}", file=sys.stderr)
    if args.batch and done:
        rows = review_table(done)
        print(f"\nLesions to review first ({sum(row['review'] == 'needs review' for row in rows)} of {len(rows)} "
              "flagged; flagged first, then by predicted expert disagreement):")
        _print_table(REVIEW_COLUMNS, [[row[column] or "-" for column in REVIEW_COLUMNS] for row in rows])
        if args.review_table is not None:
            write_review_table(Path(args.review_table), rows)
            print(f"wrote {args.review_table}")
    if failures:
        raise AmbiguousSAMError(f"{failures} of {len(jobs) + len(bad_rows)} cases failed or were refused (see "
                                "above); the others were written.")


def _print_table(header: tuple[str, ...], rows: list[list[str]]) -> None:
    """Columns padded to their widest cell, so a table reads in a terminal."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    for line in [list(header), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip())


def _serve(args: argparse.Namespace) -> None:
    from .server import ServeOptions, serve

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    serve(ServeOptions(host=args.host, port=args.port, token_file=args.token_file, certfile=args.certfile,
                       keyfile=args.keyfile, max_request_mb=args.max_request_mb, ready_file=args.ready_file,
                       exit_with_stdin=args.exit_with_stdin, backbone=args.backbone, head=args.head,
                       checkpoint=args.checkpoint, device=args.device, precision=args.precision,
                       runtime=args.runtime, scorer=args.scorer))


def _progress(label: str):
    from tqdm import tqdm

    bar: dict = {}

    def update(done: int, total: int) -> None:
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc=label, initial=0)
        bar["bar"].update(done - bar["bar"].n)
        if done == total:
            bar["bar"].close()

    return update


def _add_scorer_options(parser: argparse.ArgumentParser) -> None:
    """--scorer PATH / --no-scorer: which UncertainSAM scorer rates the candidates (a file that cannot be read is
    a warning, and the run goes on without scores)."""
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--scorer", default="default", help="UncertainSAM scorer file that gives each candidate its "
                        "expected quality and each lesion its review flag (default: the shipped LIDC scorer)")
    choice.add_argument("--no-scorer", dest="scorer", action="store_const", const=None,
                        help="no scorer: no expected quality, review flag 'not available'")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backbone", default="litemedsam",
                        help="litemedsam (embedded), sam_vit_b/l/h or medsam_vit_b (need --checkpoint)")
    parser.add_argument("--checkpoint", help="local weights file for a SAM/MedSAM backbone")
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES,
                        help="encoder engine: auto (default: OpenVINO on a CPU, PyTorch on CUDA), torch or openvino")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ambiguous-sam", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an unexpected error")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="segment the LIDC-IDRI-0001 nodule (or pydicom's CT slice) and draw it")
    demo.add_argument("--out", default="out/demo")
    demo.add_argument("--device", default=None)
    demo.add_argument("--precision", default="bf16", choices=("fp32", "bf16"))
    demo.add_argument("--runtime", default="auto", choices=RUNTIMES)
    demo.add_argument("--samples", type=int, default=16)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(run=_demo)

    train = commands.add_parser("train", help="train a Probabilistic SAM (or SeqSAM) head on multi-rater crops")
    train.add_argument("--data", required=True, help="npz in the lidc-crops format (training split)")
    train.add_argument("--every", type=int, default=1, help="use every N-th slice with a rater mark")
    train.add_argument("--cache", required=True, help="folder for the fp16 embedding cache")
    train.add_argument("--encode-limit", type=int, help="encode (and train on) only the first N crops of the subset "
                       "(the cache is in nested order: the first quarter is every 4th crop, the first half every 2nd)")
    train.add_argument("--out", required=True, help="folder for checkpoints, loss curves and head.pt")
    train.add_argument("--head", default="probabilistic_sam", choices=("probabilistic_sam", "seqsam", "ua-sam"),
                       help="which head to train (SeqSAM: the recurrent multi-mask head, heads/seqsam.py; UA-SAM: "
                            "z-conditioned adapters in the image encoder, heads/ua_sam.py)")
    train.add_argument("--adapted-blocks", type=int, default=1, choices=(1, 2),
                       help="UA-SAM: how many of the encoder's last blocks carry adapters (its --cache is built for "
                            "that number)")
    train.add_argument("--train-length", type=int, default=4,
                       help="SeqSAM: decoder steps M unrolled per crop (M > 4 raters trains the chunk pooling)")
    train.add_argument("--empty-raters", default="target", choices=("target", "masked"),
                       help="SeqSAM: an empty rater mask is a target ('target', this project's protocol) or has its "
                            "matched cost zeroed ('masked', the authors' code)")
    train.add_argument("--injection", default="hypernetwork", choices=("hypernetwork", "prompt"))
    train.add_argument("--latent-dim", type=int, default=6)
    train.add_argument("--beta", type=float, default=10.0)
    train.add_argument("--batch-size", type=int, help="default 8 (Probabilistic SAM), 2 (SeqSAM), 4 (UA-SAM)")
    train.add_argument("--steps", type=int, help="default 2000 (Probabilistic SAM), 400 (SeqSAM), 300 (UA-SAM)")
    train.add_argument("--lr", type=float, help="default 1e-3 (Probabilistic SAM), 3e-4 (SeqSAM), 1e-3 (UA-SAM)")
    train.add_argument("--set-weight", type=float, default=0.0,
                       help="weight of the set-level loss (soft-IoU energy distance between K prior samples and "
                            "the raters) added to the ELBO; 0: the ELBO alone")
    train.add_argument("--set-samples", type=int, default=8, help="prior samples K per crop for the set loss")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--stop-after", type=int, help="end this run after N steps (resume later)")
    train.add_argument("--init", help="start from this head file's weights (those whose names and shapes match)")
    _add_model_options(train)
    train.set_defaults(run=_train, precision="bf16")

    gate = commands.add_parser("fit-gate", help="refit a head's presence gate on cached training crops (optionally "
                                                "reading the image's appearance), its outline unchanged")
    gate.add_argument("--cache", required=True, help="training embedding cache built by 'ambiguous-sam train'")
    gate.add_argument("--rows", type=int, nargs=2, required=True, metavar=("START", "STOP"),
                      help="cached crops START..STOP-1 (nested order: pick crops the outline was not trained on)")
    gate.add_argument("--head", help="head file (or 'default') whose gate is refitted (default: the shipped head)")
    gate.add_argument("--evidence", default="appearance", choices=("decoder", "appearance", "window"),
                      help="what the gate reads: the decoder's view, that and nine appearance statistics "
                           "(default), or those and a CNN on the image around the box ('window', trained first)")
    gate.add_argument("--window-rows", type=int, nargs=2, metavar=("START", "STOP"),
                      help="cached crops the window CNN trains on (default: every crop of the cache after --rows; "
                           "it reads pixels only, so they need not be encoded yet)")
    gate.add_argument("--window-context", type=float,
                      help="the window CNN's field: its side over the box's longer side, plus 16 pixels (default 3)")
    gate.add_argument("--out", required=True, help="where to write the new head file")
    gate.add_argument("--seed", type=int, default=0)
    _add_model_options(gate)
    gate.set_defaults(run=_fit_gate, precision="bf16")

    evaluate = commands.add_parser("evaluate", help="score heads and baselines with the METHODS.md protocol")
    evaluate.add_argument("--data", required=True, help="npz in the lidc-crops format")
    evaluate.add_argument("--samples", type=int, default=16)
    evaluate.add_argument("--limit", type=int, help="evenly spaced subset of N slices")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--head", action="append", help="head file(s), or a shipped head's name ("
                          f"{', '.join(map(repr, SHIPPED_HEAD_FILES))}); default: the shipped head")
    evaluate.add_argument("--seqsam-lengths", type=int, nargs="+", default=[3, 10, 16],
                          help="a SeqSAM head scores one row per number of masks M (its masks ignore --seed and "
                               "--samples)")
    evaluate.add_argument("--cache", help="embedding cache folder (reused across runs)")
    evaluate.add_argument("--json", help="write the summary here")
    evaluate.add_argument("--save-samples", help="write samples (N, K, H, W) and index (N,) to this npz")
    evaluate.add_argument("--methods", nargs="+", help="only these rows: 'heads' (the --head files) and/or "
                                                       "deterministic, box_jitter, sam_multimask, mc_dropout "
                                                       "(default: all)")
    evaluate.add_argument("--reliability", help="write the reliability diagram (PNG) of every method here")
    evaluate.add_argument("--half", choices=("even", "odd"), help="score only the even or the odd protocol slices "
                          "(tune-sampling chooses on the even ones: report a tuned head on the odd ones)")
    evaluate.add_argument("--nodules", action="store_true",
                          help="score whole nodules in 3D instead of slices: each nodule's consecutive crops stacked, "
                               "candidates drawn as a click on a volume draws them (needs the 'nodule' and 'slice' "
                               "keys; --half then takes every other nodule)")
    _add_model_options(evaluate)
    evaluate.set_defaults(run=_evaluate)
    tune = commands.add_parser("tune-sampling", help="choose the prior's temperature and the presence gate's "
                                                     "offset on validation slices")
    tune.add_argument("--data", required=True, help="npz in the lidc-crops format (validation split)")
    tune.add_argument("--limit", type=int, help="evenly spaced subset of N slices")
    tune.add_argument("--cache", required=True, help="embedding cache folder (reused across runs)")
    tune.add_argument("--head", help="head file (or 'default') to tune (default: the shipped head)")
    tune.add_argument("--out", required=True, help="where to write the tuned head file")
    tune.add_argument("--samples", type=int, default=16)
    tune.add_argument("--seed", type=int, default=0)
    tune.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0],
                      help="prior temperatures to try (above 3 the 2D GED gains < 0.002 while, in 3D, candidates "
                           "start to run past the lesion; see the model card)")
    tune.add_argument("--offsets", type=float, nargs="+", default=[-0.9, -0.6, -0.3, 0.0, 0.3])
    tune.add_argument("--latent-draws", choices=LATENT_DRAWS,
                      help="how the K latent draws are laid out, tuned and written with the pair: 'random' "
                           "(independent) or 'sobol' (a scrambled Sobol net, evenly spread; heads/latent_draws.py); "
                           "default: the head's own")
    _add_model_options(tune)
    tune.set_defaults(run=_tune_sampling, precision="bf16")
    scorer = commands.add_parser("train-scorer", help="train the UncertainSAM scorer (expected quality, gaps, expert "
                                                      "disagreement) on a training embedding cache")
    scorer.add_argument("--cache", required=True, help="training embedding cache built by 'ambiguous-sam train'")
    scorer.add_argument("--rows", type=int, help="use the first N encoded crops (default: all encoded)")
    scorer.add_argument("--targets", help="folder for the computed targets (resumable; default: CACHE/scorer_targets)")
    scorer.add_argument("--head", help="head file (or 'default') whose samples are the candidates (default: the "
                        "shipped head)")
    scorer.add_argument("--out", required=True, help="where to write the scorer file")
    scorer.add_argument("--epochs", type=int, default=40)
    scorer.add_argument("--seed", type=int, default=0)
    _add_model_options(scorer)
    scorer.set_defaults(run=_train_scorer)
    segment = commands.add_parser("segment", help="K candidates + uncertainty for the lesion in a box of a CT volume")
    segment.add_argument("input", nargs="?", help=".nrrd, .nii(.gz), .mha or a DICOM series folder")
    segment.add_argument("--box", nargs=4, type=float, metavar=("I0", "J0", "I1", "J1"), help="voxel box on --slice")
    segment.add_argument("--slice", type=int, metavar="K", help="axial slice index of the box")
    segment.add_argument("--box-ras", nargs=6, type=float, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"))
    segment.add_argument("--box-lps", nargs=6, type=float, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"))
    segment.add_argument("-o", "--out", help="output folder (written atomically)")
    segment.add_argument("--batch", help="CSV of jobs: input,out,i0,j0,i1,j1,slice[,samples,seed]")
    segment.add_argument("--review-table", metavar="FILE.csv", help="with --batch: also write the printed table of "
                         "lesions, those flagged for review first, as CSV")
    segment.add_argument("--series-uid", metavar="UID", help="the series to read when the DICOM folder holds several")
    segment.add_argument("--dicom-out", metavar="DIR", help="also write DICOM SEG (candidates + consensus; mean "
                         "probability), a Parametric Map (uncertainty) and its colour presentation state, referencing "
                         "the input series, into this new folder (DICOM input only)")
    segment.add_argument("--samples", type=int, default=16)
    segment.add_argument("--seed", type=int, default=0)
    segment.add_argument("--head", default="default", help=HEAD_HELP)
    segment.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    segment.add_argument("--allow-non-ct", action="store_true", help="segment volumes that are not CT in HU")
    _add_scorer_options(segment)
    _add_model_options(segment)
    segment.set_defaults(run=_segment, precision="bf16")
    serve = commands.add_parser("serve", help="keep the model loaded in this process and answer clicks over HTTP "
                                              "(Slicer's inference server; also a remote GPU server)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (beyond loopback: needs --token-file)")
    serve.add_argument("--port", type=int, default=8765, help="port (0: any free one, see --ready-file)")
    serve.add_argument("--token-file", type=Path, help="file holding the token clients must send (Bearer)")
    serve.add_argument("--certfile", type=Path, help="PEM certificate: serve HTTPS")
    serve.add_argument("--keyfile", type=Path, help="PEM private key of --certfile")
    serve.add_argument("--max-request-mb", type=float, default=512.0, help="refuse larger requests (HTTP 413)")
    serve.add_argument("--ready-file", type=Path, help="write {url, pid, version} here once the model is loaded")
    serve.add_argument("--exit-with-stdin", action="store_true", help="shut down when stdin closes (the parent "
                                                                      "process holds it)")
    serve.add_argument("--head", default="default", help=HEAD_HELP)
    _add_scorer_options(serve)
    _add_model_options(serve)
    serve.set_defaults(run=_serve, precision="bf16")
    return parser


#: Options that count something (at least 1), and real-valued ones with their allowed range, by argparse name.
COUNT_OPTIONS = ("every", "steps", "batch_size", "latent_dim", "encode_limit", "stop_after", "limit", "epochs",
                 "train_length")
RANGED_OPTIONS = {"lr": (0.0, False, "a positive learning rate"), "beta": (0.0, True, "a KL weight >= 0"),
                  "temperatures": (0.0, False, "positive prior temperatures"),
                  "offsets": (-math.inf, False, "finite gate offsets"),
                  "max_request_mb": (0.0, False, "a positive size in MB"),
                  "set_weight": (0.0, True, "a set-loss weight >= 0"),
                  "set_samples": (1, False, "at least 2 samples (the set loss compares samples with each other)")}
#: Folders each command writes into: an existing file there is refused before any work (segment's -o is
#: checked with its inputs by check_output_folder; tune-sampling's --out is a file).
FOLDER_OPTIONS = {"demo": ("out",), "train": ("cache", "out"), "evaluate": ("cache",), "tune-sampling": ("cache",),
                  "train-scorer": ("cache", "targets"),
                  "fit-gate": ("cache",)}


def _check_arguments(args: argparse.Namespace) -> None:
    """The numbers, folders and device every command takes, checked before a model or a data file is loaded."""
    from .limits import check_samples, check_seed, check_threads

    for name, check in (("threads", check_threads), ("samples", check_samples), ("seed", check_seed)):
        value = getattr(args, name, None)
        if value is not None:
            check(value)
    for name in COUNT_OPTIONS:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise AmbiguousSAMError(f"--{name.replace('_', '-')} must be at least 1; got {value}.")
    for name, (low, inclusive, meaning) in RANGED_OPTIONS.items():
        values = getattr(args, name, None)
        for value in values if isinstance(values, list) else [] if values is None else [values]:
            if not math.isfinite(value) or value < low or (value == low and not inclusive):
                raise AmbiguousSAMError(f"--{name.replace('_', '-')} takes {meaning}; got {value:g}.")
    if getattr(args, "port", None) is not None and not 0 <= args.port <= 65535:
        raise AmbiguousSAMError(f"--port must be 0 (any free port) to 65535; got {args.port}.")
    for name in FOLDER_OPTIONS.get(args.command, ()):
        folder = getattr(args, name, None)
        if folder and Path(folder).exists() and not Path(folder).is_dir():
            raise AmbiguousSAMError(f"--{name} {folder} is a file; it must be a folder (new or existing).")
    if getattr(args, "device", None) is not None:
        from .device import resolve_device  # imports torch: only when a device was named

        resolve_device(args.device)


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input exits 2 with the reason, an unexpected failure 1, without a traceback
    unless --debug asks for it."""
    args = build_parser().parse_args(argv)
    try:
        _check_arguments(args)
        args.run(args)
    except AmbiguousSAMError as error:
        print(f"ambiguous-sam: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ambiguous-sam: cancelled; outputs that were not complete were not written.", file=sys.stderr)
        return 130
    except Exception as error:  # anything else is a bug of ours: say so, without a traceback unless asked
        if args.debug:
            raise
        print(f"ambiguous-sam: internal error: {type(error).__name__}: {error}\nRun the same command with --debug "
              "for the traceback and report it at the project's issue tracker.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
