"""Which engine runs the image encoder: PyTorch, or OpenVINO on a CPU.

The encoder is almost all of a click's time on a CPU, and PyTorch's CPU kernels leave much of the chip unused:
on one 2-core machine OpenVINO ran LiteMedSAM's encoder 1.8x faster than PyTorch at fp32, with the same
embedding to 4e-6 (Testing/Benchmarks/benchmark_runtimes.py measures it on yours). So "auto" picks OpenVINO on
a CPU and PyTorch on CUDA. A model converted for OpenVINO is written once to a cache folder named after the
encoder weights' sha256 and the OpenVINO version, so it is never shipped as a second copy of the weights and a
new checkpoint or release converts afresh; the compiled form (which depends on the precision and the CPU) sits
in OpenVINO's own cache under the same folder. OpenVINO missing, or a model it cannot convert or compile, falls
back to PyTorch with one warning: a slower click is better than none.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import torch

from .device import autocast
from .limits import check_runtime
from .modeling.backbone import Backbone

#: Where converted encoders are kept unless AMBIGUOUS_SAM_CACHE names another folder.
CACHE_VARIABLE = "AMBIGUOUS_SAM_CACHE"

#: One encoder call: (1, 3, S, S) model input -> (1, 256, 64, 64) float32 embedding on the input's device.
Encoder = Callable[[torch.Tensor], torch.Tensor]


def default_cache_folder() -> Path:
    """$AMBIGUOUS_SAM_CACHE, else the user's cache folder (XDG on Linux, ~/.cache elsewhere)."""
    if os.environ.get(CACHE_VARIABLE):
        return Path(os.environ[CACHE_VARIABLE])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "AmbiguousSAM"


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes, bytes): the identity of the weights, whichever
    file (or training run) they came from."""
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _import_openvino():
    """OpenVINO, with its usage telemetry left out. Importing it, and converting a model, would otherwise report
    usage to Google Analytics by default (OpenVINO's telemetry page); a workstation reading patients' scans must
    not call out. Blocking the `openvino_telemetry` package makes OpenVINO use its own built-in no-op stub, in this
    process only and without touching the user's OpenVINO settings. An OpenVINO another extension already
    imported is used as it is."""
    if "openvino" not in sys.modules:
        sys.modules.setdefault("openvino_telemetry", None)
    import openvino

    return openvino


class TorchEncoder:
    """The backbone's own encoder, in bf16 autocast when asked (the reference every other runtime is checked on)."""

    name = "torch"

    def __init__(self, *, backbone: Backbone, device: torch.device, precision: str) -> None:
        self.backbone, self.device, self.precision = backbone, device, precision

    @torch.no_grad()
    def __call__(self, model_input: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.backbone.encode(model_input.to(self.device)).float()


class OpenVINOEncoder:
    """The backbone's encoder converted to OpenVINO and compiled for this CPU.

    bf16 runs in bf16 only where the CPU computes it natively (AVX-512 BF16 or AMX; OpenVINO reports 'BF16'),
    fp32 elsewhere. It uses as many threads as torch is allowed, so Slicer's and the user's thread settings hold.
    The input shape is fixed at one image: the TinyViT trace bakes the batch size into its reshapes.
    """

    name = "openvino"

    def __init__(self, *, backbone: Backbone, precision: str, cache_folder: Path) -> None:
        ov = _import_openvino()
        core = ov.Core()
        size = backbone.image_size
        folder = Path(cache_folder) / "openvino" / f"{backbone.spec.name}-{weights_sha256(backbone.image_encoder)[:20]}-ov{ov.__version__.split('-')[0]}"
        model_path = folder / "encoder.xml"
        if not model_path.is_file():
            _convert(backbone, size, folder)
        native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        #: What the CPU computes in ("bf16" or "f32"), for benchmark tables.
        self.precision = "bf16" if precision == "bf16" and native_bf16 else "f32"
        compiled = core.compile_model(str(model_path), "CPU", {
            "INFERENCE_PRECISION_HINT": self.precision, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
            "PERFORMANCE_HINT": "LATENCY", "CACHE_DIR": str(folder / "compiled")})
        self._request = compiled.create_infer_request()
        self.input_shape = (1, 3, size, size)

    def __call__(self, model_input: torch.Tensor) -> torch.Tensor:
        pixels = model_input.detach().to("cpu", torch.float32)
        if pixels.shape[0] != 1:  # the compiled shape is one image; a batch goes through one by one
            return torch.cat([self(image[None]) for image in pixels])
        output = self._request.infer({0: pixels.numpy()})[0]
        return torch.from_numpy(output.copy()).to(model_input.device)


class _Encode(torch.nn.Module):
    """`Backbone.encode` as a module, so the converted model includes SAM's input normalisation."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, image01: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode(image01)


def _convert(backbone: Backbone, size: int, folder: Path) -> None:
    """Trace the encoder into OpenVINO IR, written whole or not at all (a temporary folder renamed into place),
    so an interrupted conversion or two processes converting at once never leave a half-written model."""
    ov = _import_openvino()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warnings about Python ints in TinyViT's reshapes
            model = ov.convert_model(_Encode(backbone).eval(), example_input=torch.zeros(1, 3, size, size),
                                     input=[ov.PartialShape([1, 3, size, size])])
        ov.save_model(model, str(staging / "encoder.xml"), compress_to_fp16=False)
        staging.rename(folder)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)  # the temporary folder mkdtemp made for this call, nothing else
        # The rename fails when another process finished the same conversion first: its copy is the same model.
        if not (isinstance(error, OSError) and (folder / "encoder.xml").is_file()):
            raise


def build_encoder(*, backbone: Backbone, device: torch.device, precision: str, runtime: str = "auto",
                  cache_folder: Path | None = None) -> Encoder:
    """The encoder for `runtime` on `device`: "auto" is OpenVINO on a CPU and PyTorch on CUDA.

    OpenVINO runs on the CPU only; asked for on CUDA, PyTorch runs (CUDA is faster). OpenVINO not installed, or
    failing to convert or compile this backbone, gives PyTorch and one warning saying why.
    """
    check_runtime(runtime)
    if runtime == "torch" or device.type != "cpu":
        return TorchEncoder(backbone=backbone, device=device, precision=precision)
    try:
        return OpenVINOEncoder(backbone=backbone, precision=precision, cache_folder=cache_folder or default_cache_folder())
    except Exception as error:  # ImportError, conversion and compile errors of many types: all mean "use torch"
        warnings.warn(f"The OpenVINO encoder runtime is unavailable ({type(error).__name__}: {error}); AmbiguousSAM "
                      "runs the encoder in PyTorch (slower on a CPU). Install it with: pip install openvino",
                      RuntimeWarning, stacklevel=2)
        return TorchEncoder(backbone=backbone, device=device, precision=precision)

