"""AmbiguousSAM core: several plausible segmentations and an uncertainty map from one box prompt.

Pure Python (torch, numpy, SimpleITK): no Slicer import anywhere below this package, so the same code runs in
3D Slicer, at a Python console and from the `ambiguous-sam` command line.
"""

__version__ = "0.1.0"
