"""Save and load a trained ambiguity head: only its own weights (~4 MB), never the backbone's.

A head file records the backbone it was trained on and its constructor arguments, so loading it on the wrong
backbone fails with a message instead of producing garbage masks.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import CheckpointError
from ..modeling.backbone import Backbone
from .probabilistic_sam import ProbabilisticSAM

HEAD_FILE_NAME = "probabilistic_sam_lidc.pt"


def shipped_head() -> Path:
    """The head trained on LIDC-IDRI that ships with the project (see Resources/Models/MODEL_CARD.md).

    In the Slicer module folder and a source checkout it sits in Resources/Models next to the package; a wheel
    (`pip install .`) carries it inside the package as AmbiguousSAMLib/shipped_models (pyproject.toml).
    """
    package = Path(__file__).resolve().parents[1]
    module_folder = package.parent / "Resources" / "Models" / HEAD_FILE_NAME
    return module_folder if module_folder.is_file() else package / "shipped_models" / HEAD_FILE_NAME


DEFAULT_HEAD = shipped_head()


def save_head(head: ProbabilisticSAM, path: str | Path, backbone_name: str, extra: dict | None = None) -> None:
    state = {name: p.detach().cpu().clone() for name, p in head.trainable_parameters().items()}
    payload = {"format": "ambiguous-sam-head/1", "backbone": backbone_name,
               "config": {"injection": head.injection, "latent_dim": head.latent_dim,
                          "presence_offset": head.presence_offset, "prior_temperature": head.prior_temperature,
                          "presence_evidence": head.presence_evidence},
               "state": state, "extra": extra or {}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


def _read_payload(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(
            f"No trained head at {path}. Train one with 'ambiguous-sam train' or pass the path of a head file."
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises OSError, UnpicklingError, RuntimeError... for files it cannot read
        raise CheckpointError(
            f"{path} is not a readable head file ({type(error).__name__}). Pass a head made by 'ambiguous-sam "
            "train' or 'tune-sampling', or 'default' for the shipped LIDC head."
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != "ambiguous-sam-head/1":
        raise CheckpointError(f"{path} is not an AmbiguousSAM head file (made by 'ambiguous-sam train').")
    if not isinstance(payload.get("state"), dict) or not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{path} is an incomplete AmbiguousSAM head file; train or download it again.")
    return payload


def copy_matching_weights(head: ProbabilisticSAM, path: str | Path) -> list[str]:
    """Start training from an earlier head (fine-tuning, or a head of an older layout): copy each tensor whose
    name and shape match and return the names of the trained tensors left as initialised."""
    saved = _read_payload(Path(path))["state"]
    fresh = []
    with torch.no_grad():
        for name, parameter in head.trainable_parameters().items():
            if name in saved and saved[name].shape == parameter.shape:
                parameter.copy_(saved[name])
            else:
                fresh.append(name)
    return fresh


def load_head(backbone: Backbone, path: str | Path = DEFAULT_HEAD) -> ProbabilisticSAM:
    """Build the head on `backbone` and load its trained weights (strictly: every trained tensor must fit)."""
    path = Path(path)
    payload = _read_payload(path)
    if payload["backbone"] != backbone.spec.name:
        raise CheckpointError(
            f"The head {path.name} was trained on backbone '{payload['backbone']}', not '{backbone.spec.name}'. "
            f"Use --backbone {payload['backbone']} or a head trained on {backbone.spec.name}."
        )
    try:
        head = ProbabilisticSAM(backbone, **payload["config"])
    except TypeError as error:
        raise CheckpointError(f"{path} was written by another version of AmbiguousSAM ({error}); retrain it.") from error
    expected = head.trainable_parameters()
    if set(expected) != set(payload["state"]) or any(
            getattr(payload["state"][name], "shape", None) != tensor.shape for name, tensor in expected.items()):
        raise CheckpointError(f"{path} does not match this version's head layout; retrain it.")
    with torch.no_grad():
        for name, tensor in payload["state"].items():
            expected[name].copy_(tensor)
    return head.eval()
