"""Run the model off Slicer's GUI thread so the application stays responsive and Cancel works.

Slicer's Qt and MRML objects may only be touched from the main thread, so the split is: read the scene (main),
compute with numpy/torch only (this worker thread; torch releases the GIL while it computes), build nodes (main).
The main thread polls `done` and `progress` from a timer; nothing here imports Qt, so it also runs headless.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

Result = TypeVar("Result")
#: progress(fraction in 0..1, message), as the core reports it.
ProgressCallback = Callable[[float, str], None]


class BackgroundTask(Generic[Result]):
    """One computation `work(progress, cancel)` on a daemon thread, with its latest progress, result or error."""

    def __init__(self, work: Callable[[ProgressCallback, threading.Event], Result]) -> None:
        self._work = work
        self._cancel = threading.Event()
        self._lock = threading.Lock()
        self._progress: tuple[float, str] = (0.0, "Waiting to start")
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="AmbiguousSAM", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def cancel(self) -> None:
        """Ask the computation to stop at its next check; it then finishes with CancelledError."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._thread.ident is not None and not self._thread.is_alive()

    @property
    def progress(self) -> tuple[float, str]:
        with self._lock:
            return self._progress

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the computation has finished (for scripts and tests); True if it has."""
        self._thread.join(timeout)
        return self.done

    def result(self) -> Result:
        """The computation's return value; re-raises its exception. Only valid once `done`."""
        if not self.done:
            raise RuntimeError("The background computation has not finished yet.")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def _report(self, fraction: float, message: str) -> None:
        with self._lock:
            self._progress = (fraction, message)

    def _run(self) -> None:
        try:
            self._result = self._work(self._report, self._cancel)
        except BaseException as error:  # handed to the main thread by result()
            self._error = error
