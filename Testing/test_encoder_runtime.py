"""The encoder runtimes: OpenVINO gives PyTorch's answers, converts once per weights, never calls home, and falls
back to PyTorch with one warning when it cannot run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import LIDC_VAL_CROPS, MODULE_DIR, val_embedding_cache

pytest.importorskip("openvino")

from AmbiguousSAMLib import metrics  # noqa: E402
from AmbiguousSAMLib.encoder_runtime import (  # noqa: E402
    BF16_GAIN, OpenVINOEncoder, TorchEncoder, build_encoder, weights_sha256)
from AmbiguousSAMLib.errors import InvalidSettingError  # noqa: E402
from AmbiguousSAMLib.predictor import Predictor  # noqa: E402
from AmbiguousSAMLib.training.embedding_cache import EmbeddingCache  # noqa: E402


@pytest.fixture(scope="module")
def val_slices() -> list[tuple[np.ndarray, tuple[int, int, int, int]]]:
    """Six marked validation slices, spread over the file, with their protocol boxes."""
    if not LIDC_VAL_CROPS.is_file():
        pytest.skip(f"LIDC crops are not at {LIDC_VAL_CROPS}")
    with np.load(LIDC_VAL_CROPS) as data:
        rows = np.nonzero(data["masks"].reshape(len(data["masks"]), -1).any(axis=1))[0][::70][:6]
        return [(data["images"][row], metrics.protocol_box(data["masks"][row])) for row in rows]


@pytest.fixture(scope="module")
def reference() -> Predictor:
    return Predictor(device="cpu", precision="fp32", runtime="torch")


@pytest.fixture(scope="module")
def reference_answers(reference: Predictor, val_slices) -> list[tuple[torch.Tensor, np.ndarray]]:
    """PyTorch fp32's embedding and mask for each validation slice, computed once for every runtime compared."""
    answers = []
    for image, box in val_slices:
        reference.set_image(image)
        answers.append((reference.embedding, reference.predict(box).mask))
    return answers


def test_auto_is_openvino_on_a_cpu(reference: Predictor) -> None:
    assert isinstance(Predictor(device="cpu", runtime="auto").encoder(), OpenVINOEncoder)
    assert isinstance(reference.encoder(), TorchEncoder)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_masks_agree_with_torch_fp32(reference_answers, val_slices, precision: str) -> None:
    """fp32 is PyTorch's arithmetic; bf16 moves a few boundary pixels of small lesions (a small lesion's Dice
    changes by several points per pixel), so bf16 is held to the mean, fp32 to every slice. The 0.98 is issue 16's:
    with the stem in fp32 OpenVINO bf16 meets it (0.989 on 50 val slices in benchmark_runtimes.py; 0.971 when the
    stem ran in bf16 too)."""
    fast = Predictor(device="cpu", precision=precision, runtime="openvino")
    dices, largest = [], 0.0
    for (image, box), (embedding, mask) in zip(val_slices, reference_answers):
        fast.set_image(image)
        largest = max(largest, float((fast.embedding - embedding).abs().max()))
        dices.append(metrics.dice(fast.predict(box).mask, mask))
    print(f"openvino {fast.encoder().precision}: max |embedding difference| {largest:.2e}, Dice {np.round(dices, 4)}")
    if fast.encoder().precision == "f32":
        assert min(dices) >= 0.98
        assert largest < 1e-3  # the same arithmetic up to summation order (4e-6 measured)
    else:
        assert np.mean(dices) >= 0.98


def test_in_bf16_the_stem_computes_in_fp32_and_the_rest_in_bf16(reference: Predictor, tmp_path: Path) -> None:
    """What each part of the compiled encoder computes in, read from OpenVINO's own runtime graph: the stem's
    convolutions in fp32 (their bf16 rounding is what moved masks), the attention stages' in bf16."""
    fast = OpenVINOEncoder(backbone=reference.backbone, precision="bf16", cache_folder=tmp_path)
    if fast.precision != "bf16":
        pytest.skip("bf16 does not run here (no native bf16, or timed slower than fp32)")

    def precisions(request) -> set[str]:
        runtime = request.get_compiled_model().get_runtime_model()
        return {op.get_rt_info()["runtimePrecision"].astype(str) for op in runtime.get_ordered_ops()
                if op.get_rt_info()["layerType"].astype(str) in ("Convolution", "FullyConnected")}

    stem, rest = (precisions(request) for request in fast._requests)
    print(f"stem computes in {stem}, the rest in {rest}")
    assert stem == {"f32"} and "bf16" in rest


def test_cache_key_is_the_weights() -> None:
    """The converted model's folder is named by the encoder weights' digest: equal weights share it, changed weights
    (another checkpoint, a fine-tuned encoder) get their own."""
    backbone = Predictor(device="cpu", runtime="torch").backbone
    before = weights_sha256(backbone.image_encoder)
    assert weights_sha256(copy.deepcopy(backbone.image_encoder)) == before
    with torch.no_grad():
        next(backbone.image_encoder.parameters()).add_(0.01)
    assert weights_sha256(backbone.image_encoder) != before


def _run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          cwd=MODULE_DIR, timeout=900)


