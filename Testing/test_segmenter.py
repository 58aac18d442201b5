"""The 3D path on a real CT with four radiologists, and on a synthetic oblique, anisotropic volume."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.stats import spearmanr

from AmbiguousSAMLib.errors import InvalidBoxError, InvalidImageError
from AmbiguousSAMLib.heads.scorer_checkpoint import DEFAULT_SCORER
from AmbiguousSAMLib.metrics import dice, generalized_energy_distance, majority_vote, pairwise_iou
from AmbiguousSAMLib.segmenter import PROPAGATION_MARGIN, LesionSegmenter, _SliceResult

from conftest import LIDC_DEMO_CT

LIDC_SLICE = 89
LIDC_BOX = (296, 338, 338, 388)


@pytest.fixture(scope="module")
def segmenter() -> LesionSegmenter:
    return LesionSegmenter(device="cpu")


@pytest.fixture(scope="module")
def lidc():
    if not LIDC_DEMO_CT.is_file():
        pytest.skip(f"LIDC-IDRI-0001 is not at {LIDC_DEMO_CT} (shared data absent in this checkout)")
    image = sitk.ReadImage(str(LIDC_DEMO_CT))
    folder = LIDC_DEMO_CT.parent / "nodule-1"
    raters = np.stack([sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"rater-{r}.nrrd"))).astype(bool)
                       for r in range(1, 5)])
    return sitk.GetArrayFromImage(image), image.GetSpacing(), raters


def lesion_ged(candidates: np.ndarray, raters: np.ndarray, region: tuple[slice, ...]) -> float:
    return generalized_energy_distance(candidates[(slice(None), *region)], raters[(slice(None), *region)])


def test_lidc_nodule_candidates_against_four_radiologists(segmenter: LesionSegmenter, lidc) -> None:
    volume, spacing, raters = lidc
    result = segmenter.segment(volume, LIDC_BOX, LIDC_SLICE, spacing, samples=16, seed=0)
    candidates = result.paste(result.candidates)
    union = raters.any(axis=0)
    assert result.candidates.shape[0] == 16
    for i, candidate in enumerate(candidates):
        assert (candidate & union).any(), f"candidate {i + 1} misses the nodule"
        assert candidate[LIDC_SLICE].any(), f"candidate {i + 1} is empty on the slice the box was drawn on"
    consensus = result.paste(result.consensus)
    per_rater = [dice(consensus[None], r[None]) for r in raters]
    # 3D GED on the box around candidates and raters, against the deterministic mask in the same box.
    single = LesionSegmenter(head="deterministic", device="cpu").segment(volume, LIDC_BOX, LIDC_SLICE, spacing,
                                                                           samples=1, seed=0)
    both = candidates.any(axis=0) | union | single.paste(single.candidates)[0]
    region = tuple(slice(int(a.min()), int(a.max()) + 1) for a in np.nonzero(both))
    ged = lesion_ged(candidates, raters, region)
    ged_single = lesion_ged(single.paste(single.candidates), raters, region)
    print(f"3D consensus Dice per radiologist {np.round(per_rater, 3).tolist()}; slices {result.info['slices']}; "
          f"3D GED {ged:.3f} vs deterministic {ged_single:.3f}")
    assert min(per_rater) > 0.6
    assert ged < ged_single
    assert result.mean_probability.shape == result.consensus.shape
    assert np.all(result.mutual_information >= 0) and np.all(result.entropy >= result.mutual_information - 1e-6)
    # The shipped scorer's expected 3D quality ranks the candidates by their true 3D IoU with the raters' majority.
    # One click's 16 candidates are too few to show it (Spearman -0.13 to 0.89 over seeds 0-11, mean 0.52, with the
    # previous head): the candidates of six clicks (seeds 0-5; the reruns only decode) are ranked together. Pooled
    # so, the scorer trained on 1,024 crops gave 0.37 for this head's candidates and the one trained on 2,048 (the
    # shipped one) gives 0.19, although on 435 val slices it ranks the head's 16 candidates better (pooled 0.541
    # against 0.509, Testing/Benchmarks/scorer_figure5.py): this is one nodule, of a training patient. 0.15 sits at
    # what 96 candidates tell from no ranking at all (one-sided p ~ 0.07); a scorer that does not rank fails it.
    quality, truth, typicality = [], [], []
    for seed in range(6):
        click = result if seed == 0 else segmenter.segment(volume, LIDC_BOX, LIDC_SLICE, spacing, samples=16, seed=seed)
        quality.append(click.quality)
        typicality.append(click.scores)
        truth.append(pairwise_iou(click.paste(click.candidates), majority_vote(raters)[None])[:, 0])
    quality, truth = np.concatenate(quality), np.concatenate(truth)
    rho = spearmanr(quality, truth).statistic
    print(f"expected quality vs true 3D IoU with the majority, 6 clicks: Spearman {rho:.2f} (typicality "
          f"{spearmanr(np.concatenate(typicality), truth).statistic:.2f}); review: {result.review}")
    assert result.quality.shape == (16,) and ((0 <= quality) & (quality <= 1)).all() and rho > 0.15
    assert result.review.state in ("needs review", "no review needed") and result.info["scorer"] == DEFAULT_SCORER.name


@pytest.mark.parametrize("content", [None, b"not a scorer at all"])
def test_a_missing_or_corrupt_scorer_warns_once_and_the_click_still_runs(lidc, tmp_path, content) -> None:
    volume, spacing, _ = lidc
    path = tmp_path / "scorer.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="without the UncertainSAM scorer") as warned:
        unscored = LesionSegmenter(device="cpu", scorer=path)
    assert len(warned) == 1 and str(path) in str(warned[0].message)
    result = unscored.segment(volume, LIDC_BOX, LIDC_SLICE, spacing, samples=4, seed=0, propagate=False)
    assert result.candidates.shape[0] == 4 and result.candidates.any()
    assert result.quality is None and result.review.state == "not available" and str(path) in result.review.reason
    assert result.info["scorer"] is None


def test_same_seed_same_candidates_and_reruns_only_decode(segmenter: LesionSegmenter, lidc) -> None:
    volume, spacing, _ = lidc
    first = segmenter.segment(volume, LIDC_BOX, LIDC_SLICE, spacing, samples=8, seed=3)
    encoded = segmenter.encoded_crops
    again = segmenter.segment(volume.copy(), LIDC_BOX, LIDC_SLICE, spacing, samples=8, seed=3)
    np.testing.assert_array_equal(first.candidates, again.candidates)
    np.testing.assert_array_equal(first.entropy, again.entropy)
    fewer = segmenter.segment(volume, LIDC_BOX, LIDC_SLICE, spacing, samples=4, seed=3, propagate=False)
    assert fewer.candidates.shape[0] == 4
    assert segmenter.encoded_crops == encoded  # a copy of the same voxels, another K: no encoding at all


def test_the_cache_follows_the_voxels_not_the_array_object(segmenter: LesionSegmenter, lidc) -> None:
    """Issue 10: keyed on id(volume), a freed copy's id was reused by the next volume of the same shape, which
    then got the earlier volume's embeddings. Seven different same-shaped volumes, one box, in a row."""
    volume, spacing, _ = lidc
    block = volume[LIDC_SLICE - 1:LIDC_SLICE + 2, 250:450, 250:450]
    outlines = []
    for shift in range(7):
        other = np.roll(block, 6 * shift, axis=2).copy()  # the nodule moves; same shape, dtype and size
        before = segmenter.encoded_crops
        result = segmenter.segment(other, (43, 91, 86, 143), 1, spacing, samples=2, seed=0, propagate=False)
        assert segmenter.encoded_crops == before + 1, f"volume {shift} was not encoded"
        outlines.append(result.paste(result.consensus)[1])
        del other
    for first, second in zip(outlines, outlines[1:]):
        assert not np.array_equal(first, second)


