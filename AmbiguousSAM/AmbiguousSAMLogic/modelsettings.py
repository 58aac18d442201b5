"""Which model runs, and where: backbone, ambiguity head, weights, device, precision, encoder runtime, server,
as one value.

Loading a model takes seconds, so the inference session keeps one server with the model loaded and restarts it
only when these settings change. The choices are listed without importing torch, so the Slicer module can offer
them before the Python dependencies are installed: the backbones here (a test keeps them equal to the core's
registry), the heads from the core's torch-free table of head names.
"""

from __future__ import annotations

from dataclasses import dataclass

from AmbiguousSAMLib.head_names import HEAD_NAMES
from AmbiguousSAMLib.limits import RUNTIMES

#: Names of AmbiguousSAMLib.modeling.backbone.BACKBONES; only "litemedsam" works without a checkpoint file.
BACKBONE_CHOICES = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b")
#: Ambiguity heads: "default" is the shipped Probabilistic SAM head, "seqsam" the shipped SeqSAM head, "ua-sam" the
#: shipped UA-SAM head (all in Resources/Models), "deterministic" the plain backbone's single mask
#: (AmbiguousSAMLib/head_names.py).
HEAD_CHOICES = HEAD_NAMES
#: "auto" is CUDA when a GPU is visible to PyTorch, else the CPU.
DEVICE_CHOICES = ("auto", "cpu", "cuda")
#: Image-encoder runtimes (AmbiguousSAMLib/encoder_runtime.py): "auto" is OpenVINO on a CPU and PyTorch on CUDA.
RUNTIME_CHOICES = RUNTIMES


@dataclass(frozen=True)
class ModelSettings:
    """The model options of `ambiguous-sam serve` (LesionSegmenter's arguments) and the server to use."""

    backbone: str = "litemedsam"
    head: str = "default"
    #: Path of a weights file, needed by every backbone except LiteMedSAM.
    checkpoint: str | None = None
    device: str = "auto"
    #: bf16 autocast, the core's default: about half the encoder time, masks agree with fp32 at Dice ~0.98-0.997.
    precision: str = "bf16"
    #: The image encoder's runtime; "auto" picks per machine, "torch" or "openvino" force one.
    runtime: str = "auto"
    #: URL of a running `ambiguous-sam serve` (a GPU workstation, say). Empty: a local server process that the
    #: session starts with the model options above; a remote server runs the model it was started with.
    serverUrl: str = ""
    #: The file holding the remote server's token (the file given to its --token-file); empty: send no token.
    tokenFile: str = ""

    def modelOptions(self) -> dict[str, str | None]:
        """The options a local server is started with; a change of any of them means a new server process."""
        return {"backbone": self.backbone, "head": self.head, "checkpoint": self.checkpoint, "device": self.device,
                "precision": self.precision, "runtime": self.runtime}
