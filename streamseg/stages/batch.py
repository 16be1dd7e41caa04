"""Batch: group frames for the model, and drop frames of live sources that the model cannot keep up with.

Frames of a file stream are batched up to ``max_batch`` frames or ``max_wait_ms``, whichever
comes first, and sent with backpressure: none is ever dropped. Frames of a live stream are held
here, at most a few per stream, until the inference stage has room for a batch; the ``live_policy``
says what gives when more arrive meanwhile:

``budget``       hold what arrives; drop a frame only when, waited as long as it has, with what the
                 model has still to do and its recent time a frame (as the inference stage's
                 acknowledgements show them), the model would be done with it later than 90% of
                 ``live_max_wait_ms`` after its capture (the rest is for the stages after it); a
                 stream's newest frame is never dropped (the default: frames that arrive together
                 while the model is busy all get through)
``latest``       hold only the newest frame of each stream (lowest latency)
``drop_oldest``  hold the newest ``live_queue`` frames, dropping the oldest
``drop_newest``  hold the first ``live_queue`` frames, dropping the ones that arrive on a full queue
``block``        treat the live stream like a file: nothing dropped, latency grows while behind
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Iterable

from ..config import LIVE_POLICIES, BatchConfig
from ..runtime.messages import Batch, EndOfStream, Frame, StreamStart
from ..runtime.stage import ALL_PORTS, Emit, Stage

BUDGET_CAP = 64
BUDGET_BYTES = 256 << 20
"""The ``budget`` policy holds at most this many frames, or this many bytes of them, per stream: a
camera sends a second or two at once on connecting (from its last keyframe), which a model that keeps
up on average works off within the budget."""
WAITED_S = 0.005
"""A batch sent within this long of the model's taking the one before waited for all of that one."""
MODEL_SHARE = 0.9
"""The ``budget`` policy plans for the model to be done with a frame by this share of the budget after
its capture, leaving the rest (50 ms of the default 500) to the stages after it."""


@dataclass
class _Sent:
    """A batch on its way to the model, as the inference stage's acknowledgements tell."""

    batch: Batch | None
    """The batch, while it is in flight (to know its acknowledgements by)."""
    size: int
    sent_at: float
    taken_at: float | None = None
    done_at: float | None = None
    """When the model and everything after it were done with it."""
    served_s: float | None = None
    """The model's time on it, when known (the next batch had waited for it)."""