def synthetic_ct(direction: tuple[float, ...], spacing: tuple[float, float, float]) -> sitk.Image:
    """Lung-like background with a 'nodule' (a soft-tissue ellipsoid) and a wall, on an oblique grid."""
    k, j, i = np.mgrid[:12, :96, :96]
    volume = np.full((12, 96, 96), -850, np.int16)
    volume[:, :, 80:] = 40  # chest wall
    nodule = ((i - 40) * spacing[0]) ** 2 + ((j - 48) * spacing[1]) ** 2 + ((k - 6) * spacing[2]) ** 2 <= 7.0 ** 2
    volume[nodule] = 30
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(spacing)
    image.SetOrigin((-12.5, 40.0, -100.0))
    image.SetDirection(direction)
    return image


OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.3, 1.0), 0.35).GetMatrix())


def test_synthetic_oblique_anisotropic_nodule_is_found(segmenter: LesionSegmenter) -> None:
    image = synthetic_ct(OBLIQUE, (0.6, 0.8, 1.5))
    volume = sitk.GetArrayFromImage(image)
    result = segmenter.segment(volume, (28, 36, 52, 60), 6, image.GetSpacing(), samples=8, seed=0)
    truth = volume == 30
    consensus = result.paste(result.consensus)

    def centre_mm(mask: np.ndarray) -> np.ndarray:
        return np.array(np.nonzero(mask)).mean(axis=1) * np.array(image.GetSpacing())[::-1]

    # What this test guards is geometry on an oblique, anisotropic grid: the candidates sit on the nodule, in
    # the right slices. The uniform synthetic ball is not CT-like enough to grade outline quality (the plain
    # backbone reaches Dice 0.56 on it); the LIDC test above grades that against radiologists.
    offset_mm = float(np.linalg.norm(centre_mm(consensus) - centre_mm(truth)))
    precision = (consensus[6] & truth[6]).sum() / max(consensus[6].sum(), 1)
    print(f"synthetic nodule Dice {dice(consensus[None], truth[None]):.3f}, centre offset {offset_mm:.2f} mm, "
          f"precision on the clicked slice {precision:.2f}, slices {result.info['slices']}")
    assert offset_mm < 2.0 and precision > 0.9


