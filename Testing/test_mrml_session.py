"""The inference session driving a real `ambiguous-sam serve` child process from the MRML layer (slicer-core).

One session (one server process, started with this interpreter as Slicer starts it with PythonSlicer) serves
the whole module, as in Slicer: its nodes must equal the in-process model's on LIDC-IDRI-0001, a second click
must reuse the process and its embedding cache, a server killed mid-request must leave the scene as it was and
the next click must start a fresh process, and a settings change must restart it. The widget's and the effect's
run/poll/error helper (SegmentationRun) is driven here exactly as their QTimer drives it, minus the timer.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np
import pytest
import slicer

from AmbiguousSAMLib.errors import InvalidBoxError, ServerError
from AmbiguousSAMLogic import (AmbiguousSAMLogic, InferenceSession, ModelSettings, SegmentationRun, sharedSession,
                               userMessage)
from AmbiguousSAMLogic.geometry import ijkToRasMatrix
from AmbiguousSAMLogic.rollback import nodeIds

#: The LIDC-IDRI-0001 nodule's box (i0, j0, i1, j1) on slice 89 (shared/data/README.md).
NODULE_BOX = (293.0, 341.0, 336.0, 393.0)
NODULE_SLICE = 89
SAMPLES = 4
#: Seconds a test waits for the server at most (model load on a busy 2-core machine, then one click).
PATIENCE = 600.0


@pytest.fixture(scope="module")
def session():
    """One session for the file, like the one of a Slicer process: its server starts on the first click."""
    session = InferenceSession(python=sys.executable)
    yield session
    session.shutdown()


@pytest.fixture(scope="module")
def in_process_segmenter():
    from AmbiguousSAMLib.segmenter import LesionSegmenter

    return LesionSegmenter()


def noduleCorners(volumeNode) -> np.ndarray:
    """The nodule box's corners in world RAS, as the effect's rubber band hands them over."""
    i0, j0, i1, j1 = NODULE_BOX
    ijk = np.array([[i0, j0, NODULE_SLICE, 1.0], [i1, j1, NODULE_SLICE, 1.0]])
    return (ijk @ ijkToRasMatrix(volumeNode).T)[:, :3]


def segmentsAsArrays(segmentationNode, volumeNode) -> dict[str, np.ndarray]:
    segmentation = segmentationNode.GetSegmentation()
    return {segmentation.GetNthSegment(index).GetName():
            slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentation.GetNthSegmentID(index),
                                                       volumeNode)
            for index in range(segmentation.GetNumberOfSegments())}


class RunReport:
    """The callbacks of a SegmentationRun, recording which one was called with what."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def succeeded(self, segmentationNode, heatmapNode) -> None:
        self.calls.append(("succeeded", segmentationNode, heatmapNode))

    def failed(self, text: str, details) -> None:
        self.calls.append(("failed", text, details))

    def cancelled(self, text: str) -> None:
        self.calls.append(("cancelled", text))


def startRun(logic, volumeNode, box, report: RunReport) -> SegmentationRun:
    return SegmentationRun(logic, volumeNode, box, SAMPLES, 0, onSucceeded=report.succeeded,
                           onFailed=report.failed, onCancelled=report.cancelled)


