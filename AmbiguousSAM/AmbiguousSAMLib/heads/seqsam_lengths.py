"""SeqSAM at several sequence lengths M in one evaluation run, for the cost of the longest.

SeqSAM is deterministic and its sequence is causal, so the first m masks of an M-step unroll *are* the m-step
unroll: rows M = 3, 10 and 16 can share one 16-step unroll per slice. Each row scores its own M masks, whatever
`--samples` the run uses, and its name says so and that its masks do not depend on the seed. The longest row,
asked first, pays for the unroll, so only its decode time is SeqSAM's cost; the shorter rows' times are ~0.
"""

from __future__ import annotations

import torch

from .sampler import Samples
from .seqsam import SeqSAM


class LastUnroll:
    """The longest unroll of the most recent (embedding, box), recomputed only when their content changes."""

    def __init__(self, *, head: SeqSAM, steps: int) -> None:
        self.head = head
        self.steps = steps
        self._inputs: tuple[torch.Tensor, torch.Tensor] | None = None
        self._outputs: tuple[torch.Tensor, torch.Tensor] | None = None

    @torch.no_grad()
    def __call__(self, embedding: torch.Tensor, box: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (steps, 256, 256) and IoU estimates (steps,) for one box."""
        if self._inputs is None or not (torch.equal(self._inputs[0], embedding) and torch.equal(self._inputs[1], box)):
            logits, ious = self.head.unroll(embedding, box, self.steps)
            self._inputs, self._outputs = (embedding.clone(), box.clone()), (logits[0], ious[0])
        return self._outputs


class FixedLength:
    """A `Sampler` row that gives the first `length` masks of a shared unroll, ignoring k and the seed."""

    def __init__(self, *, unroll: LastUnroll, length: int, name: str) -> None:
        self.unroll = unroll
        self.length = length
        self.name = name

    def sample(self, embedding: torch.Tensor, box: torch.Tensor, k: int, seed: int,
               image: torch.Tensor | None = None) -> Samples:
        logits, ious = self.unroll(embedding, box)
        return Samples(logits=logits[:self.length], scores=ious[:self.length])


def length_rows(head: SeqSAM, lengths: list[int], label: str = "") -> list[FixedLength]:
    """One row per M in `lengths`, longest first (it pays for the shared unroll); `label` tells heads apart."""
    unroll = LastUnroll(head=head, steps=max(lengths))
    return [FixedLength(unroll=unroll, length=m, name=f"{head.name}{label} M={m} (seed-free)")
            for m in sorted(set(lengths), reverse=True)]
