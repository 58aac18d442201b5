"""The colour map of the uncertainty heatmap: perceptually uniform, dark where the model is sure.

Slicer's file-based colour tables (Inferno, Viridis, ...) are not available everywhere the logic runs (the
slicer-core wheel has none), so the heatmap gets its own procedural colour node with matplotlib's "inferno" stops.
Its range is the heatmap's natural one, 0 to ln 2 nats (the entropy of a 50/50 vote), so one colour means the same
uncertainty on every lesion and the colour legend reads in nats.
"""

from __future__ import annotations

import slicer

# The stops and range live in the core, so the DICOM parametric map's palette shows the same colours.
from AmbiguousSAMLib.heatmap_colours import INFERNO_STOPS, MAX_ENTROPY_NATS

COLOR_NODE_NAME = "AmbiguousSAM uncertainty"
#: Attribute that marks the node as this colour map, so it is found again rather than duplicated.
COLOR_NODE_ATTRIBUTE = "AmbiguousSAM.ColorMap"


def uncertaintyColorNode(scene: slicer.vtkMRMLScene) -> slicer.vtkMRMLProceduralColorNode:
    """The scene's uncertainty colour node, created on first use and shared by every heatmap after that."""
    existing = scene.GetNodesByClass("vtkMRMLProceduralColorNode")
    # GetNodesByClass hands over a new collection the caller must release, as slicer.util.getNodesByClass does
    # (Base/Python/slicer/util.py); that helper is not used because it reads slicer.mrmlScene, not `scene`.
    existing.UnRegister(None)
    for index in range(existing.GetNumberOfItems()):
        node = existing.GetItemAsObject(index)
        if node.GetAttribute(COLOR_NODE_ATTRIBUTE) == "uncertainty":
            return node
    node = scene.AddNewNodeByClass("vtkMRMLProceduralColorNode", COLOR_NODE_NAME)
    node.SetAttribute(COLOR_NODE_ATTRIBUTE, "uncertainty")
    node.SetAttribute("Category", "AmbiguousSAM")
    transfer = node.GetColorTransferFunction()
    transfer.RemoveAllPoints()
    last = len(INFERNO_STOPS) - 1
    for index, (red, green, blue) in enumerate(INFERNO_STOPS):
        transfer.AddRGBPoint(MAX_ENTROPY_NATS * index / last, red, green, blue)
    return node