CONVERT_TWICE = """
import json, os, torch
from pathlib import Path
from AmbiguousSAMLib.predictor import Predictor
from AmbiguousSAMLib.encoder_runtime import OpenVINOEncoder
cache = Path(os.environ["AMBIGUOUS_SAM_CACHE"])
first = Predictor(device="cpu", runtime="openvino")
image = torch.rand(1, 3, 256, 256)
embedding = first.encode(image)
folders = sorted((cache / "openvino").iterdir())
stamp = (folders[0] / "encoder-0.bin").stat().st_mtime_ns
second = OpenVINOEncoder(backbone=first.backbone, precision="fp32", cache_folder=cache)
print(json.dumps({"kind": type(first.encoder()).__name__, "folders": [f.name for f in folders],
                  "rewritten": (folders[0] / "encoder-0.bin").stat().st_mtime_ns != stamp,
                  "difference": float((second(image) - embedding).abs().max())}))
"""


def test_conversion_is_cached_and_sends_no_telemetry(tmp_path: Path) -> None:
    """A fresh machine converts once, written whole; the next build reads it. Converting and running leave no
    trace of OpenVINO's usage telemetry (its client id and usage counter under ~/intel), on by default in OpenVINO."""
    home, cache = tmp_path / "home", tmp_path / "cache"
    home.mkdir()
    done = _run_python(CONVERT_TWICE, {"HOME": str(home), "AMBIGUOUS_SAM_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["kind"] == "OpenVINOEncoder"
    assert len(result["folders"]) == 1 and result["folders"][0].startswith("litemedsam-")  # no staging folder left
    assert not result["rewritten"] and result["difference"] == 0.0
    assert not (home / "intel").exists()


def test_bf16_runs_only_where_it_is_timed_faster_and_the_timing_is_kept(tmp_path: Path, reference: Predictor) -> None:
    """Native bf16 is slower than fp32 on some CPUs (no AMX): bf16 is timed against fp32 once, and the record decides
    from then on (here rewritten by hand, to show it is what decides)."""
    fast = OpenVINOEncoder(backbone=reference.backbone, precision="bf16", cache_folder=tmp_path)
    records = list(tmp_path.glob(f"openvino/*/precision-{torch.get_num_threads()}-threads.json"))
    if not records:  # no native bf16: fp32, nothing timed
        assert fast.precision == "f32"
        pytest.skip("this CPU has no native bf16")
    times = json.loads(records[0].read_text())
    print(f"OpenVINO encoder ms on this CPU: {times}")
    assert set(times) == {"bf16", "f32"}
    assert fast.precision == ("bf16" if times["bf16"] < BF16_GAIN * times["f32"] else "f32")
    for faster in ("bf16", "f32"):
        records[0].write_text(json.dumps({"bf16": 1.0, "f32": 2.0} if faster == "bf16" else {"bf16": 0.95, "f32": 1.0}))
        assert OpenVINOEncoder(backbone=reference.backbone, precision="bf16", cache_folder=tmp_path).precision == faster
    assert OpenVINOEncoder(backbone=reference.backbone, precision="fp32", cache_folder=tmp_path).precision == "f32"


def test_missing_openvino_falls_back_to_torch_with_one_warning(tmp_path: Path) -> None:
    done = _run_python("import sys, warnings, json; sys.modules['openvino'] = None\n"
                       "from AmbiguousSAMLib.predictor import Predictor\n"
                       "import torch\n"
                       "with warnings.catch_warnings(record=True) as caught:\n"
                       "    warnings.simplefilter('always')\n"
                       "    p = Predictor(device='cpu', runtime='openvino')\n"
                       "    for _ in range(2): p.encode(torch.rand(1, 3, 256, 256))\n"
                       "print(json.dumps([type(p.encoder()).__name__, [str(w.message) for w in caught\n"
                       "                  if 'OpenVINO' in str(w.message)]]))",
                       {"AMBIGUOUS_SAM_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-2000:]
    kind, messages = json.loads(done.stdout.strip().splitlines()[-1])
    assert kind == "TorchEncoder"
    assert len(messages) == 1 and "pip install openvino" in messages[0]


def test_openvino_is_not_used_on_cuda(reference: Predictor) -> None:
    """OpenVINO runs on a CPU; a CUDA device keeps PyTorch (checked without a GPU by asking for the encoder only)."""
    encoder = build_encoder(backbone=reference.backbone, device=torch.device("cuda"), precision="fp32",
                            runtime="openvino")
    assert isinstance(encoder, TorchEncoder) and encoder.device.type == "cuda"


def test_unknown_runtime_is_refused() -> None:
    with pytest.raises(InvalidSettingError, match="auto, torch, openvino"):
        Predictor(device="cpu", runtime="onnx")


def test_cache_encoded_with_another_runtime_is_kept_and_refused(tmp_path: Path) -> None:
    """Hours of encoding are never thrown away because an option changed: the cache is refused, unchanged."""
    cache = val_embedding_cache(tmp_path / "cache", 2)  # built with the default runtime (OpenVINO here)
    before = {p.name: p.read_bytes() for p in cache.folder.iterdir()}
    with np.load(LIDC_VAL_CROPS) as data:
        rows = np.nonzero(data["masks"].reshape(len(data["masks"]), -1).any(axis=1))[0][:2]
    with pytest.raises(InvalidSettingError, match="runtime 'openvino' \\(now 'torch'\\).*--runtime torch"):
        cache.build(LIDC_VAL_CROPS, rows, Predictor(device="cpu", precision="bf16", window=None, runtime="torch"),
                    max_shift=4)
    assert {p.name: p.read_bytes() for p in cache.folder.iterdir()} == before
    assert EmbeddingCache(cache.folder).is_complete()
