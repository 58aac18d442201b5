"""The per-lesion review flag: will radiologists disagree about this lesion, so that a second reader should look?

The UncertainSAM scorer predicts, per slice, how much four LIDC radiologists would disagree there (their mean
pairwise 1 - IoU, an empty outline included). A lesion is flagged from its *clicked* slice: there the box is the
user's, drawn around a lesion they saw, like the protocol box of the validation slices the threshold was chosen
on; the slices the 3D path follows get boxes from the candidates, and the end slices of every lesion are ones some
rater leaves empty, so a mean over them would mostly measure the lesion's length, a quantity the threshold was
never chosen for.

Standard library only: the flag travels through the server protocol, which Slicer's GUI process speaks before
PyTorch is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

#: Predicted disagreement at or above which a lesion needs review. Chosen for the shipped scorer file
#: (Resources/Models/uncertainsam_scorer_lidc.pt) by Testing/Benchmarks/scorer_figure5.py: the best Youden J on
#: the even half of the 435 LIDC val slices for "raters disagree" (true disagreement >= 0.5); on the odd half it
#: flags 70 % of the slices with precision 0.87 and recall 0.81. A retrained scorer needs that script run again.
REVIEW_THRESHOLD = 0.475
#: The rule in words, as summary.json states it.
REVIEW_RULE = (f"needs review when the scorer's predicted expert disagreement (mean pairwise 1 - IoU of four "
               f"radiologists) on the clicked slice is >= the threshold; threshold {REVIEW_THRESHOLD} chosen on the "
               "even half of 435 LIDC val slices (best Youden J for true disagreement >= 0.5): precision 0.87, "
               "recall 0.81 on the odd half")
NEEDS_REVIEW = "needs review"
NO_REVIEW = "no review needed"
NOT_AVAILABLE = "not available"
STATES = (NEEDS_REVIEW, NO_REVIEW, NOT_AVAILABLE)


@dataclass(frozen=True)
class ReviewFlag:
    """One lesion's flag: its state, the predicted disagreement it was read from and the threshold applied."""

    #: NEEDS_REVIEW, NO_REVIEW or NOT_AVAILABLE (no scorer ran).
    state: str
    #: The scorer's predicted expert disagreement on the clicked slice, in [0, 1]; None when not available.
    disagreement: float | None = None
    threshold: float = REVIEW_THRESHOLD
    #: Why the flag is not available (the scorer file's problem, or "--no-scorer"); empty otherwise.
    reason: str = ""

    @classmethod
    def from_disagreement(cls, disagreement: float, threshold: float = REVIEW_THRESHOLD) -> ReviewFlag:
        """The flag of a lesion whose clicked slice has this predicted disagreement."""
        state = NEEDS_REVIEW if disagreement >= threshold else NO_REVIEW
        return cls(state, float(disagreement), float(threshold))

    @classmethod
    def not_available(cls, reason: str) -> ReviewFlag:
        """The flag of a lesion segmented without a scorer: nobody can say whether it needs review."""
        return cls(NOT_AVAILABLE, None, REVIEW_THRESHOLD, reason)

    @property
    def needs_review(self) -> bool:
        return self.state == NEEDS_REVIEW

    def as_dict(self) -> dict:
        """The flag as summary.json and the server protocol carry it."""
        return {"state": self.state, "predicted_disagreement": self.disagreement, "threshold": self.threshold,
                "rule": REVIEW_RULE, "reason": self.reason}

    @classmethod
    def from_dict(cls, values: dict) -> ReviewFlag:
        """The flag `as_dict` wrote; ValueError when it is not one (the protocol reports the field)."""
        state, threshold = values.get("state"), values.get("threshold")
        disagreement = values.get("predicted_disagreement")
        if state not in STATES or not _is_number(threshold):
            raise ValueError(f"state must be one of {STATES} and threshold a number, not {state!r} and {threshold!r}")
        if (state == NOT_AVAILABLE) != (disagreement is None) or not (disagreement is None or _is_number(disagreement)):
            raise ValueError(f"predicted_disagreement must be a number exactly when the flag is available, not "
                             f"{disagreement!r} with state {state!r}")
        return cls(state, None if disagreement is None else float(disagreement), float(threshold),
                   str(values.get("reason", "")))


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def review_order(flags: Sequence[ReviewFlag]) -> list[int]:
    """Indices of lesions in the order to read them: those that need review first, then the others, each group by
    predicted disagreement, highest first (lesions without a flag last); ties keep the given order."""
    def key(index: int) -> tuple[bool, bool, float]:
        flag = flags[index]
        return (not flag.needs_review, flag.disagreement is None, -(flag.disagreement or 0.0))
    return sorted(range(len(flags)), key=key)
