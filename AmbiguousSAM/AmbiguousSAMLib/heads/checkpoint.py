"""Save and load a trained ambiguity head: only its own weights (~4 MB), never the backbone's.

A head file records the backbone it was trained on and its constructor arguments, so loading it on the wrong
backbone fails with a message instead of producing garbage masks. The reading, writing and backbone checks are
shared with the other trained file that ships, the UncertainSAM scorer (scorer_checkpoint.py).

Three kinds of head share the format, told apart by the payload's "head" entry ("seqsam", "ua-sam"; files without
it, all those written before SeqSAM, are Probabilistic SAM heads, so they keep loading).
"""

from __future__ import annotations

import io
import lzma
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..head_names import SHIPPED_HEAD_FILES
from ..modeling.backbone import Backbone
from .probabilistic_sam import ProbabilisticSAM
from .seqsam import SeqSAM
from .ua_sam import UASAM

HEAD_FILE_NAME = SHIPPED_HEAD_FILES["default"]


def shipped_model(file_name: str) -> Path:
    """A trained file that ships with the project (see Resources/Models/MODEL_CARD.md).

    In the Slicer module folder and a source checkout it sits in Resources/Models next to the package; a wheel
    (`pip install .`) carries it inside the package as AmbiguousSAMLib/shipped_models (pyproject.toml).
    """
    package = Path(__file__).resolve().parents[1]
    module_folder = package.parent / "Resources" / "Models" / file_name
    return module_folder if module_folder.is_file() else package / "shipped_models" / file_name


DEFAULT_HEAD = shipped_model(HEAD_FILE_NAME)


def head_file(head: str | Path | None) -> Path:
    """The file a --head value names: a shipped head's name ("default", "seqsam": head_names.py), or a path.
    None is the shipped default. Every command that reads a head file resolves its --head here, so the names the
    error messages offer work wherever a head is asked for."""
    if head is None:
        return DEFAULT_HEAD
    return shipped_model(SHIPPED_HEAD_FILES[head]) if head in SHIPPED_HEAD_FILES else Path(head)


@dataclass(frozen=True)
class CheckpointKind:
    """What a kind of trained file is called and how a user gets one, for the messages of `read_checkpoint`."""

    #: The payload's "format" tag.
    format: str
    #: What the file holds, in words ("head", "scorer").
    noun: str
    #: The command that makes one.
    maker: str
    #: What to pass instead of a file that cannot be read.
    alternative: str


HEAD = CheckpointKind(format="ambiguous-sam-head/1", noun="head", maker="ambiguous-sam train",
                      alternative="Pass a head made by 'ambiguous-sam train' or 'tune-sampling', or 'default' for "
                                  "the shipped LIDC head.")


#: The first bytes of an xz stream. Checkpoints are written xz-compressed (lossless: trained fp16 weights shrink by
#: ~12 %, which keeps each shipped file under 5 MiB); files written before are read as they are.
XZ_MAGIC = b"\xfd7zXZ\x00"


