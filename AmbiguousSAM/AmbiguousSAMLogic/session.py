"""One inference session per Slicer process: one model server, one embedding cache, one set of model settings.

Why a server process: Slicer's main thread keeps Python's GIL while the Qt event loop idles (PythonQt's thread
support is off), so model work on a Python thread of Slicer advances only while the main thread runs Python and
a click would look hung. The model therefore runs in its own persistent process, `ambiguous-sam serve`, started
on first use with Slicer's own Python and reused for every later click, or on a remote GPU server that speaks
the same protocol (ModelSettings.serverUrl).

Why one session: the module widget, the Segment Editor effect and `AmbiguousSAMLogic()` at the Python console all
use `sharedSession()`, so one model and one embedding cache sit in memory and the effect follows the module's
model settings. Nothing here waits: `startTask` returns a RemoteTask that advances one short step (at most one
short HTTP request) per `poll()`, which the Qt layer calls from a timer on the main thread. Console batch use
stays synchronous through `segment`, which drives the very same task.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import threading
import time
from typing import Callable

import slicer

from AmbiguousSAMLib.client import InferenceClient
from AmbiguousSAMLib.protocol import read_token
from AmbiguousSAMLib.errors import AmbiguousSAMError, CancelledError, ServerError
from AmbiguousSAMLib.lesion import LesionResult
from AmbiguousSAMLib.limits import check_samples, check_seed
from AmbiguousSAMLib.region import LesionRegion
from AmbiguousSAMLib.serverprocess import ServerProcess

from .modelsettings import ModelSettings

#: progress(fraction in 0..1, message), as the server reports it.
ProgressCallback = Callable[[float, str], None]
#: How often the synchronous path polls its task (seconds).
POLL_SECONDS = 0.05


def cancelledError() -> CancelledError:
    """The one message of a cancelled run, wherever it was cancelled."""
    return CancelledError("The segmentation was cancelled; nothing was added to the scene.")


def serverPython() -> str:
    """The interpreter a local server runs with: Slicer's PythonSlicer inside Slicer, this one elsewhere.

    Follows slicer.util.executePythonModule: inside the application (`slicer.app` exists) PythonSlicer is on PATH
    and has Slicer's site-packages (where PyTorch is installed); in the slicer-core wheel or a plain script the
    running interpreter is the one with the packages.
    """
    try:
        from slicer import app  # noqa: F401  (exists only inside the Slicer application)
    except ImportError:
        return sys.executable
    python = shutil.which("PythonSlicer")
    if python is None:
        raise ServerError("Slicer's Python interpreter (PythonSlicer) was not found on PATH, so the Ambiguous SAM "
                          "model cannot be started. Reinstall Slicer, or set a server URL in the module's settings.")
    return python


class InferenceSession:
    """The one place that knows which server runs the model: starts, reuses, restarts and stops it."""

    def __init__(self, settings: ModelSettings | None = None, python: str | None = None) -> None:
        #: Change to use another model or server: the next click starts (or reaches) the server for it.
        self.settings = settings if settings is not None else ModelSettings()
        self._python = python
        self._process: ServerProcess | None = None
        self._processOptions: dict | None = None
        self._client: InferenceClient | None = None
        self._clientSettings: ModelSettings | None = None
        #: The connected server's answer to health() (its "device", "model", ...); None before it answered.
        self.serverInfo: dict | None = None

    @property
    def runsLocally(self) -> bool:
        """True when the model runs in a server process on this machine (its Python packages must be here)."""
        return not self.settings.serverUrl

    @property
    def process(self) -> ServerProcess | None:
        """The local server process while one runs (None before the first click and with a remote server)."""
        return self._process

    def startTask(self, region: LesionRegion, samples: int = 16, seed: int = 0) -> RemoteTask:
        """Segment one lesion region on the server without waiting: call the task's `poll()` until `finished`.

        K and the seed are checked here, before a server is started or reached (the server checks them again)."""
        return RemoteTask(self, region, check_samples(samples), check_seed(seed))

    def segment(self, region: LesionRegion, samples: int = 16, seed: int = 0,
                progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> LesionResult:
        """Segment one lesion region and wait for the result (console and batch use).

        Raises the server's AmbiguousSAMError (InvalidImageError, ...), ServerError when the server cannot be
        reached or dies, CancelledError once `cancel` is set.
        """
        task = self.startTask(region, samples, seed)
        while True:
            if cancel is not None and cancel.is_set():
                task.cancel()
            task.poll()
            if progress is not None:
                progress(task.progress, task.message)
            if task.finished:
                return task.result()
            time.sleep(POLL_SECONDS)

    def connectedClient(self) -> InferenceClient | None:
        """A client of a server that runs the current settings, or None while a local server is still loading.

        Never waits: starts a local server when none runs for the current model options (the first click, a
        settings change, after a crash), and sends at most one short request (health, once per server).
        """
        if self._client is not None and self._clientSettings == self.settings and self._serverStillThere():
            return self._client
        self._client = None
        client = self._localClient() if self.runsLocally else self._remoteClient()
        if client is None:
            return None
        self.serverInfo = client.health()
        self._client, self._clientSettings = client, self.settings
        return client

    def serverLost(self, error: ServerError, client: InferenceClient | None) -> ServerError:
        """Forget a server that failed a request, so the next click starts (or reaches) a fresh one.

        Returns the error to show: what happened, that nothing was added, and what the next click does.
        `client` is the one that failed; a server started since (by a settings change) is left alone.
        """
        if client is not None and client is not self._client:
            return error
        self._client = None
        if not self.runsLocally:
            return ServerError(f"{error}\n\nNothing was added to the scene. Check that the server at "
                               f"{self.settings.serverUrl} is running, then try again.")
        process = self._process
        if process is None:
            return error
        try:
            process.ready_url()  # raises once the process has exited: its exit code and the tail of its log
        except ServerError as exited:
            lost = ServerError(f"{exited}\n\nNothing was added to the scene.")
        else:
            lost = ServerError(f"{error}\n\nNothing was added to the scene, and the server process, which no longer "
                               "answers as it should, was stopped: the next click starts a fresh one.")
        self._stopProcess()
        return lost

    def runsOnCpu(self) -> bool | None:
        """Whether the model runs on the CPU (seconds per click): the server's own answer once it is up, the
        device setting before; None while that is not known ("auto" before the first click)."""
        if self._client is not None and self._clientSettings == self.settings and self.serverInfo:
            return str(self.serverInfo.get("device", "")).startswith("cpu")
        if self.runsLocally and self.settings.device != "auto":
            return self.settings.device == "cpu"
        return None

    def shutdown(self) -> None:
        """Stop the local server (Slicer quits, the module is unloaded). Idempotent; the next click restarts it."""
        self._stopProcess()

    def _serverStillThere(self) -> bool:
        """False when the local server died since the last click (its client would only fail)."""
        if self._process is not None and not self._process.alive():
            self._stopProcess()
            return False
        return True

    def _remoteClient(self) -> InferenceClient:
        self._stopProcess()  # a local model left running would only hold memory
        token = read_token(self.settings.tokenFile) if self.settings.tokenFile else None
        return InferenceClient(self.settings.serverUrl, token)

    def _localClient(self) -> InferenceClient | None:
        options = self.settings.modelOptions()
        if self._process is not None and self._processOptions != options:
            self._stopProcess()
        if self._process is None:
            process = ServerProcess(self._python or serverPython(), **options)
            process.start()
            self._process, self._processOptions = process, options
        try:
            url = self._process.ready_url()
        except ServerError:
            self._stopProcess()  # it exited while loading (bad checkpoint, missing package): retry on the next click
            raise
        return None if url is None else self._process.client()

    def _stopProcess(self) -> None:
        """Stop the local server, if any, and forget every client: none may talk to a stopped server."""
        if self._process is not None:
            self._process.stop()
        self._process, self._processOptions, self._client = None, None, None


class RemoteTask:
    """One lesion segmented on the inference server, advanced by `poll()`: never waits, never uses a thread.

    starting (the server starts and loads its model) -> submitting -> running (progress, message from the server)
    -> done | failed | cancelled. `result()` returns the LesionResult or raises what made the task fail.
    """

    def __init__(self, session: InferenceSession, region: LesionRegion, samples: int, seed: int) -> None:
        self._session = session
        self._region = region
        self._samples, self._seed = samples, seed
        self._client: InferenceClient | None = None
        self._jobId: str | None = None
        self._result: LesionResult | None = None
        self._error: BaseException | None = None
        self.state = "starting"
        self.progress = 0.0
        self.message = "Starting the inference server"

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def poll(self) -> None:
        """Take the next step: at most one short request to the server, or a look at the starting process."""
        if self.finished:
            return
        try:
            if self._client is None:
                self._connect()
            elif self._jobId is None:
                self._jobId = self._client.submit(self._region, samples=self._samples, seed=self._seed)
                self._region = None  # sent; the task need not keep the voxels
                self.state, self.message = "running", "Queued on the server"
            else:
                self._follow()
        except ServerError as error:
            self._finish("failed", error=self._session.serverLost(error, self._client))
        except Exception as error:  # noqa: BLE001  (a timer calls poll: the task must end, the caller reports)
            self._finish("failed", error=error)

    def cancel(self) -> None:
        """Stop now: the server is asked to drop the job; should its result still arrive, it is never used."""
        if self.finished:
            return
        if self._jobId is not None:
            try:
                self._client.cancel(self._jobId)
            except ServerError as error:  # the server is gone: nothing is left to cancel; forget it
                self._session.serverLost(error, self._client)
        self._finish("cancelled", error=cancelledError())

    def result(self) -> LesionResult:
        """The candidates once `state == "done"`; raises the task's error once it failed or was cancelled."""
        if not self.finished:
            raise AmbiguousSAMError("The segmentation has not finished yet; poll the task until it has.")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _connect(self) -> None:
        self._client = self._session.connectedClient()
        if self._client is None:
            self.message = "Loading the model (only the first click waits for this)"
        else:
            self.state, self.message = "submitting", "Sending the lesion to the server"

    def _follow(self) -> None:
        status = self._client.status(self._jobId)
        self.progress, self.message = status.progress, status.message
        if status.state == "done":
            self._finish("done", result=status.result)
        elif status.state == "failed":
            self._finish("failed", error=status.error)
        elif status.state == "cancelled":
            self._finish("cancelled", error=cancelledError())

    def _finish(self, state: str, result: LesionResult | None = None, error: BaseException | None = None) -> None:
        self.state, self._result, self._error = state, result, error
        self._region = None
        if state == "done":
            self.progress, self.message = 1.0, "Done"
        else:
            self.message = str(error)


_sharedSession: InferenceSession | None = None


def sharedSession() -> InferenceSession:
    """The session of this Slicer process, created on first use and stopped when Slicer quits.

    The server also exits on its own when its stdin closes (Slicer crashed); `aboutToQuit` (inside Slicer) and
    atexit stop it in an orderly way first.
    """
    global _sharedSession
    if _sharedSession is None:
        _sharedSession = InferenceSession()
        atexit.register(_sharedSession.shutdown)
        application = getattr(slicer, "app", None)
        if application is not None:
            application.connect("aboutToQuit()", _sharedSession.shutdown)
    return _sharedSession
