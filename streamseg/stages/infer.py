"""Infer: run Mask R-CNN on each batch; CUDA (its RoIAlign kernel, fp16 autocast) when present, else CPU."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Any, Iterable

import torch

from ..config import ModelConfig
from ..errors import DeviceError
from ..models.predictor import Predictor
from ..runtime.messages import (
    Batch,
    EndOfStream,
    FrameResult,
    StreamStart,
    StreamStatus,
)
from ..runtime.stage import ALL_PORTS, Emit, Stage

log = logging.getLogger(__name__)


def _is_device_error(exc: BaseException) -> bool:
    """A CUDA failure (out of memory, an illegal access, a lost device), after which a new process may work."""
    import torch

    kinds = tuple(k for k in (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", None)) if k is not None)
    return isinstance(exc, kinds) or "CUDA" in str(exc) or "cuDNN" in str(exc)


class InferStage(Stage):
    """Runs the model on each Batch and emits one FrameResult per frame, in order.

    Ports: ``render`` (or, with tracking, ``track``, which passes it on) gets each result with its
    image (for drawing) where the run draws; ``masks`` and ``publish`` get it without. Any of them may
    be absent from the worker's outputs.
    """

    def __init__(self, config: ModelConfig, ports: tuple[str, ...] | list[str] = ("render", "masks"),
                 image_ports: tuple[str, ...] | list[str] = ("render",), keep_from: float | None = None) -> None:
        super().__init__()
        self.config = config
        self.ports = tuple(ports)
        self.image_ports = frozenset(image_ports)
        self.keep_from = keep_from
        """With tracking, the score the model keeps detections from (``track.low_score``), below
        ``model.score_thresh``: the tracker's second stage matches them, and writes none out."""
        self.predictor: Predictor | None = None
        self.max_fps = config.max_fps
        self.last: dict[str, int] = {}
        """Stream -> index of the newest result sent (what the next one comes after)."""

    def _throttle(self, frames: int, started: float) -> None:
        """With ``model.max_fps``, make a batch that started at ``started`` take at least its frames'
        share of a second, so that inference runs no faster than that many frames a second."""
        if self.max_fps > 0:
            time.sleep(max(0.0, started + frames / self.max_fps - time.monotonic()))

    def setup(self) -> None:
        cores = len(os.sched_getaffinity(0))
        config = dataclasses.replace(self.config, torch_threads=self.config.worker_threads(cores))
        if self.keep_from is not None:
            config = dataclasses.replace(config, score_thresh=min(config.score_thresh, self.keep_from))
        self.predictor = Predictor(config)
        log.info("model %s on %s, %d torch threads", config.name, self.predictor.device, config.torch_threads)

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, (StreamStart, StreamStatus)):
            return [(ALL_PORTS, message)]
        if not isinstance(message, Batch):
            return []
        assert self.predictor is not None, "setup() first"
        started = time.monotonic()
        try:
            results = self.predictor([f.image for f in message.frames])
        except RuntimeError as exc:
            if self.predictor.cuda and _is_device_error(exc):
                raise DeviceError(f"the GPU failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
            raise
        self._throttle(len(results), started)
        self.count("batches")
        self.count("frames", len(results))
        self.measure("batch_frames", len(results))
        if self.predictor.cuda:
            self.measure("gpu_memory_bytes", torch.cuda.memory_allocated(self.predictor.device),
                         device=str(self.predictor.device))
        emits: list[Emit] = []
        for frame, detections in zip(message.frames, results):
            self.count("instances", len(detections))
            h, w = frame.image.shape[:2]
            prev = self.last.get(frame.stream_id, -1)
            self.last[frame.stream_id] = frame.index
            for port in self.ports:
                image = frame.image if port in self.image_ports else None
                emits.append((port, FrameResult(frame.stream_id, frame.index, frame.pts, frame.time_base,
                                                w, h, detections, image, frame.captured, prev, frame.loop)))
        return emits

    def passes_on(self, eos: EndOfStream) -> EndOfStream:
        return dataclasses.replace(eos, last=self.last.pop(eos.stream_id, -1))  # the id may come again
