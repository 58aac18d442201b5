"""The appearance and lesion-window evidence of the presence gate, the set-level loss, and refitting a head's gate on cached crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from AmbiguousSAMLib.cli import main
from AmbiguousSAMLib.crops import nested_order
from AmbiguousSAMLib.heads.checkpoint import DEFAULT_HEAD, HEAD, load_head, read_checkpoint, save_head
from AmbiguousSAMLib.heads.presence import EVIDENCE, _dilate, appearance_features
from AmbiguousSAMLib.heads.presence_window import WINDOW_SIDE, WindowNet, lesion_window
from AmbiguousSAMLib.heads.probabilistic_sam import ProbabilisticSAM
from AmbiguousSAMLib.modeling.backbone import build_backbone
from AmbiguousSAMLib.training.embedding_cache import EmbeddingCache
from AmbiguousSAMLib.training.losses import set_energy_loss
from AmbiguousSAMLib.training.window_fit import fit_window_net

from conftest import val_embedding_cache

SIZE = 256


def disc_image(contrast: float, radius: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, 3, S, S) model input: a disc `contrast` brighter than a noisy background; and its (1, S, S) logits."""
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = ((yy - 128) ** 2 + (xx - 128) ** 2 <= radius ** 2).float()
    noise = torch.rand((SIZE, SIZE), generator=torch.Generator().manual_seed(0)) * 0.1
    image = (0.2 + noise + contrast * disc).clamp(0, 1)
    return image.expand(1, 3, SIZE, SIZE), (disc * 40 - 20)[None]


def test_nested_order_makes_every_prefix_an_evenly_spread_subset() -> None:
    rows = np.arange(100, 140)
    order = nested_order(rows)
    assert sorted(order.tolist()) == rows.tolist()
    np.testing.assert_array_equal(order[:10], rows[::4])
    np.testing.assert_array_equal(np.sort(order[:20]), rows[::2])


def test_separable_dilation_equals_the_square_one() -> None:
    masks = (torch.rand((3, 64, 64), generator=torch.Generator().manual_seed(2)) > 0.97).float()
    for radius in (1, 4, 12):
        square = torch.nn.functional.max_pool2d(masks[:, None], 2 * radius + 1, stride=1, padding=radius)[:, 0]
        assert torch.equal(_dilate(masks, radius), square)


def test_appearance_reads_margin_contrast_density_and_edge() -> None:
    box = torch.tensor([[90.0, 90.0, 166.0, 166.0]])
    faint, logits = disc_image(0.1)
    solid, _ = disc_image(0.6)
    weak, strong = appearance_features(logits, box, faint, SIZE)[0], appearance_features(logits, box, solid, SIZE)[0]
    assert strong[3] > weak[3] > 0 and strong[4] > weak[4] > 0  # margin contrasts: inside minus ring / outside
    assert strong[0] > weak[0]  # density inside
    assert strong[6] > weak[6]  # edge sharpness on the boundary
    assert strong[7] == pytest.approx(weak[7]) and float(strong[7]) == pytest.approx(np.log(np.pi * 400) / 5, rel=0.02)
    # The grey channel alone (what the segmenter's cache keeps) reads the same as the three-channel input.
    torch.testing.assert_close(appearance_features(logits, box, solid[:, :1], SIZE)[0], strong)
    # One bright outlier pixel far from the lesion moves the percentile-relative numbers by little.
    spiked = solid.clone()
    spiked[..., 5, 5] = 1.0
    torch.testing.assert_close(appearance_features(logits, box, spiked, SIZE)[0], strong, atol=0.02, rtol=0.0)


@pytest.mark.parametrize(("evidence", "inputs"), [("appearance", 18), ("window", 19)])
def test_an_image_reading_head_needs_the_image_and_round_trips(tmp_path, evidence: str, inputs: int) -> None:
    backbone = build_backbone()
    head = ProbabilisticSAM(backbone, presence_evidence=evidence, window_context=3.0).eval()
    assert head.presence.mlp[0].in_features == EVIDENCE[evidence] == inputs
    embedding = torch.randn(1, 256, 64, 64, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[90.0, 90.0, 166.0, 166.0]])
    with pytest.raises(ValueError, match="reads the image"):
        head.sample(embedding, box, k=4, seed=0)
    image, _ = disc_image(0.5)
    drawn = head.sample(embedding, box, k=4, seed=0, image=image)
    save_head(head, tmp_path / f"{evidence}.pt", backbone.spec.name)
    loaded = load_head(backbone, tmp_path / f"{evidence}.pt")
    assert loaded.presence_evidence == evidence and loaded.window_context == 3.0
    if evidence == "window":
        torch.testing.assert_close(loaded.window_net.features[0][0].weight, head.window_net.features[0][0].weight)
    again = loaded.sample(embedding, box, k=4, seed=0, image=image)
    torch.testing.assert_close(again.logits, drawn.logits)
    assert again.presence == pytest.approx(drawn.presence)


