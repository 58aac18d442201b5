"""`ambiguous-sam serve`: the model in its own persistent process, answering lesion regions over HTTP.

Why a process: inside Slicer, PythonQt holds the GIL while the Qt event loop idles, so model work on a Python
thread of Slicer crawls. A separate process loads the model once and keeps it, and its embedding cache, warm
for every click. Why HTTP + JSON on the standard library (http.server, ssl): the client runs in Slicer's GUI
process, whose Python has only the standard library for certain (no requests or aiohttp), and the same
protocol reaches a remote GPU workstation with a token and TLS.

Requests are answered on their own threads, so status polls and cancels stay fast while the model works;
jobs run one at a time on one worker thread (the model is not thread-safe). A job's region is checked before
it is queued, so bad input never reaches the model.
"""

from __future__ import annotations

import hmac
import json
import os
import queue
import secrets
import ssl
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import __version__
from .errors import AmbiguousSAMError, CancelledError
from .protocol import PROTOCOL_VERSION, ProtocolError, decode_job, encode_result, is_loopback, read_token
from .limits import check_samples, check_seed
from .region import LesionRegion, check_region

if TYPE_CHECKING:
    from .segmenter import LesionSegmenter

#: Finished jobs whose status nobody fetched are forgotten oldest first beyond this many (bounded memory).
MAX_FINISHED_JOBS = 16
#: Submissions are refused (503) while this many jobs wait or run: a client runs one click at a time.
MAX_PENDING_JOBS = 8
#: Seconds a connection may stall (TLS handshake, a slow body) before it is dropped.
CONNECTION_TIMEOUT = 60.0
#: Bytes read at a time when a refused request's body is drained, so the client receives the refusal rather
#: than a connection reset.
DRAIN_CHUNK = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    """What `ambiguous-sam serve` was asked for."""

    host: str = "127.0.0.1"
    port: int = 8765
    token_file: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    max_request_mb: float = 512.0
    ready_file: Path | None = None
    exit_with_stdin: bool = False
    backbone: str = "litemedsam"
    head: str = "default"
    checkpoint: str | None = None
    device: str | None = None
    precision: str = "bf16"
    runtime: str = "auto"
    #: "default" (the shipped scorer), a scorer file, or None for none (`--no-scorer`).
    scorer: str | None = "default"


@dataclass
class _Job:
    id: str
    region: LesionRegion | None  # dropped once the job starts, so finished jobs hold only their result
    samples: int
    seed: int
    cancel: threading.Event = field(default_factory=threading.Event)
    state: str = "queued"
    progress: float = 0.0
    message: str = "waiting for the model"
    result: dict | None = None  # encoded once, when done
    error: str | None = None  # the error's class name, when failed

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def status(self) -> dict:
        status = {"job": self.id, "state": self.state, "progress": self.progress, "message": self.message}
        if self.result is not None:
            status["result"] = self.result
        if self.error is not None:
            status["error"] = self.error
        return status


class _Refusal(Exception):
    """A request answered with an HTTP error and a JSON {"error": name, "message": text}."""

    def __init__(self, status: int, name: str, message: str) -> None:
        super().__init__(message)
        self.status, self.name, self.message = status, name, message


