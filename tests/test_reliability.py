"""Workers that die or hang mid-run are replaced, and the outputs are those of an undisturbed run.

Every fault here is real: SIGKILL, SIGSEGV and SIGSTOP sent to the worker processes of a running
``streamseg run``, found by their process names.
"""

from __future__ import annotations

import os
import random
import re
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    CLI,
    FAULT_FRAMES,
    REPEATABLE,
    TEST_MODEL,
    assert_same_outputs,
    decoded,
    masks_lines,
    read_jsonl,
    worker_pid,
)


def _run_with_faults(cli, fault_clip: Path, faults: list[tuple[int, str, int]], *extra: str,
                     timeout: float = 180) -> tuple[int, str, list[float]]:
    """Run the pipeline; for each ``(count, stage, sig)`` of ``faults``, send ``sig`` to ``stage``'s
    worker when the masks file has ``count`` lines. Returns (exit code, stderr, when each fault was sent)."""
    proc = cli.start("run", str(fault_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, *REPEATABLE,
                     *extra)
    sent: list[float] = []
    try:
        for count, stage, sig in faults:
            deadline = time.monotonic() + 120
            while masks_lines(cli.cwd / "m.jsonl") < count and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            pid = worker_pid(cli.tag, stage)
            assert proc.poll() is None and pid is not None, f"the run ended before frame {count}"
            os.kill(pid, sig)
            sent.append(time.monotonic())
            # the next fault goes to the replacement, once it exists
            while worker_pid(cli.tag, stage) in (pid, None) and proc.poll() is None:
                time.sleep(0.02)
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr, sent


def test_inference_killed_twice_at_random_frames_gives_the_outputs_of_an_undisturbed_run(
        cli, fault_clip: Path, undisturbed: dict[str, Any]) -> None:
    at = sorted(random.Random(os.getpid()).sample(range(15, FAULT_FRAMES - 40), 2))
    code, stderr, _ = _run_with_faults(cli, fault_clip, [(n, "infer", signal.SIGKILL) for n in at])
    assert code == 0, f"killed at {at}: {stderr}"
    assert_same_outputs(cli.cwd, undisturbed)
    assert "restarted infer 2x: worker process died (SIGKILL); worker process died (SIGKILL)" in stderr
    assert "resent" in stderr and "Traceback" not in stderr
    assert cli.leftovers() == []


def test_a_killed_tracker_gives_the_track_ids_of_an_undisturbed_run(cli, fault_clip: Path,
                                                                    undisturbed: dict[str, Any]) -> None:
    """Its replacement takes back the last state it reported and is sent the frames it held since
    (how: tests/test_track_stage.py); the ids, in the masks and drawn in the video, are the same."""
    at = sorted(random.Random(os.getpid()).sample(range(15, FAULT_FRAMES - 40), 2))
    code, stderr, _ = _run_with_faults(cli, fault_clip, [(n, "track", signal.SIGKILL) for n in at])
    assert code == 0, f"killed at {at}: {stderr}"
    assert_same_outputs(cli.cwd, undisturbed)
    assert len({i["track_id"] for r in undisturbed["masks"] for i in r["instances"]}) > 10
    assert "restarted track 2x: worker process died (SIGKILL); worker process died (SIGKILL)" in stderr
    assert cli.leftovers() == []


def test_a_stopped_render_worker_is_noticed_and_replaced(cli, fault_clip: Path, undisturbed: dict[str, Any]) -> None:
    code, stderr, _ = _run_with_faults(cli, fault_clip, [(40, "render", signal.SIGSTOP)],
                                       "--set", "runtime.heartbeat_timeout_s=2")
    assert code == 0, stderr
    assert_same_outputs(cli.cwd, undisturbed)
    # noticed by its silence, once the 2 s allowed had passed (when exactly: tests/test_health.py, and
    # how soon on a real run: benchmarks/fault_detection.py)
    silent = re.search(r"render: stopped responding \(no heartbeat for ([0-9.]+) s\)", stderr)
    assert silent and float(silent.group(1)) >= 2.0, stderr
    assert "restarted render 1x" in stderr
    assert cli.leftovers() == []


@pytest.fixture(scope="module")
def decoder_and_mask_writer_faults(fault_clip: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run whose mask writer is killed at frames 30 and 90 and whose decoder segfaults at frame 50
    (faults of independent stages, shared by the two tests below)."""
    cli = CLI(tmp_path_factory.mktemp("decode-masks-faults"))
    try:
        code, stderr, _ = _run_with_faults(cli, fault_clip, [(30, "masks", signal.SIGKILL),
                                                             (50, "decode", signal.SIGSEGV),
                                                             (90, "masks", signal.SIGKILL)])
        return {"folder": cli.cwd, "code": code, "stderr": stderr, "leftovers": cli.leftovers()}
    finally:
        cli.kill_leftovers()


def test_a_crashed_decoder_goes_on_after_the_newest_frame_downstream(decoder_and_mask_writer_faults: dict[str, Any],
                                                                     undisturbed: dict[str, Any]) -> None:
    run = decoder_and_mask_writer_faults
    assert run["code"] == 0, run["stderr"]
    assert_same_outputs(run["folder"], undisturbed)
    assert "decoder failed (worker process died (SIGSEGV)) and was restarted after frame" in run["stderr"]
    assert "restarted decode 1x: worker process died (SIGSEGV)" in run["stderr"]
    assert run["leftovers"] == []


def test_a_killed_mask_writer_neither_loses_nor_repeats_a_line(decoder_and_mask_writer_faults: dict[str, Any],
                                                              undisturbed: dict[str, Any]) -> None:
    run = decoder_and_mask_writer_faults
    assert run["code"] == 0, run["stderr"]
    assert read_jsonl(run["folder"] / "m.jsonl") == undisturbed["masks"]
    assert "restarted masks 2x: worker process died (SIGKILL); worker process died (SIGKILL)" in run["stderr"]


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def test_a_killed_encoder_rebuilds_its_output_from_the_journal(cli, fault_clip: Path,
                                                              undisturbed: dict[str, Any]) -> None:
    code, stderr, _ = _run_with_faults(cli, fault_clip, [(n, "encode", signal.SIGKILL) for n in (40, 100)])
    assert code == 0, stderr
    assert "rebuilt" in stderr and "restarted encode 2x" in stderr
    assert read_jsonl(cli.cwd / "m.jsonl") == undisturbed["masks"]
    video = decoded(cli.cwd / "out.mp4")
    want = undisturbed["video"]
    assert [pts for pts, _ in video] == [pts for pts, _ in want]  # every frame once, in order
    # frames after a restart are encoded again from a new keyframe: the same pictures, not the same
    # bits (the clip is noise-like texture, hard on the encoder); a picture one frame off is far worse
    worst = min(_psnr(a, b) for (_, a), (_, b) in zip(video, want))
    shifted = max(_psnr(a, b) for (_, a), (_, b) in zip(video[1:], want))
    assert worst > 25 > shifted, f"PSNR to the undisturbed run: worst {worst:.1f} dB, one frame off {shifted:.1f} dB"
    assert not list(cli.cwd.glob(".*journal")), "the journal is removed once the output is finished"
