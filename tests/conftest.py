"""Fixtures: clips generated on the fly with real PyAV, the CLI run as a real subprocess."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

TEST_SCORE_THRESH = 0.37
"""Keeps about a dozen instances per frame of the random-init test model on :func:`make_clip` clips."""
TEST_MODEL = ["--model", "tiny-random", "--score-thresh", str(TEST_SCORE_THRESH)]
"""CLI flags for the random-init test model."""
REPEATABLE = ["--set", "batch.max_wait_ms=60000", "--set", "encode.threads=1"]
"""For runs whose outputs are compared exactly with another run's: every batch of a file is full
(a short one only at its end), however loaded the machine is. The model's floating-point results
differ in the last digits with the batch's size, so a batch sent short because decoding lagged
for a moment would change a score or a box by a rounding step. And libx264 encodes on one
thread: with its own choice of threads (3 on 2 cores) the same frames encode to slightly
different bits from run to run (8 distinct outputs in 12 encodings of one clip here), which made
a fault test fail now and then with every frame it was given the same."""


def make_clip(path: Path | str, frames: int = 48, size: tuple[int, int] = (322, 242),
              rate: Fraction = Fraction(30000, 1001), audio: bool = False, seed: int = 0,
              faststart: bool = False) -> Path:
    """Write an H.264 MP4 of moving coloured shapes (and a sine tone with ``audio``); returns the path.

    ``faststart`` puts the index first, so that a copy cut off mid-stream still decodes up to the cut.
    """
    width, height = size
    rng = np.random.default_rng(seed)
    out = av.open(str(path), "w", options={"movflags": "+faststart"} if faststart else {})
    video = out.add_stream("libx264", rate=rate)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    video.options = {"preset": "ultrafast"}
    tone = None
    if audio:
        tone = out.add_stream("aac", rate=48000)
        tone.layout = "mono"
    boxes = [(rng.integers(0, width // 2), rng.integers(0, height // 2), rng.integers(20, width // 3),
              rng.integers(20, height // 3), rng.integers(60, 255, 3)) for _ in range(3)]
    samples_per_frame = int(48000 / rate)
    # texture: flat regions would give many RoIs identical features, and a random-init model
    # then ties scores, whose order depends on floating-point noise
    texture = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    for i in range(frames):
        image = np.roll(texture, i, axis=1)
        for k, (x, y, w, h, colour) in enumerate(boxes):
            x0 = int((x + i * (k + 1) * 2) % max(1, width - w))
            image[y:y + h, x0:x0 + w] = colour - texture[y:y + h, x0:x0 + w] // 4
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = i
        out.mux(video.encode(frame))
        if tone is not None:
            t = (np.arange(samples_per_frame) + i * samples_per_frame) / 48000
            pcm = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]
            aframe = av.AudioFrame.from_ndarray(pcm, format="fltp", layout="mono")
            aframe.sample_rate = 48000
            aframe.pts = i * samples_per_frame
            out.mux(tone.encode(aframe))
    out.mux(video.encode())
    if tone is not None:
        out.mux(tone.encode())
    out.close()
    return Path(path)


def decode_all(source: str, config: Any = None, live: bool = False) -> tuple[list[Any], list[tuple[str, dict]]]:
    """Every message a decoder (in this process) emits for ``source`` (read as ``live``), and the events
    it reported."""
    from streamseg.config import InputConfig
    from streamseg.stages.decode import DecodeStage

    events: list[tuple[str, dict]] = []
    stage = DecodeStage(config or InputConfig(), source, "0", live=live)
    stage.bind_events(lambda event, **data: events.append((event, data)))
    stage.setup()
    try:
        return [m for _, m in (e for e in stage.produce() if e is not None)], events
    finally:
        stage.close()


def encode_all(messages: list[Any], out: Path) -> None:
    """Encode a decoder's messages into ``out`` (in this process), as the encode stage does."""
    from streamseg.config import EncodeConfig
    from streamseg.runtime.messages import EndOfStream
    from streamseg.stages.encode import EncodeStage

    sink = EncodeStage(EncodeConfig(), path=str(out))
    for m in messages:
        if isinstance(m, EndOfStream):
            sink.flush(m)
        else:
            sink.process(m)
    sink.close()