class JobRunner:
    """Jobs queued for one model, run one at a time by `work` on the process's main thread; finished ones kept
    until fetched.

    The main thread, because torch ran ~10-20 % slower on a secondary Python thread here (measured with the same
    segment_region calls in one process); HTTP requests are answered on their own threads meanwhile.
    """

    def __init__(self, segmenter: LesionSegmenter) -> None:
        self.segmenter = segmenter
        self._jobs: dict[str, _Job] = {}
        self._finished: list[str] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Job | None] = queue.Queue()

    def submit(self, region: LesionRegion, samples: int, seed: int) -> _Job:
        with self._lock:
            pending = sum(not job.finished for job in self._jobs.values())
            if pending >= MAX_PENDING_JOBS:
                raise _Refusal(503, "Busy", f"The server already has {pending} jobs waiting; try again when "
                                            "they have finished.")
            job = _Job(secrets.token_hex(8), region, samples, seed)
            self._jobs[job.id] = job
        self._queue.put(job)
        return job

    def status(self, job_id: str) -> dict:
        """The job's status; a finished job is forgotten once its status (with the result) was fetched."""
        with self._lock:
            job = self._job(job_id)
            if job.finished:
                del self._jobs[job_id]
                self._finished.remove(job_id)
            return job.status()

    def cancel(self, job_id: str) -> dict:
        """Stop a job: a waiting one at once (it never starts), a running one before its next slice."""
        with self._lock:
            job = self._job(job_id)
            job.cancel.set()
            if job.state == "queued":
                job.region = None
                self._finish(job, "cancelled", "Cancelled by the user before it started; nothing was changed.")
            status = job.status()
        status.pop("result", None)
        return status

    def counts(self) -> dict:
        with self._lock:
            states = [job.state for job in self._jobs.values()]
        return {state: states.count(state) for state in ("queued", "running", "done", "failed", "cancelled")}

    def _job(self, job_id: str) -> _Job:
        if job_id not in self._jobs:
            raise _Refusal(404, "UnknownJob", f"The server has no job {job_id!r}: its result was already fetched, "
                                              "or the server was restarted since; submit the click again.")
        return self._jobs[job_id]

    def stop(self) -> None:
        """Make `work` return once the running job (if any) has finished."""
        self._queue.put(None)

    def work(self) -> None:
        """Run queued jobs one at a time until `stop`."""
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self._lock:
                if job.finished:  # cancelled while it waited
                    continue
                job.state, job.message = "running", "starting"
                region, job.region = job.region, None
            self._run(job, region)

    def _run(self, job: _Job, region: LesionRegion) -> None:
        def report(fraction: float, message: str) -> None:
            with self._lock:
                job.progress, job.message = float(fraction), str(message)

        try:
            result = self.segmenter.segment_region(region, samples=job.samples, seed=job.seed, progress=report,
                                                   cancel=job.cancel)
            encoded = encode_result(result)
        except CancelledError as error:
            with self._lock:
                self._finish(job, "cancelled", str(error))
        except AmbiguousSAMError as error:
            with self._lock:
                self._finish(job, "failed", str(error), error=type(error).__name__)
        except Exception as error:  # noqa: BLE001  (the server outlives a failed job; the log has the traceback)
            traceback.print_exc(file=sys.stderr)
            with self._lock:
                self._finish(job, "failed", f"The server failed on this job ({type(error).__name__}: {error}); "
                                            "its log has the details.", error="ServerError")
        else:
            with self._lock:
                job.result = encoded
                self._finish(job, "done", "done")

    def _finish(self, job: _Job, state: str, message: str, error: str | None = None) -> None:
        """Record a job's end (the caller holds the lock) and forget the oldest unfetched finished jobs."""
        job.state, job.message, job.error = state, message, error
        job.progress = 1.0 if state == "done" else job.progress
        self._finished.append(job.id)
        while len(self._finished) > MAX_FINISHED_JOBS:
            del self._jobs[self._finished.pop(0)]


