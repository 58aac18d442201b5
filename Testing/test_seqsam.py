"""SeqSAM: the recurrent head gives any number of masks, deterministically; its set loss matches predictions to
raters with the Hungarian assignment; chunk pooling trains one step per chunk; head files round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.errors import CheckpointError
from AmbiguousSAMLib.heads.baselines import Deterministic
from AmbiguousSAMLib.heads.checkpoint import load_any_head, load_head, save_head, save_seqsam
from AmbiguousSAMLib.heads.probabilistic_sam import ProbabilisticSAM
from AmbiguousSAMLib.heads.seqsam import SeqSAM
from AmbiguousSAMLib.heads.seqsam_lengths import length_rows
from AmbiguousSAMLib.modeling.backbone import Backbone
from AmbiguousSAMLib.training.seqsam_loss import chunk_members, dice_cost, hungarian_loss, seqsam_loss
from AmbiguousSAMLib.training.seqsam_trainer import SeqSAMTrainConfig, train_seqsam
from conftest import val_embedding_cache

BOX = torch.tensor([[80.0, 90.0, 160.0, 170.0]])


def squares(count: int, size: int = 16) -> torch.Tensor:
    """`count` disjoint 4x4 squares on a size x size grid, one per mask: (count, size, size) {0, 1}."""
    masks = torch.zeros(count, size, size)
    for i in range(count):
        masks[i, 4 * i:4 * i + 4, 4 * i:4 * i + 4] = 1
    return masks


def test_hungarian_loss_finds_the_known_best_assignment() -> None:
    """Prediction m is rater perm[m] exactly: the matched loss is ~0, far below matching in order, and the
    gradient reaches only the matched (prediction, rater) pairs."""
    raters = squares(3)[None]
    perm = [2, 0, 1]
    logits = (raters[0, perm] * 40 - 20)[None]
    cost = dice_cost(logits, raters).requires_grad_(True)
    loss = hungarian_loss(cost, torch.ones(1, 3))
    in_order = float(cost[0].diagonal().mean())
    assert float(loss) < 0.01 and in_order > 0.9
    loss.backward()
    matched = torch.zeros(3, 3, dtype=torch.bool)
    matched[torch.arange(3), torch.tensor(perm)] = True
    assert (cost.grad[0][matched] != 0).all() and (cost.grad[0][~matched] == 0).all()


def test_empty_raters_are_targets_or_masked_out() -> None:
    """A rater who left the slice empty: 'target' asks one prediction to be empty, 'masked' charges nothing."""
    raters = torch.cat([squares(1), torch.zeros(1, 16, 16)])[None]  # one marked rater, one empty
    marked = torch.tensor([[True, False]])
    both_marked = (torch.cat([squares(1), squares(1)]) * 40 - 20)[None]  # two copies of the marked outline
    one_empty = (torch.cat([squares(1) * 40 - 20, torch.full((1, 16, 16), -20.0)]))[None]
    assert float(seqsam_loss(one_empty, raters, marked, "target")) < 0.01
    assert float(seqsam_loss(both_marked, raters, marked, "target")) > 0.4
    assert float(seqsam_loss(both_marked, raters, marked, "masked")) < 0.01
    with pytest.raises(ValueError, match="empty_raters"):
        seqsam_loss(one_empty, raters, marked, "ignored")


@pytest.mark.parametrize("steps, labels, chunks", [(16, 4, [range(0, 4), range(4, 8), range(8, 12), range(12, 16)]),
                                                    (10, 4, [range(0, 3), range(3, 6), range(6, 9), range(9, 10)]),
                                                    (6, 4, [range(0, 2), range(2, 4), range(4, 6)]),
                                                    (4, 4, [range(i, i + 1) for i in range(4)])])
def test_chunk_pooling_picks_one_member_per_chunk(steps: int, labels: int, chunks: list[range]) -> None:
    rng = np.random.default_rng(0)
    draws = np.stack([chunk_members(steps, labels, rng) for _ in range(200)])
    assert draws.shape[1] == len(chunks)
    for column, chunk in zip(draws.T, chunks):
        assert set(column.tolist()) == set(chunk), "each chunk's member is random over the whole chunk"


@pytest.mark.parametrize("k", [1, 3, 6])
def test_any_number_of_masks_and_the_seed_changes_nothing(backbone: Backbone, embedding: torch.Tensor, k: int) -> None:
    head = SeqSAM(backbone).eval()
    first, again = head.sample(embedding, BOX, k, seed=0), head.sample(embedding, BOX, k, seed=12345)
    assert first.logits.shape == (k, 256, 256) and first.scores.shape == (k,)
    assert torch.equal(first.logits, again.logits) and torch.equal(first.scores, again.scores)


def test_untrained_head_starts_from_sams_own_mask(backbone: Backbone, embedding: torch.Tensor) -> None:
    """The cell starts as the identity on the dense prompt: step 1 is the backbone's deterministic mask."""
    step_one = SeqSAM(backbone).eval().sample(embedding, BOX, 2, seed=0).logits[0]
    assert torch.allclose(step_one, Deterministic(backbone).sample(embedding, BOX, 1, 0).logits[0], atol=1e-3)


