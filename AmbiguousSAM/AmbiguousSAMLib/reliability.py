"""The reliability diagram of an evaluation: is a pixel that the samples mark with probability p marked by a
share p of the radiologists?

The ECE in the table is one number; the diagram shows where the miscalibration sits (a model that is
over-confident at the lesion's edge bends below the diagonal at high p). Drawn from the same streamed bins the ECE
is computed from (metrics.CalibrationAccumulator), so the two always agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .evaluation import MethodResult


def save_reliability_diagram(path: str | Path, results: list[MethodResult], title: str = "") -> None:
    """One curve per method, mean rater frequency against mean predicted probability per bin, with each bin's
    share of pixels below (most pixels are confident background)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (curve_axes, share_axes) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True,
                                                    gridspec_kw={"height_ratios": [3, 1]})
    curve_axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="calibrated")
    for result in results:
        predicted, observed, share = result.calibration.curve()
        label = f"{result.name} (ECE {result.calibration.value():.4f})"
        line, = curve_axes.plot(predicted, observed, marker="o", markersize=3, label=label)
        share_axes.semilogy(predicted, share, marker="o", markersize=3, color=line.get_color())
    curve_axes.set_ylabel("share of raters marking the pixel")
    curve_axes.set_xlim(0, 1)
    curve_axes.set_ylim(0, 1)
    curve_axes.legend(fontsize=7, loc="upper left")
    curve_axes.set_title(title, fontsize=9)
    share_axes.set_xlabel("mean sample probability (bin mean)")
    share_axes.set_ylabel("share of pixels")
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
