"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from fractions import Fraction
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


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """Moving textured rectangles, H.264."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.roll(texture, 2 * i, axis=1)
            for k in range(4):
                x = (40 + 60 * k + 3 * i * (k + 1)) % (width - width // 5)
                y = (30 + 50 * k) % (height - height // 4)
                image[y:y + height // 5, x:x + width // 6] = (200 - 40 * k, 60 + 40 * k, 120)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


RTSP_SERVER = Path(__file__).resolve().parents[1] / "tests" / "rtsp_server.py"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_rtsp_server(source: Path | str, port: int) -> subprocess.Popen[str]:
    """GStreamer's RTSP server (Debian's python3 and gst-rtsp-server) at rtsp://127.0.0.1:PORT/cam."""
    proc = subprocess.Popen(["/usr/bin/python3", str(RTSP_SERVER), str(source), str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        sys.exit(f"the RTSP server did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc
