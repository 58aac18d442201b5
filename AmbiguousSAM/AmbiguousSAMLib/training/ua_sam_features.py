"""UA-SAM's training cache: the frozen encoder's features just before the first adapted block, computed once.

UA-SAM trains adapters inside the encoder, so the plain embeddings of embedding_cache.py are of no use to it; what
never changes is the encoder's output up to the first adapted block (heads/ua_sam.py). That part is ~75-85% of
the encoder's time, so caching it is what makes CPU training possible. Same crops, shifts and resumable, nested
layout as the embedding cache (this class is one, with another array): `features.npy` (N, 4096, 320) fp16 next
to `crops.npz`. A cache is tied to the number of adapted blocks (it decides where the features are taken).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..encoder_runtime import weights_sha256
from ..errors import InvalidSettingError
from ..heads.ua_sam import UASAM
from ..preprocessing import model_input
from .embedding_cache import EmbeddingCache

FEATURES_FILE = "features.npy"


class EarlyFeatureCache(EmbeddingCache):
    """An embedding cache whose array holds UA-SAM's early features (N, 4096, 320) fp16 instead of embeddings."""

    def embeddings(self) -> np.ndarray:
        """Memory-mapped early features (N, 4096, 320) fp16: only the rows a batch touches are read."""
        return np.load(self.folder / FEATURES_FILE, mmap_mode="r")

    def build(self, data: str | Path, rows: np.ndarray, head: UASAM, max_shift: int = 12, seed: int = 0,
              progress: Callable[[int, int], None] | None = None, limit: int | None = None) -> None:
        """Compute the early features of `rows` of the npz `data` (resuming a partial cache built with the same
        arguments); `limit` stops after the first `limit` rows, and a later call continues from there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = np.asarray(rows, dtype=np.int64)
        settings = {"data": str(Path(data).resolve()), "rows": int(len(rows)),
                    "rows_sha1": hashlib.sha1(rows.tobytes()).hexdigest(), "max_shift": max_shift, "seed": seed,
                    "features": "ua-sam early", "adapted_blocks": head.adapted_blocks,
                    "encoder_sha256": weights_sha256(head.encoder)}
        meta = self.meta()
        if meta.get("settings") != settings:
            if meta.get("done"):
                raise InvalidSettingError(self._mismatch(meta, settings))
            self.write_crops(data, rows, max_shift, seed)
            side = head.encoder.embedding_side
            np.lib.format.open_memmap(self.folder / FEATURES_FILE, mode="w+", dtype=np.float16,
                                      shape=(len(rows), side * side, head.channels))
            meta = {"settings": settings, "count": int(len(rows)), "done": 0}
            self.meta_path.write_text(json.dumps(meta))
        images = self.crops()["images"]
        store = np.load(self.folder / FEATURES_FILE, mmap_mode="r+")
        end = meta["count"] if limit is None else min(limit, meta["count"])
        device = next(head.parameters()).device
        with torch.no_grad():
            self._fill(store, meta, end, lambda i: head.early_features(model_input(images[i], head.image_size)[0]
                                                                       .to(device))[0], 25, progress)
