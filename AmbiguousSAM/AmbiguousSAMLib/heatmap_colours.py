"""The colours of the uncertainty heatmap, for every output that shows it: Slicer's colour node, DICOM files.

A perceptually uniform map, dark where the model is sure: matplotlib's "inferno", given as stops so that code
without matplotlib (Slicer's procedural colour node) and code writing a lookup table (the DICOM parametric map's
palette) interpolate the same points. Its range is the heatmap's natural one, 0 to ln 2 nats (the entropy of a
50/50 vote), so one colour means the same uncertainty on every lesion and a colour legend reads in nats.
"""

from __future__ import annotations

import math

import numpy as np

#: Largest possible binary entropy in nats: every candidate split evenly.
MAX_ENTROPY_NATS = math.log(2.0)

#: matplotlib "inferno" sampled at 0, 1/8, ..., 1 (RGB in 0..1).
INFERNO_STOPS = (
    (0.001, 0.000, 0.014), (0.129, 0.047, 0.291), (0.342, 0.062, 0.429), (0.541, 0.135, 0.415),
    (0.736, 0.216, 0.330), (0.894, 0.353, 0.194), (0.978, 0.558, 0.035), (0.975, 0.798, 0.206),
    (0.988, 0.998, 0.645),
)


def heatmap_colour_table(entries: int) -> np.ndarray:
    """(entries, 3) RGB in 0..1 for `entries` evenly spaced values from 0 to ln 2 nats: the stops interpolated
    linearly in RGB, as Slicer's colour transfer function does between the same stops."""
    stops = np.asarray(INFERNO_STOPS)
    positions = np.linspace(0.0, 1.0, len(stops))
    values = np.linspace(0.0, 1.0, entries)
    return np.stack([np.interp(values, positions, stops[:, channel]) for channel in range(3)], axis=1)
