"""The whole pipeline through the real CLI: real PyAV, real ZeroMQ sockets, real worker processes.

Several tests read the outputs of one shared run (``clip_video_run``, ``clip_masks_run``,
``undisturbed`` in conftest.py) instead of starting the pipeline each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import av
import pytest
import torch
from conftest import (
    TEST_MODEL,
    TEST_SCORE_THRESH,
    as_expected,
    assert_clean_error,
    assert_same_detections,
    read_jsonl,
    read_video,
)

import streamseg
from streamseg.masks import decode_rle
from streamseg.models import load_model


def test_round_trip_keeps_count_size_rate_and_pts(clip_video_run: dict[str, Any], clip: Path) -> None:
    folder, stderr = clip_video_run["folder"], clip_video_run["stderr"]
    got, want = read_video(folder / "out.mp4"), read_video(clip)
    for key in ("frames", "width", "height", "rate", "pts"):
        assert got[key] == want[key], key
    assert (got["frames"], got["width"], got["height"]) == (48, 322, 242)
    assert got["pix_fmt"] == "yuv420p" and got["codec"] == "h264"
    records = read_jsonl(folder / "m.jsonl")
    assert [r["frame"] for r in records] == list(range(48))
    assert [r["pts"] for r in records] == want["pts"]
    assert all(abs(r["time"] - p * float(want["time_base"])) < 1e-6 for r, p in zip(records, want["pts"]))
    instances = [inst for r in records for inst in r["instances"]]
    assert instances, "the test model should find something at this threshold"
    for inst in instances:
        mask = decode_rle(inst["mask"])
        assert mask.shape == (242, 322)
        assert len(inst["keypoints"]) == 5 and len(inst["box"]) == 4 and inst["class"]
    assert "frames 48" in stderr and "bottleneck" in stderr  # the summary
    assert clip_video_run["leftovers"] == []


def _direct(clip: Path, score_thresh: float) -> list[dict]:
    """What the same model gives when called directly on the same decoded frames."""
    model, _ = load_model("tiny-random", None, 0)
    model.roi_heads.score_thresh = score_thresh
    out = []
    with av.open(str(clip)) as container, torch.inference_mode():
        for frame in container.decode(video=0):
            image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1).float() / 255
            o = model([image])[0]
            out.append({"boxes": o["boxes"].numpy(), "scores": o["scores"].numpy(), "labels": o["labels"].numpy(),
                        "masks": (o["masks"][:, 0] >= 0.5).numpy()})
    return out


def test_pipeline_loses_nothing_against_the_model_called_directly(clip: Path, clip_masks: list[dict]) -> None:
    # clip_masks: the default batch of 4
    assert_same_detections(clip_masks, _direct(clip, TEST_SCORE_THRESH))


def test_batch_size_does_not_change_outputs(clip_video_run: dict[str, Any], clip_masks: list[dict]) -> None:
    one = read_jsonl(clip_video_run["folder"] / "m.jsonl")  # batches of 1
    four = clip_masks  # the default batch, 4
    assert_same_detections(four, as_expected(one))


def test_masks_only_run_starts_no_render_or_encode(clip_masks_run: dict[str, Any]) -> None:
    # which workers a masks-only plan has: tests/test_plan.py; here, that the run's summary agrees
    table = clip_masks_run["stderr"].split("bottleneck")[0]
    assert "frames 48" in table and "infer" in table and "masks" in table
    assert "render" not in table and "encode" not in table
    assert len(clip_masks_run["records"]) == 48 and clip_masks_run["leftovers"] == []


def test_latency_is_in_the_summary(clip_masks_run: dict[str, Any]) -> None:
    assert "latency capture to masks: p50" in clip_masks_run["stderr"]


def test_quiet_run_prints_nothing(undisturbed: dict[str, Any]) -> None:
    assert undisturbed["stderr"] == ""  # -q


def test_python_api_returns_the_summary(clip: Path, tmp_path: Path) -> None:
    # inference capped below what the pipeline does on this machine: a file still drops nothing
    summary = streamseg.run(str(clip), str(tmp_path / "out.mp4"), masks=str(tmp_path / "m.jsonl"),
                            model__name="tiny-random", model__score_thresh=TEST_SCORE_THRESH, batch__max_batch=2,
                            model__max_fps=15.0)
    assert summary.frames == 48 and summary.fps > 0 and not summary.truncated
    assert summary.dropped == 0 and not summary.interrupted and not summary.lost and not summary.restarts
    assert set(summary.stages) == {"decode", "batch", "infer", "track", "render", "encode", "masks"}
    assert summary.stages["infer"]["counters"]["frames"] == summary.stages["track"]["counters"]["frames"] == 48
    assert "dropped" not in summary.stages["batch"]["counters"]
    assert summary.bottleneck() in summary.stages
    assert summary.latency_at == "encode" and summary.latency["frames"] == 48
    assert summary.outputs == {"video": str(tmp_path / "out.mp4"), "masks": str(tmp_path / "m.jsonl")}
    assert read_video(tmp_path / "out.mp4")["frames"] == 48
    assert [r["frame"] for r in read_jsonl(tmp_path / "m.jsonl")] == list(range(48))


@pytest.mark.parametrize("args, needle, code", [
    (["--set", "batch.max_btch=2"], "batch.max_btch", 2),
    (["--device", "tpu"], "model.device", 2),
    (["--model", "no-such-model"], "unknown model 'no-such-model'", 4),
])
def test_bad_settings_fail_fast(cli, clip: Path, args: list[str], needle: str, code: int) -> None:
    result = cli.run("run", str(clip), "-o", "out.mp4", *args, timeout=60)
    assert_clean_error(result, needle)
    assert result.returncode == code
    assert not (cli.cwd / "out.mp4").exists() and cli.leftovers() == []  # refused before any worker started


def test_progress_bar_on_a_terminal_with_a_pipeline_file(cli, clip: Path, tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    pipeline = Path(__file__).resolve().parents[1] / "pipelines" / "file_to_video.yaml"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "streamseg", "run", str(clip), "--config", str(pipeline),
                             *TEST_MODEL, "--set", "batch.max_batch=2"],
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
    # the outputs the pipeline file names
    assert read_video(tmp_path / "annotated.mp4")["frames"] == 48
    assert len(read_jsonl(tmp_path / "masks.jsonl")) == 48


def _readme_python_example() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    after = readme.split("From Python, the same run is one call:", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_example_runs_as_a_plain_script_from_c_and_from_stdin(tmp_path: Path) -> None:
    """Exactly as printed: no ``if __name__ == "__main__":`` guard, which ``spawn`` would need if the
    workers ran the caller's main module again."""
    import subprocess
    import sys

    from conftest import make_clip

    code = _readme_python_example()
    assert "streamseg.run(" in code and "__main__" not in code
    make_clip(tmp_path / "input.mp4", frames=24)
    (tmp_path / "api.py").write_text(code)
    ways = {"script": ([sys.executable, "api.py"], None), "-c": ([sys.executable, "-c", code], None),
            "stdin": ([sys.executable, "-"], code)}
    for way, (command, stdin) in ways.items():
        done = subprocess.run(command, cwd=tmp_path, input=stdin, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (way, done.stderr[-2000:])
        assert done.stdout.split()[0] == "24" and "Traceback" not in done.stderr, (way, done.stdout, done.stderr)
        assert read_video(tmp_path / "annotated.mp4")["frames"] == 24
        (tmp_path / "annotated.mp4").unlink()
