"""Record formats that several parts share: the per-frame detections record (a masks JSONL line, and
the body of a published ``frame`` message) and the published schema's name and version.

A record::

    {"stream": "0", "frame": 7, "pts": 7007, "time": 0.233567, "width": 640, "height": 360,
     "instances": [{"class_id": 1, "class": "person", "score": 0.987, "box": [x1, y1, x2, y2],
                    "mask": {"size": [360, 640], "counts": "..."},
                    "keypoints": [[x, y, score], ...]}]}

``mask`` is absent for models without a mask head and ``keypoints`` for models without a keypoint
head. ``track_id`` (an integer, the same for one object in every frame of its stream, unique in the
run) is there where the stream is tracked (``track.enabled``).
"""

from __future__ import annotations

from typing import Any

from ..masks import rle_counts
from ..models.registry import ModelInfo
from ..runtime.messages import FrameResult

SCHEMA = "streamseg.detections"
"""The ``schema`` field of every published message (``schemas/detections-v1.schema.json``)."""
VERSION = 1
"""The ``version`` field: raised only when a message's shape changes."""


def frame_record(result: FrameResult, info: ModelInfo) -> dict[str, Any]:
    """The JSON-ready record of one frame (the masks JSONL line, and the published payload)."""
    det = result.detections
    rles = det.rles if det.rles is not None else rle_counts(det.masks) if det.masks is not None else None
    size = [result.height, result.width]
    instances = []
    for i in range(len(det)):
        label = int(det.labels[i])
        instance: dict[str, Any] = {
            "class_id": label,
            "class": info.category(label),
            "score": round(float(det.scores[i]), 6),
            "box": [round(float(v), 3) for v in det.boxes[i]],
        }
        if rles is not None:
            instance["mask"] = {"size": size, "counts": rles[i]}
        if det.track_ids is not None:
            instance["track_id"] = int(det.track_ids[i])
        if det.keypoints is not None:
            instance["keypoints"] = [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                     for x, y, s in det.keypoints[i]]
        instances.append(instance)
    return {"stream": result.stream_id, "frame": result.index, "pts": result.pts,
            "time": round(result.time_s, 6), "width": result.width, "height": result.height,
            "instances": instances}
