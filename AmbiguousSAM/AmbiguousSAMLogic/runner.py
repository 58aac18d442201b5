"""One click in the GUI, from the box to the new nodes, advanced by a timer: the run/poll/error rule in one place.

The module widget and the Segment Editor effect both turn a box into nodes without blocking Slicer: read the
scene, start a RemoteTask on the shared session, poll it from a QTimer, build the nodes when it is done (all or
nothing), and tell the user what happened. All of that is here, without Qt, so both Qt classes keep only a timer
that calls `poll()` and three callbacks that update their own widgets.
"""

from __future__ import annotations

import logging
import traceback
from typing import Callable

import numpy as np
import slicer

from AmbiguousSAMLib.errors import AmbiguousSAMError, CancelledError

from .logic import AmbiguousSAMLogic
from .session import RemoteTask

#: onSucceeded(segmentationNode, heatmapNode): the run added these two nodes.
SucceededCallback = Callable[[slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLScalarVolumeNode], None]
#: onFailed(text, detailsOrNone): the run failed and added nothing; details are a traceback for a bug.
FailedCallback = Callable[[str, "str | None"], None]
#: onCancelled(text): the user cancelled and nothing was added.
CancelledCallback = Callable[[str], None]


def userMessage(error: BaseException) -> tuple[str, str | None]:
    """What to tell the user about an error: (text, details or None).

    An AmbiguousSAMError's message already names the problem and the fix, so it is all the user sees. Anything
    else is a bug: its message, plus the traceback as details (and in the log) for the bug report.
    """
    if isinstance(error, AmbiguousSAMError):
        return str(error), None
    details = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    logging.error(details)
    return f"Ambiguous SAM failed unexpectedly ({type(error).__name__}: {error}). Please report this.", details


class SegmentationRun:
    """One box on one volume: the task on the server, its progress, then the nodes or the reason there are none.

    Never raises and never waits: a bad box or volume, a server that dies, a cancel, all end in exactly one
    callback from `poll()`.
    """

    def __init__(self, logic: AmbiguousSAMLogic, volumeNode: slicer.vtkMRMLScalarVolumeNode,
                 roiNodeOrBox: slicer.vtkMRMLMarkupsROINode | np.ndarray, samples: int, seed: int, *,
                 onSucceeded: SucceededCallback, onFailed: FailedCallback, onCancelled: CancelledCallback) -> None:
        self.volumeNode = volumeNode
        self._logic = logic
        self._onSucceeded, self._onFailed, self._onCancelled = onSucceeded, onFailed, onCancelled
        self._task: RemoteTask | None = None
        self._startError: BaseException | None = None
        self.finished = False
        try:
            region = logic.preparePrompt(volumeNode, roiNodeOrBox)
            self._task = logic.session.startTask(region, samples, seed)
        except Exception as error:  # noqa: BLE001  (reported by the first poll, like every other failure)
            self._startError = error

    @property
    def progress(self) -> float:
        """0..1, as the server reports it."""
        return self._task.progress if self._task is not None else 0.0

    @property
    def message(self) -> str:
        """What the run is doing now ("Loading the model", the server's slice messages, ...)."""
        return self._task.message if self._task is not None else ""

    def poll(self) -> None:
        """Advance by one short step; on the step that ends the run, build the nodes and call one callback."""
        if self.finished:
            return
        if self._task is not None:
            self._task.poll()
            if not self._task.finished:
                return
        self.finished = True
        try:
            if self._startError is not None:
                raise self._startError
            segmentationNode, heatmapNode = self._logic.createOutputNodes(self.volumeNode, self._task.result())
        except CancelledError as error:
            self._onCancelled(str(error))
        except Exception as error:  # noqa: BLE001  (the user is told; a bug's traceback goes along)
            self._onFailed(*userMessage(error))
        else:
            self._onSucceeded(segmentationNode, heatmapNode)

    def cancel(self) -> None:
        """Stop the run: the server drops the job, and the next `poll()` reports the cancellation."""
        if self._task is not None:
            self._task.cancel()
