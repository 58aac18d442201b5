"""Probabilistic SAM: a latent z from a prior/posterior pair makes SAM's decoder produce K plausible masks.

Two places to inject z, one class:
- "prompt" (the paper's): MLP(z) is added to the two box tokens, so each sample runs the decoder's
  two-way transformer; K samples cost K decoder passes.
- "hypernetwork" (ours, fast): the transformer and upscaling run once per box; z only shifts the mask
  weights the hypernetwork produces from the mask token, and adds a logit offset that is linear in z (it
  lets a sample grow, shrink or vanish, and gives z a direct path: routed only through the MLP, whose input
  is dominated by the 256-d token, z was ignored and the posterior collapsed). K samples then cost one
  decoder pass and K dot products.
A presence gate (presence.py) decides per sample whether the lesion is marked at all; the latent then only
models the outline of a marked lesion. Two numbers tuned on validation slices after training adjust sampling:
the gate's logit offset and a temperature on the prior's sigma (training/sampling_tuning.py).
The decoder and prompt encoder are copies of the backbone's. Only the new layers, the prior/posterior nets
and the hypernetwork MLPs are trained: back-propagating through the decoder's transformer costs ~0.7 s per
crop on a CPU, ten times the rest, so its body stays frozen (and, for the hypernetwork injection, runs without
autograd). The new layers start near zero, so an untrained head stays close to the backbone's deterministic mask.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..limits import LATENT_DRAWS
from ..modeling.backbone import Backbone
from ..modeling.decoding import DecoderState, masks_from_weights, mask_weights, run_transformer
from .latent import GaussianLatentNet, box_channel, kl_divergence
from .presence import (EVIDENCE, IMAGE_EVIDENCE, PresenceGate, appearance_features, gate_logits,
                       presence_features, presence_probability)
from .latent_draws import seeded_draws
from .presence_window import DEFAULT_CONTEXT, WindowNet, lesion_window
from .sampler import Samples

INJECTIONS = ("hypernetwork", "prompt")


def _small_last(mlp: nn.Sequential) -> nn.Sequential:
    """Start the z branch near zero but not at it: with exactly zero weights no reconstruction gradient reaches
    the posterior at first, while the (Adam-normalised) KL gradient does, and the posterior collapses."""
    nn.init.normal_(mlp[-1].weight, std=1e-2)
    nn.init.zeros_(mlp[-1].bias)
    return mlp


def _detached(gaussian: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return gaussian[0].detach(), gaussian[1].detach()


@dataclass
class LatentNoise:
    """The seeded randomness of K samples: standard-normal latent noise (K, D) and presence ranks (K,).

    Row i is sample i's identity; the 3D path keeps chosen rows and reuses them on every slice."""

    normal: torch.Tensor
    ranks: torch.Tensor

    def __len__(self) -> int:
        return len(self.ranks)

    def __getitem__(self, rows) -> "LatentNoise":
        return LatentNoise(self.normal[rows], self.ranks[rows])

    def given_marked(self, presence: float | None) -> "LatentNoise":
        """The noise conditioned on "marked where the gate gave `presence`": the ranks put into [0, presence),
        the law of a uniform rank given u < presence, and stratified again over these rows: the row with the
        j-th smallest rank gets the middle of stratum j of k. On a slice where the gate gives pi' <= presence,
        about k * pi' / presence of the k candidates are then marked, as the gate means, rather than a binomial
        draw of them (the rows were chosen out of a larger pool, so their own ranks are not one per stratum);
        the order of the ranks, and so the nesting across slices, is kept. None (a sampler without a gate)
        leaves the noise as it is."""
        if presence is None:
            return self
        order = torch.argsort(torch.argsort(self.ranks))
        return LatentNoise(self.normal, (order.to(torch.float32) + 0.5) / len(self) * float(presence))


@dataclass
class Decoded:
    """What one decode of B boxes with S latents each gives."""

    logits: torch.Tensor  # (B, S, 256, 256)
    iou: torch.Tensor  # (B, S)
    #: (B,): logit of the chance that an expert marks the lesion at all; None when decoded without the gate.
    presence_logit: torch.Tensor | None
    #: The z-free transformer pass of the B boxes (what the gate read); None when none ran (prompt injection
    #: without the gate).
    plain_state: DecoderState | None = None


