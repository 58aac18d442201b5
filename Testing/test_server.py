"""The inference server as Slicer uses it: a real `ambiguous-sam serve` child process on localhost, its client,
and the refusals a server owes bad or unauthorised requests.

One server (model loaded once) serves most tests; the tests that kill a server or need other options start
their own. The protocol's round trip is tested without a server (test_protocol.py).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import numpy as np
import pytest

from AmbiguousSAMLib.client import InferenceClient
from AmbiguousSAMLib.errors import CancelledError, InvalidImageError, InvalidSettingError, ServerError
from AmbiguousSAMLib.lesion import LesionResult
from AmbiguousSAMLib.protocol import encode_job
from AmbiguousSAMLib.region import LesionRegion, lesion_region
from AmbiguousSAMLib.segmenter import LesionSegmenter
from AmbiguousSAMLib.server import MAX_PENDING_JOBS
from AmbiguousSAMLib.serverprocess import PACKAGE_PARENT, ServerProcess
from AmbiguousSAMLib.volume_io import read_volume

from conftest import LIDC_DEMO_CT

LIDC_BOX = (293, 341, 336, 393)
LIDC_SLICE = 89
#: A small synthetic CT: a soft-tissue cylinder through three 10 mm slices of -800 HU lung, with air in a corner.
SYNTHETIC_SHAPE = (3, 96, 96)
SYNTHETIC_BOX = (34, 34, 62, 62)
SYNTHETIC_SPACING = (1.0, 1.0, 10.0)


def synthetic_region(radius: float) -> LesionRegion:
    _, j, i = np.indices(SYNTHETIC_SHAPE)
    volume = np.full(SYNTHETIC_SHAPE, -800, dtype=np.int16)
    volume[(j - 48) ** 2 + (i - 48) ** 2 < radius ** 2] = 40
    volume[:, :4, :4] = -1000
    return lesion_region(volume, SYNTHETIC_BOX, 1, SYNTHETIC_SPACING)


@pytest.fixture(scope="module")
def lidc() -> tuple[np.ndarray, tuple[float, float, float], LesionRegion]:
    if not LIDC_DEMO_CT.is_file():
        pytest.skip(f"LIDC-IDRI demo CT not found at {LIDC_DEMO_CT}; it lives outside the repository "
                    "(shared/data, see its README) and is absent in a fresh clone.")
    volume = read_volume(LIDC_DEMO_CT)
    return volume.array, volume.spacing, lesion_region(volume.array, LIDC_BOX, LIDC_SLICE, volume.spacing)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    process = ServerProcess(sys.executable)
    process.start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


@pytest.fixture
def client(server: ServerProcess) -> InferenceClient:
    return server.client()


def test_the_server_runs_the_encoder_runtime_it_was_started_with(server: ServerProcess) -> None:
    """The Slicer module's "Encoder runtime" setting reaches the model: auto is OpenVINO on a CPU and PyTorch on
    CUDA, and a server started with "torch" encodes with PyTorch."""
    import torch

    assert server.client().health()["model"]["runtime"] == ("torch" if torch.cuda.is_available() else "openvino")
    forced = ServerProcess(sys.executable, runtime="torch")
    forced.start()
    try:
        forced.wait_ready()
        assert forced.client().health()["model"]["runtime"] == "torch"
    finally:
        forced.stop()


def request(url: str, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict]:
    """One raw HTTP request, as any client (not ours) could send it; (status, JSON answer)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def bearer(server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


def assert_same_result(actual: LesionResult, expected: LesionResult) -> None:
    for name in ("candidates", "consensus", "mean_probability", "entropy", "mutual_information", "scores"):
        a, b = getattr(actual, name), getattr(expected, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert np.array_equal(a, b), f"{name} differs between the server and in-process"
    assert tuple(actual.offset) == tuple(expected.offset)
    assert tuple(actual.volume_shape) == tuple(expected.volume_shape)


def test_lidc_click_through_the_server_equals_the_in_process_result(client: InferenceClient, lidc) -> None:
    volume, spacing, region = lidc
    reported: list[tuple[float, str]] = []
    remote = client.segment(region, samples=4, seed=0, progress=lambda fraction, message: reported.append(
        (fraction, message)))
    local = LesionSegmenter().segment(volume, LIDC_BOX, LIDC_SLICE, spacing, samples=4, seed=0)
    assert_same_result(remote, local)
    assert remote.candidates.shape[0] == 4 and remote.candidates[:, LIDC_SLICE - remote.offset[0]].any()
    assert remote.info["slices"] == local.info["slices"]
    assert reported[-1] == (1.0, "done") and len(reported) > 2, "progress reaches the caller while the job runs"


def test_the_same_volume_is_encoded_once_and_different_volumes_give_different_results(
        client: InferenceClient, lidc) -> None:
    region = lidc[2]
    first = client.segment(region, samples=4, seed=0)
    encoded = client.health()["encoded_crops"]
    again = client.segment(region, samples=4, seed=1)
    # Another seed may follow the lesion a slice further (its candidates differ): only such slices are encoded.
    new_slices = set(again.info["slices"]) - set(first.info["slices"])
    assert client.health()["encoded_crops"] - encoded == len(new_slices), \
        "a second click on the same voxels re-ran the encoder on slices it had already encoded"
    assert again.info["seed"] == 1
    encoded = client.health()["encoded_crops"]

    small = client.segment(synthetic_region(8.0), samples=4, seed=0)
    after_small = client.health()["encoded_crops"]
    large = client.segment(synthetic_region(13.0), samples=4, seed=0)
    assert after_small > encoded and client.health()["encoded_crops"] > after_small, \
        "a volume of the same shape but other voxels must be encoded, not taken from the cache"
    assert small.consensus.sum() < large.consensus.sum(), "the wider cylinder must give the larger lesion"


def test_requests_without_the_right_token_are_refused(server: ServerProcess) -> None:
    url = server.ready_url()
    status, answer = request(url, "GET", "/v1/health")
    assert status == 401 and answer["error"] == "Unauthorized" and "no token" in answer["message"]
    status, answer = request(url, "GET", "/v1/health", headers={"Authorization": "Bearer not-the-token"})
    assert status == 401 and "wrong token" in answer["message"]
    with pytest.raises(ServerError, match="refused this client's token.*token file"):
        InferenceClient(url, "not-the-token").health()
    body = json.dumps({"samples": 4}).encode()
    status, answer = request(url, "POST", "/v1/jobs", body, {"Authorization": "Bearer nope"})
    assert status == 401, "a refused request with a body still gets its answer"


def test_oversize_and_unsized_bodies_are_refused_before_reading(server: ServerProcess) -> None:
    parts = urlsplit(server.ready_url())
    for length, expected, reason in ((str(600 * 2 ** 20), 413, "--max-request-mb"), (None, 411, "Content-Length")):
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        try:
            connection.putrequest("POST", "/v1/jobs")
            connection.putheader("Authorization", bearer(server)["Authorization"])
            if length is not None:
                connection.putheader("Content-Length", length)
            connection.endheaders()  # and no body: the server answers from the headers alone
            response = connection.getresponse()
            answer = json.loads(response.read())
        finally:
            connection.close()
        assert response.status == expected and reason in answer["message"], answer


def test_malformed_jobs_get_400_with_the_reason(server: ServerProcess) -> None:
    url = server.ready_url()
    job = encode_job(synthetic_region(8.0), samples=4, seed=0)
    reshaped = json.loads(json.dumps(job))
    reshaped["region"]["voxels"]["shape"] = [3, 96, 97]
    missing = {key: value for key, value in job.items() if key != "samples"}
    for body, reason in ((b"{not json", "not JSON"),
                         (json.dumps(missing).encode(), "'job.samples' is missing"),
                         (json.dumps({**job, "samples": "4"}).encode(), "'job.samples' must be int"),
                         (json.dumps(reshaped).encode(), "'region.voxels.data' holds")):
        status, answer = request(url, "POST", "/v1/jobs", body, bearer(server))
        assert status == 400 and answer["error"] == "BadRequest", answer
        assert reason in answer["message"]
    status, answer = request(url, "GET", "/v2/health", headers=bearer(server))
    assert status == 404 and "/v1/health" in answer["message"]


def test_nan_voxels_and_inconsistent_regions_are_refused_with_the_cores_error(client: InferenceClient) -> None:
    region = synthetic_region(8.0)
    voxels = region.voxels.astype(np.float32)
    voxels[1, 40, 40] = np.nan
    with pytest.raises(InvalidImageError, match="NaN or infinite voxel.*fix or mask"):
        client.submit(dataclasses.replace(region, voxels=voxels), samples=4, seed=0)
    with pytest.raises(InvalidImageError, match="build it with lesion_region"):
        client.submit(dataclasses.replace(region, offset=(1, 0, 0)), samples=4, seed=0)
    with pytest.raises(InvalidSettingError, match="samples must be from 1 to 256; got 0"):
        client.submit(region, samples=0, seed=0)
    with pytest.raises(InvalidSettingError, match="seed must be a whole number"):
        client.submit(region, samples=4, seed=-1)
    assert client.health()["jobs"]["queued"] == 0, "refused regions must never be queued"


def test_unknown_jobs_are_404(client: InferenceClient, server: ServerProcess) -> None:
    status, answer = request(server.ready_url(), "GET", "/v1/jobs/0123456789abcdef", headers=bearer(server))
    assert status == 404 and answer["error"] == "UnknownJob"
    with pytest.raises(ServerError, match="HTTP 404.*no job"):
        client.status("0123456789abcdef")
    with pytest.raises(ServerError, match="no job"):
        client.cancel("0123456789abcdef")


def test_a_finished_job_is_forgotten_once_fetched(client: InferenceClient) -> None:
    job = client.submit(synthetic_region(8.0), samples=2, seed=0)
    while not (status := client.status(job)).finished:
        time.sleep(0.05)
    assert status.state == "done" and status.result is not None and status.error is None
    with pytest.raises(ServerError, match="no job"):
        client.status(job)


def test_cancel_stops_a_running_and_a_waiting_job(client: InferenceClient, lidc) -> None:
    region = lidc[2]
    unseen = dataclasses.replace(region, voxels=region.voxels + 1, fill=region.fill + 1)  # not in the cache
    running = client.submit(unseen, samples=4, seed=0)
    waiting = client.submit(unseen, samples=4, seed=1)
    client.cancel(waiting)
    status = client.status(waiting)
    assert status.state == "cancelled" and status.result is None, "a waiting job is cancelled at once"
    client.cancel(running)
    while not (status := client.status(running)).finished:
        time.sleep(0.05)
    assert status.state == "cancelled" and status.result is None and status.error is None
    stop = threading.Event()
    stop.set()
    with pytest.raises(CancelledError):
        client.segment(unseen, samples=4, seed=2, cancel=stop)


def test_a_full_queue_refuses_more_jobs(client: InferenceClient, lidc) -> None:
    region = lidc[2]
    unseen = dataclasses.replace(region, voxels=region.voxels + 3, fill=region.fill + 3)
    jobs = [client.submit(unseen, samples=4, seed=seed) for seed in range(MAX_PENDING_JOBS)]
    try:
        with pytest.raises(ServerError, match=f"HTTP 503.*{MAX_PENDING_JOBS} jobs waiting"):
            client.submit(unseen, samples=4, seed=99)
    finally:
        for job in jobs:
            client.cancel(job)
    while not client.status(jobs[0]).finished:
        time.sleep(0.05)


def test_a_killed_server_surfaces_as_server_error_and_the_next_start_works(lidc) -> None:
    process = ServerProcess(sys.executable)
    process.start()
    try:
        process.wait_ready()
        client = process.client()
        pid = process.pid

        def kill_once_submitted(fraction: float, message: str) -> None:
            if process.alive():
                os.kill(pid, signal.SIGKILL)
                while process.alive():  # so the next poll meets a dead server, not a dying one
                    time.sleep(0.01)

        with pytest.raises(ServerError, match="stopped answering .*connection refused.*next click starts a fresh"):
            client.segment(lidc[2], samples=4, seed=0, progress=kill_once_submitted)
        with pytest.raises(ServerError, match="exited"):
            process.ready_url()
        process.start()
        process.wait_ready()
        assert process.pid != pid and process.client().health()["status"] == "ok"
    finally:
        process.stop()


def test_a_server_that_cannot_load_its_model_reports_why() -> None:
    process = ServerProcess(sys.executable, head="/nonexistent/head.pt")
    process.start()
    try:
        with pytest.raises(ServerError, match=r"(?s)exited \(code 2\).*head.pt"):
            process.wait_ready()
    finally:
        process.stop()


def test_the_token_travels_in_a_private_file_and_stop_cleans_up() -> None:
    process = ServerProcess(sys.executable)
    process.start()
    try:
        arguments: list[bytes] = []
        while b"--token-file" not in arguments:  # until the child has exec'd the server
            assert process.alive(), process.log_tail()
            arguments = Path(f"/proc/{process.pid}/cmdline").read_bytes().split(b"\0")
        assert process.token.encode() not in b" ".join(arguments), "the token must not be on the command line"
        token_file = Path(arguments[arguments.index(b"--token-file") + 1].decode())
        assert token_file.read_text() == process.token
        assert token_file.stat().st_mode & 0o777 == 0o600
    finally:
        process.stop()
    assert not token_file.parent.exists() and not process.alive()
    process.stop()  # idempotent


def serve_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "AmbiguousSAMLib.cli", "serve", *arguments]


def child_environment() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(PACKAGE_PARENT)}


