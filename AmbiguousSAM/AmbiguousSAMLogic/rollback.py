"""All or nothing: a failed or cancelled run leaves the scene exactly as it found it.

Building the outputs adds several nodes (segmentation, heatmap, their display and colour nodes). If anything fails
halfway, half-built nodes would clutter the user's scene and their subject hierarchy, so every node added inside
the block is removed again before the error propagates.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import slicer


def nodeIds(scene: slicer.vtkMRMLScene) -> list[str]:
    """IDs of all nodes in the scene, in the order they were added."""
    return [scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())]


@contextlib.contextmanager
def removeAddedNodesOnError(scene: slicer.vtkMRMLScene) -> Iterator[None]:
    """Run the block; if it raises (cancellation included), remove the nodes it added, newest first, and re-raise."""
    before = set(nodeIds(scene))
    try:
        yield
    except BaseException:
        for nodeId in reversed(nodeIds(scene)):
            node = scene.GetNodeByID(nodeId)
            if nodeId not in before and node is not None:
                scene.RemoveNode(node)
        raise