class BatchStage(Stage):
    """Collects Frames into Batches; other messages pass through in order (a pending batch first)."""

    def __init__(self, config: BatchConfig) -> None:
        super().__init__()
        if config.live_policy not in LIVE_POLICIES:
            raise ValueError(f"live_policy must be one of {', '.join(LIVE_POLICIES)}, got {config.live_policy!r}")
        self.max_batch = config.max_batch
        self.max_wait_s = config.max_wait_ms / 1000.0
        self.live_policy = config.live_policy
        self.live_cap = 1 if config.live_policy == "latest" else max(1, config.live_queue)
        self.caps: dict[str, int] = {}
        """Live stream id -> how many frames the ``budget`` policy holds of it (by its frame size)."""
        self.budget_s = config.live_max_wait_ms / 1000.0
        self.frame_s = 0.0
        """The model's recent time a frame, smoothed (0: not known yet)."""
        self.flight: dict[int, _Sent] = {}
        """Batches sent and not done, by id of the Batch (kept alive by its record)."""
        self.running: _Sent | None = None
        """The batch the model took last."""
        self.pending: list[Frame] = []
        self.deadline = 0.0
        self.held: dict[str, deque[Frame]] = {}
        """Live stream id -> frames waiting for room at the inference stage, oldest first."""
        self.dropped: dict[str, int] = {}

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, Frame):
            if message.stream_id in self.held:
                self._hold(message)
                return []
            if not self.pending:
                self.deadline = time.monotonic() + self.max_wait_s
            self.pending.append(message)
            return self._emit() if len(self.pending) >= self.max_batch else []
        if isinstance(message, StreamStart) and message.live and self.live_policy != "block":
            self.held.setdefault(message.stream_id, deque())
            self.dropped.setdefault(message.stream_id, 0)
            if self.live_policy == "budget":  # the time is its limit; this bounds memory (a burst on connecting)
                frame_bytes = 3 * message.width * message.height
                self.caps[message.stream_id] = max(1, min(BUDGET_CAP, BUDGET_BYTES // frame_bytes))
        return [*self._emit(), (ALL_PORTS, message)]

    def _hold(self, frame: Frame) -> None:
        queue = self.held[frame.stream_id]
        if len(queue) >= self.caps.get(frame.stream_id, self.live_cap):
            self._drop(frame.stream_id)
            if self.live_policy == "drop_newest":
                return
            queue.popleft()
        queue.append(frame)

    def waiting_port(self) -> str | None:
        return "batches" if any(self.held.values()) else None

    def on_room(self) -> Iterable[Emit]:
        """One batch of held live frames, the oldest first whichever stream they are of (``budget``: as
        many as the model can finish within the budget, and at least as many as streams hold frames)."""
        size = self.max_batch
        if self.live_policy == "budget":
            size = self._within_budget(time.time(), time.monotonic())
        frames: list[Frame] = []
        while len(frames) < size and any(self.held.values()):  # the oldest first, whichever stream it is of
            queue = min((q for q in self.held.values() if q), key=lambda q: q[0].captured)
            frames.append(queue.popleft())
        return self._batch(frames)

    def acknowledged(self, port: str, message: Any, done: bool) -> None:
        """Time the model by the batches it takes: a batch sent the moment the model took the one before
        waited for all of it, and was taken when the model was done with it (and had sent its results
        on: the stage's time, not only the model's)."""
        sent = self.flight.get(id(message))
        if sent is None or sent.batch is not message:
            return
        now = time.monotonic()
        if done:
            sent.done_at, sent.batch = now, None
            del self.flight[id(message)]
            return
        if sent.taken_at is not None:
            return  # went again, to a restarted inference stage: its wait was not the model's time
        last = self.running
        if last is not None and last.taken_at is not None and sent.sent_at - last.taken_at < WAITED_S:
            last.served_s = (now if last.done_at is None else min(now, last.done_at)) - last.taken_at
            measured = last.served_s / last.size
            self.frame_s = measured if not self.frame_s else 0.7 * self.frame_s + 0.3 * measured
        sent.taken_at = now
        self.running = sent

    def _within_budget(self, now: float, clock: float) -> int:
        """Drop the held frames that would be done later than the budget after their capture (after what
        the model has still to do, then on this one, then the stages after it), a stream's newest
        excepted; returns how many frames the next batch may hold so that its oldest is in time (at
        least one)."""
        ahead = self._ahead(clock)
        for stream_id, queue in self.held.items():
            while len(queue) > 1 and self._late(queue[0], now, ahead, 1):
                queue.popleft()
                self._drop(stream_id)
        oldest = min((q[0].captured for q in self.held.values() if q), default=now)
        room = self.budget_s - (now - oldest) - ahead
        fits = int(room / self.frame_s) if self.frame_s > 0 else self.max_batch
        streams = sum(1 for q in self.held.values() if q)  # each stream's newest goes, late or not
        return max(1, min(self.max_batch, max(fits, streams)))

    def _late(self, frame: Frame, now: float, ahead: float, frames: int) -> bool:
        """Whether ``frame`` would be done later than the budget after its capture, with ``ahead`` before
        it and the model's time for ``frames`` frames (itself and those before it in its batch)."""
        return now - frame.captured + ahead + self.frame_s * frames > self.budget_s

    def _drop(self, stream_id: str, frames: int = 1) -> None:
        self.count("dropped", frames)
        self.dropped[stream_id] = self.dropped.get(stream_id, 0) + frames
        self.measure("frames_dropped", frames, stream=stream_id, reason=self.live_policy)

    def _ahead(self, clock: float) -> float:
        """What a held frame's outputs wait for besides its own time in the model: what the model has
        still to do (what is left of the batch it runs, and all of those not taken yet), and the share
        of the budget kept for the stages after the model."""
        waiting = sum(s.size for s in self.flight.values() if s.taken_at is None)
        ahead = (1 - MODEL_SHARE) * self.budget_s + self.frame_s * waiting
        last = self.running
        if last is not None and last.served_s is None and last.done_at is None and last.taken_at is not None:
            ahead += max(0.0, last.taken_at + self.frame_s * last.size - clock)
        return ahead

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        emits = self._emit()
        queue = self.held.pop(eos.stream_id, deque())
        if self.live_policy == "budget" and queue:  # what the model would finish late goes, as while it ran
            now, ahead = time.time(), self._ahead(time.monotonic())
            kept = deque(f for n, f in enumerate(queue) if not self._late(f, now, ahead, n + 1) or f is queue[-1])
            if len(kept) < len(queue):
                self._drop(eos.stream_id, len(queue) - len(kept))
            queue = kept
        while queue:
            emits += self._batch([queue.popleft() for _ in range(min(self.max_batch, len(queue)))])
        return emits

    def holds(self) -> frozenset[tuple[str, int]]:
        """Frames waiting for their batch, and live frames waiting for room."""
        frames = [*self.pending, *(f for queue in self.held.values() for f in queue)]
        return frozenset((f.stream_id, f.index) for f in frames)

    def timeout_s(self) -> float | None:
        return max(0.0, self.deadline - time.monotonic()) if self.pending else None

    def on_timeout(self) -> Iterable[Emit]:
        return self._emit()

    def report(self) -> dict[str, Any]:
        return {**super().report(), "dropped_by_stream": dict(self.dropped)}

    def _emit(self) -> list[Emit]:
        frames, self.pending = self.pending, []
        return self._batch(frames)

    def _batch(self, frames: list[Frame]) -> list[Emit]:
        if not frames:
            return []
        self.count("batches")
        self.count("frames", len(frames))
        batch = Batch(tuple(frames))
        self.flight[id(batch)] = _Sent(batch, len(frames), time.monotonic())
        return [("batches", batch)]

