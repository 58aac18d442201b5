"""DICOM out: one lesion's result as standard objects that reference the CT series it was segmented on.

A PACS, OHIF or Slicer's DICOM browser shows these next to the CT, and a later reader finds which images, study
and frame of reference they belong to. Everything is built by `highdicom` (which knows the IODs' rules), never
by hand:

- `candidates.seg.dcm`: a BINARY Segmentation, one segment per candidate and one for the consensus (they
  overlap, which a label map could not hold), coded as a lung nodule (SNOMED CT), identified as AmbiguousSAM's
  output (version, head, backbone, seed), each candidate's score in its segment description, its colour that of
  the candidate table;
- `probability.seg.dcm`: a FRACTIONAL (PROBABILITY) Segmentation of the mean foreground probability;
- `uncertainty.pm.dcm`: a Parametric Map of the entropy of the mean (nats), stored as 16-bit integers with a
  real-world value mapping to nats (DICOM palettes index integers);
- `uncertainty-colours.pr.dcm`: a Pseudo-Colour Softcopy Presentation State that shows the map through the
  heatmap's palette (inferno, 0 to ln 2 nats). highdicom can put that palette into the map itself, but the result
  fails dciodvfy (it lacks the Stored Value Color Range and ICC profile that COLOR_RANGE needs, and dciodvfy then
  still refuses the palette attributes there); a presentation state is DICOM's separate object for "show these
  images in these colours", and validates.

Only the slices the lesion spans are stored (the rest is empty by construction), each on the CT's full slice
grid, so every frame lies exactly on a source image and names it. The files are written into a temporary folder
that is renamed into place (`outputs.write_folder_atomically`): a failure leaves no partial DICOM files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from . import __version__
from .candidate_table import CANDIDATE_ROLE, candidate_table, format_score
from .errors import AmbiguousSAMError, InvalidImageError
from .heatmap_colours import MAX_ENTROPY_NATS, heatmap_colour_table
from .lesion import LesionResult
from .outputs import check_output_folder, write_folder_atomically

SEGMENTATION_FILE = "candidates.seg.dcm"
PROBABILITY_FILE = "probability.seg.dcm"
UNCERTAINTY_FILE = "uncertainty.pm.dcm"
COLOURS_FILE = "uncertainty-colours.pr.dcm"
#: Everything `write_dicom_outputs` writes into its folder, and therefore all that overwrite may replace.
DICOM_FILES = (SEGMENTATION_FILE, PROBABILITY_FILE, UNCERTAINTY_FILE, COLOURS_FILE)

#: Stored value of the largest entropy (ln 2 nats): 12 bits resolve 0.00017 nats, finer than any K can tell
#: apart (the entropy of 1 vote in 256 is 0.02 nats), and the palette stays a small 4096-entry table.
UNCERTAINTY_LEVELS = 4095
#: What the parametric map's values are: a code of this project's own (DICOM has none for Shannon entropy),
#: from a private coding scheme that the map declares.
PRIVATE_SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem("99AMBIGUOUSSAM", name="AmbiguousSAM codes")
ENTROPY_CONCEPT = hd.sr.CodedConcept("ENTROPY", "99AMBIGUOUSSAM", "Entropy of the mean foreground probability")
#: The unit of information in base e; UCUM has no "nat", so it is an annotation of the unit 1, as UCUM allows.
NAT_UNIT = hd.sr.CodedConcept("{nat}", "UCUM", "nat")
#: Series numbers of the objects (one series each: a series holds one modality).
SERIES_NUMBERS = {SEGMENTATION_FILE: 901, PROBABILITY_FILE: 902, UNCERTAINTY_FILE: 903, COLOURS_FILE: 904}
MANUFACTURER = "AmbiguousSAM project"


def read_source_datasets(files: Sequence[str | Path]) -> list[pydicom.Dataset]:
    """The headers of the source series' files (what the objects reference; their pixels are not needed)."""
    return [pydicom.dcmread(str(name), stop_before_pixels=True) for name in files]


def check_dicom_output(dicom_out: str | Path, source: str | Path, out: str | Path | None = None,
                       overwrite: bool = False) -> None:
    """Refuse a DICOM output request before any model work: the input must be a DICOM folder, and the DICOM
    folder follows the rules of every output folder (new, or holding only our files with overwrite); it must not
    share a folder with the other outputs `out`, whose --overwrite would otherwise meet foreign files."""
    source, dicom_out = Path(source), Path(dicom_out)
    if not source.is_dir():
        raise AmbiguousSAMError(f"--dicom-out needs a DICOM series as input, to reference its images; {source} is a "
                                "file. Point to the folder of the CT's DICOM series, or leave out --dicom-out.")
    if out is not None:
        a, b = Path(out).absolute(), dicom_out.absolute()
        if a == b or a in b.parents or b in a.parents:
            raise AmbiguousSAMError(f"--dicom-out {dicom_out} and -o {out} overlap; give the DICOM files a folder "
                                    f"of their own, e.g. {Path(out).absolute().parent / 'dicom'}.")
    check_output_folder(dicom_out, overwrite, source, DICOM_FILES)


