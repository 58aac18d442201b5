"""Export to DICOM: a candidate set in the scene as the objects `ambiguous-sam segment --dicom-out` writes.

The scene holds a candidate set as a segmentation (segments tagged by the candidate table: "Candidate 1".."K" with
their scores, and the "Consensus"), a heatmap volume of the entropy of the mean, both on the CT's grid, and the
mean foreground probability over the lesion box, a volume the segmentation references (nodes.py,
createProbabilityVolume; PROBABILITY_REFERENCE_ROLE). They are read back into a LesionResult on the CT volume's
voxels (only the lesion's bounding box), and the core's `write_dicom_outputs` writes, into a folder of their own,
the candidate SEG, the probability (FRACTIONAL) SEG, the uncertainty Parametric Map and its colour presentation
state, each referencing the CT's DICOM series. The probability volume is checked like the heatmap: on the CT's grid
(whole-voxel offset, same axes and spacing), under the CT's transform, values in [0, 1], and its binary entropy
equal to the heatmap (so it is this set's). A set without one (made by an earlier version, or a `.seg.nrrd` loaded
from disk: neither the segments nor the entropy can give the mean probability, which is not the candidates' vote,
and the entropy cannot tell p from 1 - p) still exports the other three files; the returned DicomExport says the
probability SEG was left out and why.

The source images are those of the CT volume. A volume loaded by Slicer's DICOM module
(Modules/Scripted/DICOMPlugins/DICOMScalarVolumePlugin.py, setVolumeNodeProperties) carries the SOP Instance UID of
each slice, in slice order, in its "DICOM.instanceUIDs" attribute, and `slicer.dicomDatabase.fileForInstance(uid)`
gives each file (as DICOMSegmentationPlugin.py's getDICOMFileList does for Slicer's own SEG export). Scripts and
tests without a DICOM database pass the files themselves. Either way the files' positions are checked against the
volume's grid before anything is written, so a SEG can never point at the wrong slices.

Nothing of the user's changes when an export fails: the scene is only read, and the core writes the folder
atomically (complete or not at all).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from AmbiguousSAMLib.candidate_table import CANDIDATE_ROLE, CONSENSUS_ROLE, SCORE_TAG
from AmbiguousSAMLib.errors import (AmbiguousSAMError, CandidateSetError, DicomSourceError, InvalidImageError,
                                    OutputFolderError)
from AmbiguousSAMLib.lesion import LesionResult

from .geometry import checkScalarVolume, ijkToRasMatrix, volumeSpacing
from .nodes import PROBABILITY_ATTRIBUTE, UNCERTAINTY_ATTRIBUTE, candidateSetProbability, segmentIdsWithRole

#: Where Slicer's DICOM scalar volume plugin keeps the SOP Instance UIDs of a volume's slices (in k order).
INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
#: RAS <-> LPS (DICOM's patient coordinates) for a homogeneous 4x4 matrix.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: A source slice may sit this fraction of the smallest voxel size away from the volume's slice (rounding in
#: the readers; a wrong series or a cropped volume is off by whole voxels).
POSITION_TOLERANCE = 0.25
#: The mean probability belongs to the heatmap when its binary entropy is the heatmap's value within this (nats);
#: both come from one float32 array (segmenter.py), so they agree to ~1e-6; another set's differ by tenths.
PROBABILITY_ENTROPY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class DicomExport:
    """What Export to DICOM wrote: the folder, the names of the files in it, and each object left out with why."""

    folder: Path
    files: tuple[str, ...]
    #: File name -> the reason it was not written (the probability SEG of a set that keeps no mean probability).
    leftOut: dict[str, str] = field(default_factory=dict)


def candidateSetVolume(segmentationNode: slicer.vtkMRMLSegmentationNode) -> slicer.vtkMRMLScalarVolumeNode | None:
    """The volume a candidate set was computed on, as the segmentation references it (its reference image
    geometry, set by SetReferenceImageGeometryParameterFromVolumeNode when the candidates were made); None for a
    set loaded from a file."""
    if segmentationNode is None:
        return None
    return segmentationNode.GetNodeReference(slicer.vtkMRMLSegmentationNode.GetReferenceImageGeometryReferenceRole())


def exportCandidateSetToDicom(segmentationNode: slicer.vtkMRMLSegmentationNode,
                              heatmapNode: slicer.vtkMRMLScalarVolumeNode,
                              volumeNode: slicer.vtkMRMLScalarVolumeNode | None, folder: str | os.PathLike,
                              sourceFiles: Sequence[str | os.PathLike] | None = None,
                              overwrite: bool = False) -> DicomExport:
    """Write the candidate set as DICOM objects that reference the CT's series into `folder`; returns what was
    written (DicomExport: the folder, its files, and the probability SEG's reason when it was left out).

    `volumeNode` is the CT the candidates were computed on (None: the one the segmentation references).
    `sourceFiles` are the CT series' DICOM files, in any order (None: found through Slicer's DICOM database from
    the volume's "DICOM.instanceUIDs"). `folder` must be new or empty; with `overwrite`, a folder holding only an
    earlier export's files is replaced. Raises DicomSourceError, CandidateSetError, OutputFolderError (all
    AmbiguousSAMError) with what to do; the scene and the folder are unchanged then.
    """
    if segmentationNode is None or not segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE):
        raise CandidateSetError("Select a candidate set (a segmentation made by Ambiguous SAM) to export.")
    volumeNode = volumeNode if volumeNode is not None else candidateSetVolume(segmentationNode)
    if volumeNode is None:
        raise CandidateSetError(f"Which CT is '{segmentationNode.GetName()}' on? Select the CT volume the "
                                "candidates were computed on.")
    checkScalarVolume(volumeNode)
    folder = Path(folder)
    checkExportFolder(folder, overwrite)
    files = [str(name) for name in sourceFiles] if sourceFiles is not None else sourceDicomFiles(volumeNode)
    checkFolderHoldsNoSource(folder, files)
    try:
        from AmbiguousSAMLib.dicom_export import (DICOM_FILES, PROBABILITY_FILE, read_source_datasets, slice_order,
                                                  write_dicom_outputs)
    except ImportError as error:
        raise AmbiguousSAMError(f"Export to DICOM needs the Python package highdicom ({error}). Install it from "
                                "Slicer's Python console: slicer.util.pip_install('highdicom')") from error
    datasets = readSourceDatasets(read_source_datasets, volumeNode, files)
    probabilityNode = candidateSetProbability(segmentationNode)
    result = candidateSetResult(segmentationNode, heatmapNode, volumeNode, probabilityNode)
    try:
        ordered = slice_order(datasets, result)
    except InvalidImageError as error:
        raise DicomSourceError(f"The DICOM files are not the images of '{volumeNode.GetName()}': {error}") from error
    checkSourceGeometry(volumeNode, ordered)
    withProbability = probabilityNode is not None
    written = write_dicom_outputs(folder, result, ordered, overwrite=overwrite, probability=withProbability)
    leftOut = {} if withProbability else {PROBABILITY_FILE: (
        f"The probability SEG ({PROBABILITY_FILE}) was left out: '{segmentationNode.GetName()}' keeps no mean "
        "probability (a set loaded from a file or made by an earlier version of Ambiguous SAM, or its mean "
        "probability volume was deleted); run the segmentation again to export it.")}
    return DicomExport(Path(written), tuple(name for name in DICOM_FILES if name not in leftOut), leftOut)


def checkExportFolder(folder: Path, overwrite: bool) -> None:
    """Refuse a folder that is a file, or one that already holds anything (unless overwrite: the core then
    accepts only its own files there)."""
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"{folder} is a file; choose a folder (new or empty) for the DICOM files.")
    if folder.is_dir() and not overwrite:
        entries = sorted(entry.name for entry in folder.iterdir())
        if entries:
            shown = ", ".join(entries[:3]) + (f" and {len(entries) - 3} more" if len(entries) > 3 else "")
            raise OutputFolderError(f"The folder {folder} is not empty ({shown}). The DICOM files go into a folder "
                                    "of their own: choose an empty folder, or make a new one.")


def checkFolderHoldsNoSource(folder: Path, files: Sequence[str]) -> None:
    """The export never goes into the folder of the CT's own images (nor one above it)."""
    target = folder.absolute()
    for name in files:
        if target == Path(name).absolute().parent or target in Path(name).absolute().parents:
            raise OutputFolderError(f"The folder {folder} holds the CT's own DICOM images ({Path(name).name}); "
                                    "choose a folder of their own for the exported objects.")


