"""The 2D predictor: LiteMedSAM's pre-processing, a real nodule against four radiologists, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from AmbiguousSAMLib.device import is_cuda_oom, resolve_device
from AmbiguousSAMLib.errors import AmbiguousSAMError, InvalidBoxError, InvalidImageError
from AmbiguousSAMLib.metrics import dice
from AmbiguousSAMLib.predictor import Predictor
from AmbiguousSAMLib.preprocessing import ModelFrame, normalize_intensities

from conftest import LIDC_DEMO_CT, SHARED_DATA

LIDC_SLICE = 89
LIDC_BOX = (296, 338, 338, 388)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(device="cpu")


@pytest.fixture(scope="module")
def lidc() -> tuple[np.ndarray, list[np.ndarray]]:
    if not LIDC_DEMO_CT.is_file():
        pytest.skip(f"LIDC-IDRI-0001 is not at {LIDC_DEMO_CT} (shared data absent in this checkout)")
    import SimpleITK as sitk

    ct = sitk.GetArrayFromImage(sitk.ReadImage(str(LIDC_DEMO_CT)))
    folder = LIDC_DEMO_CT.parent / "nodule-1"
    raters = [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"rater-{r}.nrrd")))[LIDC_SLICE].astype(bool)
              for r in range(1, 5)]
    return ct[LIDC_SLICE], raters


def test_preprocessing_follows_litemedsam_recipe() -> None:
    image = np.zeros((100, 200), np.float32)
    image[10:20, 30:40] = 5.0
    frame = ModelFrame.for_image(image.shape, 256)
    assert frame.resized_size == (128, 256) and frame.scale == pytest.approx(1.28)
    tensor = frame.image_to_model(normalize_intensities(image, None))
    assert tensor.shape == (1, 3, 256, 256)
    assert float(tensor.max()) == pytest.approx(1.0) and float(tensor.min()) == 0.0
    assert torch.all(tensor[..., 128:, :] == 0)  # padded at the bottom
    np.testing.assert_allclose(frame.box_to_model(np.array([30.0, 10.0, 40.0, 20.0])), [38.4, 12.8, 51.2, 25.6],
                               rtol=1e-6)
    logits = torch.full((256, 256), -1.0)
    logits[:128, :] = 1.0
    back = frame.logits_to_image(logits)
    assert back.shape == (100, 200) and bool((back > 0).all())
    mask = np.zeros((100, 200), bool)
    mask[:50] = True
    target = frame.mask_to_model(mask)  # a training target lands where the image's pixels land
    assert target.shape == (256, 256) and float(target[:64].min()) == 1.0 and float(target[64:].max()) == 0.0


def test_hu_window_is_applied_before_min_max() -> None:
    hu = np.array([[-2000.0, -1350.0], [150.0, 3000.0]])
    np.testing.assert_allclose(normalize_intensities(hu, (-1350.0, 150.0)), [[0, 0], [1, 1]])


def test_nodule_matches_each_radiologist(predictor: Predictor, lidc) -> None:
    image, raters = lidc
    predictor.set_image(image)
    prediction = predictor.predict(LIDC_BOX)
    assert prediction.mask.shape == image.shape and prediction.mask.dtype == bool
    assert prediction.logits.shape == (256, 256)
    scores = [dice(prediction.mask[None], r[None]) for r in raters]
    print("Dice per radiologist:", [round(s, 3) for s in scores], "IoU estimate", round(prediction.iou, 3))
    assert min(scores) > 0.6
    assert 0.0 < prediction.iou <= 1.0


def test_embedding_is_cached_and_prediction_is_deterministic(predictor: Predictor, lidc) -> None:
    image, _ = lidc
    predictor.set_image(image)
    embedding = predictor.embedding
    first = predictor.predict(LIDC_BOX)
    assert predictor.embedding is embedding  # predict never re-encodes
    second = predictor.predict(LIDC_BOX)
    np.testing.assert_array_equal(first.logits, second.logits)


def test_bf16_masks_agree_with_fp32(lidc) -> None:
    image, _ = lidc
    masks = {}
    for precision in ("fp32", "bf16"):
        p = Predictor(device="cpu", precision=precision)
        p.set_image(image)
        masks[precision] = p.predict(LIDC_BOX).mask
    agreement = dice(masks["fp32"][None], masks["bf16"][None])
    print(f"bf16 vs fp32 mask Dice: {agreement:.4f}")
    assert agreement > 0.95


@pytest.mark.parametrize("box, message", [
    ((10, 10, 10, 30), "empty"),
    ((40, 40, 20, 60), "inverted"),
    ((300, 300, 340, 340), "outside"),
    ((float("nan"), 0, 10, 10), "NaN"),
    ((1, 2, 3), "four numbers"),
])
def test_bad_boxes_are_refused(predictor: Predictor, box, message: str) -> None:
    predictor.set_image(np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32))
    with pytest.raises(InvalidBoxError, match=message):
        predictor.predict(box)


@pytest.mark.parametrize("image, message", [
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.zeros((4, 32, 32), np.int16), "2D slice.*volume\\[k\\]"),
    (np.zeros((32, 32), bool), "dtype bool"),
    (np.array([["a"] * 4] * 4), "dtype <U1"),
    (np.zeros((32, 32), np.complex64), "dtype complex64"),
])
def test_bad_images_are_refused(predictor: Predictor, image, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        predictor.set_image(image)


def test_predict_before_set_image_says_what_to_do() -> None:
    with pytest.raises(AmbiguousSAMError, match="set_image"):
        Predictor(device="cpu").predict((0, 0, 10, 10))


def test_device_choice() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(AmbiguousSAMError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert is_cuda_oom(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_cuda_oom(RuntimeError("shape mismatch"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu(lidc) -> None:
    image, _ = lidc
    masks = []
    for device in ("cpu", "cuda"):
        p = Predictor(device=device)
        p.set_image(image)
        masks.append(p.predict(LIDC_BOX).mask)
    assert dice(masks[0][None], masks[1][None]) > 0.99
