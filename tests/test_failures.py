"""Failures end the run quickly and clearly: dead workers, bad inputs, Ctrl-C. No hang, no orphans."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import time
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import (
    TEST_MODEL,
    assert_clean_error,
    decode_all,
    make_clip,
    read_jsonl,
    read_video,
    shm_leftovers,
    worker_pid,
)

from streamseg.config import InputConfig
from streamseg.errors import InputError
from streamseg.runtime.messages import EndOfStream, Frame
from streamseg.stages.decode import DecodeStage


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Long enough (about 15 s through the test model) to be interrupted mid-run."""
    return make_clip(tmp_path_factory.mktemp("long") / "long.mp4", frames=300)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _masks_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_a_worker_that_fails_once_more_than_its_restarts_allow_ends_the_run(cli, long_clip: Path,
                                                                          tmp_path: Path) -> None:
    # whether a failure is replaced, and the cause's wording: tests/test_health.py; here the real thing.
    # (the time from the last kill to the run's end is a figure of benchmarks/fault_detection.py)
    proc = cli.start("run", str(long_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL,
                     "--set", "runtime.max_restarts=1")
    try:
        _wait_for(lambda: _masks_lines(tmp_path / "m.jsonl") >= 5 or proc.poll() is not None, 60, "progress")
        first = worker_pid(cli.tag, "render")
        assert proc.poll() is None and first is not None, proc.stderr.read()
        os.kill(first, signal.SIGKILL)
        _wait_for(lambda: worker_pid(cli.tag, "render") not in (first, None) or proc.poll() is not None, 60,
                  "its replacement")
        second = worker_pid(cli.tag, "render")
        assert proc.poll() is None and second is not None, proc.stderr.read()
        os.kill(second, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("streamseg: error:")]
    assert errors == ["streamseg: error: render: worker process died (SIGKILL) (after 1 restarts)"], stderr
    assert "Traceback" not in stderr
    assert cli.leftovers() == []
    assert 0 < read_video(tmp_path / "out.mp4")["frames"] < 300  # what was done is playable


def test_a_killed_supervisor_takes_its_workers_and_shared_memory_with_it(cli, long_clip: Path,
                                                                         tmp_path: Path) -> None:
    proc = cli.start("run", str(long_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL)
    try:
        _wait_for(lambda: _masks_lines(tmp_path / "m.jsonl") >= 5 or proc.poll() is not None, 60, "progress")
        assert proc.poll() is None and shm_leftovers(), "frames should be in shared memory mid-run"
        proc.kill()  # SIGKILL: nothing of the supervisor runs after this
        proc.communicate(timeout=10)
    finally:
        proc.kill()
    # each worker notices its parent is gone, and removes its own slots on the way out
    assert cli.leftovers(wait_s=10) == []


@pytest.mark.parametrize("sig, group", [(signal.SIGTERM, False), (signal.SIGINT, True)],
                         ids=["SIGTERM", "Ctrl-C to the whole process group"])
def test_interrupt_leaves_complete_playable_outputs(cli, long_clip: Path, tmp_path: Path, sig: int,
                                                    group: bool) -> None:
    proc = cli.start("run", str(long_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL,
                     new_group=group)
    try:
        _wait_for(lambda: _masks_lines(tmp_path / "m.jsonl") >= 5 or proc.poll() is not None, 60, "progress")
        if group:
            os.killpg(proc.pid, sig)  # what a terminal does on Ctrl-C
        else:
            proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr and "a second time" not in stderr
    video = read_video(tmp_path / "out.mp4")
    records = read_jsonl(tmp_path / "m.jsonl")
    assert 0 < video["frames"] < 300
    assert video["frames"] == len(records)  # both outputs hold every frame that was read
    assert video["pts"] == [r["pts"] for r in records]
    assert cli.leftovers() == []


def test_timeout_s_int_is_one_interruption(cli, long_clip: Path, tmp_path: Path) -> None:
    """``timeout -s INT 8 streamseg run ...``, a common way to record a few seconds: timeout sends SIGINT
    to the command and then to its process group; one interruption, outputs finished."""
    import subprocess
    import sys

    done = subprocess.run(["timeout", "-s", "INT", "8", sys.executable, "-m", "streamseg", "run", str(long_clip),
                           "--loop", "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL], cwd=tmp_path,
                          env=cli.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 124, done.stderr  # timeout's own code for "it ran out of time"
    assert "interrupted; outputs hold the" in done.stderr and "a second time" not in done.stderr, done.stderr
    video, records = read_video(tmp_path / "out.mp4"), read_jsonl(tmp_path / "m.jsonl")
    assert 0 < video["frames"] == len(records)
    assert cli.leftovers() == []


def _audio_only(path: Path) -> Path:
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=48000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 48000, i * 1024
            out.mux(stream.encode(frame))
        out.mux(stream.encode())
    return path


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, str]]:
    clip = make_clip(tmp / "good.mp4", frames=10)
    fast = make_clip(tmp / "fast.mp4", frames=10, faststart=True)
    (tmp / "text.mp4").write_text("this is not a video\n" * 50)
    (tmp / "empty.mp4").write_bytes(b"")
    (tmp / "header_cut.mp4").write_bytes(fast.read_bytes()[:300])  # cut inside the index (moov)
    (tmp / "no_index.mp4").write_bytes(clip.read_bytes()[:2000])  # index at the end, cut away
    return {
        "missing": (tmp / "missing.mp4", "input not found"),
        "text": (tmp / "text.mp4", "cannot read"),
        "zero bytes": (tmp / "empty.mp4", "empty (0 bytes)"),
        "header cut": (tmp / "header_cut.mp4", "cannot read"),
        "index cut away": (tmp / "no_index.mp4", "cannot read"),
        "audio only": (_audio_only(tmp / "audio.mp4"), "no video stream"),
        "a folder": (tmp, "folder"),
    }


BAD_INPUTS = ["missing", "text", "zero bytes", "header cut", "index cut away", "audio only", "a folder"]


def test_the_decoder_says_what_is_wrong_with_each_bad_input(tmp_path: Path) -> None:
    cases = _bad_inputs(tmp_path)
    assert sorted(cases) == sorted(BAD_INPUTS)
    for path, needle in cases.values():
        stage = DecodeStage(InputConfig(), str(path), "0")
        with pytest.raises(InputError, match=re.escape(needle)):
            stage.setup()
        stage.close()


# one caught before any worker starts (pipeline.check), one that the decode worker reports
@pytest.mark.parametrize("case", ["missing", "index cut away"])
def test_bad_inputs_give_one_clear_line(cli, tmp_path: Path, case: str) -> None:
    path, needle = _bad_inputs(tmp_path)[case]
    result = cli.run("run", str(path), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, timeout=60)
    assert_clean_error(result, needle)
    assert result.returncode == 3
    assert cli.leftovers() == []


def _decodable_frames(path: Path) -> list[int]:
    pts = []
    with av.open(str(path)) as container:
        try:
            for frame in container.decode(video=0):
                pts.append(frame.pts)
        except av.FFmpegError:
            pass
    return pts


def _decode_all(path: Path) -> tuple[list, list[str]]:
    """Every message the decoder emits for ``path``, and the warnings it reports."""
    messages, events = decode_all(str(path))
    return messages, [data["message"] for event, data in events if event == "warning"]


def test_a_file_cut_mid_stream_keeps_every_decodable_frame(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "fast.mp4", frames=60, faststart=True)
    data = clip.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 6 // 10])
    decodable = _decodable_frames(cut)
    assert 0 < len(decodable) < 60
    messages, warnings = _decode_all(cut)
    start, *frames, end = messages
    assert start.frames == 60 and isinstance(end, EndOfStream)
    assert [f.pts for f in frames] == decodable and [f.index for f in frames] == list(range(len(decodable)))
    assert end.reason == "truncated" and end.frames == len(decodable)
    assert f"input ended after {len(decodable)} of 60 frames" in end.detail
    assert warnings == [f"{cut}: {end.detail}"]  # what the summary prints as a warning


def test_a_corrupt_stretch_mid_file_is_skipped_and_the_rest_kept(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "fast.mp4", frames=60, faststart=True)
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(bytes(data))
    messages, _ = _decode_all(bad)
    frames = [m for m in messages if isinstance(m, Frame)]
    assert 40 <= len(frames) <= 60  # the stretch costs a few frames, not the file
    assert [f.index for f in frames] == list(range(len(frames)))
    assert all(b.pts > a.pts for a, b in itertools.pairwise(frames))
    assert messages[-1].frames == len(frames)


def test_coco_model_without_weights_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamseg.config import ModelConfig
    from streamseg.errors import ModelError
    from streamseg.stages.infer import InferStage

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))  # an empty torch cache, whatever this machine has
    stage = InferStage(ModelConfig(name="maskrcnn_resnet50_fpn", device="cpu"))
    with pytest.raises(ModelError) as info:
        stage.setup()
    message = str(info.value)
    assert "--weights FILE" in message and "maskrcnn_resnet50_fpn_coco" in message
    assert str(tmp_path / "torch-home") in message  # where torchvision looks for them


def test_weights_that_do_not_fit_are_refused(cli, tmp_path: Path) -> None:
    import torch

    clip = make_clip(tmp_path / "c.mp4", frames=4)
    torch.save({"not": torch.zeros(1)}, tmp_path / "bad.pt")
    result = cli.run("run", str(clip), "-o", "out.mp4", *TEST_MODEL, "--weights", str(tmp_path / "bad.pt"))
    assert_clean_error(result, "infer: weights", "do not fit model tiny-random")  # the worker's ModelError
    assert result.returncode == 4
    assert cli.leftovers() == []


def test_coco_model_metadata_matches_torchvision_without_importing_it() -> None:
    import subprocess
    import sys

    from torchvision.models import detection as tvd

    from streamseg.models import model_info

    assert model_info("maskrcnn_resnet50_fpn").categories == tuple(tvd.MaskRCNN_ResNet50_FPN_Weights.DEFAULT.meta["categories"])
    meta = tvd.KeypointRCNN_ResNet50_FPN_Weights.DEFAULT.meta
    kp = model_info("keypointrcnn_resnet50_fpn")
    assert kp.categories == tuple(meta["categories"]) and kp.keypoint_names == tuple(meta["keypoint_names"])
    # the supervisor reads model metadata before starting workers: that must not cost a torch import
    probe = "import sys; from streamseg.models import model_info; model_info('maskrcnn_resnet50_fpn_v2'); " \
            "print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"


@pytest.fixture
def small_disk(tmp_path: Path):
    """A folder with about 300 KB of room: a tmpfs where this process may mount one (ENOSPC, as a full
    disk gives), else a file-size limit for the run (EFBIG; shared memory off, since /dev/shm files
    count against that limit too). Yields (folder, extra CLI args, preexec for the run)."""
    import resource
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(folder)],
                                                   capture_output=True).returncode == 0
    if mounted:
        yield folder, [], None
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)
    else:
        yield folder, ["--set", "transport.shared_memory=false"], \
            lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))