def sourceDicomFiles(volumeNode: slicer.vtkMRMLScalarVolumeNode) -> list[str]:
    """The DICOM file of each slice of a volume that Slicer's DICOM module loaded, from its DICOM database."""
    name = volumeNode.GetName()
    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        raise DicomSourceError(f"'{name}' was not loaded from DICOM, so there is no DICOM series for the export to "
                               "reference. Load the CT through the DICOM module to export DICOM.")
    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not getattr(database, "isOpen", True):
        raise DicomSourceError(f"Slicer's DICOM database is not open, so the DICOM files of '{name}' cannot be found. "
                               "Open the DICOM module (it opens the database) and export again.")
    files = [database.fileForInstance(uid) if uid != "Unknown" else "" for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path or not os.path.isfile(path)]
    if missing:
        raise DicomSourceError(f"{len(missing)} of the {len(uids)} images of '{name}' are no longer in the DICOM "
                               f"database or on disk (first: {missing[0]}). Import the CT series into the DICOM "
                               "database again, load it from there, and export.")
    return files


def readSourceDatasets(read, volumeNode: slicer.vtkMRMLScalarVolumeNode, files: list[str]) -> list:
    """The files' headers, checked to be one file per slice of the volume and, when the volume knows its images
    ("DICOM.instanceUIDs"), to be those images."""
    name = volumeNode.GetName()
    missing = [path for path in files if not os.path.isfile(path)]
    if missing:
        raise DicomSourceError(f"{len(missing)} of the {len(files)} DICOM files given do not exist (first: "
                               f"{missing[0]}).")
    slices = volumeNode.GetImageData().GetDimensions()[2]
    if len(files) != slices:
        raise DicomSourceError(f"'{name}' has {slices} slices but {len(files)} DICOM files were given or found; the "
                               "export needs one file per slice of the CT series (a multi-frame CT is not supported).")
    try:
        datasets = read(files)
    except Exception as error:  # pydicom's InvalidDicomError, an unreadable file
        raise DicomSourceError(f"Could not read the CT's DICOM files ({error}).") from error
    known = set((volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()) - {"Unknown"}
    given = {str(getattr(dataset, "SOPInstanceUID", "")) for dataset in datasets}
    if known and given != known:
        raise DicomSourceError(f"The DICOM files given are not the images '{name}' was loaded from "
                               f"({len(given - known)} of them are other images); give the files of its series.")
    return datasets


def checkSourceGeometry(volumeNode: slicer.vtkMRMLScalarVolumeNode, datasets: list) -> None:
    """Each source slice (in slice order) must lie on the volume's slice k, with its row and column directions
    and pixel spacing: the SEG's frames are placed on the images it names."""
    ijkToLps = RAS_TO_LPS @ ijkToRasMatrix(volumeNode)
    spacing = volumeSpacing(volumeNode)
    tolerance = POSITION_TOLERANCE * min(spacing)
    directions = ijkToLps[:3, :3] / np.asarray(spacing)
    for k, dataset in enumerate(datasets):
        expected = (ijkToLps @ np.array([0.0, 0.0, k, 1.0]))[:3]
        position = np.asarray(dataset.ImagePositionPatient, dtype=np.float64)
        orientation = np.asarray(dataset.ImageOrientationPatient, dtype=np.float64)
        rowSpacing, columnSpacing = (float(value) for value in dataset.PixelSpacing)
        if (np.linalg.norm(position - expected) > tolerance
                or not np.allclose(orientation, np.concatenate([directions[:, 0], directions[:, 1]]), atol=1e-4)
                or abs(columnSpacing - spacing[0]) > 1e-3 * spacing[0]
                or abs(rowSpacing - spacing[1]) > 1e-3 * spacing[1]):
            raise DicomSourceError(
                f"The DICOM image {getattr(dataset, 'SOPInstanceUID', '?')} does not lie on slice {k} of "
                f"'{volumeNode.GetName()}' (it is at {np.round(position, 2).tolist()} mm LPS, the slice at "
                f"{np.round(expected, 2).tolist()}): the volume was resampled, cropped or moved since it was loaded, "
                "or the files are of another series. Export from the CT as the DICOM module loaded it.")


def candidateSetResult(segmentationNode: slicer.vtkMRMLSegmentationNode,
                       heatmapNode: slicer.vtkMRMLScalarVolumeNode,
                       volumeNode: slicer.vtkMRMLScalarVolumeNode,
                       probabilityNode: slicer.vtkMRMLScalarVolumeNode | None = None) -> LesionResult:
    """The candidate set read back from the scene on the volume's grid: the candidates, the consensus and their
    scores from the tagged segments, the entropy from the heatmap, the mean probability from `probabilityNode`,
    over the box that holds all of them.

    The scene keeps no mutual information, and a set without a probability volume no mean probability: those
    arrays are NaN (the export leaves out the object that would need them).
    """
    name = segmentationNode.GetName()
    candidateIds = segmentIdsWithRole(segmentationNode, CANDIDATE_ROLE)
    consensusIds = segmentIdsWithRole(segmentationNode, CONSENSUS_ROLE)
    if not candidateIds or len(consensusIds) != 1:
        raise CandidateSetError(f"'{name}' holds {len(candidateIds)} candidates and {len(consensusIds)} consensus "
                                "segments; a candidate set has at least one candidate and one consensus. Run the "
                                "segmentation again to export it.")
    scores = np.array([segmentScore(segmentationNode, segmentId) for segmentId in candidateIds], dtype=np.float32)
    checkHeatmap(heatmapNode, volumeNode)
    for node in (segmentationNode, heatmapNode):
        if not sameParentTransform(node, volumeNode):
            raise CandidateSetError(f"'{node.GetName()}' and '{volumeNode.GetName()}' are under different transforms; "
                                    "put them under the same one (or none) to export.")
    shape = tuple(reversed(volumeNode.GetImageData().GetDimensions()))
    blocks = [segmentVoxels(segmentationNode, segmentId, volumeNode) for segmentId in [*candidateIds, *consensusIds]]
    probability = probabilityVoxels(probabilityNode, volumeNode) if probabilityNode is not None else None
    entropy = slicer.util.arrayFromVolume(heatmapNode)
    extra = [] if probability is None else [nonzeroBlock(*probability)]
    low, high = unionBox([block for block in [*blocks, *extra] if block is not None], entropy, shape)
    if low is None:
        raise CandidateSetError(f"Every segment of '{name}' is empty and its heatmap is zero: there is nothing to "
                                "export.")
    masks = np.zeros((len(blocks), *(high - low)), dtype=bool)
    for index, block in enumerate(blocks):
        if block is not None:
            start, mask = block
            at = np.asarray(start) - low
            masks[index, at[0]:at[0] + mask.shape[0], at[1]:at[1] + mask.shape[1], at[2]:at[2] + mask.shape[2]] = mask
    box = tuple(slice(int(a), int(b)) for a, b in zip(low, high))
    boxEntropy = np.array(entropy[box], dtype=np.float32)
    if not np.isfinite(boxEntropy).all():
        raise CandidateSetError(f"The heatmap '{heatmapNode.GetName()}' holds values that are not numbers; it is not "
                                "an Ambiguous SAM uncertainty map.")
    candidates = masks[:-1]
    disagree = candidates.any(axis=0) & ~candidates.all(axis=0)
    if (boxEntropy[disagree] <= 0).any():
        raise CandidateSetError(f"The heatmap '{heatmapNode.GetName()}' is not the uncertainty of '{name}': it is zero "
                                "where the candidates disagree. Select the heatmap made with these candidates.")
    unknown = np.full(boxEntropy.shape, np.nan, dtype=np.float32)
    mean = unknown
    if probability is not None:
        mean = placeInBox(*probability, low, high)
        difference = np.abs(binaryEntropy(mean) - boxEntropy).max()
        if difference > PROBABILITY_ENTROPY_TOLERANCE:
            raise CandidateSetError(f"The mean probability '{probabilityNode.GetName()}' is not that of the heatmap "
                                    f"'{heatmapNode.GetName()}' (their entropies differ by up to {difference:.3f} "
                                    "nats). Select the heatmap made with these candidates, or delete the probability "
                                    "volume to export without the probability SEG.")
    return LesionResult(candidates=candidates, consensus=masks[-1], mean_probability=mean, entropy=boxEntropy,
                        mutual_information=unknown, scores=scores, offset=tuple(int(v) for v in low),
                        volume_shape=shape, info={"samples": len(candidateIds)})


def probabilityVoxels(probabilityNode: slicer.vtkMRMLScalarVolumeNode, volumeNode: slicer.vtkMRMLScalarVolumeNode
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The mean probability on the volume's grid: (k0, j0, i0) and its (dk, dj, di) float32 block, checked to be
    an Ambiguous SAM probability volume on that grid (whole-voxel offset, same axes and spacing, inside the CT),
    under the CT's transform, with values in [0, 1]."""
    name, ct = probabilityNode.GetName(), volumeNode.GetName()
    leaveOut = "delete it to export the other objects without the probability SEG"
    imageData = probabilityNode.GetImageData()
    if (probabilityNode.GetAttribute(PROBABILITY_ATTRIBUTE) != "1" or not probabilityNode.IsA("vtkMRMLScalarVolumeNode")
            or imageData is None or imageData.GetNumberOfPoints() == 0
            or imageData.GetNumberOfScalarComponents() != 1):
        raise CandidateSetError(f"'{name}' is not an Ambiguous SAM mean probability volume; run the segmentation "
                                f"again, or {leaveOut}.")
    if not sameParentTransform(probabilityNode, volumeNode):
        raise CandidateSetError(f"'{name}' and '{ct}' are under different transforms; put them under the same one "
                                "(or none) to export.")
    toVolume = np.linalg.inv(ijkToRasMatrix(volumeNode)) @ ijkToRasMatrix(probabilityNode)
    shift = np.round(toVolume[:3, 3])
    voxels = np.array(slicer.util.arrayFromVolume(probabilityNode), dtype=np.float32)
    start = shift[::-1].astype(int)  # (i, j, k) -> (k, j, i)
    shape = np.array(tuple(reversed(volumeNode.GetImageData().GetDimensions())))
    if (not np.allclose(toVolume[:3, :3], np.eye(3), atol=1e-4) or not np.allclose(toVolume[:3, 3], shift, atol=1e-3)
            or (start < 0).any() or (start + voxels.shape > shape).any()):
        raise CandidateSetError(f"The mean probability '{name}' is not on the grid of '{ct}' (it was resampled or "
                                f"moved); run the segmentation again, or {leaveOut}.")
    if not np.isfinite(voxels).all() or voxels.min() < 0.0 or voxels.max() > 1.0:
        raise CandidateSetError(f"'{name}' holds values outside 0..1; it is not a mean probability. Run the "
                                f"segmentation again, or {leaveOut}.")
    return start, voxels


def sameParentTransform(node: slicer.vtkMRMLTransformableNode, other: slicer.vtkMRMLTransformableNode) -> bool:
    """Whether two nodes are under the same transform (or none). GetParentTransformNode, not GetTransformNodeID,
    which bumps a transformed node's modification time (the export only reads the scene)."""
    ids = [parent.GetID() if parent is not None else None
           for parent in (node.GetParentTransformNode(), other.GetParentTransformNode())]
    return ids[0] == ids[1]


def nonzeroBlock(start: np.ndarray, voxels: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The (start, array) of a block cropped to its non-zero voxels, or None when it has none."""
    spans = [np.flatnonzero((voxels != 0).any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if not all(len(span) for span in spans):
        return None
    low = np.array([span[0] for span in spans])
    high = np.array([span[-1] + 1 for span in spans])
    return start + low, voxels[tuple(slice(a, b) for a, b in zip(low, high))]


def placeInBox(start: np.ndarray, voxels: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """The block's values over the box [low, high), zero where the block does not reach."""
    box = np.zeros(tuple(high - low), dtype=np.float32)
    a, b = np.maximum(start, low), np.minimum(start + voxels.shape, high)
    if (a < b).all():
        box[tuple(slice(x, y) for x, y in zip(a - low, b - low))] = \
            voxels[tuple(slice(x, y) for x, y in zip(a - start, b - start))]
    return box


def binaryEntropy(probability: np.ndarray) -> np.ndarray:
    """-(p ln p + (1 - p) ln(1 - p)) in nats, 0 at p = 0 and 1 (as uncertainty.py's, without scipy)."""
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0) + np.where(p < 1, (1 - p) * np.log1p(-p), 0.0)
    return -terms


def segmentScore(segmentationNode: slicer.vtkMRMLSegmentationNode, segmentId: str) -> float:
    """A candidate's score from its tag (the mean 3D IoU with the other candidates)."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
    value = vtk.reference("")
    try:
        if not segment.GetTag(SCORE_TAG, value):
            raise ValueError("no score tag")
        return float(str(value))
    except ValueError:
        raise CandidateSetError(f"The candidate '{segment.GetName()}' of '{segmentationNode.GetName()}' has no score "
                                f"({SCORE_TAG} tag); run the segmentation again to export it.") from None


def checkHeatmap(heatmapNode: slicer.vtkMRMLScalarVolumeNode | None,
                 volumeNode: slicer.vtkMRMLScalarVolumeNode) -> None:
    """The heatmap must be an uncertainty volume (entropy) on exactly the CT's grid."""
    if heatmapNode is None:
        raise CandidateSetError("Select the candidates' uncertainty heatmap; it goes into the DICOM export as a "
                                "parametric map.")
    checkScalarVolume(heatmapNode)
    kind = heatmapNode.GetAttribute(UNCERTAINTY_ATTRIBUTE)
    if kind not in (None, "entropy"):
        raise CandidateSetError(f"'{heatmapNode.GetName()}' holds the {kind}, not the entropy; select the entropy "
                                "heatmap.")
    if (heatmapNode.GetImageData().GetDimensions() != volumeNode.GetImageData().GetDimensions()
            or not np.allclose(ijkToRasMatrix(heatmapNode), ijkToRasMatrix(volumeNode), atol=1e-6)):
        raise CandidateSetError(f"The heatmap '{heatmapNode.GetName()}' is not on the grid of "
                                f"'{volumeNode.GetName()}'; select the heatmap made with these candidates, on this CT.")


def gridShift(labelmap: slicer.vtkOrientedImageData, volumeMatrix: np.ndarray) -> np.ndarray | None:
    """The whole-voxel shift from the labelmap's IJK to the volume's, or None when their grids differ."""
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    toVolume = np.linalg.inv(volumeMatrix) @ slicer.util.arrayFromVTKMatrix(matrix)
    shift = np.round(toVolume[:3, 3])
    if np.allclose(toVolume[:3, :3], np.eye(3), atol=1e-4) and np.allclose(toVolume[:3, 3], shift, atol=1e-3):
        return shift.astype(int)
    return None


def segmentVoxels(segmentationNode: slicer.vtkMRMLSegmentationNode, segmentId: str,
                  volumeNode: slicer.vtkMRMLScalarVolumeNode) -> tuple[np.ndarray, np.ndarray] | None:
    """The segment's voxels on the volume's grid: (k0, j0, i0) and a (dk, dj, di) mask over its effective extent,
    or None when it is empty. A labelmap on another grid (edited with an oversampled geometry) is resampled onto
    the volume's, nearest neighbour."""
    name = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
    labelmap = slicer.vtkOrientedImageData()
    if not segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap):  # 0/1, in the node's own frame
        raise CandidateSetError(f"The segment '{name}' has no binary labelmap; it cannot be exported.")
    if labelmap.GetPointData().GetScalars() is None:
        return None
    volumeMatrix = ijkToRasMatrix(volumeNode)
    shift = gridShift(labelmap, volumeMatrix)
    if shift is None:
        resampled = slicer.vtkOrientedImageData()
        if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceGeometry(
                labelmap, slicer.util.vtkMatrixFromArray(volumeMatrix), resampled, False):
            raise CandidateSetError(f"The segment '{name}' could not be resampled onto the CT's grid.")
        labelmap, shift = resampled, gridShift(resampled, volumeMatrix)
        if shift is None or labelmap.GetPointData().GetScalars() is None:
            raise CandidateSetError(f"The segment '{name}' could not be resampled onto the CT's grid.")
    effective = [0, -1, 0, -1, 0, -1]
    if not slicer.vtkOrientedImageDataResample.CalculateEffectiveExtent(labelmap, effective) \
            or effective[0] > effective[1] or effective[2] > effective[3] or effective[4] > effective[5]:
        return None
    whole = labelmap.GetExtent()
    dimensions = labelmap.GetDimensions()
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()).reshape(tuple(reversed(dimensions)))
    i0, i1, j0, j1, k0, k1 = effective
    mask = voxels[k0 - whole[4]:k1 - whole[4] + 1, j0 - whole[2]:j1 - whole[2] + 1,
                  i0 - whole[0]:i1 - whole[0] + 1] != 0
    start = np.array([k0 + shift[2], j0 + shift[1], i0 + shift[0]])
    shape = np.array(tuple(reversed(volumeNode.GetImageData().GetDimensions())))
    if (start < 0).any() or (start + mask.shape > shape).any():
        raise CandidateSetError(f"The segment '{name}' reaches beyond the CT '{volumeNode.GetName()}'; DICOM "
                                "segmentations hold only voxels on the CT's images.")
    return start, mask


def unionBox(blocks: list[tuple[np.ndarray, np.ndarray]], entropy: np.ndarray, shape: tuple[int, int, int]
             ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """[low, high) in (k, j, i) holding every segment's voxels and every non-zero heatmap voxel."""
    lows = [start for start, _ in blocks]
    highs = [start + np.array(mask.shape) for start, mask in blocks]
    nonzero = entropy != 0
    spans = [np.flatnonzero(nonzero.any(axis=tuple(a for a in range(3) if a != axis))) for axis in range(3)]
    if all(len(span) for span in spans):
        lows.append(np.array([span[0] for span in spans]))
        highs.append(np.array([span[-1] + 1 for span in spans]))
    if not lows:
        return None, None
    return np.min(lows, axis=0), np.minimum(np.max(highs, axis=0), shape)
