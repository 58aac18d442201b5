"""Encode training crops once and keep the embeddings on disk (fp16), so epochs never re-run the encoder.

The image encoder is frozen and costs ~1 s per crop on a laptop CPU, against ~0.1 s for everything the
heads train, so caching is what makes CPU training possible at all. Each crop is shifted by a random offset
before encoding (the same offset is applied to its masks) so the lesion is not always centred and its
position gives nothing away. The cache is written incrementally and resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..crops import load_crops
from ..errors import InvalidSettingError
from ..predictor import Predictor

EMBEDDING_SHAPE = (256, 64, 64)


def shift_crop(array: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Move the content of (..., H, W) by (dy, dx) pixels, repeating the border into the uncovered part."""
    pad = [(0, 0)] * (array.ndim - 2) + [(abs(dy), abs(dy)), (abs(dx), abs(dx))]
    padded = np.pad(array, pad, mode="edge")
    h, w = array.shape[-2:]
    y0, x0 = abs(dy) - dy, abs(dx) - dx
    return padded[..., y0:y0 + h, x0:x0 + w]


def _with_runtime(settings: dict | None) -> dict | None:
    """Settings of a cache, with the encoder runtime of caches written before it was recorded (PyTorch's)."""
    return None if settings is None else {"runtime": "torch", **settings}


class EmbeddingCache:
    """A folder holding `embeddings.npy` (N, 256, 64, 64) fp16 and `crops.npz` (shifted images, masks, rows)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    @property
    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def meta(self) -> dict:
        return json.loads(self.meta_path.read_text()) if self.meta_path.exists() else {}

    def is_complete(self) -> bool:
        meta = self.meta()
        return bool(meta) and meta["done"] == meta["count"]

    def crops(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / "crops.npz") as data:
            return {key: data[key] for key in data.files}

    def _mismatch(self, meta: dict, settings: dict) -> str:
        """Why an encoded cache is not reused: hours of encoding are the user's, so they are never thrown away
        (nor mixed with embeddings made another way) because one option changed."""
        kept = _with_runtime(meta["settings"])
        changed = ", ".join(f"{key} {kept.get(key)!r} (now {value!r})" for key, value in settings.items()
                            if kept.get(key) != value)
        return (f"The embedding cache {self.folder} holds {meta['done']} crops encoded with other settings: {changed}. "
                "Run with the options it was built with (for example --runtime torch --precision bf16), or give "
                "another --cache folder; delete this folder only if you want it encoded afresh.")

    def embeddings(self) -> np.ndarray:
        """Memory-mapped (N, 256, 64, 64) fp16: only the rows a batch touches are read."""
        return np.load(self.folder / "embeddings.npy", mmap_mode="r")

    def write_crops(self, data: str | Path, rows: np.ndarray, max_shift: int, seed: int) -> None:
        """`crops.npz`: the `rows` of `data`, each shifted by a seeded random offset (its masks with it)."""
        crops = load_crops(data, rows)
        shifts = np.random.default_rng(seed).integers(-max_shift, max_shift + 1, size=(len(rows), 2))
        images = np.stack([shift_crop(im, dy, dx) for im, (dy, dx) in zip(crops.images, shifts)])
        masks = np.stack([shift_crop(m, dy, dx) for m, (dy, dx) in zip(crops.masks, shifts)])
        np.savez(self.folder / "crops.npz", images=images, masks=masks, rows=crops.index, shifts=shifts,
                 patient=crops.patient)

    def build(self, data: str | Path, rows: np.ndarray, predictor: Predictor, max_shift: int = 12,
              seed: int = 0, progress: Callable[[int, int], None] | None = None, limit: int | None = None) -> None:
        """Encode `rows` of the npz `data` (resuming a partial cache built with the same arguments).

        `limit` stops after the first `limit` rows are encoded: training then uses that prefix, and a later
        call with a larger (or no) limit continues where this one stopped.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        rows = np.asarray(rows, dtype=np.int64)
        # The digest tells caches of the same size but other rows (or another order) apart.
        settings = {"data": str(Path(data).resolve()), "rows": int(len(rows)),
                    "rows_sha1": hashlib.sha1(rows.tobytes()).hexdigest(), "max_shift": max_shift,
                    "seed": seed, "backbone": predictor.backbone.spec.name, "precision": predictor.precision,
                    "runtime": predictor.encoder().name}
        meta = self.meta()
        if _with_runtime(meta.get("settings")) != settings:
            if meta.get("done"):
                raise InvalidSettingError(self._mismatch(meta, settings))
            self.write_crops(data, rows, max_shift, seed)
            np.lib.format.open_memmap(self.folder / "embeddings.npy", mode="w+", dtype=np.float16,
                                      shape=(len(rows), *EMBEDDING_SHAPE))
            meta = {"settings": settings, "count": int(len(rows)), "done": 0}
            self.meta_path.write_text(json.dumps(meta))
        images = self.crops()["images"]
        store = np.load(self.folder / "embeddings.npy", mmap_mode="r+")
        end = meta["count"] if limit is None else min(limit, meta["count"])
        self._fill(store, meta, end, lambda i: predictor.encode(predictor.prepare(images[i])[0])[0], 50, progress)

    def _fill(self, store: np.ndarray, meta: dict, end: int, row: Callable[[int], torch.Tensor], flush_every: int,
              progress: Callable[[int, int], None] | None) -> None:
        """Compute rows meta["done"]..end-1 of the memory-mapped `store` with `row`, recording progress in the meta
        file every `flush_every` rows: a killed run resumes where the last flush left it (shared by the caches
        that hold other per-crop arrays, such as UA-SAM's early features)."""
        for i in range(meta["done"], end):
            store[i] = row(i).to(torch.float16).cpu().numpy()
            if (i + 1) % flush_every == 0 or i + 1 == end:
                store.flush()
                meta["done"] = i + 1
                self.meta_path.write_text(json.dumps(meta))
            if progress is not None:
                progress(i + 1, end)
