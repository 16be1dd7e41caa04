"""Mask encoding: COCO compressed RLE for boolean masks, in batches."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE (``{"size": [H, W], "counts": str}``) of each ``bool[N, H, W]`` mask.

    All N masks go to pycocotools in one call; ``pycocotools.mask.decode`` gives the bitmaps back.
    """
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The ``bool[H, W]`` bitmap of one COCO RLE (compressed, as a str or bytes)."""
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
                             ).astype(bool)
