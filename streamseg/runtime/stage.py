"""The stage contract: plain objects that turn messages into messages and never touch sockets.

The worker runtime (:mod:`streamseg.runtime.worker`) owns sockets, polling, signals and shutdown, and
drives a stage through its lifecycle::

    setup() -> process(msg)* -> flush(eos) -> ... -> close()

``process`` and ``flush`` return :data:`Emit` pairs ``(port, message)``; port ``"*"`` sends to
every output port. After ``flush`` the runtime passes the :class:`EndOfStream` on to every port
itself, so a stage only emits what it still holds. ``close`` is always called, also when the run
is aborted, and must leave outputs playable.

A stage may be a replacement for one that died (``restarted``): its upstream then sends again
whatever the dead one had not finished, and a stage that writes outputs resumes them (skipping
what they already hold) instead of starting them anew. A stage that keeps inputs across calls
(a batcher's pending frames, an encoder's frames not yet written) says so in :meth:`holds`, so
that they are not acknowledged, and lost with the process, before they are done.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from .messages import EndOfStream

Emit = tuple[str, Any]
ALL_PORTS = "*"
"""Sends to every data port (never to publish ports, which take only :class:`Published`)."""


@dataclass(frozen=True)
class Published:
    """Raw multipart frames for a publish (ZeroMQ PUB) port: the stage chose the wire format itself,
    because it is read by programs outside streamseg."""

    parts: tuple[bytes, ...]


class LatencyMeter:
    """Seconds from capture (:attr:`Frame.captured`) to this stage, for every frame, as percentiles.

    Samples are kept as 8-byte floats (about 20 MB a day at 30 fps) so that the two halves of the
    run can be compared: latency that keeps growing shows as a second half worse than the first.
    """

    def __init__(self) -> None:
        self.samples = array("d")

    def add(self, captured: float) -> None:
        if captured > 0:
            self.samples.append(time.time() - captured)

    def summary(self) -> dict[str, float | int]:
        """``frames``, ``p50_s``, ``p99_s``, ``max_s``, and ``p99_first_half_s``/``p99_second_half_s``."""
        values = np.frombuffer(self.samples, dtype=np.float64) if self.samples else np.zeros(0)
        if not len(values):
            return {"frames": 0}
        half = len(values) // 2

        def p99(part: np.ndarray) -> float:
            return round(float(np.percentile(part, 99)), 4) if len(part) else 0.0

        return {"frames": len(values), "p50_s": round(float(np.percentile(values, 50)), 4),
                "p99_s": p99(values), "max_s": round(float(values.max()), 4),
                "p99_first_half_s": p99(values[:half]), "p99_second_half_s": p99(values[half:])}


class Stage:
    """Base class of a pipeline stage; subclasses override what they need. The ports a stage sends on
    are listed in the table of stages (:data:`streamseg.stages.STAGES`)."""

    totals: tuple[str, ...] = ()
    """Counters that say what the stage's outputs hold rather than what this process did (a restarted
    sink counts the frames its outputs already had): the summary takes them from the last process."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.latency = LatencyMeter()
        """Sinks add each frame's capture time; the summary reports it (publish stage first)."""
        self._notify: Callable[..., None] = lambda event, **data: None
        self._measure: Callable[..., None] = lambda key, value=1.0, **labels: None
        self.watched: Callable[[str, bytes], bool] = lambda port, topic: True
        """``watched(port, topic)``: whether anyone subscribes to ``topic`` on publish port ``port`` now
        (set by the runtime), so that a stage makes nothing nobody will get."""
        self.restarted = False
        """Set by the runtime before :meth:`setup`: this process replaces one of this stage that failed."""
        self.previous: dict[str, Any] = {}
        """For a replacement: ``cause`` (why the one before failed) and what it last reported with
        ``notify("checkpoint", ...)``."""
        self.allocate: Callable[[tuple[int, ...], Any], np.ndarray] = np.empty
        """``allocate(shape, dtype)``: an array to build an output in. The runtime makes it one in
        shared memory when every output goes over ipc, so the output is sent without a copy."""

    def bind_events(self, notify: Callable[..., None]) -> None:
        """Called by the runtime: ``notify(event, **data)`` reports to the supervisor."""
        self._notify = notify

    def bind_meter(self, measure: Callable[..., None]) -> None:
        """Called by the runtime when the run exposes metrics (:mod:`streamseg.runtime.metrics`)."""
        self._measure = measure

    def measure(self, key: str, value: float = 1.0, **labels: str) -> None:
        """Add to a metric of :data:`~streamseg.runtime.metrics.METRICS` (its ``stage`` label is the runtime's)."""
        self._measure(key, value, **labels)

    def wrote(self, stream_id: str, captured: float) -> None:
        """A sink wrote (or published) a frame captured at ``captured`` (0: unknown): its latency."""
        self.latency.add(captured)
        if captured > 0:
            self.measure("latency_seconds", time.time() - captured, stream=stream_id)

    def notify(self, event: str, **data: Any) -> None:
        """Report an event (progress, a warning, a stream's start) to the supervisor."""
        self._notify(event, **data)

    def count(self, key: str, n: int = 1) -> None:
        """Add ``n`` to a counter reported in the run summary."""
        self.counters[key] = self.counters.get(key, 0) + n

    def setup(self) -> None:
        """Create heavy resources (models, codecs). Runs inside the worker process."""

    def process(self, message: Any) -> Iterable[Emit]:
        """Handle one message; return what to send."""
        return ()

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        """Emit what is still held for ``eos.stream_id``; the runtime forwards ``eos`` afterwards."""
        return ()

    def passes_on(self, eos: EndOfStream) -> EndOfStream:
        """The EndOfStream the runtime sends on after :meth:`flush` (inference notes in it the
        stream's last frame)."""
        return eos

    def stream_ports(self, stream_id: str) -> tuple[str, ...] | None:
        """The ports that carry ``stream_id`` (where outputs are split by stream); None: all ports.
        :data:`ALL_PORTS` emits and the forwarded EndOfStream go only there."""
        return None

    def timeout_s(self) -> float | None:
        """How long the runtime may wait for input before calling :meth:`on_timeout` (None: forever)."""
        return None

    def on_timeout(self) -> Iterable[Emit]:
        """Called when :meth:`timeout_s` passed without input (the batcher's deadline)."""
        return ()

    def waiting_port(self) -> str | None:
        """The port a stage holds messages for until it has room (a live batcher); None: nothing held.

        While it returns a port, the runtime also waits for room on that port, and calls
        :meth:`on_room` when one message can be sent without waiting.
        """
        return None

    def on_room(self) -> Iterable[Emit]:
        """Called when :meth:`waiting_port` has room: return at most one message for it."""
        return ()

    def acknowledged(self, port: str, message: Any, done: bool) -> None:
        """A receiver of ``port`` took ``message`` (``done`` False), or was done with it and with all
        that came of it downstream (True; also after a message that was never taken). A receiver takes
        its next message when it has finished the one before and sent its results on, so a live batcher
        learns from this how long the inference stage takes a batch."""

    def holds(self) -> frozenset[tuple[str, int]]:
        """``(stream id, frame index)`` of the inputs this stage still keeps and has not finished."""
        return frozenset()

    def report(self) -> dict[str, Any]:
        """Figures beyond the counters for the run summary (JSON values), sent with the stage's stats."""
        return {"latency": self.latency.summary()} if self.latency.samples else {}

    def close(self) -> None:
        """Release resources; always called, also on abort. Must leave outputs usable."""


