"""Shared test setup: the module folder on sys.path, a headless MRML scene, test volumes and the LIDC demo CT.

The packages live inside the Slicer module folder (AmbiguousSAM/), where Slicer finds them; tests import them the
same way, by putting that folder first on sys.path. `slicer` (the slicer-core wheel) is imported inside the
fixtures only, so test files that do not touch MRML do not pay for loading it.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np
import pytest

if TYPE_CHECKING:
    import slicer

REPOSITORY = Path(__file__).resolve().parents[1]
MODULE_DIR = REPOSITORY / "AmbiguousSAM"
sys.path.insert(0, str(MODULE_DIR))

from AmbiguousSAMLib.lesion import LesionResult  # noqa: E402  (needs MODULE_DIR on sys.path)

#: Real LIDC-IDRI data, kept outside the repository (see shared/data/README.md); absent in a user's fresh clone.
SHARED_DATA = REPOSITORY.parent / "shared" / "data"
LIDC_DEMO_CT = SHARED_DATA / "lidc-volumes" / "LIDC-IDRI-0001" / "ct.nrrd"
LIDC_VAL_CROPS = SHARED_DATA / "lidc-crops" / "val.npz"


def val_embedding_cache(folder: Path, count: int, encoded: int | None = None):
    """An embedding cache of the first `count` marked validation crops (shifted by up to 4 px, as training
    shifts them), the first `encoded` of them (default all) encoded, for tests of training and gate fitting;
    skips where the shared data is absent."""
    if not LIDC_VAL_CROPS.is_file():
        pytest.skip(f"LIDC crops are not at {LIDC_VAL_CROPS} (shared data absent in this checkout)")
    from AmbiguousSAMLib.crops import rows_with_raters
    from AmbiguousSAMLib.predictor import Predictor
    from AmbiguousSAMLib.training.embedding_cache import EmbeddingCache

    with np.load(LIDC_VAL_CROPS) as data:
        rows = rows_with_raters(data["masks"])[:count]
    cache = EmbeddingCache(folder)
    cache.build(LIDC_VAL_CROPS, rows, Predictor(device="cpu", precision="bf16", window=None), max_shift=4,
                limit=encoded)
    return cache

@pytest.fixture(scope="module")
def backbone():
    """LiteMedSAM, built once per test module (heads copy its prompt encoder and decoder)."""
    from AmbiguousSAMLib.modeling.backbone import build_backbone

    return build_backbone()


@pytest.fixture(scope="module")
def embedding():
    """A seeded random (1, 256, 64, 64) image embedding: heads' arithmetic without an encoder pass."""
    import torch

    return torch.randn((1, 256, 64, 64), generator=torch.Generator().manual_seed(0))


#: An oblique, anisotropic grid like a tilted-gantry CT: axes rotated 30 degrees about S and then 15 degrees
#: about R, 0.7 x 0.9 x 2.5 mm voxels, so every RAS <-> IJK mistake (axis order, transposition, spacing) shows.
OBLIQUE_SPACING = (0.7, 0.9, 2.5)
OBLIQUE_ORIGIN = (-120.5, 30.25, 55.0)
OBLIQUE_SHAPE = (24, 40, 48)  # (k, j, i)


def obliqueDirections() -> np.ndarray:
    """3x3 matrix whose columns are the RAS directions of the volume's i, j and k axes."""
    a, b = np.radians(30.0), np.radians(15.0)
    aboutS = np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])
    aboutR = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(b), -np.sin(b)], [0.0, np.sin(b), np.cos(b)]])
    return aboutR @ aboutS


def obliqueIjkToRas() -> np.ndarray:
    """The oblique volume's IJK-to-RAS matrix written out from its parts: [directions * spacing | origin]."""
    matrix = np.eye(4)
    matrix[:3, :3] = obliqueDirections() @ np.diag(OBLIQUE_SPACING)
    matrix[:3, 3] = OBLIQUE_ORIGIN
    return matrix


@pytest.fixture
def oblique_ijk_to_ras() -> np.ndarray:
    return obliqueIjkToRas()


