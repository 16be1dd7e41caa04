"""Several render and encode workers: frames go to whichever worker is free and come out in order.

:class:`Reorder` on its own first, then whole runs through the real CLI, compared picture by
picture with runs of one worker each, also when a worker is killed in the middle.
"""

from __future__ import annotations

import os
import random
import re
import signal
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import (
    REPEATABLE,
    TEST_MODEL,
    assert_same_outputs,
    decoded,
    digest,
    masks_lines,
    read_jsonl,
    shm_leftovers,
    wait_for,
    worker_pid,
)

from streamseg.errors import MessageError
from streamseg.runtime.messages import EndOfStream, Frame, StreamStart
from streamseg.runtime.reorder import Reorder

_IMAGE = np.zeros((2, 2, 3), np.uint8)


def _start(stream: str = "s") -> StreamStart:
    return StreamStart(stream, 2, 2, Fraction(30), Fraction(1, 30), 0, "x", False)


def _frame(index: int, prev: int, stream: str = "s") -> Frame:
    return Frame(stream, index, index, Fraction(1, 30), _IMAGE, 0.0, prev)


def _names(messages: list[Any]) -> list[str]:
    return [f"{type(m).__name__}:{m.stream_id}:{getattr(m, 'index', '')}" for m in messages]


def _push_all(reorder: Reorder[None], messages: list[Any]) -> list[Any]:
    out: list[Any] = []
    for message in messages:
        out += [m for m, _ in reorder.push(message, None)]
    return out


@pytest.mark.parametrize("seed", range(20))
def test_reorder_gives_each_stream_in_order_whatever_the_arrival_order(seed: int) -> None:
    rng = random.Random(seed)
    sent: list[Any] = []
    for stream in ("a", "b"):
        indices = sorted(rng.sample(range(200), 60))  # gaps: frames a live batcher dropped
        chain = [_frame(i, p, stream) for i, p in zip(indices, [-1, *indices[:-1]])]
        sent += [_start(stream), *chain, EndOfStream(stream, 200, last=indices[-1])]
    arrived = sent[:]
    rng.shuffle(arrived)
    reorder: Reorder[None] = Reorder()
    out = _push_all(reorder, arrived)
    assert reorder.held == 0
    for stream in ("a", "b"):
        assert _names([m for m in out if m.stream_id == stream]) == _names([m for m in sent if m.stream_id == stream])


def test_reorder_lets_repeats_through_and_holds_an_end_until_its_last_frame() -> None:
    reorder: Reorder[None] = Reorder()
    assert _names(_push_all(reorder, [_start(), _frame(0, -1), _frame(2, 1)])) == ["StreamStart:s:", "Frame:s:0"]
    end = EndOfStream("s", 3, last=2)
    assert _push_all(reorder, [end, end]) == []  # the end and its repeat (from a second worker) wait
    # a repeat of a frame already through goes on at once (the runtime drops it)
    assert _names(_push_all(reorder, [_frame(0, -1)])) == ["Frame:s:0"]
    assert _names(_push_all(reorder, [_frame(1, 0)])) == ["Frame:s:1", "Frame:s:2", "EndOfStream:s:",
                                                          "EndOfStream:s:"]
    assert reorder.held == 0


def test_reorder_trusts_a_frame_that_names_no_predecessor() -> None:
    """After inference restarts, its first result names none: everything before it is done already."""
    reorder: Reorder[None] = Reorder()
    out = _push_all(reorder, [_start(), _frame(0, -1), _frame(1, 0), _frame(4, 3), _frame(2, -1), _frame(3, 2)])
    assert _names(out)[1:] == ["Frame:s:0", "Frame:s:1", "Frame:s:2", "Frame:s:3", "Frame:s:4"]


def test_reorder_refuses_a_flood_of_frames_that_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streamseg.runtime.reorder.MAX_WAITING", 3)
    early: Reorder[None] = Reorder()
    _push_all(early, [_frame(i + 1, i) for i in range(3)])  # before the stream's start
    with pytest.raises(MessageError, match="wait for their turn"):
        early.push(_frame(9, 8), None)
    gaps: Reorder[None] = Reorder()
    _push_all(gaps, [_start(), *(_frame(2 * i + 2, 2 * i + 1) for i in range(3))])  # each behind a gap
    with pytest.raises(MessageError, match="wait for their turn"):
        gaps.push(_frame(20, 19), None)


def _stage_frames(stderr: str, stage: str) -> dict[str, int]:
    return {name: int(n) for name, n in re.findall(rf"^({stage}(?:-\d+)?)\s.*frames=(\d+)", stderr, re.M)}


def test_three_render_workers_give_the_outputs_of_one(cli, fault_clip: Path, undisturbed: dict[str, Any]) -> None:
    result = cli.run("run", str(fault_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, *REPEATABLE,
                     "--set", "render.workers=3")
    assert result.returncode == 0, result.stderr
    assert_same_outputs(cli.cwd, undisturbed)
    shares = _stage_frames(result.stderr, "render")
    assert sorted(shares) == ["render-0", "render-1", "render-2"]
    assert sum(shares.values()) == len(undisturbed["masks"])
    assert cli.leftovers() == []


def test_killed_workers_among_parallel_renderers_change_nothing(cli, fault_clip: Path,
                                                                undisturbed: dict[str, Any]) -> None:
    # one of two renderers, then the model that feeds them both (a real SIGKILL each, in one run)
    proc = cli.start("run", str(fault_clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, *REPEATABLE,
                     "--set", "render.workers=2")
    try:
        for count, stage in ((40, "render-1"), (90, "infer")):
            wait_for(lambda n=count: masks_lines(cli.cwd / "m.jsonl") >= n or proc.poll() is not None, 120,
                     f"frame {count}")
            pid = worker_pid(cli.tag, stage)
            assert proc.poll() is None and pid is not None, f"the run ended before frame {count}"
            if stage == "render-1":
                assert shm_leftovers(), "frames should travel in shared memory"  # removed at the end: leftovers()
            os.kill(pid, signal.SIGKILL)
        _, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    assert "restarted render-1 1x: worker process died (SIGKILL)" in stderr
    assert "restarted infer 1x: worker process died (SIGKILL)" in stderr
    assert_same_outputs(cli.cwd, undisturbed)
    assert cli.leftovers() == []


def test_two_encoders_write_two_streams_as_one_encoder_does(cli, two_sources: dict[str, Any]) -> None:
    # compared with the shared run of the same two sources by one render and one encode worker
    result = cli.run("run", *map(str, two_sources["sources"]), "--stream-id", "left", "--stream-id", "right",
                     "-o", "out.mp4", "--masks", "m-{stream}.jsonl",
                     *TEST_MODEL, "--max-batch", "1", "--set", "encode.workers=2", "--set", "render.workers=2")
    assert result.returncode == 0, result.stderr
    assert sorted(_stage_frames(result.stderr, "encode").values()) == [30, 48]
    assert "frames 78" in result.stderr
    one = two_sources["folder"]
    for sid in ("left", "right"):
        assert digest(decoded(cli.cwd / f"out-{sid}.mp4")) == digest(decoded(one / f"out-{sid}.mp4")), sid
        assert read_jsonl(cli.cwd / f"m-{sid}.jsonl") == read_jsonl(one / f"m-{sid}.jsonl"), sid
    assert cli.leftovers() == []