def test_an_unknown_presence_evidence_is_refused() -> None:
    with pytest.raises(ValueError, match="presence_evidence"):
        ProbabilisticSAM(build_backbone(), presence_evidence="texture")


def test_the_set_loss_prefers_samples_spread_like_the_raters() -> None:
    raters = torch.zeros(1, 4, 16, 16)
    raters[0, 0, 4:8, 4:8] = raters[0, 1, 4:8, 4:10] = raters[0, 2, 4:12, 4:12] = 1.0
    marked = torch.tensor([[True, True, True, False]])  # the fourth rater left it empty: the gate's business
    matching = (raters[:, :3] * 40 - 20).repeat(1, 2, 1, 1)  # K = 6 samples: the three outlines twice
    collapsed = (raters[:, 1:2] * 40 - 20).repeat(1, 6, 1, 1)  # six copies of the middle outline
    spread_loss, collapsed_loss = set_energy_loss(matching, raters, marked), set_energy_loss(collapsed, raters, marked)
    assert float(spread_loss) < float(collapsed_loss) - 0.1
    blurred = torch.zeros_like(matching)  # every sample a 50 % haze over the whole crop: no reward for blur
    assert float(set_energy_loss(blurred, raters, marked)) > float(spread_loss) + 0.5
    logits = collapsed.clone().requires_grad_(True)
    set_energy_loss(logits, raters, marked).backward()
    assert logits.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> EmbeddingCache:
    return val_embedding_cache(tmp_path_factory.mktemp("cache"), 8)


def test_fit_gate_refits_only_the_gate_and_never_overwrites_its_input(cache, tmp_path, capsys) -> None:
    out = tmp_path / "gated.pt"
    assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "0", "8", "--out", str(out)]) == 0
    assert "BCE" in capsys.readouterr().out
    backbone = build_backbone()
    shipped, refitted = load_head(backbone, DEFAULT_HEAD), load_head(backbone, out)
    assert refitted.presence_evidence == "appearance" and refitted.presence_offset == 0.0
    assert refitted.prior_temperature == shipped.prior_temperature
    for name, tensor in shipped.trainable_parameters().items():
        if not name.startswith(("presence.", "window_net.")):  # the gate and its evidence CNN are what is refitted
            torch.testing.assert_close(refitted.trainable_parameters()[name], tensor)
    extra = read_checkpoint(Path(out), HEAD)["extra"]["gate"]
    assert extra["rows"] == [0, 8] and extra["evidence"] == "appearance"
    before = out.read_bytes()
    assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "0", "8", "--head", str(out),
                 "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "4", "9", "--out", str(tmp_path / "x.pt")]) == 2
    assert "0 <= START < STOP <= 8" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_the_lesion_window_is_centred_on_the_box_whatever_the_field_of_view() -> None:
    near, _ = disc_image(0.6, radius=20)  # the lesion fills more of a tight model input...
    box_near = torch.tensor([[105.0, 105.0, 151.0, 151.0]])
    far = torch.nn.functional.interpolate(near, scale_factor=0.5, mode="area")  # ...than of a wide one
    far = torch.nn.functional.pad(far, (32, 96, 64, 64), value=0.2)
    box_far = (box_near / 2) + torch.tensor([[32.0, 64.0, 32.0, 64.0]])
    window_near, window_far = lesion_window(near, box_near, SIZE), lesion_window(far, box_far, SIZE)
    assert window_near.shape == (1, 2, WINDOW_SIDE, WINDOW_SIDE)
    middle, corner = window_near[0, 0, 20:28, 20:28].mean(), window_near[0, 0, :6, :6].mean()
    assert middle > corner + 0.5  # the disc in the middle, background in the corners
    box = window_near[0, 1]
    assert box[24, 24] == 1 and box[0, 0] == 0 and box[24].sum() == box[:, 24].sum()  # a square box stays square
    # The same lesion seen in a field of view twice as wide reads the same, up to the blur of halving the image
    # (the noise averages out, the edge softens): measured 0.12 here, against 0.44 between the disc and no disc.
    assert float((window_near[0, 0] - window_far[0, 0]).abs().mean()) < 0.2
    empty = lesion_window(disc_image(0.0)[0], box_near, SIZE)  # the same noise, no disc
    assert float((window_near[0, 0] - empty[0, 0]).abs().mean()) > 0.3
    far_box = window_far[0, 1]  # centred and square too (a little smaller: the window's 16-pixel margin is fixed)
    assert far_box[24, 24] == 1 and far_box[24].sum() == far_box[:, 24].sum() and 0.7 < far_box.sum() / box.sum() < 1
    torch.testing.assert_close(far_box, far_box.flip(0).flip(1))
    # A wider context reads more around the same box: the box's side over the window's is 46 / (c * 46 + 16).
    for context in (2.0, 3.0):
        wide_box = lesion_window(near, box_near, SIZE, context)[0, 1]
        assert abs(float(wide_box[24].sum()) / WINDOW_SIDE - 46 / (context * 46 + 16)) < 1.5 / WINDOW_SIDE
    torch.testing.assert_close(lesion_window(near, box_near, SIZE, 2.0), window_near)  # 2 is the default


