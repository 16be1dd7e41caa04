"""The link protocol over real ZeroMQ sockets, and the stages' side of a restart, without processes."""

from __future__ import annotations

import dataclasses
import json
import time
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import read_jsonl

from streamseg.config import InputConfig
from streamseg.models import model_info
from streamseg.runtime import codec
from streamseg.runtime.ledger import Ledger
from streamseg.runtime.link import Inbox, Outbox
from streamseg.runtime.messages import (
    Detections,
    EndOfStream,
    Frame,
    FrameResult,
    StreamStart,
)
from streamseg.stages import maskwriter
from streamseg.stages.decode import DecodeStage
from streamseg.stages.maskwriter import MaskWriterStage

TB = Fraction(1, 30)


def _frame(i: int, stream: str = "s") -> Frame:
    return Frame(stream, i, i, TB, np.full((4, 6, 3), i % 256, np.uint8))


def _start(stream: str = "s") -> StreamStart:
    return StreamStart(stream, 6, 4, Fraction(30), TB, 0, "x", False)


class _Receiver:
    """An Inbox with the bookkeeping a worker runtime would do, for driving the protocol by hand."""

    def __init__(self, ctx: zmq.Context, endpoint: str, credit: int, name: str = "r") -> None:
        self.open: list[str] = []
        self.inbox = Inbox(ctx, endpoint, name, credit, 1 << 20, lambda: {"open": self.open, "last": {}})

    def pump(self, outbox: Outbox, until: Any, timeout_s: float = 5.0) -> list[tuple[int, Any]]:
        """Service both ends until ``until(received)``; returns what arrived as (seq, message)."""
        got: list[tuple[int, Any]] = []
        deadline = time.monotonic() + timeout_s
        while not until(got):
            assert time.monotonic() < deadline, f"only {len(got)} messages arrived"
            outbox.service()
            self.inbox.service()
            item = self.inbox.receive()
            if item is not None:
                got.append((item[0], codec.decode(item[1])))
            else:
                time.sleep(0.002)
        return got

    def close(self) -> None:
        self.inbox.close(linger=0)


@pytest.fixture
def ctx() -> Any:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)  # closes what a failed test left open


