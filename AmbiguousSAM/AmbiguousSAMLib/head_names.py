"""The names that pick an ambiguity head instead of a file path, in one table.

`segment --head`, `serve --head`, `LesionSegmenter(head=...)` and the Slicer module's head choice all take these
names (or the path of a head file). The table imports nothing heavy, so the Slicer module can list the choices
before its Python dependencies (torch) are installed.
"""

from __future__ import annotations

#: The trained heads that ship in Resources/Models, each with a model card: name -> file name.
#: "default" is Probabilistic SAM (MODEL_CARD.md), "seqsam" the recurrent SeqSAM head (SEQSAM_MODEL_CARD.md),
#: "ua-sam" UA-SAM's z-conditioned encoder adapters (UA_SAM_MODEL_CARD.md).
SHIPPED_HEAD_FILES = {"default": "probabilistic_sam_lidc.pt", "seqsam": "seqsam_lidc.pt", "ua-sam": "ua_sam_lidc.pt"}
#: No trained head: the backbone's single mask, the baseline every candidate set is compared with.
DETERMINISTIC = "deterministic"
#: Every name a head can be picked by, the default first.
HEAD_NAMES = (*SHIPPED_HEAD_FILES, DETERMINISTIC)
#: The --head help of the commands that segment.
HEAD_HELP = ("'default' (the shipped Probabilistic SAM LIDC head), 'seqsam' (the shipped SeqSAM LIDC head: "
             "deterministic, its candidates ignore --seed), 'ua-sam' (the shipped UA-SAM LIDC head: z enters the "
             "image encoder, so each candidate re-runs its last block), 'deterministic' (the backbone's single "
             "mask), or the path of a head file of any kind (Probabilistic SAM, SeqSAM, UA-SAM)")