def test_length_rows_are_prefixes_of_one_unroll(backbone: Backbone, embedding: torch.Tensor) -> None:
    head = SeqSAM(backbone).eval()
    with torch.no_grad():
        head.cell.to_hidden.weight.mul_(5)  # a livelier recurrence, so the steps differ
    three, two = length_rows(head, [2, 3])
    assert (three.name, two.name) == ("seqsam M=3 (seed-free)", "seqsam M=2 (seed-free)")
    long, short = three.sample(embedding, BOX, 16, 0), two.sample(embedding, BOX, 16, 7)
    assert long.logits.shape[0] == 3 and torch.equal(short.logits, long.logits[:2])
    assert torch.allclose(long.logits, head.sample(embedding, BOX, 3, 0).logits, atol=1e-4)
    moved = two.sample(embedding, BOX + 8, 16, 0)  # new content: unrolled again, not served from the last box
    assert not torch.allclose(moved.logits, short.logits)


def test_head_file_round_trip_and_kinds(backbone: Backbone, embedding: torch.Tensor, tmp_path) -> None:
    head = SeqSAM(backbone).eval()
    with torch.no_grad():
        head.cell.to_prompt.bias.normal_()
        for parameter in head.trainable_parameters().values():  # values fp16 holds exactly: the file stores fp16
            parameter.copy_(parameter.half().float())
    save_seqsam(head, tmp_path / "seqsam.pt", "litemedsam")
    loaded = load_any_head(backbone, tmp_path / "seqsam.pt")
    assert isinstance(loaded, SeqSAM)
    for name, tensor in head.trainable_parameters().items():
        assert torch.equal(tensor, loaded.trainable_parameters()[name])
    assert torch.equal(loaded.sample(embedding, BOX, 2, 0).logits, head.sample(embedding, BOX, 2, 0).logits)
    with pytest.raises(CheckpointError, match="is a SeqSAM head"):
        load_head(backbone, tmp_path / "seqsam.pt")
    save_head(ProbabilisticSAM(backbone), tmp_path / "probabilistic.pt", "litemedsam")  # no "head" entry
    assert isinstance(load_any_head(backbone, tmp_path / "probabilistic.pt"), ProbabilisticSAM)


def test_training_resumes_and_writes_a_head(backbone: Backbone, tmp_path) -> None:
    cache = val_embedding_cache(tmp_path / "cache", 4)
    config = SeqSAMTrainConfig(steps=2, train_length=2, checkpoint_every=1, precision="fp32")
    assert train_seqsam(cache, backbone, config, tmp_path / "run", show_progress=False, stop_after=1) is None
    path = train_seqsam(cache, backbone, config, tmp_path / "run", show_progress=False)
    history = torch.load(tmp_path / "run" / "last.pt", weights_only=False)["history"]
    assert [h["step"] for h in history] == [1, 2] and (tmp_path / "run" / "loss.png").is_file()
    trained = load_any_head(backbone, path)
    assert not torch.equal(trained.cell.to_hidden.weight, SeqSAM(backbone).cell.to_hidden.weight)


def test_evaluate_refuses_a_bad_sequence_length(capsys) -> None:
    assert main(["evaluate", "--data", "absent.npz", "--seqsam-lengths", "3", "0"]) == 2
    assert "--seqsam-lengths" in capsys.readouterr().err