def test_serving_beyond_loopback_without_a_token_is_refused() -> None:
    finished = subprocess.run(serve_command("--host", "0.0.0.0", "--port", "0"), capture_output=True, text=True,
                              env=child_environment(), timeout=120)
    assert finished.returncode == 2
    assert "without a token" in finished.stderr and "--token-file" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_https_with_a_self_signed_certificate_and_exit_with_stdin(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed, so no test certificate can be made")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(certificate), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    token_file, ready_file = tmp_path / "token", tmp_path / "ready.json"
    token_file.write_text("secret-token\n")
    child = subprocess.Popen(serve_command("--port", "0", "--certfile", str(certificate), "--keyfile", str(key),
                                           "--token-file", str(token_file), "--ready-file", str(ready_file),
                                           "--exit-with-stdin"),
                             stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=child_environment())
    try:
        while not ready_file.exists():
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
        url = json.loads(ready_file.read_text())["url"]
        assert url.startswith("https://127.0.0.1:")
        health = InferenceClient(url, "secret-token", cafile=str(certificate)).health()
        assert health["status"] == "ok"
        with pytest.raises(ServerError, match="certificate this machine does not trust"):
            InferenceClient(url, "secret-token").health()
        with pytest.raises(ServerError, match="stopped answering"):
            InferenceClient(url.replace("https", "http"), "secret-token").health()
        child.stdin.close()
        assert child.wait(timeout=60) == 0, "the server ends when its stdin closes"
        assert b"stdin closed" in child.stderr.read()
    finally:
        child.kill()
        child.wait()