def test_a_full_disk_gives_one_line_per_output_a_whole_masks_file_and_a_journal_to_recover(
        cli, long_clip: Path, small_disk, tmp_path: Path) -> None:
    folder, extra, preexec = small_disk
    result = cli.run("run", str(long_clip), "-o", str(folder / "out.mp4"), "--masks", str(folder / "m.jsonl"),
                     *TEST_MODEL, *extra, preexec=preexec)
    assert result.returncode == 5, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("streamseg: error: ") and str(folder) in last
    # the masks file ends on a whole line, every line a frame record
    text = (folder / "m.jsonl").read_text()
    assert text == "" or text.endswith("\n")
    assert [json.loads(line)["frame"] for line in text.splitlines()] == list(range(text.count("\n")))
    # the video: no unplayable file; its journal kept, and the one line that says how to use it
    assert not (folder / "out.mp4").exists()
    journal = folder / ".out.mp4.streamseg-journal"
    lines = [line for line in result.stderr.splitlines() if "out.mp4" in line]
    assert len(lines) == 1 and "out.mp4 could not be finished" in lines[0], result.stderr  # one line an output
    kept = int(re.search(r"makes a playable MP4 of its first (\d+) frames, kept in that journal", lines[0]).group(1))
    assert f"`streamseg recover {journal} OUT.mp4`" in lines[0] and journal.exists() and kept > 0
    rebuilt = cli.run("recover", str(journal), str(tmp_path / "rebuilt.mp4"))
    assert rebuilt.returncode == 0 and f"({kept} frames)" in rebuilt.stderr, rebuilt.stderr
    assert read_video(tmp_path / "rebuilt.mp4")["pts"] == read_video(long_clip)["pts"][:kept]
    assert not journal.exists()  # removed once the MP4 is written


