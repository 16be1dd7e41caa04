"""Helpers shared by the benchmark scripts."""

from __future__ import annotations

import os
import platform
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from importlib import metadata
from pathlib import Path
from typing import Any

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BARE_IMPORT = (sys.executable, "-c", "import torch, torchvision")
"""The floor of any command that runs the model: the interpreter plus torch's and torchvision's imports."""


def machine() -> str:
    """One line on what ran the benchmark, and when (for a table's header)."""
    versions = []
    for package in ("torch", "av"):
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pass
    return (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"{', '.join(versions)}, {time.strftime('%Y-%m-%d %H:%M')}")


@dataclass
class Timed:
    """A command run to its end, timed from outside."""

    wall_s: float
    """From spawning the process to its exit."""
    cpu_s: float
    """User + system CPU seconds of the process and of every descendant it waited for (all its
    threads and worker processes)."""
    stdout: str
    stderr: str
    returncode: int = 0


def suite_parser(doc: str) -> Any:
    """The command line of a benchmark over the accuracy suite (``streamseg.tools.suite``): which model,
    its weights, frames a scene, and where the scenes' clips are kept."""
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--weights", default="", help="a weights file for the model (default: its own)")
    parser.add_argument("--frames", type=int, default=100, help="frames a scene")
    parser.add_argument("--clips", default=str(Path(tempfile.gettempdir()) / "streamseg-suite"))
    parser.add_argument("--input", default="", metavar="WxH",
                        help="model.input: the largest frame the model sees at its own size (default: its own)")
    return parser


def timed(command: Sequence[str], env: dict[str, str] | None = None, check: bool = True) -> Timed:
    """Run ``command`` to its end in the repository's root (relative paths are taken from there); with
    ``check``, exit with its stderr if it fails. Run one at a time: the CPU time is the difference in
    this process's children's."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(list(command), check=False, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Timed(wall, cpu, proc.stdout, proc.stderr, proc.returncode)


SUMMARY_LINE = re.compile(r"frames (?P<frames>\d+) in (?P<wall_s>[\d.]+) s end to end \((?P<fps_end_to_end>[\d.]+) fps\); "
                          r"start-up (?P<startup_s>[\d.]+) s, then (?P<fps>[\d.]+) fps")
"""The first line of the summary ``streamseg run`` prints to stderr (``Summary.table``)."""


def run_summary(stderr: str) -> dict[str, float]:
    """``frames``, ``wall_s``, ``fps_end_to_end``, ``startup_s`` and ``fps`` from the summary a
    ``streamseg run`` without ``-q`` printed; exits when there is none (the wording changed?)."""
    match = SUMMARY_LINE.search(stderr)
    if match is None:
        sys.exit(f"no summary line like {SUMMARY_LINE.pattern!r} in streamseg run's stderr:\n{stderr[-2000:]}")
    return {key: float(value) for key, value in match.groupdict().items()}


def streamseg_run(*args: str) -> list[str]:
    """The command line of ``python -m streamseg run ARGS`` with this interpreter."""
    return [sys.executable, "-m", "streamseg", "run", *args]


def runs(values: Sequence[float], digits: int = 1) -> str:
    """Each round's figure, for a table's last column."""
    return ", ".join(f"{v:.{digits}f}" for v in values)


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


def make_clip(path: Path, frames: int, width: int, height: int, rate: int = 30) -> None:
    """Moving textured rectangles, H.264, at ``rate`` frames a second."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(rate))
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


def workers(root: int) -> dict[str, int]:
    """Name -> pid of the run's own process and its worker processes (``sseg-<stage>``)."""
    found = {"supervisor": root}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == root and comm.startswith("sseg-"):
            found[comm[len("sseg-"):]] = int(entry)
    return found
