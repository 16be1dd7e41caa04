"""Track: give each instance of each frame a track id, per stream, in frame order (:mod:`streamseg.tracking`).

The stage sits between inference and the stages that write (render, mask writer, publisher). With
tracking on, the model keeps its detections down to ``track.low_score``; the tracker matches them
all, and only those at or above ``model.score_thresh`` go on, each with its ``track_id``. The
frames where tracks start carry the start events, and the stream's end carries the ends of the
tracks still open. The ``analytics`` zones and lines are counted here too, over the tracked
instances: every frame carries their figures, and every ``analytics.counts_every_s`` one frame (and
the stream's end) carries them in full, for a published ``counts`` message.

A killed tracker loses nothing: every ``track.checkpoint_frames`` frames of a stream it reports
every stream's state (``notify("checkpoint")``, kept by the supervisor) and it holds the frames
processed since (:meth:`TrackStage.holds`), so they are not acknowledged. Its replacement restores
the state and is sent those frames again: it tracks them as the first one did. Frames from before
the state that come again (their outputs were not yet done downstream) are sent on as they were.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from ..config import AnalyticsConfig, TrackConfig, section_from_dict
from ..formats.records import frame_record
from ..models.registry import ModelInfo
from ..runtime.messages import (
    AreaCount,
    Detections,
    EndOfStream,
    FrameResult,
    StreamStart,
    StreamStatus,
    TrackEvent,
)
from ..runtime.stage import ALL_PORTS, Emit, Stage
from ..sources import source_kind
from ..tracking.analytics import StreamAnalytics, own_areas
from ..tracking.tracker import StreamTracker


@dataclass
class _Sent:
    """What was sent for one frame, and the ports whose receivers are not yet done with it."""

    ids: np.ndarray
    """Its detections' track ids (-1: not written out)."""
    events: tuple[TrackEvent, ...]
    counts: tuple[AreaCount, ...]
    report: str
    pending: set[str]

    def state(self) -> dict[str, Any]:
        return {"ids": self.ids.tolist(), "events": [dataclasses.asdict(e) for e in self.events],
                "counts": [dataclasses.asdict(c) for c in self.counts], "report": self.report}

    @classmethod
    def from_state(cls, state: dict[str, Any], ports: tuple[str, ...]) -> _Sent:
        return cls(np.array(state["ids"], np.int64), tuple(TrackEvent(**e) for e in state["events"]),
                   tuple(AreaCount(**c) for c in state["counts"]), state["report"], set(ports))


@dataclass
class _Stream:
    """One tracked stream: its tracker, its zones and lines, and what a replacement needs."""

    tracker: StreamTracker
    analytics: StreamAnalytics | None
    size: tuple[int, int]
    """Its frames' width and height."""
    section: AnalyticsConfig | None = None
    """The zones and lines it is counted in (a service's stream's own, or the run's)."""
    live: bool = False
    loop: int = 0
    """:attr:`FrameResult.loop` of its last frame."""
    next_report: float = -np.inf
    """When (its time) the next frame carries the analytics in full."""
    held: list[int] = field(default_factory=list)
    """Frames tracked since the last checkpoint (not acknowledged until the next)."""
    sent: dict[int, _Sent] = field(default_factory=dict)
    """Frame -> what was sent for it, until every port is done with it."""
    ended: tuple[TrackEvent, ...] | None = None
    """The ends of its tracks, once it ended."""
    report: str = ""
    """Its analytics in full at its end."""

    def state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state(), "size": list(self.size), "live": self.live, "loop": self.loop,
                "analytics": None if self.analytics is None else self.analytics.state(),
                "areas": None if self.section is None else dataclasses.asdict(self.section),
                "next_report": None if self.next_report == -np.inf else self.next_report,
                "sent": {str(k): v.state() for k, v in self.sent.items()}, "report": self.report,
                "ended": None if self.ended is None else [dataclasses.asdict(e) for e in self.ended]}

    def restore(self, state: dict[str, Any], ports: tuple[str, ...]) -> None:
        self.tracker.restore(state["tracker"])
        self.live, self.loop, self.report = state["live"], state["loop"], state["report"]
        if self.analytics is not None:
            self.analytics.restore(state["analytics"])
        self.next_report = -np.inf if state["next_report"] is None else state["next_report"]
        self.sent = {int(k): _Sent.from_state(v, ports) for k, v in state["sent"].items()}
        self.ended = None if state["ended"] is None else tuple(TrackEvent(**e) for e in state["ended"])


