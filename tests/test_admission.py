"""Stream admission (:mod:`streamseg.runtime.admission`): what a worker lets through to its stage,
driven directly with real messages, no sockets or processes."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from streamseg.errors import MessageError
from streamseg.runtime.admission import Admission
from streamseg.runtime.messages import (
    Batch,
    Detections,
    EndOfStream,
    Frame,
    FrameResult,
    StreamStart,
    StreamStatus,
)

TB = Fraction(1, 30)


def _start(stream: str = "s") -> StreamStart:
    return StreamStart(stream, 4, 2, Fraction(30), TB, 0, "x", False)


def _frame(index: int, stream: str = "s") -> Frame:
    return Frame(stream, index, index * 10, TB, np.zeros((2, 4, 3), np.uint8))


def _result(index: int, stream: str = "s") -> FrameResult:
    return FrameResult(stream, index, index * 10, TB, 4, 2, Detections.empty(2, 4))


def test_a_stream_opens_passes_its_frames_and_ends() -> None:
    admission = Admission(1)
    start, end = _start(), EndOfStream("s", 3)
    assert admission.admit(start) is start
    assert admission.open_streams([]) is True
    for i in range(3):
        frame = _frame(i)
        assert admission.admit(frame) is frame
    status = StreamStatus("s", "lost")
    assert admission.admit(status) is status
    assert admission.admit(end) is end
    assert admission.open_streams([]) is False
    state = admission.streams["s"]
    assert (state.open, state.ended, state.last_index, state.last_pts) == (False, True, 2, 20)


def test_repeats_are_dropped() -> None:
    admission = Admission(1)
    admission.admit(_start())
    assert admission.admit(_start()) is None  # a start sent again while the stream is open
    for i in range(4):
        admission.admit(_result(i))
    assert admission.admit(_result(2)) is None and admission.admit(_result(3)) is None
    assert admission.admit(_result(5)) is not None  # a gap (a dropped live frame) is not a repeat
    assert admission.admit(_result(4)) is None  # older than the newest let through
    end = EndOfStream("s", 6)
    assert admission.admit(end) is end
    assert admission.admit(end) is None  # the end again
    assert admission.admit(_start()) is None  # and a start of a stream that has ended


def test_a_batch_keeps_only_its_new_frames() -> None:
    admission = Admission(2)
    admission.admit(_start("a"))
    admission.admit(_start("b"))
    whole = Batch((_frame(0, "a"), _frame(0, "b")))
    assert admission.admit(whole) is whole
    mixed = Batch((_frame(0, "a"), _frame(1, "a"), _frame(0, "b"), _frame(1, "b")))
    smaller = admission.admit(mixed)
    assert isinstance(smaller, Batch) and smaller is not mixed
    assert [(f.stream_id, f.index) for f in smaller.frames] == [("a", 1), ("b", 1)]
    assert admission.admit(mixed) is None  # nothing new in it any more


def test_parallel_mode_lets_an_older_frame_through() -> None:
    """One of several workers on one port: a frame a dead sibling had may come after later ones."""
    admission = Admission(1, parallel=True)
    admission.admit(_start())
    for i in (0, 1, 3):
        assert admission.admit(_result(i)) is not None
    late = _result(2)
    assert admission.admit(late) is late
    assert admission.streams["s"].last_index == 3  # the newest stays the newest
    assert admission.admit(_start()) is None  # starts and ends are still taken once
    end = EndOfStream("s", 4)
    assert admission.admit(end) is end and admission.admit(end) is None


def test_frames_of_streams_that_are_not_open_and_bare_detections_are_errors() -> None:
    admission = Admission(1)
    with pytest.raises(MessageError, match="not open"):
        admission.admit(_frame(0, "never"))
    with pytest.raises(MessageError, match="not open"):
        admission.admit(_result(0, "never"))
    with pytest.raises(MessageError, match="not open"):
        admission.admit(Batch((_frame(0, "never"),)))
    with pytest.raises(MessageError, match="end of stream .* not open"):
        admission.admit(EndOfStream("never", 0))
    with pytest.raises(MessageError, match="StreamStatus .* not open"):
        admission.admit(StreamStatus("never", "lost"))
    with pytest.raises(MessageError, match="bare Detections"):
        admission.admit(Detections.empty(2, 4))
    with pytest.raises(MessageError, match="bare str"):
        admission.admit("hello")
    admission.admit(_start())
    admission.admit(EndOfStream("s", 0))
    with pytest.raises(MessageError, match="not open"):  # a frame after its stream's end
        admission.admit(_frame(0))
    assert admission.streams.keys() == {"s"}  # an error leaves no trace of the stream it named


def test_joined_mode_waits_for_every_input_to_send_every_end() -> None:
    """Inputs from parallel workers of one stage: each sends every stream's end."""
    admission = Admission(2, joined=True)
    sources = ["render-0", "render-1"]
    for stream in ("a", "b"):
        admission.admit(_start(stream))
    assert admission.open_streams(sources)
    for stream in ("a", "b"):
        end = EndOfStream(stream, 0)
        admission.end_seen("render-0", end)
        admission.admit(end)
    assert admission.open_streams(sources), "render-1 has not sent its ends yet"
    admission.end_seen("render-1", EndOfStream("a", 0))
    admission.end_seen("render-1", _frame(0, "b"))  # not an end: changes nothing
    assert admission.open_streams(sources)
    admission.end_seen("render-1", EndOfStream("b", 0))
    assert not admission.open_streams(sources)
    # without joined, the streams' ends are enough
    plain = Admission(1)
    plain.admit(_start())
    plain.admit(EndOfStream("s", 0))
    assert not plain.open_streams(sources)


def test_a_stream_that_ended_upstream_counts_as_ended() -> None:
    """A replacement learns from its link's hello that a stream ended before it started."""
    admission = Admission(2, joined=True)
    admission.ended_upstream("in", "a")
    admission.admit(_start("b"))
    assert admission.open_streams(["in"])
    assert admission.admit(_start("a")) is None  # a start sent again for it is a repeat
    admission.ended_upstream("in", "a")  # told twice: no change
    end = EndOfStream("b", 0)
    admission.end_seen("in", end)
    admission.admit(end)
    assert not admission.open_streams(["in"])


def test_hello_says_which_streams_are_open_and_where_each_is() -> None:
    admission = Admission(3)
    assert admission.hello() == {"open": [], "last": {}}  # the empty case: nothing seen yet
    admission.admit(_start("a"))
    admission.admit(_start("b"))
    admission.admit(_start("c"))
    admission.admit(_frame(0, "a"))
    admission.admit(_frame(4, "a"))
    admission.admit(_frame(1, "c"))
    admission.admit(EndOfStream("c", 2))
    assert admission.hello() == {"open": ["a", "b"], "last": {"a": [4, 40], "c": [1, 10]}}


def test_no_streams_expected_means_done_at_once() -> None:
    assert Admission(0).open_streams([]) is False
    assert Admission(1).open_streams([]) is True
