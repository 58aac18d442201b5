"""Train a UA-SAM head on cached early features (`ambiguous-sam train --head ua-sam`): resumable, with a progress
bar and loss curves.

Each step draws a batch of cached crops, one random rater each (batches.make_batch: the box surrounds every
rater's mark, so it does not tell which rater is the target), samples z once from the posterior of that rater's
mask, runs the adapted blocks, the neck and the frozen decoder, and back-propagates DiceCE + beta * KL
(ua_sam_loss.py) into the adapters, the position variant and the two latent nets. The gradient has to pass through
the frozen decoder's transformer and the adapted encoder blocks, so a step costs about a second per crop on a
laptop CPU; bf16 autocast (native on recent CPUs) cuts that.

Every `checkpoint_every` steps the head, optimiser, scheduler and history are written atomically to `out/last.pt`;
the same command continues from there. Runs on CUDA unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import autocast
from ..heads.checkpoint import save_ua_sam
from ..heads.ua_sam import UASAM
from ..modeling.backbone import Backbone
from .batches import make_batch
from .trainer import (freeze_all_but_trained, plot_losses, resume, save_progress, start_run, steps_left,
                      usable_rows)
from .ua_sam_features import EarlyFeatureCache
from .ua_sam_loss import ua_sam_loss


@dataclass
class UASAMTrainConfig:
    latent_dim: int = 6
    #: The last stage's blocks that carry adapters (heads/ua_sam.py); the cache must be built for the same number.
    adapted_blocks: int = 1
    beta: float = 10.0
    #: KL(q || p) per crop below which the posterior is not pulled towards the prior (free bits, ua_sam_loss.py).
    free_nats: float = 3.0
    batch_size: int = 4
    steps: int = 300
    #: Every trained layer is new (the paper's 1e-4 is for training to convergence; a few hundred CPU steps need
    #: more), under a one-cycle schedule as in trainer.py.
    lr: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 10
    device: str = "cpu"
    precision: str = "bf16"


def train_ua_sam(cache: EarlyFeatureCache, backbone: Backbone, config: UASAMTrainConfig, out: str | Path,
                 show_progress: bool = True, stop_after: int | None = None, rows: int | None = None) -> Path | None:
    """Train (or resume) and return the head file `out/head.pt`, or None when stopped (`stop_after` steps
    checkpointed) before the last step. `rows` trains on the first that many cached crops only."""
    out, device = start_run(out, config.device, config.seed)
    head = UASAM(backbone, latent_dim=config.latent_dim, adapted_blocks=config.adapted_blocks).to(device)
    trainable = freeze_all_but_trained(head)
    optimizer = torch.optim.AdamW(list(trainable.values()), lr=config.lr, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=config.steps,
                                                    pct_start=0.05)
    last = out / "last.pt"
    history, start, state = resume(last, asdict(config), device, head, optimizer)
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
    rng = np.random.default_rng([config.seed, start])

    crops, features, available = cache.crops(), cache.embeddings(), usable_rows(cache, rows)
    head.train()
    end, bar = steps_left(config.steps, start, stop_after, "train ua-sam", show_progress)
    for step in bar:
        batch = make_batch(rng, features, crops["masks"], rng.choice(available, size=config.batch_size,
                                                                     replace=False), backbone.image_size)
        targets = batch.targets.to(device)
        with autocast(device, config.precision):
            logits, kl_prior, kl_posterior = head.forward_train(batch.embeddings.to(device), batch.boxes.to(device),
                                                                targets)
        losses = ua_sam_loss(logits.float(), targets, kl_prior.float(), kl_posterior.float(), config.beta,
                             config.free_nats)
        optimizer.zero_grad(set_to_none=True)
        losses["total"].backward()
        optimizer.step()
        scheduler.step()
        history.append({"step": step + 1, **{k: float(v.detach()) for k, v in losses.items()}})
        bar.set_postfix(loss=f"{history[-1]['total']:.3f}", kl=f"{history[-1]['kl']:.2f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
            save_progress(last, {"config": asdict(config), "head": head.state_dict(),
                                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                 "history": history, "step": step + 1, "torch_rng": torch.get_rng_state()})
            plot_losses(history, out / "loss.png", keys=("total", "bce", "dice", "kl"))
    if end < config.steps:
        return None
    final = out / "head.pt"
    save_ua_sam(head.eval(), final, backbone.spec.name,
                extra={"train": asdict(config), "cache": cache.meta()["settings"], "rows_used": int(available)})
    (out / "history.json").write_text(json.dumps(history))
    return final