def test_credit_bounds_what_waits_and_taking_gives_it_back(ctx: zmq.Context, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/l"
    acks: list[tuple[int, bool]] = []
    outbox = Outbox(ctx, endpoint, "frames", on_ack=lambda message, done: acks.append((message.index, done)))
    receiver = _Receiver(ctx, endpoint, credit=3)
    try:
        for i in range(10):
            outbox.put(_frame(i))
        got = receiver.pump(outbox, lambda g: len(g) == 3)
        time.sleep(0.1)
        outbox.service()
        assert receiver.inbox.receive() is None and outbox.backlog == 7  # nothing beyond the credit
        for seq, _ in got:
            receiver.inbox.taken(seq)
        got += receiver.pump(outbox, lambda g: len(g) == 3)
        assert [m.index for _, m in got] == [0, 1, 2, 3, 4, 5]
        assert acks == [(0, False), (1, False), (2, False)]  # the sending stage hears of each taking
        assert not outbox.idle  # taken is not done: the sender still keeps them
        for seq, _ in got:
            receiver.inbox.done(seq)  # done gives the credit of what was not taken back, and frees them
        more = receiver.pump(outbox, lambda g: len(g) == 3)
        assert [m.index for _, m in more] == [6, 7, 8] and outbox.backlog == 1
        # done without being taken first counts as both, in that order
        assert acks[3:] == [(0, True), (1, True), (2, True), (3, False), (3, True), (4, False), (4, True),
                            (5, False), (5, True)]
        assert sorted(outbox.peers[b"r"].inflight) == [seq for seq, _ in more]
    finally:
        receiver.close()
        outbox.close(linger=0)


def test_a_new_receiver_gets_the_open_streams_and_everything_its_predecessor_had_not_finished(
        ctx: zmq.Context, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/l"
    taken: list[int] = []
    outbox = Outbox(ctx, endpoint, "frames",
                    on_ack=lambda message, done: taken.append(getattr(message, "index", -1)) if not done else None)
    first = _Receiver(ctx, endpoint, credit=8)
    outbox.put(_start())
    for i in range(5):
        outbox.put(_frame(i))
    got = first.pump(outbox, lambda g: len(g) == 6)
    for seq, message in got[:3]:  # the start and frames 0, 1 are finished; 2, 3, 4 are not
        first.inbox.taken(seq)
        first.inbox.done(seq)
    first.pump(outbox, lambda g: len(outbox.peers[b"r"].inflight) == 3)
    first.close()  # it dies

    second = _Receiver(ctx, endpoint, credit=8)  # its replacement, under the same name
    try:
        again = second.pump(outbox, lambda g: len(g) == 4)
        for seq, _ in again:
            second.inbox.taken(seq)
        second.pump(outbox, lambda g: len(taken) == 7)
        assert taken == [-1, 0, 1, -1, 2, 3, 4]  # the replacement's takings are heard again (of what it gets)
        kinds = [type(m).__name__ for _, m in again]
        assert kinds == ["StreamStart", "Frame", "Frame", "Frame"]
        assert [m.index for _, m in again[1:]] == [2, 3, 4]
        assert outbox.resent == 3
    finally:
        second.close()
        outbox.close(linger=0)


def test_a_new_receiver_is_told_which_streams_are_over(ctx: zmq.Context, tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/l"
    taken: list[int] = []
    outbox = Outbox(ctx, endpoint, "frames",
                    on_ack=lambda message, done: taken.append(getattr(message, "index", -1)) if not done else None)
    first = _Receiver(ctx, endpoint, credit=8)
    for message in (_start("a"), EndOfStream("a", 0), _start("b")):
        outbox.put(message)
    got = first.pump(outbox, lambda g: len(g) == 3)
    for seq, _ in got[:2]:
        first.inbox.done(seq)
    first.pump(outbox, lambda g: outbox.ended == ["a"])
    first.close()
    second = _Receiver(ctx, endpoint, credit=8)
    try:
        again = second.pump(outbox, lambda g: len(g) == 1)
        assert second.inbox.ended == ["a"]
        assert isinstance(again[0][1], StreamStart) and again[0][1].stream_id == "b"
    finally:
        second.close()
        outbox.close(linger=0)


def test_an_input_is_done_only_when_what_came_of_it_is_done_and_it_is_no_longer_held() -> None:
    done: list[int] = []

    class FakeInbox:
        def done(self, seq: int) -> None:
            done.append(seq)

    held = {("s", 1)}
    ledger = Ledger(lambda: held)
    inbox: Any = FakeInbox()
    ledger.sent((("s", 0),))
    ledger.settle(inbox, 10, (("s", 0),))  # its output is in flight
    ledger.settle(inbox, 11, (("s", 1),))  # held by the stage
    ledger.settle(inbox, 12, (("s", 2),))  # nothing came of it
    assert done == [12]
    ledger.finished((("s", 0),))
    assert done == [12, 10]
    held.clear()
    ledger.release({("s", 1)})
    assert done == [12, 10, 11]


def _frames_of(stage: DecodeStage) -> list[Any]:
    stage.bind_events(lambda event, **data: None)
    return [m for _, m in stage.produce() if m is not None]


def test_a_replacement_decoder_goes_on_after_the_newest_frame_downstream(clip: Path) -> None:
    whole = DecodeStage(InputConfig(), str(clip), "0")
    whole.setup()
    frames = [m for m in _frames_of(whole) if isinstance(m, Frame)]
    whole.close()
    replacement = DecodeStage(InputConfig(), str(clip), "0")
    replacement.restarted, replacement.previous = True, {"cause": "worker process died (SIGSEGV)"}
    replacement.setup()
    replacement.resume({"0": (30, frames[30].pts)})
    rest = _frames_of(replacement)
    replacement.close()
    after = [m for m in rest if isinstance(m, Frame)]
    assert [f.index for f in after] == list(range(31, 48))
    assert [f.pts for f in after] == [f.pts for f in frames[31:]]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(after, frames[31:]))
    assert isinstance(rest[-1], EndOfStream) and rest[-1].reason == "end" and rest[-1].frames == 48


def test_a_decoder_that_fails_twice_at_the_same_frame_ends_the_stream_there(clip: Path) -> None:
    stage = DecodeStage(InputConfig(), str(clip), "0")
    stage.restarted = True
    stage.previous = {"cause": "worker process died (SIGSEGV)", "resumed_at": 20}
    stage.setup()
    stage.resume({"0": (20, 20 * 1001)})
    out = _frames_of(stage)
    stage.close()
    assert [type(m).__name__ for m in out] == ["StreamStart", "EndOfStream"]
    end = out[-1]
    assert end.reason == "truncated" and end.frames == 21 and "failed twice at frame 21" in end.detail


def _result(i: int) -> FrameResult:
    return FrameResult("s", i, i, TB, 6, 4, Detections.empty(4, 6))


def _mask_writer(path: Path, restarted: bool = False) -> MaskWriterStage:
    stage = MaskWriterStage(str(path), model_info("tiny-random").to_dict())
    stage.restarted = restarted
    stage.setup()
    return stage


def test_a_replacement_mask_writer_cuts_a_torn_line_and_skips_what_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    first = _mask_writer(path)
    for i in range(5):
        first.process(_result(i))
    first.close()
    path.write_bytes(path.read_bytes() + b'{"stream":"s","frame":5,"pts"')  # the crash tore line 6
    second = _mask_writer(path, restarted=True)
    assert second.counters["frames"] == 5
    for i in range(3, 8):  # upstream sends 3 and 4 again: it did not know they were written
        second.process(_result(i))
    second.close()
    assert [r["frame"] for r in read_jsonl(path)] == list(range(8))


def test_a_replacement_mask_writer_appends_to_a_service_stream_s_file_only_if_that_stream_began_before_it(
        tmp_path: Path) -> None:
    """A service's stream names its file in its StreamStart: sent again after the mask writer's
    restart, it continues the file; the same id added again later, with the same file, starts it over."""
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"stream": "s", "frame": i}) + "\n" for i in range(10)))
    start = StreamStart("s", 6, 4, Fraction(30), TB, 0, "", False, masks=str(path), started=time.time() - 60)
    replacement = MaskWriterStage("", model_info("tiny-random").to_dict())
    replacement.restarted = True
    replacement.setup()
    replacement.process(start)  # the stream it took over: frames 0-9 are in its file
    for i in range(8, 12):
        replacement.process(_result(i))
    replacement.flush(EndOfStream("s", 12, "end"))
    assert [r["frame"] for r in read_jsonl(path)] == list(range(12))
    replacement.process(dataclasses.replace(start, started=time.time() + 1))  # added again, after it began
    for i in range(3):
        replacement.process(_result(i))
    replacement.close()
    assert [r["frame"] for r in read_jsonl(path)] == [0, 1, 2]