def read_video(path: Path | str) -> dict[str, Any]:
    """Frame count, size, rate, time base, pts list and audio stream info of a video file."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = [f.pts for f in container.decode(stream)]
        audio = container.streams.audio[0].codec_context.name if container.streams.audio else None
        return {"frames": len(pts), "width": stream.codec_context.width, "height": stream.codec_context.height,
                "rate": stream.average_rate, "time_base": stream.time_base, "pts": pts, "audio": audio,
                "pix_fmt": stream.codec_context.pix_fmt, "codec": stream.codec_context.name}


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """The records of a JSON Lines file."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def assert_same_detections(records: list[dict], expected: list[dict]) -> None:
    """Same instances and classes per frame, scores within 1e-4, boxes within 1e-2 px, mask IoU >= 0.99."""
    from streamseg.masks import decode_rle

    assert len(records) == len(expected)
    for record, want in zip(records, expected):
        got = record["instances"]
        assert len(got) == len(want["scores"]), f"frame {record['frame']}"
        unmatched = set(range(len(got)))
        for j in range(len(want["scores"])):
            # instances are matched by class and box: near-equal scores may swap places
            candidates = [i for i in unmatched if got[i]["class_id"] == want["labels"][j]
                          and np.abs(np.array(got[i]["box"]) - want["boxes"][j]).max() < 1e-2]
            assert candidates, f"frame {record['frame']}: instance {j} missing"
            i = min(candidates, key=lambda c: abs(got[c]["score"] - want["scores"][j]))
            unmatched.discard(i)
            assert abs(got[i]["score"] - want["scores"][j]) <= 1e-4
            assert _iou(decode_rle(got[i]["mask"]), want["masks"][j]) >= 0.99