class Source(Stage):
    """A stage with no input: it produces messages until its input ends or it is asked to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_requested = False
        self.waited_s = 0.0
        """Seconds spent waiting for its input (a network source, a camera, pacing, a reconnection's
        backoff) rather than working: the runtime leaves them out of the stage's busy time, so a
        live source that sends slowly does not look like a bottleneck."""

    def request_stop(self) -> None:
        """Ask :meth:`produce` to finish early (Ctrl-C): it ends its streams with EndOfStream."""
        self.stop_requested = True

    def lossy(self, message: Any) -> bool:
        """Whether ``message`` may be dropped when the next stage has no room (frames of a live
        source): the runtime then sends it without waiting and calls :meth:`dropped` if it could not."""
        return False

    def dropped(self, message: Any) -> None:
        """A lossy message found no room downstream and was dropped."""
        self.count("dropped")
        self.measure("frames_dropped", stream=getattr(message, "stream_id", ""), reason="no_room")

    def resume(self, points: dict[str, tuple[int, int]]) -> None:
        """A restarted source learns ``stream -> (index, pts)`` of the newest frame downstream has,
        before :meth:`produce`; it goes on after it."""

    def produce(self) -> Iterator[Emit | None]:
        """Yield every message, :class:`StreamStart` first and :class:`EndOfStream` last per stream.

        Yielding None sends nothing; it lets the runtime check for signals while the source waits.
        """
        raise NotImplementedError