def write_dicom_outputs(out: str | Path, result: LesionResult, source_datasets: Sequence[pydicom.Dataset],
                        overwrite: bool = False, source: str | Path | None = None, probability: bool = True) -> Path:
    """Write the candidate SEG, the probability SEG, the uncertainty map and its colours into the folder `out`.

    `source_datasets` are the CT series the result was computed on (headers suffice), in any order: they are put
    in slice order along the slice normal, the k order of SimpleITK's and Slicer's DICOM readers, which must have
    produced the result's (k, j, i) arrays. `source` (the input folder) is never written into. `probability=False`
    leaves the probability SEG out (and `result.mean_probability` unread): a candidate set in Slicer's scene that
    keeps no mean-probability volume (opened from a .seg.nrrd, or made by an earlier version;
    AmbiguousSAMLogic/dicomexport.py); an earlier probability SEG in `out` is then not ours to replace, and is
    refused like any other file.
    """
    datasets = slice_order(source_datasets, result)
    names = DICOM_FILES if probability else tuple(name for name in DICOM_FILES if name != PROBABILITY_FILE)

    def write(staging: Path) -> None:
        candidate_segmentation(result, datasets).save_as(staging / SEGMENTATION_FILE)
        if probability:
            probability_segmentation(result, datasets).save_as(staging / PROBABILITY_FILE)
        heatmap = uncertainty_map(result, datasets)
        heatmap.save_as(staging / UNCERTAINTY_FILE)
        uncertainty_colours(heatmap).save_as(staging / COLOURS_FILE)

    return write_folder_atomically(out, names, write, overwrite, source)


def slice_order(datasets: Sequence[pydicom.Dataset], result: LesionResult) -> list[pydicom.Dataset]:
    """The source slices sorted along their normal, checked to be the one series and grid the result is on."""
    if not datasets:
        raise InvalidImageError("No source DICOM images were given; DICOM outputs reference the CT series the "
                                "result was computed on.")
    series = {str(getattr(d, "SeriesInstanceUID", "")) for d in datasets}
    if len(series) != 1:
        raise InvalidImageError(f"The source images belong to {len(series)} series; give the one CT series the "
                                "result was computed on.")
    orientation = np.asarray(datasets[0].ImageOrientationPatient, dtype=np.float64)
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(datasets, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, float))))
    grid = (len(ordered), int(ordered[0].Rows), int(ordered[0].Columns))
    if grid != tuple(result.volume_shape):
        raise InvalidImageError(f"The result is for a volume of {tuple(result.volume_shape)} voxels (k, j, i), but the "
                                f"source series has {grid[0]} slices of {grid[1]} x {grid[2]}; give the series the "
                                "result was computed on.")
    return ordered


def algorithm(result: LesionResult) -> hd.AlgorithmIdentificationSequence:
    """Which software made the object, with what: a reader can tell two runs (another head, K or seed) apart."""
    info = result.info
    parameters = {key: str(info[key]) for key in ("backbone", "samples", "seed", "slice") if key in info}
    return hd.AlgorithmIdentificationSequence(name="AmbiguousSAM", family=codes.cid7162.ArtificialIntelligence,
                                              version=__version__, source=str(info.get("sampler", "unknown head")),
                                              parameters=parameters)


def nodule_segment(number: int, label: str, description: str, colour: tuple[float, float, float],
                   result: LesionResult) -> hd.seg.SegmentDescription:
    """A segment coded as a lung nodule: SNOMED CT morphologically abnormal structure / nodule, in the lung."""
    segment = hd.seg.SegmentDescription(
        segment_number=number, segment_label=label,
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
        algorithm_identification=algorithm(result), anatomic_regions=[codes.SCT.Lung],
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in colour)))
    segment.SegmentDescription = description  # highdicom has no argument for this optional attribute (LO, 64)
    return segment


def lesion_frames(result: LesionResult, datasets: list[pydicom.Dataset], maps: np.ndarray) -> tuple[np.ndarray, list]:
    """A lesion-box array (dk, dj, di) or stack of them (S, dk, dj, di) -> the full slices highdicom takes,
    (dk, rows, cols) or (dk, rows, cols, S), and the source planes they lie on."""
    k0, j0, i0 = result.offset
    dk, dj, di = result.consensus.shape
    box = maps if maps.ndim == 3 else np.moveaxis(maps, 0, -1)
    frames = np.zeros((dk, *result.volume_shape[1:], *box.shape[3:]), dtype=maps.dtype)
    frames[:, j0:j0 + dj, i0:i0 + di] = box
    planes = [hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, d.ImagePositionPatient)
              for d in datasets[k0:k0 + dk]]
    return frames, planes