def test_folding_the_batch_norms_keeps_what_the_cnn_computes() -> None:
    torch.manual_seed(0)
    trained = WindowNet(normalised=True)
    windows = torch.randn(16, 2, WINDOW_SIDE, WINDOW_SIDE) * 2 + 0.5
    trained.train()
    for _ in range(3):  # running statistics away from their initial 0 / 1
        trained(windows)
    trained.eval()
    plain = WindowNet().eval()
    plain.fold_from(trained)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    torch.testing.assert_close(plain(windows), trained(windows), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="normalised=True"):
        WindowNet().fold_from(plain)


def test_the_window_cnn_learns_a_faint_lesion_from_a_solid_one() -> None:
    faint = lesion_window(disc_image(0.05)[0], torch.tensor([[100.0, 100.0, 156.0, 156.0]]), SIZE)
    solid = lesion_window(disc_image(0.6)[0], torch.tensor([[100.0, 100.0, 156.0, 156.0]]), SIZE)
    windows = torch.cat([faint.repeat(64, 1, 1, 1), solid.repeat(64, 1, 1, 1)])
    windows = windows + 0.05 * torch.randn(windows.shape, generator=torch.Generator().manual_seed(3))
    marked = torch.tensor([0.25] * 64 + [1.0] * 64)
    losses = []
    net = fit_window_net(windows, marked, epochs=15, progress=lambda epoch, epochs, loss: losses.append(loss))
    assert len(losses) == 15 and losses[-1] < losses[0]
    with torch.no_grad():
        pi = torch.sigmoid(net(torch.cat([faint, solid])))
    assert float(pi[1]) > float(pi[0]) + 0.3


@pytest.fixture(scope="module")
def half_encoded_cache(tmp_path_factory) -> EmbeddingCache:
    return val_embedding_cache(tmp_path_factory.mktemp("half"), 8, encoded=4)


def test_fit_gate_trains_the_window_cnn_on_other_crops_than_the_gate(cache, half_encoded_cache, tmp_path,
                                                                     capsys) -> None:
    out = tmp_path / "window.pt"  # the CNN reads pixels only: crops 4-7 need no embedding to train it
    assert half_encoded_cache.meta()["done"] == 4
    assert main(["fit-gate", "--cache", str(half_encoded_cache.folder), "--rows", "0", "4", "--evidence", "window",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "window CNN on 4 crops: epoch 12/12" in printed and "BCE" in printed
    extra = read_checkpoint(Path(out), HEAD)["extra"]["gate"]
    assert extra["rows"] == [0, 4] and extra["window_rows"] == [4, 8] and extra["evidence"] == "window"
    assert extra["window_context"] == 3.0
    refitted = load_head(build_backbone(), out)
    assert refitted.presence_evidence == "window" and refitted.window_net is not None
    assert refitted.window_context == 3.0  # the default field, kept in the file's config
    for asked, message in ((["--window-rows", "2", "6"], "overlaps --rows 0 4"),
                           (["--window-rows", "4", "9"], "0 <= START < STOP <= 8"),
                           (["--window-context", "0.5"], "--window-context 0.5 is out of range"),
                           (["--window-context", "nan"], "--window-context nan is out of range")):
        assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "0", "4", "--evidence", "window", *asked,
                     "--out", str(tmp_path / "x.pt")]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "0", "8", "--evidence", "window",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "none are left, give --window-rows" in capsys.readouterr().err
    assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "0", "4", "--window-rows", "4", "8",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "--evidence window only" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
    assert main(["fit-gate", "--cache", str(cache.folder), "--rows", "0", "4", "--window-context", "3",
                 "--out", str(tmp_path / "x.pt")]) == 2
    assert "--evidence window only" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
