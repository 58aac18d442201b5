"""Train a Probabilistic SAM head on cached embeddings: resumable, with a progress bar and loss curves.

Two stages: the outline model (latent nets, z branch, hypernetwork MLPs) for `steps` steps, on the ELBO alone or
with a set-level loss between K prior samples and the raters added (`set_weight`, losses.set_energy_loss), then
the presence gate, fitted in seconds on the trained decoder's features of every cached crop (presence_fit.py).

Runs on CPU (hours for the full LIDC set, so the model card states the subset used) and on CUDA unchanged.
Every `checkpoint_every` steps the head, optimiser and history are written atomically to `out/last.pt`;
running the same command again continues from there.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..modeling.backbone import Backbone
from ..heads.checkpoint import copy_matching_weights, save_head
from ..heads.probabilistic_sam import ProbabilisticSAM
from .batches import make_batch
from .embedding_cache import EmbeddingCache
from .losses import probabilistic_sam_loss, set_energy_loss
from .presence_fit import crop_features, fit_presence_gate

if TYPE_CHECKING:
    from tqdm import tqdm


@dataclass
class TrainConfig:
    injection: str = "hypernetwork"
    latent_dim: int = 6
    beta: float = 10.0
    #: KL(q || p) per image below which the posterior is not pulled towards the prior (free bits).
    free_nats: float = 3.0
    batch_size: int = 8
    steps: int = 2000
    #: New layers (latent nets, z branch) learn at `lr`; SAM's pretrained hypernetwork MLPs at `lr / 10`.
    #: At 3e-4 the z branch grew too slowly and the posterior collapsed before it mattered (seen here).
    lr: float = 1e-3
    seed: int = 0
    #: What the presence gate reads (heads/presence.py): "decoder" (nine numbers) or "appearance" (and the image).
    presence_evidence: str = "decoder"
    #: Weight of the set-level loss (losses.set_energy_loss) on `set_samples` prior samples; 0 trains the ELBO alone.
    set_weight: float = 0.0
    set_samples: int = 8
    checkpoint_every: int = 50
    device: str = "cpu"
    #: A head file to start from; its tensors whose names and shapes match are copied, the rest stay fresh.
    init: str | None = None
    extra: dict = field(default_factory=dict)


def train(cache: EmbeddingCache, backbone: Backbone, config: TrainConfig, out: str | Path,
          show_progress: bool = True, stop_after: int | None = None, rows: int | None = None) -> Path | None:
    """Train (or resume) and return the path of the final head file `out/head.pt`.

    `stop_after` ends this call after that many steps (checkpointed), so CPU training can be split across
    sessions; the same command continues it. Returns None when stopped before the last step. `rows` trains on
    the first that many cached crops only (a learning curve over nested prefixes of one cache).
    """
    out, device = start_run(out, config.device, config.seed)
    head = ProbabilisticSAM(backbone, injection=config.injection, latent_dim=config.latent_dim,
                            presence_evidence=config.presence_evidence)
    if config.init is not None:
        fresh = copy_matching_weights(head, config.init)
        print(f"started from {config.init}; newly initialised: {', '.join(fresh) or 'nothing'}")
    head = head.to(device)
    trainable = freeze_all_but_trained(head)
    pretrained = [p for name, p in trainable.items() if name.startswith("mask_decoder.")]
    new = [p for name, p in trainable.items() if not name.startswith("mask_decoder.")]
    rates = [config.lr, config.lr / 10]
    optimizer = torch.optim.AdamW([{"params": new, "lr": rates[0]}, {"params": pretrained, "lr": rates[1]}],
                                  weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=rates, total_steps=config.steps,
                                                    pct_start=0.05)
    last = out / "last.pt"
    history, start, state = resume(last, asdict(config), device, head, optimizer)
    if state is not None:
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
    rng = np.random.default_rng([config.seed, start])

    crops, embeddings, available = cache.crops(), cache.embeddings(), usable_rows(cache, rows)
    head.train()
    end, bar = steps_left(config.steps, start, stop_after, f"train {config.injection}", show_progress)
    for step in bar:
        rows = rng.choice(available, size=config.batch_size, replace=False)
        batch = make_batch(rng, embeddings, crops["masks"], rows, backbone.image_size)
        logits, kl_prior, kl_posterior, prior_logits = head.forward_train(
            batch.embeddings.to(device), batch.boxes.to(device), batch.targets.to(device),
            prior_samples=config.set_samples if config.set_weight else 0)
        losses = probabilistic_sam_loss(logits, batch.targets.to(device), kl_prior, kl_posterior, config.beta,
                                        config.free_nats)
        if config.set_weight:
            losses["set"] = set_energy_loss(prior_logits, batch.raters.to(device), batch.marked.to(device))
            losses["total"] = losses["total"] + config.set_weight * losses["set"]
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
            plot_losses(history, out / "loss.png")
    if end < config.steps:
        return None
    head.eval()
    features, marked = crop_features(head, embeddings, crops["masks"], np.arange(available),
                                     np.random.default_rng([config.seed, config.steps]), crops["images"])
    presence_bce = fit_presence_gate(head, features, marked, seed=config.seed)
    if show_progress:
        print(f"presence gate fitted on {available} crops: BCE {presence_bce:.4f}")
    final = out / "head.pt"
    save_head(head, final, backbone.spec.name,
              extra={"train": asdict(config), "cache": cache.meta()["settings"], "rows_used": int(available),
                     "presence_bce": presence_bce})
    (out / "history.json").write_text(json.dumps(history))
    return final


def start_run(out: str | Path, device: str, seed: int) -> tuple[Path, torch.device]:
    """The run's output folder (created) and device, with torch's global seed set: every trainer starts the same
    way, so a head's initial weights depend on its seed alone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    return out, torch.device(device)