def common(name: str, label: str, description: str) -> dict:
    """The arguments every object shares: its own series and instance, the equipment, what it holds."""
    return dict(series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS[name], sop_instance_uid=hd.UID(),
                instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="AmbiguousSAM",
                software_versions=__version__, device_serial_number="none", content_label=label,
                content_description=description)


def with_body_part(instance: hd.SOPClass, source: pydicom.Dataset) -> hd.SOPClass:
    """Copy the CT's Body Part Examined (General Series), which highdicom leaves out of maps and presentation
    states: without it dciodvfy must assume a paired organ and asks for Laterality."""
    if "BodyPartExamined" in source:
        instance.BodyPartExamined = source.BodyPartExamined
    return instance


def candidate_segmentation(result: LesionResult, datasets: list[pydicom.Dataset]) -> hd.seg.Segmentation:
    """The K candidates and the consensus, one binary segment each, named and coloured as in every output."""
    entries = candidate_table(result.scores)
    count = result.num_candidates
    segments = []
    for number, entry in enumerate(entries, start=1):
        description = (f"Candidate {number}, score {format_score(entry.score)} (mean 3D IoU with the others)"
                       if entry.role == CANDIDATE_ROLE else f"Consensus: voxels most of the {count} candidates mark")
        segments.append(nodule_segment(number, entry.name, description[:64], entry.colour, result))  # LO: 64
    frames, planes = lesion_frames(result, datasets, np.concatenate([result.candidates, result.consensus[None]]))
    return hd.seg.Segmentation(pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                               segment_descriptions=segments, plane_positions=planes, source_images=datasets,
                               **common(SEGMENTATION_FILE, "CANDIDATES",
                                        f"AmbiguousSAM: {count} candidate outlines and their consensus"))


def probability_segmentation(result: LesionResult, datasets: list[pydicom.Dataset]) -> hd.seg.Segmentation:
    """The mean foreground probability over the K candidates' samples, as one fractional segment."""
    segment = nodule_segment(1, "Mean probability", f"Mean foreground probability of {result.num_candidates} "
                             "samples", (1.0, 1.0, 1.0), result)
    frames, planes = lesion_frames(result, datasets, np.clip(result.mean_probability, 0.0, 1.0).astype(np.float32))
    return hd.seg.Segmentation(pixel_array=frames, segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
                               fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
                               segment_descriptions=[segment], plane_positions=planes, source_images=datasets,
                               **common(PROBABILITY_FILE, "PROBABILITY", "AmbiguousSAM: mean foreground probability"))


def uncertainty_map(result: LesionResult, datasets: list[pydicom.Dataset]) -> hd.pm.ParametricMap:
    """The entropy of the mean in nats: integers 0..UNCERTAINTY_LEVELS that map linearly onto 0..ln 2 nats."""
    slope = MAX_ENTROPY_NATS / UNCERTAINTY_LEVELS
    stored = np.rint(np.clip(result.entropy, 0.0, MAX_ENTROPY_NATS) / slope).astype(np.uint16)
    frames, planes = lesion_frames(result, datasets, stored)
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="ENTROPY", lut_explanation="Entropy of the mean foreground probability", unit=NAT_UNIT,
        value_range=(0, UNCERTAINTY_LEVELS), slope=slope, intercept=0.0, quantity_definition=ENTROPY_CONCEPT)
    heatmap = hd.pm.ParametricMap(
        pixel_array=frames, contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        plane_positions=planes, source_images=datasets, coding_schemes=[PRIVATE_SCHEME],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=UNCERTAINTY_LEVELS / 2,
                                                         window_width=UNCERTAINTY_LEVELS)],
        **common(UNCERTAINTY_FILE, "UNCERTAINTY", "AmbiguousSAM: entropy of the mean probability (nats)"))
    return with_body_part(heatmap, datasets[0])


def heatmap_palette() -> hd.PaletteColorLUTTransformation:
    """The heatmap's colours for stored values 0..UNCERTAINTY_LEVELS, one 16-bit RGB entry each."""
    colours = np.rint(heatmap_colour_table(UNCERTAINTY_LEVELS + 1) * 65535).astype(np.uint16)
    return hd.PaletteColorLUTTransformation(
        *(hd.PaletteColorLUT(0, colours[:, channel], colour) for channel, colour in enumerate(("red", "green", "blue"))),
        palette_color_lut_uid=hd.UID())


def uncertainty_colours(heatmap: hd.pm.ParametricMap) -> hd.pr.PseudoColorSoftcopyPresentationState:
    """Show the uncertainty map in the heatmap's colours. No VOI step: the palette indexes the stored values
    themselves, so each colour means the same number of nats as in Slicer and in the montage."""
    state = hd.pr.PseudoColorSoftcopyPresentationState(
        referenced_images=[heatmap], palette_color_lut_transformation=heatmap_palette(),
        **common(COLOURS_FILE, "UNCERTAINTY", "The uncertainty map in AmbiguousSAM's heatmap colours (inferno)"))
    return with_body_part(state, heatmap)
