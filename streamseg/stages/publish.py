"""Publish: each frame's detections as a versioned two-part ZeroMQ message for outside subscribers.

Wire format (``docs/publishing.md``, JSON Schema ``schemas/detections-v1.schema.json``):

- part 0, the topic: the stream id, UTF-8 (subscribe to it; compare exactly, since ZeroMQ
  filters by prefix);
- part 1, a UTF-8 JSON object with ``schema: "streamseg.detections"``, ``version: 1`` and
  ``type``: ``stream_start``, ``frame`` (the masks JSONL record: instances with class, score,
  box, COCO RLE mask, keypoints, track id; and ``capture_time``), ``track_start`` and ``track_end``
  (a track's first frame, and its last once it is over; before the frame they come with), ``counts``
  (the ``analytics`` zones and lines: occupancy, entries, dwell, crossings per class; every
  ``analytics.counts_every_s`` and at the stream's end),
  ``status`` (a live source was lost, is being reconnected, came back or was given up) or
  ``end_of_stream``.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from ..formats.records import SCHEMA, VERSION, frame_record
from ..models.registry import ModelInfo
from ..runtime.messages import (
    EndOfStream,
    FrameResult,
    StreamStart,
    StreamStatus,
    TrackEvent,
)
from ..runtime.stage import Emit, Published, Stage


def publish_message(stream_id: str, kind: str, body: dict[str, Any]) -> Published:
    """The two frames of one published message."""
    header = {"schema": SCHEMA, "version": VERSION, "type": kind, "stream": stream_id, **body}
    return Published((stream_id.encode(), json.dumps(header, separators=(",", ":")).encode()))


class PublishStage(Stage):
    """Turns FrameResults (and stream starts and ends) into published messages on port ``publish``."""

    def __init__(self, model_info: dict[str, Any]) -> None:
        super().__init__()
        self.info = ModelInfo.from_dict(model_info)

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            body = {"width": message.width, "height": message.height, "rotation": message.rotation,
                    "rate": str(message.rate),
                    "source": message.source, "live": message.live, "model": self.info.name,
                    "categories": list(self.info.categories), "keypoint_names": list(self.info.keypoint_names),
                    "skeleton": [list(p) for p in self.info.skeleton]}
            return [("publish", publish_message(message.stream_id, "stream_start", body))]
        if isinstance(message, FrameResult):
            record = frame_record(message, self.info)
            del record["stream"]
            record["capture_time"] = round(message.captured, 6)
            self.count("frames")
            self.wrote(message.stream_id, message.captured)
            return [*self._events(message.stream_id, message.events),
                    ("publish", publish_message(message.stream_id, "frame", record)),
                    *self._counts(message.stream_id, message.report, message.index, message.time_s)]
        if isinstance(message, StreamStatus):
            self.count(f"status_{message.state}")
            body = {"state": message.state, "detail": message.detail, "attempt": message.attempt,
                    "time": round(message.time, 6)}
            return [("publish", publish_message(message.stream_id, "status", body))]
        return []

    def _events(self, stream_id: str, events: tuple[TrackEvent, ...]) -> list[Emit]:
        """``track_start`` and ``track_end`` messages."""
        emits: list[Emit] = []
        for e in events:
            self.count(f"track_{e.kind}")
            body = {"track_id": e.track_id, "class_id": e.label, "class": self.info.category(e.label),
                    "first_frame": e.first_frame, "last_frame": e.last_frame, "first_time": round(e.first_time, 6),
                    "last_time": round(e.last_time, 6), "duration_s": round(e.duration_s, 6)}
            emits.append(("publish", publish_message(stream_id, f"track_{e.kind}", body)))
        return emits

    def _counts(self, stream_id: str, report: str, frame: int, time_s: float | None) -> list[Emit]:
        """A ``counts`` message, where the track stage gave the zones' and lines' figures in full."""
        if not report:
            return []
        self.count("counts")
        body = {"frame": frame, "time": None if time_s is None else round(time_s, 6), **json.loads(report)}
        return [("publish", publish_message(stream_id, "counts", body))]

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        body = {"frames": eos.frames, "reason": eos.reason, "detail": eos.detail}
        return [*self._events(eos.stream_id, eos.events), *self._counts(eos.stream_id, eos.report, eos.last, None),
                ("publish", publish_message(eos.stream_id, "end_of_stream", body))]
