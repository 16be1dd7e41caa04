"""Stream admission: which inputs a worker lets through to its stage, stream by stream.

Delivery on the links is at-least-once (:mod:`streamseg.runtime.link`), so after a restart a worker
may be sent again what it (or the process it replaced) already had. :class:`Admission` keeps, per
stream, whether it is open or ended and the newest frame let through, and turns each decoded input
into what is new for its stream: the message itself, a smaller :class:`Batch`, or None for a
repeat. A message that does not fit (a frame of a stream that is not open, a bare
:class:`Detections`) is a :class:`MessageError`. It is pure bookkeeping, with no sockets: the
worker runtime asks it, and tests drive it directly.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Hashable, Iterable

from ..errors import MessageError
from .messages import Batch, EndOfStream, Frame, FrameResult, StreamStart, StreamStatus

log = logging.getLogger(__name__)

ENDED_KEPT = 10000
"""Ended streams a worker whose streams come and go remembers (what a restart upstream may send again)."""


@dataclass
class StreamState:
    """What has been let through of one stream."""

    open: bool = False
    ended: bool = False
    last_index: int = -1
    """Index of the newest frame let through."""
    last_pts: int = 0
    started: float = 0.0
    """Its StreamStart's ``started``: which stream of that id it is (in a service, an id comes again)."""


class Admission:
    """Per-stream admission of one worker's inputs.

    ``streams``: how many streams must end before the worker is done; None: streams come and go (a
    service), and the worker is done once it is told that no more will come (:attr:`closing`) and
    every stream it has seen has ended. ``parallel``: the worker is one
    of several reading the same port, so a frame a dead sibling had may come after later ones and is
    let through (where the outputs join, it is dropped). ``joined``: the inputs come from parallel
    workers of one stage, each of which sends every stream's end; the worker is done only when each
    input has sent them all.
    """

    def __init__(self, streams: int | None, parallel: bool = False, joined: bool = False) -> None:
        self.expected = streams
        self.closing = False
        """With streams that come and go: no stream will come any more."""
        self.ended: OrderedDict[str, float] = OrderedDict()
        """With streams that come and go: id -> ``started`` of the ended streams (the newest
        :data:`ENDED_KEPT`), so that a StreamStart of one, sent again, is known for a repeat."""
        self.parallel = parallel
        self.joined = joined
        self.streams: dict[str, StreamState] = {}
        self.ends_from: dict[Hashable, set[str]] = {}
        """Input -> the streams whose end came through it."""

    def admit(self, message: Any) -> Any:
        """The part of ``message`` that is new for its stream; None for a repeat. MessageError when it
        does not fit (a bare Detections, a frame of a stream that is not open)."""
        if isinstance(message, StreamStart):
            if self.expected is None and self.ended.get(message.stream_id) == message.started:
                return None  # the start of a stream that ended here, sent again after a restart upstream
            state = self.streams.setdefault(message.stream_id, StreamState())
            if state.open or state.ended:
                return None
            state.open, state.started = True, message.started
            self.ended.pop(message.stream_id, None)
            return message
        if isinstance(message, EndOfStream):
            state = self.streams.get(message.stream_id)
            if state is not None and state.ended or state is None and self.expected is None:
                return None
            state = self._open(message.stream_id, "end of stream")
            state.open, state.ended = False, True
            if self.expected is None:  # the id may come again, as a new stream
                self.ended[message.stream_id] = self.streams.pop(message.stream_id).started
                while len(self.ended) > ENDED_KEPT:
                    self.ended.popitem(last=False)
            return message
        if isinstance(message, StreamStatus):
            self._open(message.stream_id, "StreamStatus")
            return message
        if isinstance(message, Batch):
            new = tuple(f for f in message.frames if self._new_frame(f))
            return None if not new else message if len(new) == len(message.frames) else Batch(new)
        if isinstance(message, (Frame, FrameResult)):
            return message if self._new_frame(message) else None
        raise MessageError(f"a bare {type(message).__name__} is not a message of the data path")

    def ended_upstream(self, source: Hashable, stream: str) -> None:
        """``source`` says that ``stream`` ended before this worker started (a replacement learns it
        from the link's hello): it counts as ended here too."""
        if self.expected is None:
            return  # streams that come and go: one that ended is forgotten (its id may come again)
        self.ends_from.setdefault(source, set()).add(stream)
        state = self.streams.setdefault(stream, StreamState())
        if not state.ended:
            log.info("stream %s ended before this worker started", stream)
            state.open, state.ended = False, True

    def end_seen(self, source: Hashable, message: Any) -> None:
        """Note an input's EndOfStream as it arrives (before reordering), for :meth:`open_streams`."""
        if isinstance(message, EndOfStream) and self.expected is not None:
            self.ends_from.setdefault(source, set()).add(message.stream_id)

    def open_streams(self, sources: Iterable[Hashable]) -> bool:
        """Whether the worker must go on: a stream has not ended yet, or (``joined``) one of
        ``sources`` has not sent every stream's end yet (each parallel sender sends its own)."""
        if self.expected is None:
            return not self.closing or any(s.open for s in self.streams.values())
        if sum(s.ended for s in self.streams.values()) < self.expected:
            return True
        return self.joined and any(len(self.ends_from.get(src, ())) < self.expected for src in sources)

    def hello(self) -> dict[str, Any]:
        """What this worker has, for the hello its input links send upstream (where to resume)."""
        return {"open": [s for s, st in self.streams.items() if st.open],
                "last": {s: [st.last_index, st.last_pts] for s, st in self.streams.items() if st.last_index >= 0}}

    def _open(self, stream_id: str, what: str) -> StreamState:
        state = self.streams.get(stream_id)
        if state is None or not state.open:
            raise MessageError(f"{what} of stream {stream_id!r}, which is not open")
        return state

    def _new_frame(self, frame: Frame | FrameResult) -> bool:
        state = self._open(frame.stream_id, type(frame).__name__)
        if frame.index <= state.last_index:
            return self.parallel
        state.last_index, state.last_pts = frame.index, frame.pts
        return True