def test_an_output_folder_that_disappears_is_said_per_output(cli, long_clip: Path, tmp_path: Path) -> None:
    import shutil

    folder = tmp_path / "outputs"
    folder.mkdir()
    run = cli.start("run", str(long_clip), "-o", str(folder / "out.mp4"), "--masks", str(folder / "m.jsonl"),
                    *TEST_MODEL)
    try:
        _wait_for(lambda: _masks_lines(folder / "m.jsonl") >= 20, 60, "20 frames of masks")
        shutil.rmtree(folder)
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 5, stderr
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("streamseg: error: ")
    assert len([line for line in lines if "out.mp4 could not be finished" in line]) == 1, stderr
    assert len([line for line in lines if "masks file" in line and "was removed while it was written" in line]) == 1


def test_a_masks_file_that_fills_up_ends_on_its_last_whole_line(tmp_path: Path) -> None:
    """The mask writer alone, in a process limited to 5000 bytes a file: a line half written is cut off."""
    import subprocess
    import sys

    code = f"""
import resource
from fractions import Fraction
import numpy as np
from streamseg.errors import OutputError
from streamseg.models import model_info
from streamseg.runtime.messages import Detections, FrameResult, MaskRegions
from streamseg.stages.maskwriter import MaskWriterStage
resource.setrlimit(resource.RLIMIT_FSIZE, (5000, 5000))
stage = MaskWriterStage({str(tmp_path / "m.jsonl")!r}, model_info("tiny-random").to_dict())
stage.setup()
mask = np.zeros((1, 48, 64), bool)
mask[0, 5:20, 10:40] = True
found = Detections(np.array([[10, 5, 40, 20]], np.float32), np.array([0.9], np.float32), np.array([1]),
                   MaskRegions.from_full(mask))
try:
    for i in range(1000):
        stage.process(FrameResult("0", i, i, Fraction(1, 30), 64, 48, found))
except OutputError as exc:
    print(exc)
stage.close()
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "File too large (it ends on the last whole line, frame" in done.stdout
    data = (tmp_path / "m.jsonl").read_bytes()
    assert 4000 < len(data) <= 5000 and data.endswith(b"\n")
    assert [json.loads(line)["frame"] for line in data.splitlines()] == list(range(data.count(b"\n")))
