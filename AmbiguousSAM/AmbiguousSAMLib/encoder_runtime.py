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
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .device import autocast
from .limits import check_runtime
from .modeling.backbone import Backbone
from .modeling.tiny_vit import TinyViT

#: Where converted encoders are kept unless AMBIGUOUS_SAM_CACHE names another folder.
CACHE_VARIABLE = "AMBIGUOUS_SAM_CACHE"

#: bf16 is used where it takes less than this share of the fp32 time (`_chosen`).
BF16_GAIN = 0.9

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

    bf16 runs in bf16 only where the CPU computes it natively (AVX-512 BF16 or AMX; OpenVINO reports 'BF16') and
    it is faster there than fp32 (timed once per machine and thread count: `_faster_precision`), fp32 elsewhere.
    In bf16, TinyViT's full-resolution first stage still computes in fp32 (`_parts` says why). It uses as many
    threads as torch is allowed, so Slicer's and the user's thread settings hold.
    The input shape is fixed at one image: the TinyViT trace bakes the batch size into its reshapes.
    """

    name = "openvino"

    def __init__(self, *, backbone: Backbone, precision: str, cache_folder: Path) -> None:
        ov = _import_openvino()
        core = ov.Core()
        size = backbone.image_size
        parts = _parts(backbone)
        folder = Path(cache_folder) / "openvino" / (
            f"{backbone.spec.name}-{weights_sha256(backbone.image_encoder)[:20]}-ov{ov.__version__.split('-')[0]}"
            f"-{len(parts)}part")
        model_paths = [folder / f"encoder-{i}.xml" for i in range(len(parts))]
        if not all(path.is_file() for path in model_paths):
            _convert(parts, size, folder)
        self.input_shape = (1, 3, size, size)
        native_bf16 = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        #: What the CPU computes in ("bf16" or "f32"), for benchmark tables.
        self.precision, compiled = "f32", None
        if precision == "bf16" and native_bf16:
            self.precision, compiled = _faster_precision(core, model_paths, self.input_shape)
        if compiled is None:
            compiled = _compile(core, model_paths, self.precision)
        self._requests = [part.create_infer_request() for part in compiled]

    def __call__(self, model_input: torch.Tensor) -> torch.Tensor:
        pixels = model_input.detach().to("cpu", torch.float32)
        if pixels.shape[0] != 1:  # the compiled shape is one image; a batch goes through one by one
            return torch.cat([self(image[None]) for image in pixels])
        return torch.from_numpy(_infer_in_turn(self._requests, pixels.numpy()).copy()).to(model_input.device)


def _infer_in_turn(requests: list, value: np.ndarray) -> np.ndarray:
    """Run the compiled parts' infer requests one after the other, each on the previous one's output."""
    for request in requests:
        value = request.infer({0: value})[0]
    return value


def _compile(core, model_paths: list[Path], precision: str) -> list:
    """The converted parts compiled for this CPU, at torch's thread count; in "bf16" every part but the first of
    a split encoder (`_parts`) computes in bf16. The compiled forms are kept in OpenVINO's cache beside the model,
    so a second compile is quick."""
    return [core.compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": "f32" if n == 0 and len(model_paths) > 1 else precision,
        "INFERENCE_NUM_THREADS": torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
        "CACHE_DIR": str(path.parent / "compiled")}) for n, path in enumerate(model_paths)]


def _faster_precision(core, model_paths: list[Path], input_shape: tuple[int, ...]) -> tuple[str, list | None]:
    """"bf16" where it runs the encoder clearly faster than "f32" on this CPU at this thread count (`_chosen`):
    timed once (two warm-ups and the median of five calls each) and kept in the model's folder. When it was timed
    now, the chosen precision's compiled parts come with it (None when the record decided), so they are not
    compiled twice.

    Why time it: a CPU that computes bf16 natively is not always faster in it. With AMX, OpenVINO ran LiteMedSAM's
    encoder in bf16 at 0.23x its fp32 time (issue 16); on a Xeon with AVX-512 BF16 but no AMX, bf16 took 1.33x the
    fp32 time (1,257 against 944 ms, 1 thread), and fp32 is also PyTorch's answer to 4e-6 where bf16 moves
    boundary pixels. The CPU's flags do not say which case a machine is (AVX-512 BF16 alone was fast on another
    machine), the clock does. The record is per thread count: the balance can change with it.
    """
    record = model_paths[0].parent / f"precision-{torch.get_num_threads()}-threads.json"
    try:
        times = json.loads(record.read_text())
        if set(times) == {"bf16", "f32"}:
            return _chosen(times), None
    except (OSError, ValueError):
        pass  # not timed yet on this machine (or an unreadable record): time it now
    zeros = np.zeros(input_shape, np.float32)
    times, compiled = {}, {}
    for precision in ("bf16", "f32"):
        compiled[precision] = _compile(core, model_paths, precision)
        requests = [part.create_infer_request() for part in compiled[precision]]
        _infer_in_turn(requests, zeros)
        _infer_in_turn(requests, zeros)
        calls = []
        for _ in range(5):
            start = time.perf_counter()
            _infer_in_turn(requests, zeros)
            calls.append(time.perf_counter() - start)
        times[precision] = round(float(np.median(calls)) * 1000, 1)
    staging = record.with_name(f".{record.name}.{os.getpid()}")
    try:
        staging.write_text(json.dumps(times))
        staging.replace(record)  # whole or not at all, as the converted model
    except OSError:
        pass  # a read-only cache folder: the choice holds for this session and is timed again next time
    return _chosen(times), compiled[_chosen(times)]


def _chosen(times: dict[str, float]) -> str:
    """bf16 where it saves at least a tenth of the fp32 time: its rounding has to buy speed, and near a tie the
    exact arithmetic is worth more than the timing's noise (on that AVX-512 BF16 Xeon at 2 threads, one early
    timing of a warm-up and three calls gave bf16 711 against 797 ms; two of two warm-ups and five calls gave
    667 against 531 and 677 against 564)."""
    return "bf16" if times["bf16"] < BF16_GAIN * times["f32"] else "f32"


class _Part(torch.nn.Module):
    """One step of `Backbone.encode` as a module of its own (the backbone, and so its weights, registered), so
    OpenVINO can convert it."""

    def __init__(self, backbone: Backbone, step: Callable[[Backbone, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.backbone = backbone
        self.step = step

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return self.step(self.backbone, value)


def _parts(backbone: Backbone) -> list[torch.nn.Module]:
    """The encoder as the modules converted and compiled one after the other: for TinyViT its stem and the rest,
    otherwise the whole encoder. Why split TinyViT: in bf16 its masks agreed with fp32 at a mean Dice of 0.971 on
    50 val slices (min 0.648), and the loss is in the stem, which runs at the full 256 x 256 resolution on LiteMedSAM's
    1x1 patch embedding. Computing only the stem in fp32 gave 0.989 (min 0.905; benchmark_runtimes.py) for 17-30 %
    more encoder time than all-bf16 (342-379 against 285-294 ms, 2 threads, AMD EPYC with AVX-512 BF16), while
    keeping the last stage and the neck, every LayerNorm, or the attention in fp32 changed nothing (0.970-0.972).
    OpenVINO's per-node "keep fp32" mark is not honoured for bf16 by its CPU plugin (only for f16), so the stem is a
    model of its own."""
    if isinstance(backbone.image_encoder, TinyViT):
        steps = [lambda b, image01: b.image_encoder.stem(b.encoder_input(image01)),
                 lambda b, tokens: b.image_encoder.rest(tokens)]
    else:
        steps = [Backbone.encode]
    return [_Part(backbone, step).eval() for step in steps]


def _convert(parts: list[torch.nn.Module], size: int, folder: Path) -> None:
    """Trace the encoder's parts into OpenVINO IR, written whole or not at all (a temporary folder renamed into
    place), so an interrupted conversion or two processes converting at once never leave a half-written model."""
    ov = _import_openvino()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    try:
        example = torch.zeros(1, 3, size, size)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracing warnings about Python ints in TinyViT's reshapes
            for n, part in enumerate(parts):
                model = ov.convert_model(part, example_input=example,
                                         input=[ov.PartialShape(list(example.shape))])
                ov.save_model(model, str(staging / f"encoder-{n}.xml"), compress_to_fp16=False)
                example = part(example)
        staging.rename(folder)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)  # the temporary folder mkdtemp made for this call, nothing else
        # The rename fails when another process finished the same conversion first: its copy is the same model.
        if not (isinstance(error, OSError) and all((folder / f"encoder-{n}.xml").is_file() for n in range(len(parts)))):
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

