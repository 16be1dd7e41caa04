"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decoded_frames(path: Path | str) -> list[np.ndarray]:
    """Every frame of a video as ``uint8[H, W, 3]`` RGB."""
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def model_fps(predictor: Any, frames: list[np.ndarray], batch: int) -> float:
    """Frames per second of ``predictor`` over ``frames`` in batches (one warm-up batch first)."""
    predictor(frames[:batch])
    start = time.perf_counter()
    for i in range(0, len(frames), batch):
        predictor(frames[i:i + batch])
    return len(frames) / (time.perf_counter() - start)
