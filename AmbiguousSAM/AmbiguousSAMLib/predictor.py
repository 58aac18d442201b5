"""Encode a slice once, then answer any number of box prompts cheaply.

The image encoder is >95% of the cost of a prediction, so `set_image` runs it once and caches the embedding;
`predict` (one deterministic mask) and the ambiguity heads' samplers reuse it. This mirrors
`segment_anything.SamPredictor`, for SAM-family backbones of any input size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .device import autocast, check_precision, is_cuda_oom, resolve_device
from .encoder_runtime import Encoder, build_encoder
from .errors import AmbiguousSAMError
from .heads.checkpoint import load_head
from .heads.sampler import Sampler
from .limits import check_runtime, check_samples, check_seed
from .modeling.backbone import Backbone, build_backbone
from .preprocessing import LUNG_WINDOW, ModelFrame, model_input, validate_box


@dataclass
class Prediction:
    """One deterministic prediction on the slice given to `set_image`."""

    #: (rows, cols) bool at the slice's resolution (logits > 0).
    mask: np.ndarray
    #: The decoder's own estimate of the mask's IoU.
    iou: float
    #: (256, 256) low-resolution decoder logits in the model frame (input to refinement or heads).
    logits: np.ndarray


@dataclass
class SampledMasks:
    """K hypotheses for one box on the slice given to `set_image`."""

    #: (K, rows, cols) float32 foreground probabilities at the slice's resolution.
    probabilities: np.ndarray
    #: (K,) the decoder's quality estimate per hypothesis.
    scores: np.ndarray


class Predictor:
    """A backbone on a device, with the last image's embedding cached.

    `window` is applied to non-uint8 input (CT in HU) before min-max scaling; uint8 input (PNG, the LIDC crops)
    is only min-max scaled. Pass `window=None` to min-max any input as it is. `runtime` chooses the engine
    of the encoder (encoder_runtime.py): "auto" is OpenVINO on a CPU and PyTorch on CUDA.
    """

    def __init__(self, backbone: Backbone | str = "litemedsam", checkpoint: str | Path | None = None,
                 device: str | torch.device | None = None, precision: str = "fp32",
                 window: tuple[float, float] | None = LUNG_WINDOW, runtime: str = "auto") -> None:
        check_precision(precision)
        self.runtime = check_runtime(runtime)
        self.backbone = build_backbone(backbone, checkpoint) if isinstance(backbone, str) else backbone
        self.device = resolve_device(device)
        self.backbone.to(self.device)
        self.precision = precision
        self.window = window
        self.embedding: torch.Tensor | None = None
        #: The model input the embedding was computed from (heads with an appearance gate read it).
        self.model_input: torch.Tensor | None = None
        self.geometry: ModelFrame | None = None
        #: The ambiguity head `sample` uses; loaded from the shipped checkpoint on first use.
        self.head: Sampler | None = None
        #: The encoder per device, built on first use (an OpenVINO conversion takes a while, once per machine).
        self._encoders: dict[torch.device, Encoder] = {}

    def to(self, device: str | torch.device) -> "Predictor":
        """Move the model (and cached embedding) to another device."""
        self.device = resolve_device(device)
        self.backbone.to(self.device)
        if self.embedding is not None:
            self.embedding = self.embedding.to(self.device)
            self.model_input = self.model_input.to(self.device)
        return self

    def prepare(self, image: np.ndarray) -> tuple[torch.Tensor, ModelFrame]:
        """Validate, normalise and resize a slice into the model's (1, 3, S, S) input (this predictor's window)."""
        return model_input(image, self.backbone.image_size, self.window)

    def encode(self, model_input: torch.Tensor) -> torch.Tensor:
        """Run the image encoder; on CUDA out-of-memory, warn and continue on the CPU."""
        try:
            return self._encode_on(self.device, model_input)
        except Exception as error:
            if not (self.device.type == "cuda" and is_cuda_oom(error)):
                raise
            warnings.warn("CUDA ran out of memory; AmbiguousSAM continues on the CPU (slower).", RuntimeWarning,
                          stacklevel=2)
            torch.cuda.empty_cache()
            self.to("cpu")
            return self._encode_on(self.device, model_input)

    def encoder(self, device: torch.device | None = None) -> Encoder:
        """The encoder that runs on `device` (this predictor's by default), built the first time it is needed."""
        device = self.device if device is None else device
        if device not in self._encoders:
            self._encoders[device] = build_encoder(backbone=self.backbone, device=device, precision=self.precision,
                                                   runtime=self.runtime)
        return self._encoders[device]

    @torch.no_grad()
    def _encode_on(self, device: torch.device, model_input: torch.Tensor) -> torch.Tensor:
        return self.encoder(device)(model_input.to(device))

    def set_image(self, image: np.ndarray) -> None:
        """Encode one 2D slice (rows, cols) and keep its embedding for the following prompts."""
        model_input, geometry = self.prepare(image)
        self.embedding = self.encode(model_input)
        self.model_input = model_input.to(self.device)
        self.geometry = geometry

    def model_box(self, box: np.ndarray | list[float] | tuple[float, ...]) -> torch.Tensor:
        """A box (x0, y0, x1, y1) in slice pixels -> (1, 4) tensor in the model frame, validated."""
        if self.geometry is None:
            raise AmbiguousSAMError("No image is set: call set_image(slice) before predicting.")
        box = validate_box(box, self.geometry.original_size)
        return torch.from_numpy(self.geometry.box_to_model(box))[None].to(self.device)

    @torch.no_grad()
    def decode(self, box: torch.Tensor, multimask: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The plain SAM decoder on the cached embedding: (B, M, 256, 256) logits and (B, M) IoU estimates."""
        sparse, dense = self.backbone.prompt_encoder(points=None, boxes=box, masks=None)
        with autocast(self.device, self.precision):
            logits, iou = self.backbone.mask_decoder(
                image_embeddings=self.embedding_or_fail(), image_pe=self.backbone.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask)
        return logits.float(), iou.float()

    def sample(self, box: np.ndarray | list[float] | tuple[float, ...], k: int = 16, seed: int = 0) -> SampledMasks:
        """K plausible masks for a box from the ambiguity head (the shipped LIDC head unless `self.head` is set)."""
        k, seed = check_samples(k), check_seed(seed)
        if self.head is None:
            self.head = load_head(self.backbone).to(self.device)
        drawn = self.head.sample(self.embedding_or_fail(), self.model_box(box), k, seed, image=self.model_input)
        probs = torch.sigmoid(self.geometry.logits_to_image(drawn.logits.float().cpu())).numpy()
        return SampledMasks(probabilities=probs, scores=drawn.scores.float().cpu().numpy())

    def embedding_or_fail(self) -> torch.Tensor:
        if self.embedding is None:
            raise AmbiguousSAMError("No image is set: call set_image(slice) before predicting.")
        return self.embedding

    def predict(self, box: np.ndarray | list[float] | tuple[float, ...]) -> Prediction:
        """One deterministic mask for a box (x0, y0, x1, y1) in the slice's pixel coordinates (x = column)."""
        logits, iou = self.decode(self.model_box(box))
        full = self.geometry.logits_to_image(logits[0, 0].cpu())
        return Prediction(mask=(full > 0).numpy(), iou=float(iou[0, 0]), logits=logits[0, 0].cpu().numpy())
