from SegmentEditorEffects.AbstractScriptedSegmentEditorEffect import *  # noqa: F401,F403

from .SegmentEditorEffect import *  # noqa: F401,F403