def pollUntil(run: SegmentationRun, condition, seen: list | None = None) -> None:
    """Poll as the widget's 100 ms timer does until `condition()`; each poll returns at once."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"the run did not get there within {PATIENCE:g} s: {run.message}"
        run.poll()
        if seen is not None:
            seen.append((run.progress, run.message))
        time.sleep(0.05)


def test_the_server_builds_the_same_nodes_as_the_in_process_model(mrml_scene, lidc_ct_node, session,
                                                                   in_process_segmenter):
    logic = AmbiguousSAMLogic(session)
    viaServer = logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
    inProcess = logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0,
                              segmenter=in_process_segmenter)
    assert session.process is not None and session.process.alive()

    served, local = segmentsAsArrays(viaServer[0], lidc_ct_node), segmentsAsArrays(inProcess[0], lidc_ct_node)
    assert list(served) == list(local) == [f"Candidate {number}" for number in range(1, SAMPLES + 1)] + ["Consensus"]
    for name in served:
        np.testing.assert_array_equal(served[name], local[name], err_msg=name)
    assert served["Consensus"][NODULE_SLICE].any()
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(viaServer[1]), slicer.util.arrayFromVolume(inProcess[1]))


def test_a_second_click_reuses_the_process_and_its_embeddings(mrml_scene, lidc_ct_node, session):
    logic = AmbiguousSAMLogic(session)
    logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
    process = session.process
    client = session.connectedClient()
    encodedBefore = client.health()["encoded_crops"]

    # The same click again (another seed may follow the lesion a slice further and encode that slice; the server's
    # tests count such slices): the server process and its embedding cache serve it without encoding anything.
    logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
    assert session.process is process and process.alive(), "no second server process"
    assert client.health()["encoded_crops"] == encodedBefore, "the same CT and box are not encoded again"


def test_widget_effect_and_console_share_one_session_by_default():
    """Each of them builds AmbiguousSAMLogic() with no session: one server, one cache, one set of settings."""
    assert AmbiguousSAMLogic().session is AmbiguousSAMLogic().session is sharedSession()


def test_the_cpu_warning_follows_the_server_s_own_device(session):
    import torch

    assert session.runsOnCpu() is (not torch.cuda.is_available())
    assert InferenceSession(ModelSettings(device="cpu")).runsOnCpu() is True
    assert InferenceSession(ModelSettings()).runsOnCpu() is None, "'auto' is unknown until a server answered"


def test_polling_a_run_until_done_adds_the_nodes(mrml_scene, lidc_ct_node, session):
    report, seen = RunReport(), []
    run = startRun(AmbiguousSAMLogic(session), lidc_ct_node, noduleCorners(lidc_ct_node), report)
    pollUntil(run, lambda: run.finished, seen)

    assert [call[0] for call in report.calls] == ["succeeded"]
    _, segmentationNode, heatmapNode = report.calls[0]
    assert segmentationNode.GetName() == "LIDC-IDRI-0001 candidates"
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() == SAMPLES + 1
    assert heatmapNode.GetName() == "LIDC-IDRI-0001 uncertainty"
    fractions = [fraction for fraction, _ in seen]
    assert all(0.0 <= fraction <= 1.0 for fraction in fractions)
    assert any(message.startswith("slice") for _, message in seen), "the server's progress messages reach the GUI"


def test_a_bad_box_is_reported_by_the_first_poll_and_adds_nothing(mrml_scene, lidc_ct_node, session):
    report = RunReport()
    before = nodeIds(mrml_scene)
    farAway = noduleCorners(lidc_ct_node) + np.array([0.0, 0.0, 5000.0])
    run = startRun(AmbiguousSAMLogic(session), lidc_ct_node, farAway, report)
    run.poll()
    assert run.finished and len(report.calls) == 1
    kind, text, details = report.calls[0]
    assert kind == "failed" and "does not intersect" in text and details is None
    assert nodeIds(mrml_scene) == before


def test_cancel_while_the_server_works_adds_nothing(mrml_scene, lidc_ct_node, session):
    report = RunReport()
    run = startRun(AmbiguousSAMLogic(session), lidc_ct_node, noduleCorners(lidc_ct_node), report)
    pollUntil(run, lambda: run.message.startswith("slice") or run.finished)
    assert not run.finished, "the server is segmenting this click"
    before = nodeIds(mrml_scene)
    run.cancel()
    run.poll()
    assert [call[0] for call in report.calls] == ["cancelled"]
    assert "nothing was added" in report.calls[0][1]
    assert nodeIds(mrml_scene) == before


def test_a_server_killed_mid_request_leaves_the_scene_and_the_next_click_starts_afresh(mrml_scene, lidc_ct_node,
                                                                                       session):
    logic = AmbiguousSAMLogic(session)
    report = RunReport()
    run = startRun(logic, lidc_ct_node, noduleCorners(lidc_ct_node), report)
    pollUntil(run, lambda: run.message.startswith("slice") or run.finished)
    assert not run.finished, "the server is segmenting this click"
    killed = session.process
    before = nodeIds(mrml_scene)
    os.kill(killed.pid, signal.SIGKILL)
    pollUntil(run, lambda: run.finished)

    assert [call[0] for call in report.calls] == ["failed"]
    _, text, details = report.calls[0]
    assert details is None, "a dead server is an error the user can act on, not a bug"
    # The exit code shows when the process was reaped before the failed request is looked at, else "stopped
    # answering"; either way the user learns that nothing was added and what the next click does.
    assert "next click starts a fresh one" in text and "Nothing was added" in text, text
    assert nodeIds(mrml_scene) == before
    assert session.process is None, "the session forgot the dead process"

    segmentationNode, _ = logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() == SAMPLES + 1
    assert session.process is not killed and session.process.alive()


def test_the_same_protocol_reaches_a_server_by_url_and_token_file(mrml_scene, lidc_ct_node, session, tmp_path):
    """A 'remote' server is any `ambiguous-sam serve` reached by URL: here the session's own, with its token."""
    AmbiguousSAMLogic(session).process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
    url = session.process.ready_url()
    tokenFile = tmp_path / "token"
    tokenFile.write_text(session.process.token + "\n")
    remote = InferenceSession(ModelSettings(serverUrl=url, tokenFile=str(tokenFile)))
    segmentationNode, _ = AmbiguousSAMLogic(remote).process(lidc_ct_node, noduleCorners(lidc_ct_node),
                                                            samples=SAMPLES, seed=0)
    assert segmentationNode.GetSegmentation().GetNumberOfSegments() == SAMPLES + 1
    assert remote.process is None and not remote.runsLocally, "a remote session starts no process of its own"

    tokenFile.write_text("not the token")
    wrong = InferenceSession(ModelSettings(serverUrl=url, tokenFile=str(tokenFile)))
    with pytest.raises(ServerError, match="refused this client's token"):
        AmbiguousSAMLogic(wrong).process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES)
    missing = InferenceSession(ModelSettings(serverUrl=url, tokenFile=str(tmp_path / "absent")))
    with pytest.raises(ServerError, match="Cannot read the server token file"):
        AmbiguousSAMLogic(missing).process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES)


