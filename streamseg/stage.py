"""The stage contract: plain objects that turn messages into messages and never touch sockets.

The worker runtime (:mod:`streamseg.worker`) owns sockets, polling, signals and shutdown, and
drives a stage through its lifecycle::

    setup() -> process(msg)* -> flush(eos) -> ... -> close()

``process`` and ``flush`` return :data:`Emit` pairs ``(port, message)``; port ``"*"`` sends to
every output port. After ``flush`` the runtime passes the :class:`EndOfStream` on to every port
itself, so a stage only emits what it still holds. ``close`` is always called, also when the run
is aborted, and must leave outputs playable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from .messages import EndOfStream

Emit = tuple[str, Any]
ALL_PORTS = "*"
"""Sends to every data port (never to publish ports, which take only :class:`Published`)."""


@dataclass(frozen=True)
class Published:
    """Raw multipart frames for a publish (ZeroMQ PUB) port: the stage chose the wire format itself,
    because it is read by programs outside streamseg."""

    parts: tuple[bytes, ...]


class Stage:
    """Base class of a pipeline stage; subclasses set ``outputs`` and override what they need."""

    outputs: tuple[str, ...] = ()
    """Names of the output ports this stage sends on."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self._notify: Callable[..., None] = lambda event, **data: None

    def bind_events(self, notify: Callable[..., None]) -> None:
        """Called by the runtime: ``notify(event, **data)`` reports to the supervisor."""
        self._notify = notify

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

    def timeout_s(self) -> float | None:
        """How long the runtime may wait for input before calling :meth:`on_timeout` (None: forever)."""
        return None

    def on_timeout(self) -> Iterable[Emit]:
        """Called when :meth:`timeout_s` passed without input (the batcher's deadline)."""
        return ()

    def close(self) -> None:
        """Release resources; always called, also on abort. Must leave outputs usable."""


class Source(Stage):
    """A stage with no input: it produces messages until its input ends or it is asked to stop."""

    def __init__(self) -> None:
        super().__init__()
        self.stop_requested = False

    def request_stop(self) -> None:
        """Ask :meth:`produce` to finish early (Ctrl-C): it ends its streams with EndOfStream."""
        self.stop_requested = True

    def produce(self) -> Iterator[Emit]:
        """Yield every message, :class:`StreamStart` first and :class:`EndOfStream` last per stream."""
        raise NotImplementedError
