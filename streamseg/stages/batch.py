"""Batch: group frames for the model, and drop frames of live sources that the model cannot keep up with.

Frames of a file stream are batched up to ``max_batch`` frames or ``max_wait_ms``, whichever
comes first, and sent with backpressure: none is ever dropped. Frames of a live stream are held
here, at most a few per stream, until the inference stage has room for a batch; the ``live_policy``
says what gives when more arrive meanwhile:

``latest``       hold only the newest frame of each stream (lowest latency; the default)
``drop_oldest``  hold the newest ``live_queue`` frames, dropping the oldest
``drop_newest``  hold the first ``live_queue`` frames, dropping the ones that arrive on a full queue
``block``        treat the live stream like a file: nothing dropped, latency grows while behind
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Iterable

from ..config import LIVE_POLICIES, BatchConfig
from ..runtime.messages import Batch, EndOfStream, Frame, StreamStart
from ..runtime.stage import ALL_PORTS, Emit, Stage


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
        return [*self._emit(), (ALL_PORTS, message)]

    def _hold(self, frame: Frame) -> None:
        queue = self.held[frame.stream_id]
        if len(queue) >= self.live_cap:
            self.count("dropped")
            self.dropped[frame.stream_id] += 1
            if self.live_policy == "drop_newest":
                return
            queue.popleft()
        queue.append(frame)

    def waiting_port(self) -> str | None:
        return "batches" if any(self.held.values()) else None

    def on_room(self) -> Iterable[Emit]:
        """One batch of held live frames, taken in turn from each stream, oldest first."""
        frames: list[Frame] = []
        while len(frames) < self.max_batch and any(self.held.values()):
            for queue in self.held.values():
                if queue and len(frames) < self.max_batch:
                    frames.append(queue.popleft())
        return self._batch(frames)

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        emits = self._emit()
        queue = self.held.pop(eos.stream_id, deque())
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
        return [("batches", Batch(tuple(frames)))]
