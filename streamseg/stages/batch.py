"""Batch: group frames for the model, up to ``max_batch`` frames or ``max_wait_ms``, whichever first."""

from __future__ import annotations

import time
from typing import Any, Iterable

from ..messages import Batch, EndOfStream, Frame
from ..stage import ALL_PORTS, Emit, Stage


class BatchStage(Stage):
    """Collects Frames into Batches; other messages pass through in order (a pending batch first)."""

    outputs = ("batches",)

    def __init__(self, max_batch: int = 4, max_wait_ms: float = 50.0) -> None:
        super().__init__()
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.pending: list[Frame] = []
        self.deadline = 0.0

    def process(self, message: Any) -> Iterable[Emit]:
        if not isinstance(message, Frame):
            return [*self._emit(), (ALL_PORTS, message)]
        if not self.pending:
            self.deadline = time.monotonic() + self.max_wait_s
        self.pending.append(message)
        return self._emit() if len(self.pending) >= self.max_batch else []

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        return self._emit()

    def timeout_s(self) -> float | None:
        return max(0.0, self.deadline - time.monotonic()) if self.pending else None

    def on_timeout(self) -> Iterable[Emit]:
        return self._emit()

    def _emit(self) -> list[Emit]:
        if not self.pending:
            return []
        batch, self.pending = Batch(tuple(self.pending)), []
        self.count("batches")
        self.count("frames", len(batch.frames))
        return [("batches", batch)]
