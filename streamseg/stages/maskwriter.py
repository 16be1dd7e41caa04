"""Mask writer: per-frame instances to JSON Lines, masks as COCO compressed RLE at source resolution.

One line per frame::

    {"stream": "0", "frame": 7, "pts": 7007, "time": 0.233567, "width": 640, "height": 360,
     "instances": [{"class_id": 1, "class": "person", "score": 0.987, "box": [x1, y1, x2, y2],
                    "mask": {"size": [360, 640], "counts": "..."},
                    "keypoints": [[x, y, score], ...]}]}

``mask`` is absent for models without a mask head and ``keypoints`` for models without a
keypoint head; ``track_id`` appears where tracking is on.
"""

from __future__ import annotations

import json
import time
from typing import IO, Any, Iterable

from ..errors import MessageError, OutputError
from ..masks import encode_rle
from ..messages import EndOfStream, FrameResult
from ..models.registry import ModelInfo
from ..stage import Emit, Stage

FLUSH_EVERY_S = 1.0


def frame_record(result: FrameResult, info: ModelInfo) -> dict[str, Any]:
    """The JSON-ready record of one frame (the masks JSONL line, and the published payload)."""
    det = result.detections
    rles = encode_rle(det.masks) if det.masks is not None else None
    instances = []
    for i in range(len(det)):
        label = int(det.labels[i])
        instance: dict[str, Any] = {
            "class_id": label,
            "class": info.categories[label] if 0 <= label < len(info.categories) else str(label),
            "score": round(float(det.scores[i]), 6),
            "box": [round(float(v), 3) for v in det.boxes[i]],
        }
        if rles is not None:
            instance["mask"] = rles[i]
        if det.keypoints is not None:
            instance["keypoints"] = [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                     for x, y, s in det.keypoints[i]]
        instances.append(instance)
    return {"stream": result.stream_id, "frame": result.index, "pts": result.pts,
            "time": round(result.time_s, 6), "width": result.width, "height": result.height,
            "instances": instances}


class MaskWriterStage(Stage):
    """Appends one JSON line per FrameResult to its stream's file, flushed at least every second.

    ``paths`` maps stream id -> file (``path`` alone: one file for every stream, for the
    one-stream case). Files are created when the stage starts, so a bad path fails the run early.
    """

    def __init__(self, path: str, model_info: dict[str, Any], paths: dict[str, str] | None = None) -> None:
        super().__init__()
        self.paths = dict(paths or {}) or {"": path}
        self.info = ModelInfo.from_dict(model_info)
        self.files: dict[str, IO[str]] = {}
        self.last_flush = 0.0

    def setup(self) -> None:
        for stream_id, path in self.paths.items():
            try:
                self.files[stream_id] = open(path, "w", encoding="utf-8")
            except OSError as exc:
                raise OutputError(f"cannot write masks to {path}: {exc.strerror}") from None

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, FrameResult):
            file = self.files.get(message.stream_id) or self.files.get("")
            if file is None:
                raise MessageError(f"no masks file is configured for stream {message.stream_id!r}")
            file.write(json.dumps(frame_record(message, self.info), separators=(",", ":")) + "\n")
            self.count("frames")
            self.latency.add(message.captured)
            now = time.monotonic()
            if now - self.last_flush >= FLUSH_EVERY_S:
                for f in self.files.values():
                    f.flush()
                self.last_flush = now
        return ()

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        for file in self.files.values():
            file.flush()
        return ()

    def close(self) -> None:
        while self.files:
            self.files.popitem()[1].close()
