"""What one run may ask for: how many candidates, which seeds, how large a lesion box, how many threads.

Checked before any model work (the command line checks its arguments before it even loads the model), so a bad
setting costs the user nothing. The numbers are product limits with a reason each, stated in the messages.
"""

from __future__ import annotations

import math
import numbers
import os

from .errors import InvalidBoxError, InvalidSettingError

#: At most this many candidates per lesion. The uncertainty maps and the scores settle long before (16 is the
#: evaluation protocol; 64 is the Slicer module's maximum), while every candidate costs a labelmap segment in Slicer
#: and, per slice, K probability maps of the crop (256 candidates of a 256 px crop are 64 MB per slice).
MAX_SAMPLES = 256
#: Seeds are non-negative integers below 2**63: torch's generators take 64-bit seeds, and a negative seed would
#: silently wrap around to another one (-1 would equal 2**64 - 1).
MAX_SEED = 2 ** 63 - 1
#: The longer side of a lesion box, in mm. LIDC's nodules are 3-30 mm and lung masses rarely exceed 100 mm; a box
#: beyond that is a slice, not a lesion (the model, given any box, always finds *something* in it).
MAX_BOX_MM = 120.0
#: Below this (the smallest nodule LIDC's readers outlined) a box holds a few pixels and the masks are noise.
MIN_BOX_MM = 2.0


def check_samples(samples: object) -> int:
    """The number of candidates K as an int, or InvalidSettingError naming the allowed range."""
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral):
        raise InvalidSettingError(f"The number of samples must be a whole number from 1 to {MAX_SAMPLES}; "
                                  f"got {samples!r}.")
    if not 1 <= int(samples) <= MAX_SAMPLES:
        raise InvalidSettingError(
            f"The number of samples must be from 1 to {MAX_SAMPLES}; got {int(samples)}. Beyond {MAX_SAMPLES} the "
            "heatmap no longer changes while memory and Slicer segments grow with every candidate."
        )
    return int(samples)


def check_seed(seed: object) -> int:
    """The random seed as an int in 0..2**63-1, or InvalidSettingError."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) <= MAX_SEED:
        raise InvalidSettingError(f"The seed must be a whole number from 0 to 2**63 - 1; got {seed!r}. "
                                  "The same seed gives the same candidates.")
    return int(seed)


def check_box_size(box: tuple[float, float, float, float], spacing: tuple[float, float, float]) -> None:
    """Refuse boxes far larger than any lesion or smaller than the smallest one, stating the limits."""
    i0, j0, i1, j1 = box
    width_mm, height_mm = (i1 - i0) * float(spacing[0]), (j1 - j0) * float(spacing[1])
    longer = max(width_mm, height_mm)
    if not math.isfinite(longer) or longer > MAX_BOX_MM:
        raise InvalidBoxError(
            f"The box is {width_mm:.1f} x {height_mm:.1f} mm, larger than any lesion AmbiguousSAM segments (at most "
            f"{MAX_BOX_MM:g} mm on its longer side). Draw the box tightly around one lesion."
        )
    if longer < MIN_BOX_MM:
        raise InvalidBoxError(
            f"The box is {width_mm:.1f} x {height_mm:.1f} mm, smaller than the smallest lesion AmbiguousSAM "
            f"segments (at least {MIN_BOX_MM:g} mm on its longer side). Draw the box around the whole lesion."
        )


def check_threads(threads: int) -> int:
    """CPU threads for torch: 0 keeps torch's default, otherwise 1 to this machine's core count."""
    cores = os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, int) or not 0 <= threads <= cores:
        raise InvalidSettingError(f"--threads must be 0 (PyTorch's default) or 1 to {cores} (this machine's "
                                  f"cores); got {threads!r}.")
    return threads


#: Engines the image encoder can run on (encoder_runtime.py); "auto" is OpenVINO on a CPU, PyTorch on CUDA.
RUNTIMES = ("auto", "torch", "openvino")
#: Layouts of a latent head's K draws (heads/latent_draws.py); here, beside RUNTIMES, so the command line lists
#: them without importing torch.
LATENT_DRAWS = ("random", "sobol")


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise InvalidSettingError(f"Unknown encoder runtime '{runtime}'. Choose one of {', '.join(RUNTIMES)}.")
    return runtime
