"""A live source's reconnection: reopened with exponential backoff (``input.reconnect_*``), each
step said downstream as a :class:`~streamseg.runtime.messages.StreamStatus` and to the supervisor."""

from __future__ import annotations

import logging
import time
from typing import Any, Generator

from ..errors import InputError
from ..runtime.messages import StreamStatus
from ..runtime.stage import ALL_PORTS, Emit

log = logging.getLogger(__name__)

WAIT_STEP_S = 0.1
"""A backoff wait checks for a stop request this often."""


class Reconnecting:
    """The decode stage's reconnection (:class:`~.decode.DecodeStage` mixes it in: its source's
    ``config``, ``stream_id``, ``_open`` and ``_close_container`` are what is reopened)."""

    config: Any
    stream_id: str
    shown: str
    clock: Any
    waited_s: float
    stop_requested: bool

    def _reconnect(self, why: str) -> Generator[Emit | None, None, bool]:
        """Reopen a lost live source with exponential backoff; False when it gave up or was stopped."""
        self._close_container()
        lost_at = time.monotonic()
        self.count("lost")
        log.warning("stream %s: source %s lost: %s", self.stream_id, self.shown, why)
        yield self._status("lost", why, 0)
        delay = self.config.reconnect_initial_s
        attempt = 0
        while self.config.reconnect_attempts <= 0 or attempt < self.config.reconnect_attempts:
            attempt += 1
            limit = f" of {self.config.reconnect_attempts}" if self.config.reconnect_attempts > 0 else ""
            log.warning("stream %s: reconnecting in %.1f s (attempt %d%s)", self.stream_id, delay, attempt, limit)
            if (yield from self._wait(delay)):
                return False
            yield self._status("reconnecting", why, attempt)
            try:
                self._open()
            except InputError as exc:
                why = str(exc)
                delay = min(delay * 2, self.config.reconnect_max_s)
                continue
            self.count("reconnects")
            self.measure("reconnects", stream=self.stream_id)
            self.clock.new_session()
            self._continue_after(time.monotonic() - lost_at)
            log.warning("stream %s: reconnected to %s after %.1f s", self.stream_id, self.shown,
                        time.monotonic() - lost_at)
            yield self._status("reconnected", "", attempt)
            return True
        log.error("stream %s: gave up on %s after %d attempts: %s", self.stream_id, self.shown, attempt, why)
        self.count("gave_up")
        yield self._status("gave_up", why, attempt)
        return False

    def _wait(self, seconds: float) -> Generator[None, None, bool]:
        """Sleep, yielding to the runtime (signals) every step; True when a stop was requested."""
        end = time.monotonic() + seconds
        while not self.stop_requested and time.monotonic() < end:
            step = min(WAIT_STEP_S, max(0.0, end - time.monotonic()))
            time.sleep(step)
            self._waited(step)
            yield None
        return self.stop_requested

    def _waited(self, seconds: float) -> None:
        self.waited_s += seconds

    def _status(self, state: str, detail: str, attempt: int) -> Emit:
        self.notify("status", stream_id=self.stream_id, state=state, detail=detail, attempt=attempt)
        return ALL_PORTS, StreamStatus(self.stream_id, state, detail, attempt, time.time())
