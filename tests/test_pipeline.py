"""The whole pipeline through the real CLI: real PyAV, real ZeroMQ sockets, real worker processes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch

import streamseg
from conftest import TEST_MODEL, TEST_SCORE_THRESH, as_expected, assert_same_detections, make_clip, read_jsonl, read_video
from streamseg.masks import decode_rle
from streamseg.models import load_model


def test_round_trip_keeps_count_size_rate_and_pts(cli, clip: Path, tmp_path: Path) -> None:
    result = cli.run("run", str(clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    got, want = read_video(tmp_path / "out.mp4"), read_video(clip)
    for key in ("frames", "width", "height", "rate", "pts"):
        assert got[key] == want[key], key
    assert (got["frames"], got["width"], got["height"]) == (48, 322, 242)
    assert got["pix_fmt"] == "yuv420p" and got["codec"] == "h264"
    records = read_jsonl(tmp_path / "m.jsonl")
    assert [r["frame"] for r in records] == list(range(48))
    assert [r["pts"] for r in records] == want["pts"]
    assert all(abs(r["time"] - p * float(want["time_base"])) < 1e-6 for r, p in zip(records, want["pts"]))
    instances = [inst for r in records for inst in r["instances"]]
    assert instances, "the test model should find something at this threshold"
    for inst in instances:
        mask = decode_rle(inst["mask"])
        assert mask.shape == (242, 322)
        assert len(inst["keypoints"]) == 5 and len(inst["box"]) == 4 and inst["class"]
    assert "frames 48" in result.stderr and "bottleneck" in result.stderr  # the summary
    assert cli.leftovers() == []


def _direct(clip: Path, score_thresh: float) -> list[dict]:
    """What the same model gives when called directly on the same decoded frames."""
    model, _ = load_model("tiny-random")
    model.roi_heads.score_thresh = score_thresh
    out = []
    with av.open(str(clip)) as container, torch.inference_mode():
        for frame in container.decode(video=0):
            image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
            o = model([image])[0]
            out.append({"boxes": o["boxes"].numpy(), "scores": o["scores"].numpy(), "labels": o["labels"].numpy(),
                        "masks": (o["masks"][:, 0] >= 0.5).numpy()})
    return out


def test_pipeline_loses_nothing_against_the_model_called_directly(cli, clip: Path, tmp_path: Path) -> None:
    result = cli.run("run", str(clip), "--masks", "m.jsonl", *TEST_MODEL, "--max-batch", "4")
    assert result.returncode == 0, result.stderr
    assert_same_detections(read_jsonl(tmp_path / "m.jsonl"), _direct(clip, TEST_SCORE_THRESH))


def test_batch_size_does_not_change_outputs(cli, clip: Path, clip_masks: list[dict], tmp_path: Path) -> None:
    result = cli.run("run", str(clip), "--masks", "m1.jsonl", *TEST_MODEL, "--max-batch", "1")
    assert result.returncode == 0, result.stderr
    four = clip_masks  # the default batch, 4
    assert_same_detections(four, as_expected(read_jsonl(tmp_path / "m1.jsonl")))


def test_audio_is_copied_in_sync(cli, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "av.mp4", frames=30, audio=True)
    result = cli.run("run", str(clip), "-o", "out.mp4", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    info = read_video(tmp_path / "out.mp4")
    assert info["audio"] == "aac" and info["frames"] == 30
    with av.open(str(tmp_path / "out.mp4")) as out, av.open(str(clip)) as src:
        got = [p.pts for p in out.demux(audio=0) if p.pts is not None]
        want = [p.pts for p in src.demux(audio=0) if p.pts is not None]
        assert got == want  # remuxed packet for packet: same timestamps, so the same sync
        assert out.streams.audio[0].time_base == src.streams.audio[0].time_base


def test_audio_mp4_cannot_hold_is_reencoded_to_aac(cli, tmp_path: Path) -> None:
    src = tmp_path / "pcm.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=16000)
        audio.layout = "mono"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 8, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            pcm = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.int16), format="s16", layout="mono")
            pcm.sample_rate, pcm.pts = 16000, i * 640
            out.mux(audio.encode(pcm))
        out.mux(video.encode())
        out.mux(audio.encode())
    result = cli.run("run", str(src), "-o", "out.mp4", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    info = read_video(tmp_path / "out.mp4")
    assert info["audio"] == "aac" and info["frames"] == 25
    with av.open(str(tmp_path / "out.mp4")) as out:
        seconds = sum(f.samples for f in out.decode(audio=0)) / out.streams.audio[0].sample_rate
    assert abs(seconds - 1.0) < 0.1  # all of the one second of audio, no more


def test_masks_only_run_starts_no_render_or_encode(cli, clip: Path, tmp_path: Path) -> None:
    result = cli.run("run", str(clip), "--masks", "m.jsonl", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    assert "render" not in result.stderr.split("bottleneck")[0] and len(read_jsonl(tmp_path / "m.jsonl")) == 48


def test_python_api_returns_the_summary(clip: Path, tmp_path: Path) -> None:
    summary = streamseg.run(str(clip), str(tmp_path / "out.mp4"), masks=str(tmp_path / "m.jsonl"),
                            model__name="tiny-random", model__score_thresh=TEST_SCORE_THRESH, batch__max_batch=2)
    assert summary.frames == 48 and summary.fps > 0 and not summary.truncated
    assert set(summary.stages) == {"decode", "batch", "infer", "render", "encode", "masks"}
    assert summary.stages["infer"]["counters"]["frames"] == 48
    assert summary.bottleneck() in summary.stages
    assert read_video(tmp_path / "out.mp4")["frames"] == 48


def test_pipeline_config_file(cli, clip: Path, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    result = cli.run("run", str(clip), "--config", str(root / "pipelines" / "file_to_video.yaml"), *TEST_MODEL,
                     "--set", "batch.max_batch=2", "-q")
    assert result.returncode == 0, result.stderr
    assert read_video(tmp_path / "annotated.mp4")["frames"] == 48
    assert len(read_jsonl(tmp_path / "masks.jsonl")) == 48
    assert result.stderr == ""  # --quiet


@pytest.mark.parametrize("args, needle", [
    (["--set", "batch.max_btch=2"], "batch.max_btch"),
    (["--model", "no-such-model"], "unknown model"),
    (["--device", "tpu"], "model.device"),
])
def test_bad_settings_fail_fast(cli, clip: Path, args: list[str], needle: str) -> None:
    from conftest import assert_clean_error

    result = cli.run("run", str(clip), "-o", "out.mp4", *args, timeout=60)
    assert_clean_error(result, needle)
    assert result.returncode == 2 or "unknown model" in needle


def test_progress_bar_on_a_terminal(cli, clip: Path, tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "streamseg", "run", str(clip), "-o", "out.mp4", *TEST_MODEL],
                            cwd=tmp_path, env=cli.env(), stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    screen = b""
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            screen += data
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(master)
    text = screen.decode(errors="replace")
    assert proc.returncode == 0, text
    assert "48/48" in text and "frame/s" in text  # frames, rate (and tqdm's ETA) on the bar
    assert "bottleneck" in text