def write_checkpoint(payload: dict, path: str | Path) -> None:
    """Write xz-compressed and atomically (a temporary file moved into place), so a crash never leaves half a
    checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(lzma.compress(buffer.getvalue()))
    tmp.replace(path)


def read_checkpoint(path: Path, kind: CheckpointKind) -> dict:
    """The payload of a `kind` file, or a CheckpointError naming what is wrong and how to get a good file."""
    if not path.is_file():
        raise CheckpointError(
            f"No trained {kind.noun} at {path}. {kind.alternative}"
        )
    try:
        data = path.read_bytes()
        payload = torch.load(io.BytesIO(lzma.decompress(data) if data.startswith(XZ_MAGIC) else data),
                             map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises OSError, UnpicklingError, RuntimeError... for files it cannot read
        raise CheckpointError(
            f"{path} is not a readable {kind.noun} file ({type(error).__name__}). {kind.alternative}"
        ) from error
    if not isinstance(payload, dict) or payload.get("format") != kind.format:
        raise CheckpointError(f"{path} is not an AmbiguousSAM {kind.noun} file (made by '{kind.maker}').")
    if not isinstance(payload.get("state"), dict) or not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{path} is an incomplete AmbiguousSAM {kind.noun} file; train or download it again.")
    return payload


def check_backbone(payload: dict, path: Path, kind: CheckpointKind, backbone: Backbone) -> None:
    """Refuse a file trained on another backbone: its weights would read the wrong decoder."""
    if payload["backbone"] != backbone.spec.name:
        raise CheckpointError(
            f"The {kind.noun} {path.name} was trained on backbone '{payload['backbone']}', not "
            f"'{backbone.spec.name}'. Use --backbone {payload['backbone']} or a {kind.noun} trained on "
            f"{backbone.spec.name}."
        )


#: The payload's "head" entry of each kind of head, and the kind a file without one holds.
PROBABILISTIC_SAM, SEQSAM, UA_SAM = "probabilistic_sam", "seqsam", "ua-sam"
#: The kinds of head file this version reads.
HEAD_KINDS = (PROBABILISTIC_SAM, SEQSAM, UA_SAM)


def _trained_state(head: ProbabilisticSAM | SeqSAM | UASAM, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().to(dtype) for name, p in head.trainable_parameters().items()}


def save_head(head: ProbabilisticSAM, path: str | Path, backbone_name: str, extra: dict | None = None) -> None:
    write_checkpoint({"format": HEAD.format, "backbone": backbone_name,
                      "config": {"injection": head.injection, "latent_dim": head.latent_dim,
                                 "presence_offset": head.presence_offset, "prior_temperature": head.prior_temperature,
                                 "presence_evidence": head.presence_evidence,
                                 "presence_bounds": head.presence.bounds(), "window_context": head.window_context,
                                 "latent_draws": head.latent_draws},
                      "state": _trained_state(head), "extra": extra or {}}, path)


def save_seqsam(head: SeqSAM, path: str | Path, backbone_name: str, extra: dict | None = None) -> None:
    """A SeqSAM head file: its recurrent cell and fine-tuned hypernetwork MLP (it has no constructor settings).
    Stored in fp16 (loaded into the fp32 head): the cell's 2.4 M weights would be 10 MB in fp32; the rounding
    (relative 5e-4) is far below what the bf16 autocast it trains and runs in already changes."""
    write_checkpoint({"format": HEAD.format, "head": SEQSAM, "backbone": backbone_name, "config": {},
                      "state": _trained_state(head, torch.float16), "extra": extra or {}}, path)


def save_ua_sam(head: UASAM, path: str | Path, backbone_name: str, extra: dict | None = None) -> None:
    """A UA-SAM head file: its adapters, first position variant, prior and posterior, and the settings that shape
    them (never the encoder, prompt encoder or decoder, which are the backbone's)."""
    write_checkpoint({"format": HEAD.format, "head": UA_SAM, "backbone": backbone_name,
                      "config": {"latent_dim": head.latent_dim, "adapted_blocks": head.adapted_blocks,
                                 "bottleneck": head.bottleneck, "position_dim": head.position_dim,
                                 "prior_temperature": head.prior_temperature},
                      "state": _trained_state(head), "extra": extra or {}}, path)


def copy_matching_weights(head: ProbabilisticSAM, path: str | Path) -> list[str]:
    """Start training from an earlier head (fine-tuning, or a head of an older layout): copy each tensor whose
    name and shape match and return the names of the trained tensors left as initialised."""
    saved = read_checkpoint(Path(path), HEAD)["state"]
    fresh = []
    with torch.no_grad():
        for name, parameter in head.trainable_parameters().items():
            if name in saved and saved[name].shape == parameter.shape:
                parameter.copy_(saved[name])
            else:
                fresh.append(name)
    return fresh


def _read_head(path: Path, backbone: Backbone) -> dict:
    payload = read_checkpoint(path, HEAD)
    check_backbone(payload, path, HEAD, backbone)
    if payload.get("head", PROBABILISTIC_SAM) not in HEAD_KINDS:
        raise CheckpointError(f"{path} holds a '{payload['head']}' head, which this version of AmbiguousSAM does not "
                              "know; update AmbiguousSAM or use another head file.")
    return payload


def load_head(backbone: Backbone, path: str | Path = DEFAULT_HEAD) -> ProbabilisticSAM:
    """Build the Probabilistic SAM head on `backbone` and load its trained weights (strictly: every trained
    tensor must fit). A SeqSAM or UA-SAM file is refused: the paths that call this use the presence gate or the
    sampling settings that only Probabilistic SAM has."""
    path = Path(path)
    payload = _read_head(path, backbone)
    kind = payload.get("head", PROBABILISTIC_SAM)
    if kind != PROBABILISTIC_SAM:
        name = {SEQSAM: "SeqSAM", UA_SAM: "UA-SAM"}[kind]
        raise CheckpointError(f"{path} is a {name} head; this command takes a Probabilistic SAM head (made by "
                              f"'ambiguous-sam train' without '--head'). {name} heads run in 'segment --head', "
                              "'serve --head' and 'evaluate --head'.")
    return _built(ProbabilisticSAM, backbone, payload, path)


def load_any_head(backbone: Backbone, path: str | Path = DEFAULT_HEAD) -> ProbabilisticSAM | SeqSAM | UASAM:
    """The head a file holds, whichever kind it is (what the segmenter, `evaluate` and the benchmarks run)."""
    path = Path(path)
    payload = _read_head(path, backbone)
    kind = payload.get("head", PROBABILISTIC_SAM)
    if kind == PROBABILISTIC_SAM:
        return load_head(backbone, path)
    return _built({SEQSAM: SeqSAM, UA_SAM: UASAM}[kind], backbone, payload, path)


def _built(head_class: type, backbone: Backbone, payload: dict, path: Path) -> ProbabilisticSAM | SeqSAM | UASAM:
    """A `head_class` head with the file's settings and trained tensors. Settings this version does not take
    (a TypeError) or refuses (a ValueError) mean another version wrote the file."""
    try:
        head = head_class(backbone, **payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path} was written by another version of AmbiguousSAM ({error}); retrain it.") from error
    return _load_state(head, payload, path)


def _load_state(head: ProbabilisticSAM | SeqSAM | UASAM, payload: dict,
                path: Path) -> ProbabilisticSAM | SeqSAM | UASAM:
    """Copy the file's trained tensors into `head`, strictly: the names and shapes must be the head's own."""
    expected = head.trainable_parameters()
    if set(expected) != set(payload["state"]) or any(
            getattr(payload["state"][name], "shape", None) != tensor.shape for name, tensor in expected.items()):
        raise CheckpointError(f"{path} does not match this version's head layout; retrain it.")
    with torch.no_grad():
        for name, tensor in payload["state"].items():
            expected[name].copy_(tensor)
    return head.eval()
