"""Start and stop a local `ambiguous-sam serve` child process: the model loaded once, reused for every click.

Standard library only, like the client: Slicer's GUI process starts the server with PythonSlicer before it
has imported (or even installed) PyTorch. The child gets a fresh random token through a file only this user
can read (never on the command line, which every user of the machine can see), binds a free loopback port,
and announces its URL in a ready file once the model is loaded, so starting returns at once and the GUI polls
`ready_url()`. The child holds the read end of a pipe as its stdin and exits when it closes, so it dies with
its parent even when the parent crashes.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO

from .client import InferenceClient
from .errors import ServerError

#: The folder that holds the AmbiguousSAMLib package: on the child's PYTHONPATH so it runs this same code.
PACKAGE_PARENT = Path(__file__).resolve().parents[1]
#: Lines of the child's log quoted when it fails.
LOG_TAIL_LINES = 15
#: Seconds `stop` waits after closing stdin (the child's own shutdown) and after terminate, before it kills.
STOP_GRACE_SECONDS = 3.0


class ServerProcess:
    """A local `ambiguous-sam serve` child process: model loaded once, reused for every click."""

    def __init__(self, python: str, *, backbone: str = "litemedsam", head: str = "default",
                 checkpoint: str | None = None, device: str = "auto", precision: str = "bf16",
                 runtime: str = "auto", extra_path: list[str] | None = None) -> None:
        self.python = python
        self.model_options = ["--backbone", backbone, "--head", str(head), "--device", device,
                              "--precision", precision, "--runtime", runtime] + (["--checkpoint", str(checkpoint)] if checkpoint else [])
        self.extra_path = list(extra_path or [])
        self.token = secrets.token_urlsafe(32)
        self._process: subprocess.Popen | None = None
        self._folder: Path | None = None
        self._log: IO[bytes] | None = None
        self._url: str | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> None:
        """Start the child and return at once (the model loads there); a running child is kept."""
        if self.alive():
            return
        self.stop()
        self._folder = Path(tempfile.mkdtemp(prefix="ambiguous-sam-server-"))
        token_file = self._folder / "token"
        with os.fdopen(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(self.token)
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [str(PACKAGE_PARENT), *self.extra_path] + ([environment["PYTHONPATH"]] if environment.get("PYTHONPATH")
                                                       else []))
        environment["PYTHONUNBUFFERED"] = "1"
        self._log = open(self._folder / "server.log", "wb")
        command = [self.python, "-m", "AmbiguousSAMLib.cli", "serve", "--host", "127.0.0.1", "--port", "0",
                   "--token-file", str(token_file), "--ready-file", str(self._ready_file), "--exit-with-stdin",
                   *self.model_options]
        try:
            self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=self._log,
                                             stderr=subprocess.STDOUT, env=environment, cwd=self._folder)
        except OSError as error:
            self.stop()
            raise ServerError(f"Cannot start the AmbiguousSAM server with {self.python} ({error.strerror or error}); "
                              "check the Python interpreter setting.") from None

    def ready_url(self) -> str | None:
        """The server's URL once its model is loaded, None while it loads; ServerError if the child has exited."""
        if self._process is None:
            raise ServerError("The AmbiguousSAM server was not started (or was stopped); start it first.")
        if self._process.poll() is not None:
            raise ServerError(f"The AmbiguousSAM server exited (code {self._process.returncode}); the next click "
                              f"starts a fresh one. Its log ends with:\n{self.log_tail()}")
        if self._url is None and self._ready_file.is_file():
            ready = json.loads(self._ready_file.read_text())
            if ready.get("pid") == self._process.pid:
                self._url = ready["url"]
        return self._url

    def wait_ready(self, timeout: float = 300.0) -> str:
        """Block until the model is loaded (for scripts and tests); ServerError, with the child stopped, if it
        exits or is not ready within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while (url := self.ready_url()) is None:
            if time.monotonic() > deadline:
                tail = self.log_tail()
                self.stop()
                raise ServerError(f"The AmbiguousSAM server did not load its model within {timeout:g} s and was "
                                  f"stopped. Its log ends with:\n{tail}")
            time.sleep(0.05)
        return url

    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Close the child's stdin (its signal to leave), then terminate, then kill; remove its folder. Idempotent."""
        process, self._process, self._url = self._process, None, None
        if process is not None:
            if process.stdin:
                try:
                    process.stdin.close()
                except OSError:
                    pass
            for end in (lambda: None, process.terminate, process.kill):
                end()
                try:
                    process.wait(STOP_GRACE_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)  # the mkdtemp folder start() made, nothing else
            self._folder = None

    def client(self) -> InferenceClient:
        """A client for the ready server, with its token; ServerError while the model still loads."""
        url = self.ready_url()
        if url is None:
            raise ServerError("The AmbiguousSAM server is still loading its model; try again in a moment.")
        return InferenceClient(url, self.token)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the child wrote (its stderr and stdout)."""
        if self._folder is None:
            return ""
        try:
            text = (self._folder / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    @property
    def _ready_file(self) -> Path:
        return self._folder / "ready.json"