class InferenceServer(ThreadingHTTPServer):
    """The HTTP side: authentication, size limits, routing of /v1/... to a JobRunner."""

    daemon_threads = True

    def __init__(self, options: ServeOptions, token: str | None, tls: ssl.SSLContext | None) -> None:
        try:
            super().__init__((options.host, options.port), _RequestHandler)
        except OSError as error:
            raise AmbiguousSAMError(f"Cannot listen on {options.host}:{options.port} ({error.strerror or error}); "
                                    "choose another --port (0 picks a free one).") from None
        self.options, self.token, self.tls = options, token, tls
        self.max_request_bytes = int(options.max_request_mb * 2 ** 20)
        self.runner: JobRunner | None = None  # set once the model is loaded

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def health(self) -> dict:
        segmenter = self.runner.segmenter
        return {"status": "ok", "version": __version__, "protocol": PROTOCOL_VERSION,
                "model": {"backbone": self.options.backbone, "head": self.options.head,
                          "checkpoint": self.options.checkpoint, "precision": segmenter.predictor.precision,
                          "scorer": segmenter.scorer_file, "runtime": segmenter.predictor.encoder().name,
                          "device": str(segmenter.predictor.device)},
                "device": str(segmenter.predictor.device), "encoded_crops": segmenter.encoded_crops,
                "jobs": self.runner.counts(), "max_request_mb": self.options.max_request_mb}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that failed outside a request (e.g. a TLS handshake with a plain-HTTP client): one line."""
        _log(f"{client_address[0]} connection failed: {sys.exc_info()[1]}")


class _RequestHandler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0 closes after each answer): a poll costs a connection, but a refused
    request never leaves an unread body in front of the next one."""

    server: InferenceServer
    server_version = f"AmbiguousSAM/{__version__}"
    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        if self.server.tls is not None:  # handshake here, on this connection's thread, not in the accept loop
            self.request.settimeout(self.timeout)
            self.request = self.server.tls.wrap_socket(self.request, server_side=True)
        super().setup()

    def do_GET(self) -> None:  # noqa: N802  (http.server's naming)
        self._answer("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._answer("POST")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002  (http.server's signature)
        """One line per request on stderr: the request line and status, never a body (no image data). Answered
        status polls (every ~0.1 s while a click runs) are left out, so a day's log stays readable."""
        line = format % args
        if not (self.command == "GET" and '" 200 ' in line and "/v1/jobs/" in line):
            _log(f"{self.client_address[0]} {line}")

    def _answer(self, method: str) -> None:
        self._unread = 0
        try:
            if method == "POST":
                self._unread = self._content_length()
            self._authorize()
            status, body = self._route(method, urlsplit(self.path).path)
        except _Refusal as refusal:
            status, body = refusal.status, {"error": refusal.name, "message": refusal.message}
        except Exception as error:  # noqa: BLE001  (the server keeps running; the client gets a short message)
            traceback.print_exc(file=sys.stderr)
            status, body = 500, {"error": "ServerError",
                                 "message": f"The server failed on this request ({type(error).__name__}); "
                                            "its log has the details."}
        self._drain()
        self._reply(status, body)

    def _content_length(self) -> int:
        """The body's size, refused before anything is read when it is missing or above --max-request-mb."""
        header = self.headers.get("Content-Length")
        if header is None:
            raise _Refusal(411, "LengthRequired", "The request has no Content-Length header.")
        try:
            length = int(header)
        except ValueError:
            length = -1
        if length < 0:
            raise _Refusal(400, "BadRequest", f"The Content-Length header {header!r} is not a byte count.")
        if length > self.server.max_request_bytes:
            raise _Refusal(413, "PayloadTooLarge",
                           f"The request has {length / 2 ** 20:.1f} MB; this server takes at most "
                           f"{self.server.options.max_request_mb:g} MB (its --max-request-mb). Draw a smaller box "
                           "or start the server with a larger --max-request-mb.")
        return length

    def _read_body(self) -> bytes:
        body, self._unread = self.rfile.read(self._unread), 0
        return body

    def _drain(self) -> None:
        """Read, without keeping, what a refused request still has to send: it then receives the refusal."""
        while self._unread > 0:
            chunk = self.rfile.read(min(DRAIN_CHUNK, self._unread))
            self._unread = self._unread - len(chunk) if chunk else 0

    def _authorize(self) -> None:
        token = self.server.token
        if token is None:
            return
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return
        reason = "has no token" if not given else "has a wrong token"
        raise _Refusal(401, "Unauthorized", f"The request {reason}; send the contents of the server's "
                                            "--token-file as 'Authorization: Bearer <token>'.")

    def _route(self, method: str, path: str) -> tuple[int, dict]:
        parts = path.strip("/").split("/")
        runner = self.server.runner
        if method == "GET" and parts == ["v1", "health"]:
            return 200, self.server.health()
        if method == "POST" and parts == ["v1", "jobs"]:
            region, samples, seed = self._job_request()
            job = runner.submit(region, samples, seed)
            return 202, {"job": job.id, "state": job.state}
        if method == "GET" and len(parts) == 3 and parts[:2] == ["v1", "jobs"]:
            return 200, runner.status(parts[2])
        if method == "POST" and len(parts) == 4 and parts[:2] == ["v1", "jobs"] and parts[3] == "cancel":
            return 200, runner.cancel(parts[2])
        raise _Refusal(404, "NotFound", f"No {method} {path} here; this server speaks protocol "
                                        f"v{PROTOCOL_VERSION} (GET /v1/health, POST /v1/jobs, GET /v1/jobs/<id>, "
                                        "POST /v1/jobs/<id>/cancel).")

    def _job_request(self) -> tuple[LesionRegion, int, int]:
        """Read and check a job: malformed -> 400; a region the core refuses -> 422 with the core's error."""
        try:
            message = json.loads(self._read_body())
        except (ValueError, RecursionError) as error:  # not UTF-8, not JSON, or nested beyond the parser's depth
            raise _Refusal(400, "BadRequest", f"The request body is not JSON ({error}).") from None
        try:
            region, samples, seed = decode_job(message)
        except ProtocolError as error:
            raise _Refusal(400, "BadRequest", f"The request does not follow protocol v{PROTOCOL_VERSION}: "
                                              f"{error}") from None
        try:
            check_samples(samples), check_seed(seed)
            check_region(region)
        except AmbiguousSAMError as error:
            raise _Refusal(422, type(error).__name__, str(error)) from None
        return region, samples, seed

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def tls_context(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    except (OSError, ssl.SSLError) as error:
        raise AmbiguousSAMError(f"Cannot load the TLS certificate {certfile} / key {keyfile} ({error}); give a "
                                "PEM certificate with --certfile and its private key with --keyfile.") from None
    return context


def write_ready_file(path: Path, url: str) -> None:
    """Announce the URL to the parent process atomically: it sees no file or a complete one, never half."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps({"url": url, "pid": os.getpid(), "version": __version__,
                                     "protocol": PROTOCOL_VERSION}))
    os.replace(temporary, path)


def serve(options: ServeOptions) -> None:
    """Check the options, bind, load the model once, announce the URL, then answer requests until shut down."""
    if options.token_file is None and not is_loopback(options.host):
        raise AmbiguousSAMError(f"Refusing to serve on {options.host} without a token: anyone who can reach the "
                                "port could use the model. Give --token-file FILE (clients send its contents), or "
                                "serve on 127.0.0.1.")
    if options.keyfile and not options.certfile:
        raise AmbiguousSAMError("--keyfile needs --certfile (the certificate the key belongs to).")
    if options.max_request_mb <= 0:
        raise AmbiguousSAMError(f"--max-request-mb must be positive, not {options.max_request_mb:g}.")
    token = read_token(options.token_file) if options.token_file else None
    tls = tls_context(options.certfile, options.keyfile) if options.certfile else None
    server = InferenceServer(options, token, tls)
    http: threading.Thread | None = None
    try:
        if options.exit_with_stdin:
            threading.Thread(target=_shut_down_when_stdin_closes, args=(server,), name="stdin watch",
                             daemon=True).start()
        if not is_loopback(options.host) and tls is None:
            _log("warning: serving beyond this machine without TLS; the token and images travel unencrypted")
        _log(f"loading {options.backbone} + head '{options.head}' ({options.precision})")
        from .segmenter import LesionSegmenter  # here: torch takes seconds to import, a refused start need not wait
        started = time.perf_counter()
        server.runner = JobRunner(LesionSegmenter(backbone=options.backbone, head=options.head,
                                                  checkpoint=options.checkpoint, device=options.device,
                                                  precision=options.precision, runtime=options.runtime,
                                                  scorer=options.scorer))
        # The encoder is built on first use; here that is start-up: its one-time OpenVINO conversion or compile
        # then never runs inside a health request or the user's first click.
        encoder = server.runner.segmenter.predictor.encoder()
        _log(f"model ready on {server.runner.segmenter.predictor.device} ({encoder.name} encoder) in "
             f"{time.perf_counter() - started:.1f} s; serving on {server.url}")
        http = threading.Thread(target=server.serve_forever, name="HTTP", daemon=True)
        http.start()
        if options.ready_file:
            write_ready_file(options.ready_file, server.url)
        server.runner.work()
    finally:
        if http is not None:
            server.shutdown()  # serve_forever runs on its thread; wait for it to stop before closing the socket
        server.server_close()
        _log("server stopped")


def _shut_down_when_stdin_closes(server: InferenceServer) -> None:
    """--exit-with-stdin: the parent holds our stdin; its end (even a crash) ends this server."""
    while os.read(sys.stdin.fileno(), 4096):
        pass
    _log("stdin closed: shutting down")
    if server.runner is None:  # still loading the model, which cannot be interrupted: leave now
        os._exit(0)
    server.runner.stop()


def _log(text: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {text}", file=sys.stderr, flush=True)