@pytest.mark.parametrize("box, slice_k, message", [
    ((200, 200, 240, 240), 6, "outside"),
    ((30, 30, 30, 50), 6, "zero size"),
    ((50, 30, 30, 50), 6, "inverted"),
    ((30, 30, 50, 50), 40, "outside the volume"),
])
def test_bad_boxes(segmenter: LesionSegmenter, box, slice_k: int, message: str) -> None:
    volume = sitk.GetArrayFromImage(synthetic_ct((1, 0, 0, 0, 1, 0, 0, 0, 1), (1.0, 1.0, 1.0)))
    with pytest.raises(InvalidBoxError, match=message):
        segmenter.segment(volume, box, slice_k, (1.0, 1.0, 1.0), samples=2)


@pytest.mark.parametrize("shape, message", [((96, 96), "3D volume.*single slice"), ((2, 3, 96, 96), "3D volume")])
def test_2d_and_4d_input_are_refused(segmenter: LesionSegmenter, shape, message: str) -> None:
    with pytest.raises(InvalidImageError, match=message):
        segmenter.segment(np.full(shape, -800, np.int16), (10, 10, 30, 30), 0, samples=2)


def test_mr_like_intensities_need_explicit_consent(segmenter: LesionSegmenter) -> None:
    volume = sitk.GetArrayFromImage(synthetic_ct((1, 0, 0, 0, 1, 0, 0, 0, 1), (1.0, 1.0, 1.0))).astype(np.float32) + 1000
    with pytest.raises(InvalidImageError, match="not CT|CT in Hounsfield.*--allow-non-ct"):
        segmenter.segment(volume, (28, 36, 52, 60), 6, samples=2)
    result = segmenter.segment(volume, (28, 36, 52, 60), 6, samples=2, allow_non_ct=True, propagate=False)
    assert result.candidates.shape[0] == 2


def test_next_box_follows_what_a_quarter_of_the_marked_candidates_mark() -> None:
    """Training boxes surround four raters' union; one wide candidate of 16 must not set the next slice's box,
    and empty candidates do not count against the share."""
    probs = np.zeros((16, 64, 64), np.float32)
    probs[:12, 20:30, 20:30] = 1.0  # the lesion, in 12 candidates
    probs[:3, 10:40, 10:40] = 1.0  # three wide ones: 3 of 12 marked = 25 %
    probs[3, 5:50, 5:50] = 1.0  # and one wider still: 1 of 12
    origin = (100, 200)
    box = LesionSegmenter._next_box(_SliceResult(5, origin, probs, np.zeros(16)), (20, 512, 512))
    m = PROPAGATION_MARGIN
    np.testing.assert_array_equal(box, [200 + 10 - m, 100 + 10 - m, 200 + 39 + m, 100 + 39 + m])
    probs[:2] = 0.0  # two of the wide ones vanish: 1 of 10 marked is below a quarter
    box = LesionSegmenter._next_box(_SliceResult(5, origin, probs, np.zeros(16)), (20, 512, 512))
    np.testing.assert_array_equal(box, [200 + 20 - m, 100 + 20 - m, 200 + 29 + m, 100 + 29 + m])


def test_next_box_falls_back_to_the_best_agreement_and_stops_when_all_vanish() -> None:
    probs = np.zeros((6, 64, 64), np.float32)
    for i in range(6):  # six disjoint candidates: every marked pixel has a share of 1/6, below a quarter
        probs[i, 10 * i:10 * i + 5, 20:25] = 1.0
    box = LesionSegmenter._next_box(_SliceResult(0, (0, 0), probs, np.zeros(6)), (1, 512, 512))
    m = PROPAGATION_MARGIN
    np.testing.assert_array_equal(box, [20 - m, 0, 24 + m, 54 + m])
    assert LesionSegmenter._next_box(_SliceResult(0, (0, 0), np.zeros_like(probs), np.zeros(6)), (1, 512, 512)) is None
