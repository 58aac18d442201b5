"""Save and load the UncertainSAM scorer as its own small file, apart from the ambiguity head.

A separate file because the scorer rates candidates of any sampler (the head, the deterministic prediction, SAM's
multimask outputs) and is retrained without touching the head. It records the backbone whose tokens it read, so
loading it on another backbone fails with a message. Weights are stored in fp16 (half the size, 4.6 MB once
compressed; the sigmoid outputs move by < 1e-3) and loaded into an fp32 module.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from ..modeling.backbone import Backbone
from .checkpoint import CheckpointKind, check_backbone, read_checkpoint, shipped_model, write_checkpoint
from .scorer import UncertainSAMScorer

SCORER_FILE_NAME = "uncertainsam_scorer_lidc.pt"
DEFAULT_SCORER = shipped_model(SCORER_FILE_NAME)
SCORER = CheckpointKind(format="ambiguous-sam-scorer/1", noun="scorer", maker="ambiguous-sam train-scorer",
                        alternative="Pass a scorer made by 'ambiguous-sam train-scorer', or leave the option out for "
                                    "the shipped LIDC scorer.")


def save_scorer(scorer: UncertainSAMScorer, path: str | Path, backbone_name: str, extra: dict | None = None) -> None:
    state = {name: (t.detach().cpu().half() if t.is_floating_point() else t.detach().cpu())
             for name, t in scorer.state_dict().items()}
    write_checkpoint({"format": SCORER.format, "backbone": backbone_name, "config": {"hidden": scorer.hidden},
                      "state": state, "extra": extra or {}}, path)


def load_scorer(backbone: Backbone, path: str | Path = DEFAULT_SCORER) -> UncertainSAMScorer:
    """The scorer of `path` for `backbone` (strictly: every tensor must fit), in eval mode."""
    path = Path(path)
    payload = read_checkpoint(path, SCORER)
    check_backbone(payload, path, SCORER, backbone)
    try:
        scorer = UncertainSAMScorer(**payload["config"])
    except TypeError as error:
        raise CheckpointError(f"{path} was written by another version of AmbiguousSAM ({error}); retrain it "
                              "with 'ambiguous-sam train-scorer'.") from error
    expected = scorer.state_dict()
    state = payload["state"]
    if set(expected) != set(state) or any(getattr(state[n], "shape", None) != t.shape for n, t in expected.items()):
        raise CheckpointError(f"{path} does not match this version's scorer layout; retrain it with "
                              "'ambiguous-sam train-scorer'.")
    scorer.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    return scorer.eval()
