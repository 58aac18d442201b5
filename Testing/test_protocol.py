"""The server's wire format: exact round trips through JSON, refusals that name the field, and no torch needed."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from AmbiguousSAMLib.protocol import (ProtocolError, decode_array, decode_job, decode_region, decode_result,
                                      encode_array, encode_job, encode_region, encode_result)
from AmbiguousSAMLib.region import LesionRegion, lesion_region
from AmbiguousSAMLib.review_flag import ReviewFlag

from conftest import MODULE_DIR


def through_json(message: dict) -> dict:
    return json.loads(json.dumps(message))


@pytest.mark.parametrize("array", [
    np.arange(-30, 75, dtype=np.int16).reshape(3, 5, 7),
    np.random.default_rng(0).random((2, 3, 5)).astype(np.float32),
    np.random.default_rng(1).normal(size=(4,)),
    np.arange(11, dtype=np.uint16),
    np.random.default_rng(2).random((3, 5, 7)) > 0.5,  # 105 bits: not a whole number of bytes
    np.ones((1, 1, 1), dtype=bool),
    np.zeros((0, 4), dtype=np.float32),
    np.arange(12, dtype=">i4").reshape(3, 4),  # big-endian input travels little-endian, comes back native
])
def test_arrays_round_trip_exactly(array: np.ndarray) -> None:
    decoded = decode_array(through_json(encode_array(array)), "array")
    assert decoded.dtype == array.dtype.newbyteorder("=") and decoded.shape == array.shape
    assert np.array_equal(decoded, array)
    assert decoded.flags.writeable


def test_bool_arrays_travel_packed() -> None:
    mask = np.zeros((16, 20, 40, 40), dtype=bool)
    assert len(encode_array(mask)["data"]) <= 4 * (mask.size // 8) // 3 + 4


def noise_region() -> LesionRegion:
    """A region of a noisy CT-like volume on an anisotropic grid, with a box at fractional voxel positions."""
    volume = np.random.default_rng(0).integers(-1000, 400, size=(12, 64, 80)).astype(np.int16)
    return lesion_region(volume, (20.5, 18.25, 41.0, 39.5), 6, (0.7, 0.9, 2.5))


def test_a_region_round_trips_exactly() -> None:
    region = noise_region()
    decoded = decode_region(through_json(encode_region(region)))
    assert decoded.voxels.dtype == region.voxels.dtype and np.array_equal(decoded.voxels, region.voxels)
    for field in ("offset", "volume_shape", "spacing", "box", "slice_k", "fill"):
        assert getattr(decoded, field) == getattr(region, field), field
        assert type(getattr(decoded, field)) is type(getattr(region, field)), field


def test_a_result_round_trips_exactly(make_lesion_result) -> None:
    result = make_lesion_result((20, 40, 50), boxShape=(7, 15, 17))  # 4 x 1785 candidate voxels: odd bit counts
    result.info["scores"] = np.float32(0.5)
    decoded = decode_result(through_json(encode_result(result)))
    for name in ("candidates", "consensus", "mean_probability", "entropy", "mutual_information", "scores"):
        original, back = getattr(result, name), getattr(decoded, name)
        assert back.dtype == original.dtype and np.array_equal(back, original), name
    assert decoded.offset == tuple(result.offset) and decoded.volume_shape == tuple(result.volume_shape)
    assert decoded.info == {"source": "hand-built test data", "scores": 0.5}


def test_expected_quality_and_the_review_flag_travel_with_a_result(make_lesion_result) -> None:
    result = make_lesion_result((20, 40, 50))
    result.quality = np.array([0.61, 0.52, 0.7, 0.33], np.float32)
    result.review = ReviewFlag.from_disagreement(0.58)
    decoded = decode_result(through_json(encode_result(result)))
    assert decoded.quality.dtype == np.float32 and np.array_equal(decoded.quality, result.quality)
    assert decoded.review == result.review
    unscored = decode_result(through_json(encode_result(make_lesion_result((20, 40, 50)))))
    assert unscored.quality is None and unscored.review.state == "not available"


@pytest.mark.parametrize("change, reason", [
    ({"quality": encode_array(np.ones(3, np.float32))}, "one value per candidate"),
    ({"review": {"state": "maybe", "threshold": 0.5}}, "'result.review' is not a review flag"),
    ({"review": {"state": "needs review", "predicted_disagreement": None, "threshold": 0.5}}, "exactly when"),
])
def test_a_result_with_a_bad_quality_or_flag_is_refused(make_lesion_result, change: dict, reason: str) -> None:
    message = {**through_json(encode_result(make_lesion_result((20, 40, 50)))), **change}
    with pytest.raises(ProtocolError, match=reason):
        decode_result(message)


def test_a_job_round_trips_and_its_numbers_are_checked() -> None:
    region = noise_region()
    decoded, samples, seed = decode_job(through_json(encode_job(region, samples=8, seed=-3)))
    assert (samples, seed) == (8, -3) and np.array_equal(decoded.voxels, region.voxels)
    message = through_json(encode_job(region, samples=8, seed=0))
    for change, reason in (({"samples": True}, "'job.samples' must be int, not bool"),
                           ({"region": []}, "'job.region' must be dict")):
        with pytest.raises(ProtocolError, match=reason):
            decode_job({**message, **change})


@pytest.mark.parametrize("change, reason", [
    ({"dtype": "object"}, "'voxels.dtype' is 'object'"),
    ({"shape": [3, 4]}, "holds 2 bytes, but a int16 array of shape \\(3, 4\\) needs 24"),
    ({"shape": [-1]}, ">= 0"),
    ({"shape": [1.5]}, r"'voxels.shape\[0\]' must be int"),
    ({"data": "???"}, "not base64"),
    ({"data": None}, "must be str, not NoneType"),
])
def test_malformed_arrays_are_refused_with_the_reason(change: dict, reason: str) -> None:
    message = {**encode_array(np.zeros(1, dtype=np.int16)), **change}
    with pytest.raises(ProtocolError, match=reason):
        decode_array(message, "voxels")


def test_the_client_side_imports_without_torch() -> None:
    """Slicer's GUI process imports the client and starts the server before PyTorch is installed."""
    code = ("import sys; sys.modules['torch'] = None; sys.path.insert(0, sys.argv[1]); "
            "import AmbiguousSAMLib.client, AmbiguousSAMLib.serverprocess, AmbiguousSAMLib.protocol")
    finished = subprocess.run([sys.executable, "-c", code, str(MODULE_DIR)], capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
