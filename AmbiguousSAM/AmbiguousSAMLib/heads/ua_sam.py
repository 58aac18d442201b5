"""UA-SAM: a latent z from a prior/posterior pair enters SAM's image encoder through uncertainty-aware adapters.

The paper (seeds/ua-sam.md) puts an adapter behind every ViT block; each is a bottleneck (down-projection, ReLU,
up-projection) whose hidden units also receive the sample z, modified by a learned "position variant" p_i in the
Condition Modifies Sample Module (CMSM), which hands p_{i+1} on to the next adapter. Because z enters the encoder,
every sample needs its own pass through the adapted part of it.

Here the encoder is LiteMedSAM's TinyViT, and only the last `adapted_blocks` blocks of its last stage (1 or 2)
carry adapters. Everything before the first adapted block is frozen and z-free, so it runs once per slice
(`early_features`) and K samples cost K passes of the adapted blocks, the neck and the decoder only. The last
stage runs at 64 x 64 x 320; one block and the neck were ~10% of the encoder's time, both blocks and the neck
~17% (one 1-thread CPU measurement here; Testing/Benchmarks/uasam_cost.py measures both). One block is the
default: it is what keeps 16 samples near 3x one deterministic prediction on a CPU. The early features of the last few images are kept, keyed on
the image's content, so the 3D path's chunks and a re-click with another K or seed do not run them again. The
prior and posterior read the same early features (the image as the frozen encoder sees it), plus the box (and,
for the posterior, the rater's mask) as in Probabilistic SAM (latent.py). The prompt encoder and mask decoder
are frozen copies of the backbone's (single mask output, no mask prompt).

The adapters' up-projections start at zero, so an untrained head reproduces the plain encoder's embedding exactly.

Departures from the paper and its public code, and why:
- z and the adapter's input meet *before* the bottleneck's ReLU (the CMSM feature is added to the
  down-projection, i.e. a linear layer on their concatenation). Concatenated after the ReLU, as the paper's
  figure reads, the z part of the up-projection's input would be the same at every position, so z could only
  shift the whole feature map by one constant vector.
- The last adapter's output is not added to "embeddings reconstructed from z"; z already enters every adapter.
- Each image of a batch keeps its own box and its own z (the public code mixed prompts across a batch); boxes
  are (x0, y0, x1, y1), x the column.
- No presence gate: "this rater left the slice empty" is one more outline the latent must be able to give
  (training/ua_sam_loss.py keeps empty masks as targets), and the 3D path's click conditioning
  (click_conditioning.py) keeps the non-empty draws on the clicked slice.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InvalidImageError, InvalidSettingError
from ..modeling.backbone import Backbone
from ..modeling.decoding import masks_from_weights, run_transformer
from ..modeling.tiny_vit import TinyViT
from .latent import GaussianLatentNet, box_channel, kl_divergence
from .probabilistic_sam import LatentNoise
from .sampler import Samples, generator_for

#: How many of the last stage's blocks may carry adapters: that stage has two, and adapting blocks of the stage
#: before would re-run its patch merging per sample too.
ADAPTABLE_BLOCKS = (1, 2)
#: Samples pushed through the adapted blocks at once, so memory stays flat in K. Batching does not pay on a CPU:
#: the last stage and neck took 0.58 s per sample alone, 0.74 s in fours and 0.82 s in sixteens (1 thread, shared
#: machine); 4 is a compromise for CUDA, where batching does pay. uasam_cost.py measures 1, 4 and 16.
SAMPLE_CHUNK = 4
#: Images whose early features are kept (the slices of one lesion a click is following, roughly).
EARLY_CACHE_SIZE = 8


class ConditionModifiesSample(nn.Module):
    """CMSM: the adapter's position variant p_i (a condition) modifies the sample z into a feature for the
    adapter's bottleneck, and gives the next adapter's position variant p_{i+1} (paper, eqs. 1-5).

    p' = MLP(p) is read as `tokens` condition tokens of width `width`; z's affinity with each token,
    ReLU(w21(z) . w11(p')^T), scales w22(z) (z modified by the condition, like attention with p' as the query
    and z as the key); its ReLU times w12(p') is flattened and mapped to the bottleneck (Reconstruct + MLP).

    Two layer norms the paper does not mention, on p' and on the output: the feature is a product of three
    small linear maps, and at PyTorch's default initialisation its dependence on z was ~0.2% of its size (seen
    here), too little for the decoder's loss to find z before the KL term pulls the posterior onto the prior.
    """

    def __init__(self, *, latent_dim: int, position_dim: int, bottleneck: int, tokens: int = 8,
                 width: int = 32) -> None:
        super().__init__()
        self.tokens, self.width = tokens, width
        self.position_mlp = nn.Sequential(nn.Linear(position_dim, tokens * width), nn.ReLU(),
                                          nn.Linear(tokens * width, tokens * width))
        self.w11, self.w12 = nn.Linear(width, width), nn.Linear(width, width)
        self.w21, self.w22 = nn.Linear(latent_dim, width), nn.Linear(latent_dim, width)
        self.condition_norm = nn.LayerNorm(width)
        self.reconstruct = nn.Sequential(nn.Linear(tokens * width, bottleneck), nn.ReLU(),
                                         nn.Linear(bottleneck, bottleneck), nn.LayerNorm(bottleneck))
        self.next_position = nn.Linear(tokens * width, position_dim)

    def forward(self, z: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D) and p_i (P,) -> the bottleneck feature (B, bottleneck) and p_{i+1} (P,)."""
        condition = self.condition_norm(self.position_mlp(position).view(self.tokens, self.width))
        affinity = F.relu(self.w21(z) @ self.w11(condition).T)  # (B, T)
        modified = affinity[:, :, None] * self.w22(z)[:, None, :]  # (B, T, W)
        keyed = self.w12(condition)
        feature = self.reconstruct((F.relu(modified) * keyed).flatten(1))
        return feature, self.next_position(keyed.flatten())


class UncertaintyAwareAdapter(nn.Module):
    """x + up(ReLU(down(x) + CMSM(z, p))) behind one encoder block; `up` starts at zero (identity at init)."""

    def __init__(self, *, dim: int, bottleneck: int, latent_dim: int, position_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.cmsm = ConditionModifiesSample(latent_dim=latent_dim, position_dim=position_dim, bottleneck=bottleneck)
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, tokens: torch.Tensor, z: torch.Tensor,
                position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, N, C), z (B, D), p_i (P,) -> adapted tokens (B, N, C) and p_{i+1}."""
        feature, next_position = self.cmsm(z, position)
        return tokens + self.up(F.relu(self.down(tokens) + feature[:, None])), next_position


class UASAM(nn.Module):
    """Frozen LiteMedSAM with z-conditioned adapters on its last encoder blocks (see the module docstring)."""

    name = "ua_sam"

    def __init__(self, backbone: Backbone, *, latent_dim: int = 6, adapted_blocks: int = 1, bottleneck: int = 64,
                 position_dim: int = 64, prior_temperature: float = 1.0) -> None:
        super().__init__()
        if not isinstance(backbone.image_encoder, TinyViT):
            raise InvalidSettingError(f"UA-SAM adapts LiteMedSAM's TinyViT encoder; backbone "
                                      f"'{backbone.spec.name}' has another. Use --backbone litemedsam.")
        if adapted_blocks not in ADAPTABLE_BLOCKS:
            raise InvalidSettingError(f"adapted_blocks must be one of {ADAPTABLE_BLOCKS} (the last stage's blocks), "
                                      f"not {adapted_blocks!r}.")
        self.latent_dim, self.adapted_blocks = latent_dim, adapted_blocks
        self.bottleneck, self.position_dim = bottleneck, position_dim
        #: Scales the prior's sigma when sampling (1: the prior as trained).
        self.prior_temperature = float(prior_temperature)
        self.image_size = backbone.image_size
        self.encoder = copy.deepcopy(backbone.image_encoder)
        self.prompt_encoder = copy.deepcopy(backbone.prompt_encoder)
        self.mask_decoder = copy.deepcopy(backbone.mask_decoder)
        last_stage = self.encoder.layers[-1]
        self.channels = last_stage.blocks[0].attn.norm.normalized_shape[0]
        self.adapters = nn.ModuleList(UncertaintyAwareAdapter(dim=self.channels, bottleneck=bottleneck,
                                                              latent_dim=latent_dim, position_dim=position_dim)
                                      for _ in range(adapted_blocks))
        #: p_0, the first adapter's position variant; each adapter's CMSM gives the next one's.
        self.position = nn.Parameter(torch.randn(position_dim) * 0.02)
        self.prior = GaussianLatentNet(latent_dim, with_mask=False, in_channels=self.channels)
        self.posterior = GaussianLatentNet(latent_dim, with_mask=True, in_channels=self.channels)
        self._early: OrderedDict[bytes, torch.Tensor] = OrderedDict()

    def trainable_parameters(self) -> dict[str, nn.Parameter]:
        """What training updates and a head file stores: adapters, p_0, prior and posterior (never the backbone's)."""
        return {name: p for name, p in self.named_parameters()
                if name.startswith(("adapters.", "position", "prior.", "posterior."))}

    @property
    def adapted(self) -> list[nn.Module]:
        """The encoder blocks that carry adapters, in order."""
        return list(self.encoder.layers[-1].blocks[-self.adapted_blocks:])

    def early_features(self, image: torch.Tensor) -> torch.Tensor:
        """Model input (B, 3, S, S) or its grey channel (B, 1, S, S) in [0, 1] -> the frozen encoder's tokens
        (B, 4096, 320) just before the first adapted block. z-free: computed once per image."""
        if image.ndim != 4 or image.shape[1] not in (1, 3):
            raise InvalidImageError(f"UA-SAM needs the model input (B, 3, S, S) the embedding came from; got "
                                    f"shape {tuple(image.shape)}.")
        encoder = self.encoder
        tokens = encoder.patch_embed(image.expand(-1, 3, -1, -1))
        for layer in encoder.layers[:-1]:
            tokens = layer(tokens)
        for block in encoder.layers[-1].blocks[:-self.adapted_blocks]:
            tokens = block(tokens)
        return tokens

    @torch.no_grad()
    def cached_early_features(self, image: torch.Tensor) -> torch.Tensor:
        """`early_features` of one image, from a small cache keyed on the image's bytes and device (never on its
        id)."""
        key = hashlib.blake2b(image.detach().float().cpu().contiguous().numpy().tobytes()
                              + repr((tuple(image.shape), str(image.device))).encode(), digest_size=20).digest()
        if key not in self._early:
            self._early[key] = self.early_features(image)
            if len(self._early) > EARLY_CACHE_SIZE:
                self._early.popitem(last=False)
        self._early.move_to_end(key)
        return self._early[key]

    def feature_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens -> (B, C, 64, 64), what the prior and posterior read."""
        side = self.encoder.embedding_side
        return tokens.transpose(1, 2).reshape(len(tokens), self.channels, side, side)

    def adapted_embedding(self, early: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Early tokens (B, N, C) with one latent each (B, D) -> image embeddings (B, 256, 64, 64)."""
        tokens, position = early, self.position
        for block, adapter in zip(self.adapted, self.adapters):
            tokens, position = adapter(block(tokens), z, position)
        side = self.encoder.embedding_side
        return self.encoder.neck(tokens.view(len(tokens), side, side, -1).permute(0, 3, 1, 2))

    def decode_latents(self, early: torch.Tensor, boxes: torch.Tensor,
                       z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Early tokens (B, N, C), boxes (B, 4), latents (B, S, D) -> logits (B, S, 256, 256) and the decoder's IoU
        estimates (B, S). Sample s of image b is decoded with image b's box only."""
        batch, samples = z.shape[:2]
        embeddings = self.adapted_embedding(early.repeat_interleave(samples, 0), z.flatten(0, 1))
        sparse, dense = self.prompt_encoder(points=None, boxes=boxes[:, None], masks=None)
        state = run_transformer(self.mask_decoder, embeddings, self.prompt_encoder.get_dense_pe(),
                                sparse.repeat_interleave(samples, 0), dense.repeat_interleave(samples, 0))
        weights = self.mask_decoder.output_hypernetworks_mlps[0](state.mask_tokens[:, 0])[:, None]
        logits = masks_from_weights(weights, state.upscaled)[:, 0]
        iou = self.mask_decoder.iou_prediction_head(state.iou_token)[:, 0]
        return logits.view(batch, samples, *logits.shape[-2:]), iou.view(batch, samples)

    def forward_train(self, early: torch.Tensor, boxes: torch.Tensor,
                      targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One posterior sample per crop: logits (B, 256, 256) and KL(q || p) twice (B,), the first with the
        posterior detached (it trains the prior), the second with the prior detached (it trains the posterior),
        so the loss can give the posterior free bits without leaving the prior untrained."""
        features = self.feature_map(early)
        box_map = box_channel(boxes, self.image_size, side=features.shape[-1])
        target_map = F.adaptive_avg_pool2d(targets[:, None].float(), box_map.shape[-2:])
        prior = self.prior(features, box_map)
        posterior = self.posterior(features, box_map, target_map)
        z = posterior[0] + torch.exp(posterior[1]) * torch.randn_like(posterior[0])
        logits = self.decode_latents(early, boxes, z[:, None])[0][:, 0]
        detached_posterior = (posterior[0].detach(), posterior[1].detach())
        detached_prior = (prior[0].detach(), prior[1].detach())
        return logits, kl_divergence(detached_posterior, prior), kl_divergence(posterior, detached_prior)

    @torch.no_grad()
    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        """K prior samples for one box. `embedding` (the plain encoder's) is not read: z changes the embedding
        itself, which this head computes from `image`, the model input, required here."""
        return self.sample_with_noise(embedding, box, self.draw_noise(k, seed), image)

    def draw_noise(self, n: int, seed: int) -> LatentNoise:
        """Standard-normal noise (n, D) for n samples from a private seeded stream: sample i's identity. The
        ranks are all 0: this head has no presence gate, so no sample is blanked."""
        normal = torch.randn((n, self.latent_dim), generator=generator_for(seed, torch.device("cpu")))
        return LatentNoise(normal, torch.zeros(n))

    @torch.no_grad()
    def sample_with_noise(self, embedding: torch.Tensor, box: torch.Tensor, noise: LatentNoise,
                          image: torch.Tensor | None = None, gated: bool = True) -> Samples:
        """One sample per row of `noise` (z = mu + temperature * sigma * noise under this slice's prior): the 3D
        path keeps the rows fixed on every slice, so candidate i is one hypothesis through the lesion. `gated`
        changes nothing: this head has no presence gate, so every sample is already an outline of a marked
        lesion."""
        if image is None:
            raise InvalidSettingError("UA-SAM runs part of the image encoder per sample: pass the model input the "
                                      "embedding came from (image=).")
        early = self.cached_early_features(image.to(box.device))
        features = self.feature_map(early)
        mu, log_sigma = self.prior(features, box_channel(box, self.image_size, side=features.shape[-1]))
        z = mu + self.prior_temperature * torch.exp(log_sigma) * noise.normal.to(mu.device)
        logits, iou = [], []
        for start in range(0, len(z), SAMPLE_CHUNK):
            chunk_logits, chunk_iou = self.decode_latents(early, box, z[None, start:start + SAMPLE_CHUNK])
            logits.append(chunk_logits[0])
            iou.append(chunk_iou[0])
        return Samples(logits=torch.cat(logits), scores=torch.cat(iou))