class TrackStage(Stage):
    """Tracks the streams ``tracked`` (of ``streams``, all the run's stream ids in order, which make
    the ids unique across streams); the others' results pass through without ids. ``high_score`` is
    ``model.score_thresh``: what is written out. ``analytics``: the ``analytics`` section's JSON form
    (its zones and lines). Ports: ``render`` gets each result with its image, ``masks`` and
    ``publish`` without."""

    def __init__(self, config: TrackConfig, streams: list[str], tracked: list[str] | None, high_score: float,
                 model_info: dict[str, Any], ports: tuple[str, ...] | list[str] = ("render",),
                 analytics: dict[str, Any] | None = None, given: dict[str, str] | None = None) -> None:
        """``given``: stream -> the file of every detection the tracker is given (``track.detections_file``)."""
        super().__init__()
        self.config = config
        self.ordinals = {sid: i for i, sid in enumerate(streams)}
        self.service = tracked is None
        """A service's streams come and go: each is tracked unless it is an image folder, its ids are
        its own (1, 2, 3...), and its state goes with its end (the id may come again, as a new stream)."""
        self.tracked = set(tracked or ())
        self.high_score = high_score
        self.info = ModelInfo.from_dict(model_info)
        self.ports = tuple(ports)
        self.analytics = section_from_dict("analytics", analytics) if analytics else None
        self.areas: dict[str, AnalyticsConfig | None] = {}
        """A service's streams' own zones and lines (from their StreamStart; None: none of their own)."""
        self.given_paths = dict(given or {})
        self.given: dict[str, Any] = {}
        self.live: dict[str, bool] = {}
        self.streams: dict[str, _Stream] = {}

    totals = ("frames", "tracks", "tracks_ended")
    """Counted over the run: a replacement takes them back from the checkpoint and counts on."""

    def setup(self) -> None:
        """Open the detections files; a replacement takes back every stream's checkpoint (also of the
        streams it may never see a message of again, so that its own checkpoints keep them)."""
        self.given = {sid: open(path, "a" if self.restarted else "w") for sid, path in self.given_paths.items()}
        if self.restarted:
            self.counters.update(self.previous.get("counters", {}))
            for sid, saved in self.previous.get("streams", {}).items():
                self._stream(sid, tuple(saved["size"]), saved)

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            self.live[message.stream_id] = message.live
            if self.service:
                old = self.streams.get(message.stream_id)
                if old is not None and old.ended is not None:  # restored from a checkpoint of the stream before
                    del self.streams[message.stream_id]
                if source_kind(message.source) != "images":
                    self.tracked.add(message.stream_id)
                # its own zones and lines: a stream added again under its id has its own, or none
                self.areas[message.stream_id] = own_areas(message.analytics)
            return [(ALL_PORTS, message)]
        if isinstance(message, StreamStatus):
            return [(ALL_PORTS, message)]
        if not isinstance(message, FrameResult):
            return []
        sid, detections = message.stream_id, message.detections
        if sid not in self.tracked:  # the model kept low scores for the tracker: none are written out
            return self._emits(message, detections.select(np.flatnonzero(detections.scores >= self.high_score)))
        stream = self._stream(sid, (message.width, message.height))
        if message.index <= stream.tracker.frame:  # sent again to a replacement, from before its checkpoint
            sent = stream.sent.get(message.index)
            return [] if sent is None else self._tracked(message, sent)
        events = []
        if message.loop != stream.loop:  # the file started over: the same objects, but not the same tracks
            events, stream.loop, stream.next_report = stream.tracker.finish(), message.loop, -np.inf
        if sid in self.given:
            self.given[sid].write(json.dumps(frame_record(message, self.info), separators=(",", ":")) + "\n")
        time_s = message.captured if stream.live else message.time_s
        ids, seen = stream.tracker.update(message.index, time_s, detections, self.high_score)
        events += seen
        sent = _Sent(ids, tuple(events), (), "", set(self.ports))
        if stream.analytics is not None:
            sent.counts = self._count(stream, detections, ids, events, time_s)
            if time_s >= stream.next_report:
                sent.report = json.dumps(stream.analytics.report(drain=True), separators=(",", ":"))
                assert stream.section is not None
                stream.next_report = time_s + stream.section.counts_every_s
        self.count("frames")
        self.count("tracks", sum(e.kind == "start" for e in events))
        self.count("tracks_ended", sum(e.kind == "end" for e in events))
        stream.sent[message.index] = sent
        stream.held.append(message.index)
        if len(stream.held) >= self.config.checkpoint_frames:
            self._checkpoint()
        return self._tracked(message, sent)

    def _stream(self, sid: str, size: tuple[int, int], saved: dict[str, Any] | None = None) -> _Stream:
        """The stream's state, made at its first frame (of ``size``), or from its checkpoint."""
        stream = self.streams.get(sid)
        if stream is None:
            if saved is not None and saved.get("areas"):
                self.areas[sid] = section_from_dict("analytics", saved["areas"])
            section = self.areas.get(sid) or self.analytics
            areas = StreamAnalytics(section, sid, *size) if section else None
            ordinal, streams = (self.ordinals[sid], len(self.ordinals)) if sid in self.ordinals else (0, 1)
            stream = self.streams[sid] = _Stream(StreamTracker(self.config, ordinal, streams),
                                                 areas if areas and (areas.zones or areas.lines) else None,
                                                 size, section, self.live.get(sid, False))
            if saved is not None:
                stream.restore(saved, self.ports)
        return stream

    def _count(self, stream: _Stream, detections: Detections, ids: np.ndarray, events: list[TrackEvent],
               time_s: float) -> tuple[AreaCount, ...]:
        assert stream.analytics is not None
        keep = np.flatnonzero(ids >= 0)
        names = [self.info.category(int(label)) for label in detections.labels[keep].tolist()]
        counts = stream.analytics.update(detections.select(keep, ids[keep]), time_s, names)
        stream.analytics.end([e.track_id for e in events if e.kind == "end"])
        return counts

    def _tracked(self, result: FrameResult, sent: _Sent) -> list[Emit]:
        keep = np.flatnonzero(sent.ids >= 0)
        return self._emits(result, result.detections.select(keep, sent.ids[keep]), sent)

    def _emits(self, result: FrameResult, detections: Detections, sent: _Sent | None = None) -> list[Emit]:
        """``result`` with ``detections`` on every port (the image only to render), with what ``sent``
        recorded of a tracked frame: its events and its zones' and lines' figures."""
        tracked = {} if sent is None else {"events": sent.events, "counts": sent.counts, "report": sent.report}
        return [(port, dataclasses.replace(result, detections=detections, image=result.image if port == "render"
                                           else None, **tracked))
                for port in self.ports]

    def _checkpoint(self) -> None:
        """Report every stream's state (with what was sent and is not yet done downstream), then let
        the frames it covers go."""
        # (the frames go once the checkpoint is handed to the events socket: a process killed in the
        # instant before ZeroMQ sends it would lose it with them; the window is that instant)
        self.notify("checkpoint", streams={sid: stream.state() for sid, stream in self.streams.items()},
                    counters=dict(self.counters))
        for stream in self.streams.values():
            stream.held.clear()

    def holds(self) -> frozenset[tuple[str, int]]:
        return frozenset((sid, index) for sid, stream in self.streams.items() for index in stream.held)

    def acknowledged(self, port: str, message: Any, done: bool) -> None:
        stream = self.streams.get(getattr(message, "stream_id", ""))
        if done and isinstance(message, FrameResult) and stream is not None:
            sent = stream.sent.get(message.index)
            if sent is not None:
                sent.pending.discard(port)
                if not sent.pending:
                    del stream.sent[message.index]

    def passes_on(self, eos: EndOfStream) -> EndOfStream:
        sid = eos.stream_id
        stream = self.streams.get(sid)
        if self.service:  # what the service knew of it goes with its end (its id may come again)
            self.tracked.discard(sid)
            self.live.pop(sid, None)
            self.areas.pop(sid, None)
        if stream is None:  # not tracked, or no frame of it came
            return eos
        if stream.ended is None:
            stream.ended = tuple(stream.tracker.finish())
            self.count("tracks_ended", len(stream.ended))
            if stream.analytics is not None:
                stream.analytics.end([e.track_id for e in stream.ended])
                stream.report = json.dumps(stream.analytics.report(drain=True), separators=(",", ":"))
            self._checkpoint()
        if sid in self.given:
            self.given.pop(sid).close()
        if self.service:
            del self.streams[sid]
        return dataclasses.replace(eos, events=stream.ended, report=stream.report)

    def report(self) -> dict[str, Any]:
        zones = {sid: s.analytics.report() for sid, s in self.streams.items() if s.analytics is not None}
        return {**super().report(), **({"analytics": zones} if zones else {})}

    def close(self) -> None:
        for file in self.given.values():
            file.close()
