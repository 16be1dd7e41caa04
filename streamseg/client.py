"""A small Python client for published detections: an iterator of frames with numpy masks.

::

    from streamseg.client import Subscriber

    with Subscriber("tcp://127.0.0.1:5556", topic="0", timeout_s=5) as sub:
        for frame in sub:                      # stops at the stream's end, or after 5 s of silence
            for inst in frame.instances:
                print(frame.frame, inst.class_name, inst.score, inst.mask.sum())

Any language with ZeroMQ and JSON can do the same; ``docs/publishing.md`` gives the format.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import zmq

from .errors import ConfigError
from .formats.records import SCHEMA, VERSION
from .masks import decode_rle
from .security import curve_client

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Instance:
    """One detected instance."""

    class_id: int
    class_name: str
    score: float
    box: np.ndarray
    """``float32[4]``, ``[x1, y1, x2, y2]`` in pixels."""
    mask: np.ndarray | None
    """``bool[H, W]`` at the source resolution, or None for models without masks."""
    keypoints: np.ndarray | None
    """``float32[K, 3]`` of ``[x, y, score]``, or None."""
    track_id: int | None = None
    """The object's track (the same in every frame of its stream, unique in the run), or None where
    the stream is not tracked (``track.enabled``)."""


@dataclass(frozen=True)
class Frame:
    """One published frame: where it is in its stream, and what was found in it."""

    stream: str
    frame: int
    pts: int
    time: float
    width: int
    height: int
    instances: tuple[Instance, ...]
    message: dict[str, Any]
    """The message as received (JSON-decoded)."""
    capture_time: float = 0.0
    """Unix time the frame was decoded (0 when the publisher did not say); now minus it is the latency."""


def parse_frame(message: dict[str, Any]) -> Frame:
    """A :class:`Frame` from a ``type: frame`` message, masks decoded."""
    instances = tuple(Instance(
        int(i["class_id"]), str(i["class"]), float(i["score"]), np.asarray(i["box"], np.float32),
        decode_rle(i["mask"]) if "mask" in i else None,
        np.asarray(i["keypoints"], np.float32) if "keypoints" in i else None, i.get("track_id"))
        for i in message["instances"])
    return Frame(message["stream"], int(message["frame"]), int(message["pts"]), float(message["time"]),
                 int(message["width"]), int(message["height"]), instances, message,
                 float(message.get("capture_time", 0.0)))


class Subscriber:
    """Subscribes to a streamseg publisher. Iterating yields :class:`Frame` objects.

    ``topic``: one stream id (None: every stream). ``timeout_s``: iteration ends after this long
    without a message (None: wait forever). ``curve_secret`` and ``curve_server_key``: our
    ``NAME.key_secret`` and the publisher's public ``.key`` file, for a publisher with CURVE. Iteration also ends at the ``end_of_stream`` of the
    subscribed stream (of every stream seen, without a topic) unless ``until_end`` is False.
    """

    def __init__(self, endpoint: str, topic: str | None = None, timeout_s: float | None = None,
                 until_end: bool = True, hwm: int = 1000, curve_secret: str | None = None,
                 curve_server_key: str | None = None) -> None:
        self.topic = topic
        self.timeout_s = timeout_s
        self.until_end = until_end
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)  # detections from the pipeline's publish stage
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, hwm)
        if curve_secret or curve_server_key:  # a publisher with CURVE: our key pair and its public key
            if not (curve_secret and curve_server_key):
                raise ConfigError("CURVE needs both our NAME.key_secret and the publisher's public key file")
            curve_client(self.sock, curve_secret, curve_server_key)
        self.sock.setsockopt(zmq.SUBSCRIBE, (topic or "").encode())
        self.sock.connect(endpoint)
        self.rejected = 0

    def messages(self) -> Iterator[dict[str, Any]]:
        """Every valid message (stream_start, frame, track_start, track_end, counts, status,
        end_of_stream) as a dict."""
        open_streams: set[str] = set()
        while True:
            timeout_ms = None if self.timeout_s is None else int(self.timeout_s * 1000)
            if not self.sock.poll(timeout_ms):
                return
            parts = self.sock.recv_multipart()
            message = self._parse(parts)
            if message is None:
                continue
            yield message
            kind, stream = message["type"], message["stream"]
            if kind == "stream_start":
                open_streams.add(stream)
            elif kind == "end_of_stream" and self.until_end:
                open_streams.discard(stream)
                if self.topic is not None or not open_streams:
                    return

    def _parse(self, parts: list[bytes]) -> dict[str, Any] | None:
        try:
            topic = parts[0].decode()
            message = json.loads(parts[1])
            ok = (len(parts) == 2 and isinstance(message, dict) and message.get("schema") == SCHEMA
                  and message.get("version") == VERSION and message.get("stream") == topic)
        except (IndexError, UnicodeDecodeError, json.JSONDecodeError):
            ok = False
        if not ok or (self.topic is not None and topic != self.topic):
            if ok:
                return None  # another stream whose id starts with ours (ZeroMQ filters by prefix)
            self.rejected += 1
            log.warning("ignored a message that is not streamseg.detections v%d", VERSION)
            return None
        return message

    def __iter__(self) -> Iterator[Frame]:
        for message in self.messages():
            if message["type"] == "frame":
                yield parse_frame(message)

    def close(self) -> None:
        self.sock.close()
        self.ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