def test_a_server_that_cannot_load_its_model_says_why_and_the_next_click_retries(mrml_scene, lidc_ct_node,
                                                                                  tmp_path):
    broken = InferenceSession(ModelSettings(backbone="sam_vit_b", checkpoint=str(tmp_path / "missing.pth")),
                              python=sys.executable)
    report = RunReport()
    before = nodeIds(mrml_scene)
    run = startRun(AmbiguousSAMLogic(broken), lidc_ct_node, noduleCorners(lidc_ct_node), report)
    pollUntil(run, lambda: run.finished)
    assert [call[0] for call in report.calls] == ["failed"]
    _, text, details = report.calls[0]
    assert "exited" in text and "missing.pth" in text and details is None, text
    assert nodeIds(mrml_scene) == before
    assert broken.process is None, "the next click starts a new process"


def test_changing_the_model_settings_restarts_the_server_on_the_next_click(mrml_scene, lidc_ct_node, session):
    logic = AmbiguousSAMLogic(session)
    logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
    first = session.process
    session.settings = ModelSettings(head="deterministic")
    try:
        assert session.process is first and first.alive(), "nothing restarts before the next click"
        logic.process(lidc_ct_node, noduleCorners(lidc_ct_node), samples=SAMPLES, seed=0)
        assert session.process is not first and not first.alive(), "one server at a time"
        assert session.serverInfo["model"]["head"] == "deterministic"
    finally:
        session.settings = ModelSettings()


def test_user_message_shows_a_bug_s_traceback_and_an_expected_error_s_text_alone():
    assert userMessage(InvalidBoxError("Draw the box on the lesion.")) == ("Draw the box on the lesion.", None)
    try:
        {}["missing"]
    except KeyError as error:
        text, details = userMessage(error)
    assert "KeyError" in text and "report" in text
    assert "Traceback" in details and "test_user_message" in details