class ProbabilisticSAM(nn.Module):
    """Prior/posterior nets + a fine-tunable SAM decoder that turns (embedding, box, z) into a mask."""

    def __init__(self, backbone: Backbone, injection: str = "hypernetwork", latent_dim: int = 6,
                 presence_offset: float = 0.0, prior_temperature: float = 1.0,
                 presence_evidence: str = "decoder",
                 presence_bounds: tuple[list[float], list[float]] | None = None,
                 window_context: float = DEFAULT_CONTEXT, latent_draws: str = "random") -> None:
        super().__init__()
        if injection not in INJECTIONS:
            raise ValueError(f"injection must be one of {INJECTIONS}, not '{injection}'")
        if presence_evidence not in EVIDENCE:
            raise ValueError(f"presence_evidence must be one of {tuple(EVIDENCE)}, not '{presence_evidence}'")
        if latent_draws not in LATENT_DRAWS:
            raise ValueError(f"latent_draws must be one of {LATENT_DRAWS}, not '{latent_draws}'")
        #: What the gate reads (presence.py): "appearance" and "window" heads need the model input image with every
        #: call.
        self.presence_evidence = presence_evidence
        self.name = f"probabilistic_sam_{injection}"
        self.injection = injection
        self.latent_dim = latent_dim
        #: Added to the gate's logit when sampling; tuned on validation slices (training/sampling_tuning.py).
        self.presence_offset = float(presence_offset)
        #: Scales the prior's sigma when sampling. The raters' posteriors sit inside the prior in z, yet the
        #: outlines decoded at the prior's spread vary less than the raters' do (the KL term pulls the posteriors
        #: together), so a temperature above 1 is tuned on validation slices to restore the spread.
        self.prior_temperature = float(prior_temperature)
        #: How the K latent draws of a click are laid out (latent_draws.py); chosen with the two numbers above.
        self.latent_draws = latent_draws
        self.image_size = backbone.image_size
        self.prompt_encoder = copy.deepcopy(backbone.prompt_encoder)
        self.mask_decoder = copy.deepcopy(backbone.mask_decoder)
        self.prior = GaussianLatentNet(latent_dim, with_mask=False)
        self.posterior = GaussianLatentNet(latent_dim, with_mask=True)
        if injection == "prompt":
            self.z_to_prompt = _small_last(nn.Sequential(nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, 256)))
        else:
            self.z_to_weights = _small_last(nn.Sequential(nn.Linear(256 + latent_dim, 256), nn.ReLU(), nn.Linear(256, 32)))
            self.z_to_offset = nn.Linear(latent_dim, 1)
        self.presence = PresenceGate(EVIDENCE[presence_evidence], bounds=presence_bounds)
        #: The CNN on the lesion window, one input of a "window" gate (fitted with the gate, never in the outline loop).
        self.window_net = WindowNet() if presence_evidence == "window" else None
        #: How much of the image around the box that CNN reads (presence_window.py), fixed when it is trained.
        self.window_context = float(window_context)

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """What training updates and a head checkpoint stores; everything else is the backbone's decoder."""
        frozen = ("prompt_encoder.", "mask_decoder.transformer.", "mask_decoder.output_upscaling.",
                  "mask_decoder.iou_", "mask_decoder.mask_tokens.")
        return {name: p for name, p in self.named_parameters() if not name.startswith(frozen)}

    def _plain_pass(self, embeddings: torch.Tensor, sparse: torch.Tensor, dense: torch.Tensor,
                    image_pe: torch.Tensor) -> tuple[DecoderState, torch.Tensor]:
        """The z-free decoder pass (transformer without autograd) and its single-mask weights (B, 32)."""
        with torch.no_grad():
            state = run_transformer(self.mask_decoder, embeddings, image_pe, sparse, dense)
        return state, mask_weights(self.mask_decoder, state.mask_tokens)[:, 0]

    def _gate(self, state: DecoderState, base: torch.Tensor, boxes: torch.Tensor,
              images: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The gate's logit (B,) and the features (B, F) it read, from the z-free pass (and the images)."""
        plain_logits = masks_from_weights(base[:, None], state.upscaled)[:, 0].detach()
        iou = self.mask_decoder.iou_prediction_head(state.iou_token)
        features = presence_features(plain_logits, iou.detach(), boxes, self.image_size)
        if self.presence_evidence in IMAGE_EVIDENCE:
            if images is None:
                raise ValueError("This head's presence gate reads the image: pass the model input (image=).")
            features = torch.cat([features, appearance_features(plain_logits, boxes, images, self.image_size)], 1)
        if self.window_net is not None:
            window = lesion_window(images, boxes, self.image_size, self.window_context).to(features.dtype)
            features = torch.cat([features, self.window_net(window)[:, None]], 1)
        return self.presence(features), features

    @torch.no_grad()
    def presence_inputs(self, embeddings: torch.Tensor, boxes: torch.Tensor,
                        images: torch.Tensor | None = None) -> torch.Tensor:
        """The gate's features (B, F) alone: one z-free pass and no outlines (what fitting the gate needs)."""
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        state, base = self._plain_pass(embeddings, sparse, dense, self.prompt_encoder.get_dense_pe())
        return self._gate(state, base, boxes, images)[1]

    def decode(self, embeddings: torch.Tensor, boxes: torch.Tensor, z: torch.Tensor, with_gate: bool = True,
               images: torch.Tensor | None = None) -> Decoded:
        """Embeddings (B, 256, 64, 64), boxes (B, 4), latents (B, S, D) -> S masks per box and the box's gate.
        `images` (B, 3, size, size) are the model inputs the embeddings came from (appearance gates read them).

        Training the outline passes `with_gate=False`: the gate is fitted afterwards, so its logit would be thrown
        away, and for the prompt injection the z-free pass it reads would be one more transformer pass per step.
        """
        batch, samples = z.shape[:2]
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        image_pe = self.prompt_encoder.get_dense_pe()
        plain = None
        if with_gate or self.injection == "hypernetwork":
            state, base = self._plain_pass(embeddings, sparse, dense, image_pe)
            plain = state
        presence_logit = self._gate(state, base, boxes, images)[0] if with_gate else None
        if self.injection == "prompt":
            sparse = (sparse[:, None] + self.z_to_prompt(z)[:, :, None]).flatten(0, 1)
            state = run_transformer(self.mask_decoder, embeddings.repeat_interleave(samples, 0), image_pe, sparse,
                                    dense.repeat_interleave(samples, 0))
            weights = mask_weights(self.mask_decoder, state.mask_tokens)[:, :1]
            logits = masks_from_weights(weights, state.upscaled).view(batch, samples, *state.upscaled.shape[-2:])
            iou = self.mask_decoder.iou_prediction_head(state.iou_token)[:, 0].view(batch, samples)
            return Decoded(logits, iou, presence_logit, plain)
        token = state.mask_tokens[:, 0]
        delta = self.z_to_weights(torch.cat([token[:, None].expand(-1, samples, -1), z], dim=2))
        offset = self.z_to_offset(z)[..., None]
        logits = masks_from_weights(base[:, None] + delta, state.upscaled) + offset
        iou = self.mask_decoder.iou_prediction_head(state.iou_token)[:, :1].expand(batch, samples)
        return Decoded(logits, iou, presence_logit, plain)

    def forward_train(self, embeddings: torch.Tensor, boxes: torch.Tensor, targets: torch.Tensor,
                      prior_samples: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One posterior sample per image: logits (B, 256, 256), two views of KL(q || p) (B,) each, and, with
        `prior_samples` K > 0, K reparameterised prior samples (B, K, 256, 256) for a set-level loss (else None).

        The first KL trains only the prior (posterior detached), the second only the posterior (prior
        detached), so the loss can grant the posterior "free bits" without leaving the prior untrained.
        All samples go through one decoder pass: with the hypernetwork injection the K prior samples cost
        K dot products, not K transformer passes.
        """
        box_map = box_channel(boxes, self.image_size)
        target_map = F.adaptive_avg_pool2d(targets[:, None].float(), box_map.shape[-2:])
        prior = self.prior(embeddings, box_map)
        posterior = self.posterior(embeddings, box_map, target_map)
        z = posterior[0] + torch.exp(posterior[1]) * torch.randn_like(posterior[0])
        z = z[:, None]
        if prior_samples:
            noise = torch.randn(z.shape[0], prior_samples, self.latent_dim, device=z.device, dtype=z.dtype)
            z = torch.cat([z, prior[0][:, None] + torch.exp(prior[1])[:, None] * noise], dim=1)
        decoded = self.decode(embeddings, boxes, z, with_gate=False)
        prior_logits = decoded.logits[:, 1:] if prior_samples else None
        return (decoded.logits[:, 0], kl_divergence(_detached(posterior), prior),
                kl_divergence(posterior, _detached(prior)), prior_logits)

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        """K prior samples for one box. The same seed draws the same standard-normal noise, so reusing a seed
        on neighbouring slices keeps sample i the same hypothesis through a 3D lesion."""
        return self.sample_with_noise(embedding, box, self.draw_noise(k, seed), image)

    def draw_noise(self, k: int, seed: int) -> LatentNoise:
        """Noise for k samples from a private seeded stream: sample i's identity."""
        return LatentNoise(*seeded_draws(k, self.latent_dim, seed, self.latent_draws))

    @torch.no_grad()
    def draw(self, embedding: torch.Tensor, box: torch.Tensor, noise: LatentNoise,
             image: torch.Tensor | None = None) -> Decoded:
        """One ungated outline per row of `noise` (z = mu + temperature * sigma * noise under this slice's prior)."""
        mu, log_sigma = self.prior(embedding, box_channel(box, self.image_size))
        z = mu + self.prior_temperature * torch.exp(log_sigma) * noise.normal.to(mu.device)
        return self.decode(embedding, box, z[None], images=image)

    @torch.no_grad()
    def sample_with_noise(self, embedding: torch.Tensor, box: torch.Tensor, noise: LatentNoise,
                          image: torch.Tensor | None = None, gated: bool = True) -> Samples:
        """One sample per row of `noise`, left empty where the row's rank is at or above the gate's presence
        probability (not with `gated=False`: the outlines given that the lesion is marked, what the slice a user
        clicked shows). Keeping the noise fixed across slices (and choosing rows of it) is how the 3D path keeps
        hypotheses coherent."""
        decoded = self.draw(embedding, box, noise, image)
        presence = presence_probability(decoded.presence_logit[0] + self.presence_offset)
        logits = gate_logits(decoded.logits[0], noise.ranks, presence) if gated else decoded.logits[0]
        return Samples(logits=logits, scores=decoded.iou[0], decoder_state=decoded.plain_state,
                       presence=float(presence))