def as_expected(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Masks JSONL records in the form :func:`assert_same_detections` expects."""
    from streamseg.masks import decode_rle

    return [{"boxes": np.array([i["box"] for i in r["instances"]], np.float32).reshape(-1, 4),
             "scores": np.array([i["score"] for i in r["instances"]]),
             "labels": np.array([i["class_id"] for i in r["instances"]]),
             "masks": [decode_rle(i["mask"]) for i in r["instances"]]} for r in records]


def tagged_processes(tag: str) -> list[int]:
    """PIDs of live (non-zombie) processes whose environment carries ``STREAMSEG_TEST_TAG=tag``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if f"STREAMSEG_TEST_TAG={tag}".encode() in environ.split(b"\0") and state != "Z":
            found.append(int(entry))
    return found


def shm_leftovers() -> list[str]:
    """Shared-memory slots of streamseg runs that exist now."""
    return sorted(str(p) for p in Path("/dev/shm").glob("sseg-*")) if Path("/dev/shm").is_dir() else []


def worker_pid(tag: str, stage: str) -> int | None:
    """PID of the worker process of ``stage`` (its comm is ``sseg-<stage>``) in the tagged run."""
    for pid in tagged_processes(tag):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == f"sseg-{stage}"[:15]:
                return pid
        except OSError:
            pass
    return None


class CLI:
    """Runs ``python -m streamseg`` as a real subprocess, tagged so its workers can be found."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.tag = uuid.uuid4().hex

    def env(self) -> dict[str, str]:
        env = dict(os.environ, STREAMSEG_TEST_TAG=self.tag, PYTHONUNBUFFERED="1")
        env.pop("COLUMNS", None)
        return env

    def run(self, *args: str, timeout: float = 120, preexec: Any = None) -> subprocess.CompletedProcess[str]:
        """Run to completion (killed, and the test failed, after ``timeout`` s); ``preexec`` runs in the
        child before it starts (resource limits)."""
        try:
            return subprocess.run([sys.executable, "-m", "streamseg", *args], cwd=self.cwd, env=self.env(),
                                  capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  preexec_fn=preexec)
        except subprocess.TimeoutExpired:
            self.kill_leftovers()
            pytest.fail(f"streamseg {' '.join(args)} did not finish within {timeout} s")

    def start(self, *args: str, new_group: bool = False) -> subprocess.Popen[str]:
        """Start in the background (``new_group``: in a process group of its own, as a shell job is)."""
        return subprocess.Popen([sys.executable, "-m", "streamseg", *args], cwd=self.cwd, env=self.env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                                start_new_session=new_group)

    def leftovers(self, wait_s: float = 3.0) -> list[int | str]:
        """What a finished run left behind after up to ``wait_s`` seconds: its processes still alive,
        and shared-memory slots (tests run one at a time, so any ``/dev/shm/sseg-*`` is a leak)."""
        deadline = time.monotonic() + wait_s
        while True:
            left: list[int | str] = [*tagged_processes(self.tag), *shm_leftovers()]
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.1)

    def kill_leftovers(self) -> None:
        for pid in tagged_processes(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture
def cli(tmp_path: Path) -> Any:
    runner = CLI(tmp_path)
    yield runner
    runner.kill_leftovers()


@pytest.fixture(scope="session")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 frames, 322x242, 30000/1001 fps, H.264 MP4 (shared, read-only)."""
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4")


@pytest.fixture(scope="session")
def clip_masks_run(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A masks-only run of :func:`clip` through the CLI with the test model, default batch (shared,
    read-only): its ``records``, ``stderr`` (with the summary) and ``leftovers``."""
    cli = CLI(tmp_path_factory.mktemp("clip-masks"))
    result = cli.run("run", str(clip), "--masks", "m.jsonl", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    return {"records": read_jsonl(cli.cwd / "m.jsonl"), "stderr": result.stderr, "leftovers": cli.leftovers()}


@pytest.fixture(scope="session")
def clip_masks(clip_masks_run: dict[str, Any]) -> list[dict[str, Any]]:
    """The masks records of :func:`clip` through the CLI with the test model (shared, read-only)."""
    return clip_masks_run["records"]


@pytest.fixture(scope="session")
def clip_video_run(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """:func:`clip` through the CLI to an annotated video and masks, in batches of one (shared,
    read-only): ``folder`` (out.mp4, m.jsonl), ``stderr`` (with the summary) and ``leftovers``."""
    cli = CLI(tmp_path_factory.mktemp("clip-video"))
    result = cli.run("run", str(clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, "--max-batch", "1")
    assert result.returncode == 0, result.stderr
    return {"folder": cli.cwd, "stderr": result.stderr, "leftovers": cli.leftovers()}


def cut_clip(source: Path, path: Path, frames: int) -> Path:
    """The first ``frames`` frames of ``source``, its packets copied (no re-encoding: the clips have no
    B-frames, so these frames decode to exactly the source's first pictures)."""
    with av.open(str(source)) as src, av.open(str(path), "w") as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for n, packet in enumerate(p for p in src.demux(video=0) if p.dts is not None):
            if n == frames:
                break
            packet.stream = stream
            out.mux(packet)
    return path


@pytest.fixture(scope="session")
def two_sources(clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run of two sources (:func:`clip` as ``left``, its first 30 frames as ``right``) to videos
    ``out-{left,right}.mp4``, masks ``m-{left,right}.jsonl`` and a subscriber (shared, read-only):
    ``sources``, ``folder``, ``stderr``, ``published`` (the subscriber's messages) and ``leftovers``."""
    cli = CLI(tmp_path_factory.mktemp("two-sources"))
    right = cut_clip(clip, cli.cwd / "right.mp4", 30)
    endpoint = free_endpoint()
    collector = Collector(endpoint)
    collector.start()
    # batches of one: which stream's frames share a batch depends on timing, and the model's rounding
    # on the batch, so only then can another run of the two sources be compared with this one exactly
    result = cli.run("run", str(clip), str(right), "--stream-id", "left", "--stream-id", "right", "-o", "out.mp4",
                     "--masks", "m-{stream}.jsonl", "--publish", endpoint, *TEST_MODEL, "--max-batch", "1")
    assert result.returncode == 0, result.stderr
    collector.join(30)
    assert not collector.is_alive(), "the subscriber did not see both streams end"
    return {"sources": [clip, right], "folder": cli.cwd, "stderr": result.stderr, "published": collector.messages,
            "leftovers": cli.leftovers()}


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    """A failed run: non-zero exit, a one-line ``streamseg: error:`` message, no traceback."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("streamseg: error:")]
    assert len(errors) == 1, result.stderr
    assert len(errors[0]) <= 300, errors[0]  # an error a user can cause fits on a line
    for needle in needles:
        assert needle in errors[0], errors[0]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class Collector(threading.Thread):
    """A subscriber in a thread: every message until end of stream, or ``timeout_s`` of silence."""

    def __init__(self, endpoint: str, timeout_s: float = 60.0, topic: str | None = None,
                 curve: tuple[Path, Path] | None = None) -> None:
        from streamseg.client import Subscriber

        super().__init__(daemon=True)
        secret, server = (str(curve[0]), str(curve[1])) if curve else (None, None)
        self.subscriber = Subscriber(endpoint, topic=topic, timeout_s=timeout_s, curve_secret=secret,
                                     curve_server_key=server)
        self.messages: list[dict] = []

    def run(self) -> None:
        try:
            for message in self.subscriber.messages():
                self.messages.append(message)
        finally:
            self.subscriber.close()

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in list(self.messages) if m["type"] == kind]

    def wait_for(self, what: Any, timeout_s: float, poll_s: float = 0.05) -> bool:
        """Wait until ``what(messages)`` is true; False after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if what(list(self.messages)):
                return True
            time.sleep(poll_s)
        return False


SYSTEM_PYTHON = "/usr/bin/python3"
RTSP_SERVER = Path(__file__).resolve().parent / "rtsp_server.py"


def rtsp_server_missing() -> str:
    """Why GStreamer's RTSP server cannot run here ("" when it can)."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found"
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                            "from gi.repository import GstRtspServer"], capture_output=True, text=True, timeout=30)
    return "" if probe.returncode == 0 else "GStreamer's RTSP server is not installed (python3-gi, " \
        "gir1.2-gst-rtsp-server-1.0; .ci/run installs them)"


class RtspServer:
    """GStreamer's gst-rtsp-server serving ``clip`` at ``rtsp://127.0.0.1:PORT/cam`` in real time."""

    def __init__(self, clip: Path, port: int | None = None) -> None:
        self.clip = clip
        self.port = port or free_port()
        self.url = f"rtsp://127.0.0.1:{self.port}/cam"
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> RtspServer:
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(RTSP_SERVER), str(self.clip), str(self.port)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        ready = threading.Event()
        threading.Thread(target=lambda: ready.set() if self.process.stdout.readline() else None,
                         daemon=True).start()
        if not ready.wait(20):
            self.kill()
            pytest.fail("the RTSP server did not start within 20 s")
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.process = None


@pytest.fixture
def rtsp_server() -> Any:
    """A factory: ``rtsp_server(clip)`` starts a server (stopped at the end of the test).

    Skips where the server is not installed, except under ``STREAMSEG_REQUIRE_RTSP=1`` (CI), where
    that fails the test instead.
    """
    why = rtsp_server_missing()
    if why:
        if os.environ.get("STREAMSEG_REQUIRE_RTSP") == "1":
            pytest.fail(why)
        pytest.skip(why)
    servers: list[RtspServer] = []

    def start(clip: Path, port: int | None = None) -> RtspServer:
        servers.append(RtspServer(clip, port).start())
        return servers[-1]

    yield start
    for server in servers:
        server.kill()


def have_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


FAULT_FRAMES = 150
"""Length of the clip the fault tests (restarts, remote workers) run on."""


@pytest.fixture(scope="session")
def fault_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("faults") / "clip.mp4", frames=FAULT_FRAMES)


def decoded(path: Path | str) -> list[tuple[int, np.ndarray]]:
    """(pts, RGB pixels) of every frame of a video."""
    with av.open(str(path)) as container:
        return [(f.pts, f.to_ndarray(format="rgb24")) for f in container.decode(video=0)]


def digest(video: list[tuple[int, np.ndarray]]) -> list[tuple[int, str]]:
    import hashlib

    return [(pts, hashlib.md5(image.tobytes()).hexdigest()) for pts, image in video]


@pytest.fixture(scope="session")
def undisturbed(fault_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The outputs of a run on :func:`fault_clip` that nobody disturbs, to compare against."""
    cli = CLI(tmp_path_factory.mktemp("undisturbed"))
    result = cli.run("run", str(fault_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, *REPEATABLE, "-q")
    assert result.returncode == 0, result.stderr
    return {"masks": read_jsonl(cli.cwd / "m.jsonl"), "video": decoded(cli.cwd / "out.mp4"), "stderr": result.stderr}


def assert_same_outputs(folder: Path, undisturbed: dict[str, Any]) -> None:
    """out.mp4 and m.jsonl in ``folder`` are those of the undisturbed run: same lines, same pictures."""
    assert read_jsonl(folder / "m.jsonl") == undisturbed["masks"]
    assert digest(decoded(folder / "out.mp4")) == digest(undisturbed["video"])


def masks_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)
