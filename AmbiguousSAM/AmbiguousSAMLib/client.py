"""Talk to an `ambiguous-sam serve` process: submit a lesion region, poll the job, fetch the result.

Standard library (http.client, ssl) and numpy only: Slicer's GUI process imports this before PyTorch is
installed, and its Python guarantees nothing beyond the standard library. Every call is one short HTTP
request on a fresh connection, so a GUI timer can poll `status` without blocking, and a server that died or
was restarted shows up on the next call. Whatever goes wrong surfaces as an AmbiguousSAMError: the server's
own errors as the same class (an InvalidImageError stays an InvalidImageError), transport problems as a
ServerError that says what happened and what to do.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import quote, urlsplit

from . import errors
from .errors import AmbiguousSAMError, CancelledError, ServerError
from .lesion import LesionResult
from .protocol import PROTOCOL_VERSION, decode_result, encode_job, is_loopback
from .region import LesionRegion

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class JobStatus:
    """Where one submitted job stands."""

    state: str  # "queued" | "running" | "done" | "failed" | "cancelled"
    progress: float  # 0..1
    message: str
    result: LesionResult | None  # when state == "done"
    error: AmbiguousSAMError | None  # when "failed": the server's error as the same class

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


class InferenceClient:
    """A client of one inference server at `url` (http://host:port or https://...), with its token if it has one."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 30.0,
                 cafile: str | None = None) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerError(f"The server URL {url!r} is not of the form http://host:port or https://host:port.")
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._host, self._port, self._https = parts.hostname, parts.port, parts.scheme == "https"
        self._tls = ssl.create_default_context(cafile=cafile) if self._https else None
        self._local = is_loopback(parts.hostname)

    def health(self) -> dict:
        """{"status": "ok", "version", "protocol", "model": {...}, "device", "encoded_crops", "jobs", ...}."""
        health = self._request("GET", "/v1/health")
        if health.get("protocol") != PROTOCOL_VERSION:
            raise ServerError(f"The server at {self.url} speaks protocol {health.get('protocol')!r}, this client "
                              f"{PROTOCOL_VERSION}; install the same AmbiguousSAM version on both sides.")
        return health

    def submit(self, region: LesionRegion, *, samples: int, seed: int) -> str:
        """Queue one click; returns the job's id at once (the model works in the server)."""
        return self._text(self._request("POST", "/v1/jobs", encode_job(region, samples, seed)), "job")

    def status(self, job_id: str) -> JobStatus:
        """One short request. Once a finished job's status was fetched, the server forgets the job."""
        answer = self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}")
        state, message, progress = self._text(answer, "state"), self._text(answer, "message"), answer.get("progress")
        if not isinstance(progress, (int, float)):
            raise self._not_understood("progress")
        result = decode_result(answer.get("result")) if state == "done" else None
        error = self._error(answer.get("error"), message) if state == "failed" else None
        return JobStatus(state=state, progress=float(progress), message=message, result=result, error=error)

    def cancel(self, job_id: str) -> None:
        """Ask the server to stop the job: a waiting job never starts, a running one stops before its next slice."""
        self._request("POST", f"/v1/jobs/{quote(job_id, safe='')}/cancel")

    def segment(self, region: LesionRegion, *, samples: int, seed: int, progress: ProgressCallback | None = None,
                cancel: threading.Event | None = None, poll_seconds: float = 0.05) -> LesionResult:
        """Submit and wait: the result, or the job's error re-raised (CancelledError once `cancel` is set)."""
        job = self.submit(region, samples=samples, seed=seed)
        cancel_sent, last = False, None
        while True:
            if cancel is not None and cancel.is_set() and not cancel_sent:
                self.cancel(job)
                cancel_sent = True
            status = self.status(job)
            if progress is not None and (status.progress, status.message) != last:
                last = (status.progress, status.message)
                progress(*last)
            if status.state == "done" and not cancel_sent:
                return status.result
            if status.state == "failed":
                raise status.error
            if status.finished:  # cancelled, or done just before the cancel arrived: the caller asked to stop
                raise CancelledError(status.message or "Cancelled by the user; nothing was changed.")
            if cancel is not None:
                cancel.wait(poll_seconds)
            else:
                time.sleep(poll_seconds)

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request on a fresh connection; the answer's JSON, or the error it stands for raised."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if self._https:
            connection = http.client.HTTPSConnection(self._host, self._port, timeout=self.timeout, context=self._tls)
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            try:
                connection.request(method, path, body=data, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                if data is None:
                    raise  # else the server refused the body unread (e.g. too large); its answer may be there
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except ssl.SSLCertVerificationError as error:
            raise ServerError(f"The server at {self.url} presented a certificate this machine does not trust "
                              f"({error.verify_message}); give its CA certificate as the client's CA file.") from None
        except (OSError, http.client.HTTPException) as error:
            raise ServerError(self._unreachable(error)) from None
        finally:
            connection.close()
        try:
            answer = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        if not isinstance(answer, dict):
            raise ServerError(f"The server at {self.url} answered HTTP {status} with something that is not "
                              f"AmbiguousSAM's JSON ({raw[:80]!r}); check that the URL points to an "
                              "`ambiguous-sam serve` process.")
        if status == 401:
            raise ServerError(f"The server at {self.url} refused this client's token: {answer.get('message', '')} "
                              "Set the client's token (the server token file setting) to the contents of the "
                              "server's --token-file.")
        if status >= 400:
            raise self._error(answer.get("error"), str(answer.get("message", f"HTTP {status}")), status)
        return answer

    def _unreachable(self, error: BaseException) -> str:
        reason = {ConnectionRefusedError: "connection refused", ConnectionResetError: "connection reset",
                  BrokenPipeError: "connection closed", http.client.RemoteDisconnected: "it closed the connection",
                  socket.timeout: f"no answer within {self.timeout:g} s"}.get(type(error))
        reason = reason or f"{type(error).__name__}: {error}"
        hint = ("the next click starts a fresh one." if self._local else
                "check the server URL and that the server is running there.")
        return f"The AmbiguousSAM server at {self.url} stopped answering ({reason}); {hint}"

    def _error(self, name: Any, message: str, status: int | None = None) -> AmbiguousSAMError:
        """The server's error as the same class from AmbiguousSAMLib.errors; anything else as a ServerError."""
        kind = getattr(errors, name, None) if isinstance(name, str) else None
        if isinstance(kind, type) and issubclass(kind, AmbiguousSAMError):
            return kind(message)
        where = f" (HTTP {status})" if status else ""
        return ServerError(f"The server at {self.url} refused the request{where}: {message}")

    def _text(self, answer: dict, key: str) -> str:
        value = answer.get(key)
        if not isinstance(value, str):
            raise self._not_understood(key)
        return value

    def _not_understood(self, key: str) -> ServerError:
        return ServerError(f"The server at {self.url} answered without a valid '{key}'; this client does not "
                           "understand it (install the same AmbiguousSAM version on both sides).")