def freeze_all_but_trained(head: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """Gradients for the head's own trained tensors only (its `trainable_parameters`), returned by name: the
    backbone's copies inside a head stay frozen, so no trainer updates SAM's weights by accident."""
    trainable = head.trainable_parameters()
    for name, parameter in head.named_parameters():
        parameter.requires_grad_(name in trainable)
    return trainable


def resume(last: Path, config: dict, device: str | torch.device, head: torch.nn.Module,
           optimizer: torch.optim.Optimizer) -> tuple[list[dict], int, dict | None]:
    """Continue a stopped run from its `last` file: (loss history, next step, the saved state for what else the
    caller keeps), or a fresh start. A file written with other settings is refused rather than mixed in."""
    if not last.exists():
        return [], 0, None
    state = torch.load(last, map_location=device, weights_only=False)
    if state["config"] != config:
        raise ValueError(f"{last} was written with other settings; use another --out or delete it.")
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    return state["history"], state["step"], state


def usable_rows(cache: EmbeddingCache, rows: int | None) -> int:
    """How many of the cache's first rows a run draws from: the encoded ones, or fewer when asked."""
    return cache.meta()["done"] if rows is None else min(rows, cache.meta()["done"])


def steps_left(steps: int, start: int, stop_after: int | None, description: str,
               show_progress: bool) -> tuple[int, tqdm]:
    """Where this call stops (all `steps`, or `stop_after` more) and its progress bar over the steps left."""
    from tqdm import tqdm  # imported here: only training needs it

    end = steps if stop_after is None else min(steps, start + stop_after)
    return end, tqdm(range(start, end), initial=start, total=steps, disable=not show_progress, desc=description)


def save_progress(last: Path, state: dict) -> None:
    """Write a run's state atomically (a temporary file moved into place): a kill mid-write keeps the previous."""
    tmp = last.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(last)


def plot_losses(history: list[dict], path: Path, keys: tuple[str, ...] | None = None) -> None:
    """Loss curves (moving average over 25 steps) as a PNG next to the checkpoint; `keys` are the history's
    entries to draw (default: Probabilistic SAM's)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.array([h["step"] for h in history])
    keys = keys or ("total", "bce", "dice", "kl") + (("set",) if "set" in history[0] else ())
    fig, axes = plt.subplots(1, len(keys), figsize=(3.5 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        values = np.array([h[key] for h in history])
        window = min(25, len(values))
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps, values, alpha=0.25)
        ax.plot(steps[window - 1:], smooth)
        ax.set_title(key)
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
