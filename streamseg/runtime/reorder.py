"""Each stream's order again where parallel workers join (several render workers feeding an encoder).

Parallel workers finish frames in any order. The inference stage, which every frame of a stream
passes through, stamps each result with the index of the one it sent before (:attr:`Frame.prev`)
and each end of stream with its last frame (:attr:`EndOfStream.last`); where the workers' outputs
join, :class:`Reorder` lets a frame through once the frame it names has gone through:

- a stream's start goes through at once; frames that arrive before it wait for it;
- a frame goes through when its ``prev`` has, when it names none (-1: the stream's first frame,
  or the first a restarted inference stage sent, whose predecessors are all done), or when it is a
  repeat of one already through (the runtime drops repeats);
- an end of stream goes through once its ``last`` frame has; any frame still waiting then goes
  first, in index order.

Nothing waits for a frame that cannot come: a frame lost with a dead worker is sent again by the
link (:mod:`streamseg.runtime.link`), so the chain is always completed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import MessageError
from .messages import EndOfStream, Frame, FrameResult, StreamStart

T = TypeVar("T")

MAX_WAITING = 100_000
"""Messages that may wait at once; more is a hostile or broken peer (refused)."""


@dataclass
class _Stream(Generic[T]):
    started: bool = False
    through: int = -1
    """Index of the newest frame let through."""
    early: list[tuple[Any, T]] = field(default_factory=list)
    """What arrived before the stream's start, in arrival order."""
    waiting: dict[int, list[tuple[Any, T]]] = field(default_factory=dict)
    """Frames by the index they wait for."""
    ends: list[tuple[EndOfStream, T]] = field(default_factory=list)
    """The stream's end (and any repeat of it) while it waits for its last frame."""
    ended: bool = False


class Reorder(Generic[T]):
    """Gives messages back in their streams' order; ``T`` is whatever the caller keeps with each
    (where to acknowledge it)."""

    def __init__(self) -> None:
        self.streams: dict[str, _Stream[T]] = {}
        self.held = 0
        """Messages waiting now."""

    def push(self, message: Any, item: T) -> list[tuple[Any, T]]:
        """Take ``message`` (decoded) with ``item``; return what may go on now, in order."""
        stream_id = getattr(message, "stream_id", None)
        if not isinstance(stream_id, str):
            return [(message, item)]
        stream = self.streams.setdefault(stream_id, _Stream())
        out: list[tuple[Any, T]] = []
        if isinstance(message, StreamStart) and stream.ended:  # a service's stream id, come again
            stream = self.streams[stream_id] = _Stream()
        if isinstance(message, StreamStart):
            out.append((message, item))
            if not stream.started:
                stream.started = True
                early, stream.early = stream.early, []
                self.held -= len(early)
                for pending in early:
                    self._place(stream, *pending, out)
            return out
        if self.held >= MAX_WAITING:
            raise MessageError(f"more than {MAX_WAITING} messages wait for their turn")
        if not stream.started:
            stream.early.append((message, item))
            self.held += 1
            return out
        self._place(stream, message, item, out)
        return out

    def _place(self, stream: _Stream[T], message: Any, item: T, out: list[tuple[Any, T]]) -> None:
        if isinstance(message, (Frame, FrameResult)):
            if message.index <= stream.through or message.prev <= stream.through or stream.ended:
                out.append((message, item))
                stream.through = max(stream.through, message.index)
            else:
                stream.waiting.setdefault(message.prev, []).append((message, item))
                self.held += 1
        elif isinstance(message, EndOfStream):
            if stream.ended:
                out.append((message, item))  # a repeat: the runtime drops it
                return
            stream.ends.append((message, item))  # repeats wait with the first
            self.held += 1
        else:
            out.append((message, item))
        self._release(stream, out)

    def _release(self, stream: _Stream[T], out: list[tuple[Any, T]]) -> None:
        """Let through what waited for the frames let through so far, then the end when it is due."""
        while True:
            due = [prev for prev in stream.waiting if prev <= stream.through]
            if not due:
                break
            ready = sorted((p for prev in due for p in stream.waiting.pop(prev)), key=lambda p: p[0].index)
            self.held -= len(ready)
            out.extend(ready)
            stream.through = max(stream.through, ready[-1][0].index)
        if stream.ends and stream.ends[0][0].last <= stream.through:
            rest = sorted((p for group in stream.waiting.values() for p in group), key=lambda p: p[0].index)
            stream.waiting.clear()
            out.extend(rest)
            out.extend(stream.ends)
            self.held -= len(rest) + len(stream.ends)
            stream.ends = []
            stream.ended = True
