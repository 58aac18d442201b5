"""PNG pictures of results, for the demo, the command line and the README (no Slicer needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .candidate_table import candidate_colour
from .preprocessing import LUNG_WINDOW


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_overlay(path: str | Path, image: np.ndarray, masks: list[np.ndarray], box: tuple[float, float, float, float],
                 title: str = "", window: tuple[float, float] | None = LUNG_WINDOW, heatmap: np.ndarray | None = None,
                 zoom_margin: int = 40) -> None:
    """Slice with mask outlines and the prompt box (and, if given, a heatmap panel), zoomed on the box.

    Mask n is outlined in candidate n's colour, the colour it has in Slicer and in candidates.seg.nrrd.
    """
    plt = _pyplot()
    x0, y0, x1, y1 = box
    r0, r1 = int(max(y0 - zoom_margin, 0)), int(min(y1 + zoom_margin, image.shape[0]))
    c0, c1 = int(max(x0 - zoom_margin, 0)), int(min(x1 + zoom_margin, image.shape[1]))
    shown = np.clip(image, *window) if window is not None and image.dtype != np.uint8 else image
    panels = 2 if heatmap is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 4.5), squeeze=False)
    ax = axes[0, 0]
    ax.imshow(shown[r0:r1, c0:c1], cmap="gray", extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
    for index, mask in enumerate(masks):
        if mask[r0:r1, c0:c1].any():
            ax.contour(np.arange(c0, c1), np.arange(r0, r1), mask[r0:r1, c0:c1].astype(float), levels=[0.5],
                       colors=[candidate_colour(index)], linewidths=1.2)
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", linestyle="--"))
    ax.set_title(title, fontsize=9)
    ax.axis("off")
    if heatmap is not None:
        ax = axes[0, 1]
        ax.imshow(shown[r0:r1, c0:c1], cmap="gray", extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5))
        shown_heat = np.ma.masked_less_equal(heatmap[r0:r1, c0:c1], 1e-3)
        im = ax.imshow(shown_heat, cmap="inferno", alpha=0.8, extent=(c0 - 0.5, c1 - 0.5, r1 - 0.5, r0 - 0.5),
                       vmin=0, vmax=float(np.log(2)))
        fig.colorbar(im, ax=ax, fraction=0.046, label="uncertainty (nats)")
        ax.set_title("uncertainty heatmap", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
