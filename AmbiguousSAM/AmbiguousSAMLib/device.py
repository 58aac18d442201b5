"""Where the models run and in which precision.

One place decides the device so the predictor, training and the Slicer widget agree: CUDA when present,
else CPU, unless the user says otherwise. bf16 autocast is opt-in because it changes the numbers slightly
(masks agree with fp32 at Dice ~0.98-0.997) but roughly halves encoder time on CPUs with bf16 support.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .errors import AmbiguousSAMError

PRECISIONS = ("fp32", "bf16")


def resolve_device(requested: str | torch.device | None = None) -> torch.device:
    """Return the device to run on: `None`/"auto" picks CUDA when available, else CPU."""
    if requested is None or str(requested) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise AmbiguousSAMError(
            f"Unknown device '{requested}'. Choose auto, cpu, cuda or cuda:N (the N-th GPU)."
        ) from error
    if device.type not in ("cpu", "cuda"):
        raise AmbiguousSAMError(f"Device '{requested}' is not supported. Choose auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AmbiguousSAMError(
            f"Device '{requested}' was requested but this PyTorch build sees no CUDA GPU. "
            "Use device='cpu' or 'auto', or install a CUDA build of PyTorch."
        )
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise AmbiguousSAMError(
            f"Device '{requested}' does not exist: PyTorch sees {torch.cuda.device_count()} GPU(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}."
        )
    return device


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise AmbiguousSAMError(f"Unknown precision '{precision}'. Choose one of {', '.join(PRECISIONS)}.")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on the given device when asked, a no-op for fp32."""
    if check_precision(precision) == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def is_cuda_oom(error: BaseException) -> bool:
    """True for CUDA out-of-memory, the one failure where retrying on the CPU helps."""
    return isinstance(error, torch.cuda.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "CUDA out of memory" in str(error)
    )