def test_masks_reach_the_disk_every_few_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Synced every FSYNC_EVERY_S of the stage's clock, at each stream's end and at close (the
    clock is made up: the policy, not the machine's speed, is what is tested)."""
    synced: list[tuple[float, int]] = []
    clock = [100.0]
    monkeypatch.setattr(maskwriter, "time", SimpleNamespace(monotonic=lambda: clock[0], time=time.time))
    monkeypatch.setattr(maskwriter.os, "fsync", lambda fd: synced.append((clock[0], len(read_jsonl(path)))))
    path = tmp_path / "m.jsonl"
    stage = _mask_writer(path)
    for i in range(30):
        clock[0] += 0.5  # a frame every half second
        stage.process(_result(i))
    assert [t for t, _ in synced] == [102.0 + 2.0 * k for k in range(7)]  # every 2 s: after frames 4, 8, ...
    assert [lines for _, lines in synced] == [4 * (k + 1) for k in range(7)]  # each line written before its sync
    stage.flush(EndOfStream("s", 30))
    assert synced[-1] == (115.0, 30)  # and the stream's end, whenever it comes
    stage.close()
    assert len(synced) == 9 and synced[-1] == (115.0, 30)  # and at close
    assert maskwriter.FSYNC_EVERY_S == 2.0
