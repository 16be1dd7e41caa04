"""Track: give each instance of each frame a track id, per stream, in frame order (:mod:`streamseg.tracking`).

The stage sits between inference and the stages that write (render, mask writer, publisher). With
tracking on, the model keeps its detections down to ``track.low_score``; the tracker matches them
all, and only those at or above ``model.score_thresh`` go on, each with its ``track_id``. The
frames where tracks start carry the start events, and the stream's end carries the ends of the
tracks still open.

A killed tracker loses nothing: every ``track.checkpoint_frames`` frames of a stream it reports
the stream's tracker state (``notify("checkpoint")``, kept by the supervisor) and it holds the
frames processed since (:meth:`TrackStage.holds`), so they are not acknowledged. Its replacement
restores the state and is sent those frames again: it tracks them as the first one did. Frames
from before the state that come again (their outputs were not yet done downstream) are sent on
with the ids the state recorded for them.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable

import numpy as np

from ..config import TrackConfig
from ..formats.records import frame_record
from ..models.registry import ModelInfo
from ..runtime.messages import EndOfStream, FrameResult, StreamStart, StreamStatus, TrackEvent
from ..runtime.stage import ALL_PORTS, Emit, Stage
from ..tracking.tracker import StreamTracker


class TrackStage(Stage):
    """Tracks the streams ``tracked`` (of ``streams``, all the run's stream ids in order, which make
    the ids unique across streams); the others' results pass through without ids. ``high_score`` is
    ``model.score_thresh``: what is written out. Ports: ``render`` gets each result with its image,
    ``masks`` and ``publish`` without."""

    def __init__(self, config: TrackConfig, streams: list[str], tracked: list[str], high_score: float,
                 ports: tuple[str, ...] | list[str] = ("render",), given: dict[str, str] | None = None,
                 model_info: dict[str, Any] | None = None) -> None:
        """``given``: stream -> the file of every detection the tracker is given (``track.detections_file``),
        written as masks JSONL records of ``model_info``'s classes."""
        super().__init__()
        self.given = {sid: open(path, "w") for sid, path in (given or {}).items()}
        self.info = ModelInfo.from_dict(model_info) if model_info else None
        self.config = config
        self.ordinals = {sid: i for i, sid in enumerate(streams)}
        self.tracked = set(tracked)
        self.high_score = high_score
        self.ports = tuple(ports)
        self.trackers: dict[str, StreamTracker] = {}
        self.live: dict[str, bool] = {}
        self.loops: dict[str, int] = {}
        """Stream -> :attr:`FrameResult.loop` of its last frame."""
        self.held: dict[str, list[int]] = {}
        """Stream -> frames tracked since its last checkpoint (not acknowledged until the next)."""
        self.sent: dict[str, dict[int, _Sent]] = {}
        """Stream -> frame -> what was sent for it, until every port is done with it: a replacement
        sends it again, the same, for a frame from before its checkpoint."""
        self.ended: dict[str, tuple[TrackEvent, ...]] = {}
        """Stream -> the ends of its tracks, once it ended."""

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            self.live[message.stream_id] = message.live
            return [(ALL_PORTS, message)]
        if isinstance(message, StreamStatus):
            return [(ALL_PORTS, message)]
        if not isinstance(message, FrameResult):
            return []
        sid, detections = message.stream_id, message.detections
        if sid not in self.tracked:  # the model kept low scores for the tracker: none are written out
            return self._emits(message, detections.select(np.flatnonzero(detections.scores >= self.high_score)), ())
        tracker = self._tracker(sid)
        if message.index <= tracker.frame:  # sent again to a replacement, from before its checkpoint
            sent = self.sent[sid].get(message.index)
            return [] if sent is None else self._tracked(message, sent.ids, sent.events)
        events = tracker.finish() if message.loop != self.loops.setdefault(sid, message.loop) else []
        self.loops[sid] = message.loop  # the file started over: the same objects, but not the same tracks
        if sid in self.given and self.info is not None:
            self.given[sid].write(json.dumps(frame_record(message, self.info), separators=(",", ":")) + "\n")
        time_s = message.captured if self.live.get(sid) else message.time_s
        ids, seen = tracker.update(message.index, time_s, detections, self.high_score)
        events += seen
        self.count("frames")
        self.count("tracks", sum(e.kind == "start" for e in events))
        self.sent[sid][message.index] = _Sent(ids, tuple(events), set(self.ports))
        self.held[sid].append(message.index)
        if len(self.held[sid]) >= self.config.checkpoint_frames:
            self._checkpoint()
        return self._tracked(message, ids, tuple(events))

    def _tracker(self, sid: str) -> StreamTracker:
        """The stream's tracker; a replacement's first takes back its checkpoint."""
        tracker = self.trackers.get(sid)
        if tracker is None:
            tracker = self.trackers[sid] = StreamTracker(self.config, self.ordinals[sid], len(self.ordinals))
            self.held[sid], self.sent[sid] = [], {}
            saved = self.previous.get("streams", {}).get(sid) if self.restarted else None
            if saved is not None:
                tracker.restore(saved["tracker"])
                self.live.setdefault(sid, saved["live"])
                self.loops[sid] = saved["loop"]
                self.sent[sid] = {int(k): _Sent.from_state(v, self.ports) for k, v in saved["sent"].items()}
                if saved["ended"] is not None:
                    self.ended[sid] = tuple(TrackEvent(**e) for e in saved["ended"])
        return tracker

    def _tracked(self, result: FrameResult, ids: np.ndarray, events: tuple[TrackEvent, ...]) -> list[Emit]:
        keep = np.flatnonzero(ids >= 0)
        return self._emits(result, result.detections.select(keep, ids[keep]), events)

    def _emits(self, result: FrameResult, detections: Any, events: tuple[TrackEvent, ...]) -> list[Emit]:
        return [(port, dataclasses.replace(result, detections=detections, events=events,
                                           image=result.image if port == "render" else None))
                for port in self.ports]

    def _checkpoint(self) -> None:
        """Report every stream's tracker state (and what was sent and is not yet done downstream), then
        let the frames it covers go."""
        streams = {sid: {"tracker": tracker.state(), "live": self.live.get(sid, False), "loop": self.loops.get(sid, 0),
                         "sent": {str(k): v.state() for k, v in self.sent[sid].items()},
                         "ended": [dataclasses.asdict(e) for e in self.ended[sid]] if sid in self.ended else None}
                   for sid, tracker in self.trackers.items()}
        self.notify("checkpoint", streams=streams)
        for frames in self.held.values():
            frames.clear()

    def holds(self) -> frozenset[tuple[str, int]]:
        return frozenset((sid, index) for sid, frames in self.held.items() for index in frames)

    def acknowledged(self, port: str, message: Any, done: bool) -> None:
        if done and isinstance(message, FrameResult) and message.stream_id in self.sent:
            sent = self.sent[message.stream_id].get(message.index)
            if sent is not None:
                sent.pending.discard(port)
                if not sent.pending:
                    del self.sent[message.stream_id][message.index]

    def passes_on(self, eos: EndOfStream) -> EndOfStream:
        sid = eos.stream_id
        if sid not in self.tracked:
            return eos
        tracker = self._tracker(sid)
        if sid not in self.ended:
            self.ended[sid] = tuple(tracker.finish())
            self.count("tracks_ended", len(self.ended[sid]))
            self._checkpoint()
        if sid in self.given:
            self.given.pop(sid).close()
        return dataclasses.replace(eos, events=self.ended[sid])

    def close(self) -> None:
        for file in self.given.values():
            file.close()


@dataclasses.dataclass
class _Sent:
    """What was sent for one frame: its detections' ids (-1: not written out), its events, and the
    ports whose receivers are not yet done with it."""

    ids: np.ndarray
    events: tuple[TrackEvent, ...]
    pending: set[str]

    def state(self) -> dict[str, Any]:
        return {"ids": self.ids.tolist(), "events": [dataclasses.asdict(e) for e in self.events]}

    @classmethod
    def from_state(cls, state: dict[str, Any], ports: tuple[str, ...]) -> _Sent:
        return cls(np.array(state["ids"], np.int64), tuple(TrackEvent(**e) for e in state["events"]), set(ports))
