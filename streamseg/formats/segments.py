"""Recording in segments (``output.segment_s``): which segment a frame falls in, and its file's name.

A stream's frame at presentation time ``t`` seconds belongs to segment ``k = floor(t / segment_s)``;
the segment's files are named by the wall-clock time (UTC) it starts at, the stream's start
(:attr:`~streamseg.runtime.messages.StreamStart.started`) plus ``k`` segments:
``cam1.mp4`` -> ``cam1-20261205T140000Z.mp4``. The encoder and the mask writer decide alike, frame by
frame, so the video and the masks of a segment hold the same frames, and a replacement of either
finds the same names again.
"""

from __future__ import annotations

import os
import time


def segment_of(path: str, started: float, time_s: float, segment_s: float) -> tuple[int, str]:
    """``(k, the segment's file)`` of the frame at ``time_s`` of a stream started at ``started``."""
    k = max(0, int(time_s // segment_s))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started + k * segment_s))
    root, ext = os.path.splitext(path)
    return k, f"{root}-{stamp}{ext}"
