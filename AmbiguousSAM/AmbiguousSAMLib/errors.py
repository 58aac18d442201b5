"""Exceptions a user can act on.

Every error names the problem and the fix in words a radiologist or researcher understands, so the Slicer
widget and the command line can show the message as it is.
"""


class AmbiguousSAMError(Exception):
    """Base class: anything AmbiguousSAM refuses to do, with the reason and the fix in the message."""


class InvalidImageError(AmbiguousSAMError, ValueError):
    """The image or volume cannot be segmented as given (wrong shape, dtype, NaN, unreadable)."""


class InvalidBoxError(AmbiguousSAMError, ValueError):
    """The prompt box is empty, inverted, not finite or outside the image."""


class CheckpointError(AmbiguousSAMError, RuntimeError):
    """Model weights are missing, corrupt or do not fit the chosen architecture."""


class CancelledError(AmbiguousSAMError):
    """The user cancelled a run; whatever it had started is discarded."""


class ServerError(AmbiguousSAMError, RuntimeError):
    """The inference server could not be reached, died, or answered something this client does not understand."""


class InvalidSettingError(AmbiguousSAMError, ValueError):
    """A run setting (number of samples, seed, ...) is outside what AmbiguousSAM can honour."""


class DicomSourceError(AmbiguousSAMError, ValueError):
    """A DICOM export has no source series to reference: the volume was not loaded from DICOM, its files are not
    found, or the files given are not the volume's images."""


class CandidateSetError(AmbiguousSAMError, ValueError):
    """A candidate set in the scene cannot be read back as one result (no candidates or consensus, missing scores,
    a heatmap or volume on another grid)."""


class OutputFolderError(AmbiguousSAMError):
    """The folder chosen for an export cannot take it (a file, not empty, or holding the source images)."""
