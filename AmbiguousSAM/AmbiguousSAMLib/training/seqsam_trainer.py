"""Train a SeqSAM head on cached embeddings (`ambiguous-sam train --head seqsam`): resumable, with a progress bar
and a loss curve.

Each step unrolls `train_length` decoder steps for a batch of crops, keeps one random step per chunk
(seqsam_loss.chunk_members) and back-propagates the Hungarian-matched Dice loss through time, through the
decoder's transformer at every step: that is what lets step t learn from what step t-1 gave. That makes a step
cost `train_length` full decoder passes forward and back, ~1 s each per crop on a laptop CPU, most of it the
cell's two 512 -> 256 3x3 convolutions on the 64 x 64 grid; bf16 autocast halves it. Only the steps up to the
last chosen one are unrolled.

Every `checkpoint_every` steps the head, optimiser and history are written atomically to `out/last.pt`; the same
command continues from there. Runs on CUDA unchanged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import autocast
from ..heads.checkpoint import save_seqsam
from ..heads.seqsam import SeqSAM
from ..modeling.backbone import Backbone
from .batches import make_batch
from .embedding_cache import EmbeddingCache
from .seqsam_loss import EMPTY_RATERS, chunk_members, seqsam_loss
from .trainer import (freeze_all_but_trained, plot_losses, resume, save_progress, start_run, steps_left,
                      usable_rows)


@dataclass
class SeqSAMTrainConfig:
    steps: int = 400
    #: The paper's batch size.
    batch_size: int = 2
    #: M, the decoder steps unrolled per crop; more than the 4 raters trains the chunk pooling.
    train_length: int = 4
    #: "target": an empty rater mask is an opinion to reproduce (this project's protocol); "masked": the
    #: authors' code, which zeroes the matched cost of empty raters (seqsam_loss.py).
    empty_raters: str = "target"
    #: The new cell learns at `lr`, SAM's pretrained single-mask MLP at `lr / 10` (as trainer.py does). The
    #: paper's 1e-4 is for training to convergence; a few hundred CPU steps need more.
    lr: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    checkpoint_every: int = 10
    device: str = "cpu"
    precision: str = "bf16"

    def __post_init__(self) -> None:
        if self.empty_raters not in EMPTY_RATERS:
            raise ValueError(f"empty_raters must be one of {EMPTY_RATERS}, not {self.empty_raters!r}")


def train_seqsam(cache: EmbeddingCache, backbone: Backbone, config: SeqSAMTrainConfig, out: str | Path,
                 show_progress: bool = True, stop_after: int | None = None, rows: int | None = None) -> Path | None:
    """Train (or resume) and return the head file `out/head.pt`, or None when stopped (`stop_after` steps
    checkpointed) before the last step. `rows` trains on the first that many cached crops only."""
    out, device = start_run(out, config.device, config.seed)
    head = SeqSAM(backbone).to(device)
    trainable = freeze_all_but_trained(head)
    groups = [{"params": [p for n, p in trainable.items() if n.startswith("cell.")], "lr": config.lr},
              {"params": [p for n, p in trainable.items() if not n.startswith("cell.")], "lr": config.lr / 10}]
    optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
    last = out / "last.pt"
    history, start, _ = resume(last, asdict(config), device, head, optimizer)
    rng = np.random.default_rng([config.seed, start])

    crops, embeddings, available = cache.crops(), cache.embeddings(), usable_rows(cache, rows)
    head.train()
    end, bar = steps_left(config.steps, start, stop_after, f"train seqsam ({config.empty_raters})", show_progress)
    for step in bar:
        batch = make_batch(rng, embeddings, crops["masks"], rng.choice(available, size=config.batch_size,
                                                                        replace=False), backbone.image_size)
        members = chunk_members(config.train_length, batch.raters.shape[1], rng)
        with autocast(device, config.precision):
            logits = head.unroll(batch.embeddings.to(device), batch.boxes.to(device), int(members.max()) + 1)[0]
        loss = seqsam_loss(logits[:, torch.from_numpy(members).to(device)], batch.raters.to(device),
                           batch.marked.to(device), config.empty_raters)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step + 1, "total": float(loss.detach())})
        bar.set_postfix(loss=f"{history[-1]['total']:.3f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == end:
            save_progress(last, {"config": asdict(config), "head": head.state_dict(),
                                 "optimizer": optimizer.state_dict(), "history": history, "step": step + 1})
            plot_losses(history, out / "loss.png", keys=("total",))
    if end < config.steps:
        return None
    final = out / "head.pt"
    save_seqsam(head.eval(), final, backbone.spec.name,
                extra={"train": asdict(config), "cache": cache.meta()["settings"], "rows_used": int(available)})
    (out / "history.json").write_text(json.dumps(history))
    return final