@pytest.fixture
def mrml_scene() -> Iterator[slicer.vtkMRMLScene]:
    """A fresh MRML scene set up as Slicer's application does, without Qt (slicer-core wheel).

    `slicer.util` expects `slicer.mrmlScene` and `slicer.modules.<name>.logic()`. The module logics are given the
    scene and an application logic (the colours logic must be registered for volumes to get default colour
    nodes, the segmentations logic before any segment is added) and are kept referenced until the test ends:
    the application logic does not own them, and once garbage-collected the scene loses their nodes.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    applicationLogic = slicer.vtkSlicerApplicationLogic()
    applicationLogic.SetMRMLScene(scene)
    moduleLogics = {}
    for attribute, moduleName, logicClass in (
        ("colors", "Colors", slicer.vtkSlicerColorLogic),
        ("volumes", "Volumes", slicer.vtkSlicerVolumesLogic),
        ("segmentations", "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
        ("markups", "Markups", slicer.vtkSlicerMarkupsLogic),
    ):
        logic = logicClass()
        logic.SetMRMLApplicationLogic(applicationLogic)
        logic.SetMRMLScene(scene)
        applicationLogic.SetModuleLogic(moduleName, logic)
        moduleLogics[attribute] = logic
    previous = {name: getattr(slicer, name, None) for name in ("mrmlScene", "modules")}
    slicer.mrmlScene = scene
    slicer.modules = types.SimpleNamespace(
        **{name: types.SimpleNamespace(logic=lambda logic=logic: logic) for name, logic in moduleLogics.items()})
    yield scene
    scene.Clear(True)
    for name, value in previous.items():
        setattr(slicer, name, value)


@pytest.fixture
def oblique_volume(mrml_scene):
    """A small int16 CT-like volume (a 40 HU ball in -800 HU lung) on the oblique anisotropic grid.

    Its geometry is set the way a DICOM reader sets it (origin, spacing, direction cosines separately), so tests
    can compare the matrices the logic derives with `obliqueIjkToRas()`.
    """
    import slicer

    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Oblique CT")
    volume.SetOrigin(*OBLIQUE_ORIGIN)
    volume.SetSpacing(*OBLIQUE_SPACING)
    directions = np.eye(4)
    directions[:3, :3] = obliqueDirections()
    volume.SetIJKToRASDirectionMatrix(slicer.util.vtkMatrixFromArray(directions))
    k, j, i = np.indices(OBLIQUE_SHAPE)
    voxels = np.full(OBLIQUE_SHAPE, -800, dtype=np.int16)
    voxels[((k - 12) * 2.5) ** 2 + ((j - 20) * 0.9) ** 2 + ((i - 24) * 0.7) ** 2 < 8.0 ** 2] = 40
    slicer.util.updateVolumeFromArray(volume, voxels)
    volume.CreateDefaultDisplayNodes()
    return volume


@pytest.fixture
def make_lesion_result() -> Callable[..., LesionResult]:
    """Build a LesionResult by hand: K nested ellipsoidal candidates in a lesion box of a volume.

    Real arrays shaped as the core returns them, so the MRML layer is tested without running a model.
    """

    def build(volumeShape: tuple[int, int, int], offset: tuple[int, int, int] = (8, 12, 15),
              boxShape: tuple[int, int, int] = (7, 15, 17), radii: tuple[float, ...] = (2.0, 3.5, 5.0, 6.5)
              ) -> LesionResult:
        k, j, i = np.indices(boxShape)
        centre = [(size - 1) / 2 for size in boxShape]
        distance = np.sqrt(((k - centre[0]) * 2.0) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2)
        candidates = np.stack([distance < radius for radius in radii])
        mean = candidates.mean(axis=0).astype(np.float32)
        inside = np.clip(mean, 1e-7, 1 - 1e-7)
        entropy = np.where((mean > 0) & (mean < 1), -(inside * np.log(inside) + (1 - inside) * np.log(1 - inside)),
                           0.0).astype(np.float32)
        return LesionResult(candidates=candidates, consensus=mean > 0.5, mean_probability=mean, entropy=entropy,
                            mutual_information=entropy.copy(),
                            scores=np.linspace(0.9, 0.6, len(radii)).astype(np.float32), offset=offset,
                            volume_shape=volumeShape, info={"source": "hand-built test data"})

    return build


@pytest.fixture
def lidc_ct_path() -> Path:
    """The LIDC-IDRI-0001 chest CT, or a skip with the reason when the shared data is not there."""
    if not LIDC_DEMO_CT.is_file():
        pytest.skip(f"LIDC-IDRI demo CT not found at {LIDC_DEMO_CT}; it lives outside the repository "
                    "(shared/data, see its README) and is absent in a fresh clone.")
    return LIDC_DEMO_CT


@pytest.fixture
def lidc_ct_node(mrml_scene, lidc_ct_path):
    """The LIDC-IDRI-0001 CT read into the scene by a storage node, as Slicer's "Add data" does (LPS -> RAS)."""
    volume = mrml_scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "LIDC-IDRI-0001")
    storage = mrml_scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(lidc_ct_path))
    volume.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(volume), f"Could not read {lidc_ct_path}"
    volume.CreateDefaultDisplayNodes()
    return volume
