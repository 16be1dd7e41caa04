"""Following instances over time: track ids by mask, one :class:`StreamTracker` per stream.

The association is ByteTrack's (Zhang et al., 2022) with masks where it has boxes. For each frame:

1. every live track's last mask is moved by the track's velocity to where it should be now (a track
   seen in the frame before is also compared where it was: motion from clipped or occluded masks can
   mislead), and cut to the frame;
2. the detections at or above the model's score threshold (``high``) are matched to all live
   tracks, lost ones included, by mask IoU (an optimal assignment, at least ``match_iou``);
3. the tracks seen in the frame before and still unmatched are matched to the low-score detections
   (from ``low_score`` up to the threshold, never written out) at ``low_match_iou``: an object whose
   score dips for a frame keeps its id;
4. a track seen only once, in the frame before, has no velocity yet: it takes the nearest high-score
   detection still unmatched of its class and about its size (a shape fast for its size leaves its
   own outline between two frames, so no IoU finds it);
5. a high-score detection left over starts a track with a new id; a track not seen for longer than
   ``max_age_s`` ends (before the frame's matching: after a gap or a jump forward in time, it is
   not matched again). Time going backwards ends every track (the caller ends them at a ``--loop``
   restart, whose timestamps go on).

Every detection written out gets an id in the frame it first appears. A track's class is the one
it was seen as most often; where two tracks could take either of two near-equal masks (the model
found one shape as two classes), each takes its own class's. A track's velocity is that of its
box's centre, left as it was by a sighting whose mask's area is under :data:`STEADY` times the
last one's or over its inverse (a shape going behind another or out of the frame, or coming back).
Ids are unique across the streams of a run without any coordination: stream ``ordinal`` of
``streams`` numbers its tracks ``ordinal + 1``, ``ordinal + 1 + streams``, ... (one stream: 1, 2,
3...). :meth:`StreamTracker.state` and :meth:`StreamTracker.restore` carry a
tracker's whole state as JSON values, so that a replacement goes on exactly where it was.
"""

from __future__ import annotations

import base64
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config import TrackConfig
from ..runtime.messages import Detections, MaskRegions, TrackEvent

STEADY = 0.7
"""A sighting whose mask has at least this share of the last one's area (and at most its inverse)
updates the track's velocity; others keep it."""
NEWBORN_AREA = 2.0
NEWBORN_REACH = 3.0
"""A track seen once is continued by a detection whose area is within a factor of NEWBORN_AREA of its
own and whose box's centre is at most NEWBORN_REACH widths (square roots of the larger area) away."""
CLASS_BONUS = 0.05
"""Added to a track's mask IoU with a detection of its own class when choosing the assignment (not
when judging whether a pair matches at all)."""


@dataclass
class Track:
    """One object followed over time."""

    id: int
    x: int
    """The last mask's region's left column and top row, in pixels."""
    y: int
    bits: np.ndarray
    """``bool[w, h]``: the last mask within its region, column by column (as :class:`MaskRegions`)."""
    box: np.ndarray
    """``float64[4]``, the last box, ``[x1, y1, x2, y2]``."""
    first_frame: int
    first_time: float
    last_frame: int
    """The last frame it was seen in (a low-score detection included)."""
    last_time: float
    shown_frame: int
    """The last frame it was written out in (by a detection at or above the threshold): its end's."""
    shown_time: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2))
    """Pixels a second, ``[x, y]``, of the box's centre."""
    classes: Counter[int] = field(default_factory=Counter)
    """How often it was seen as each class."""
    area: int = 0
    """Pixels in :attr:`bits`."""

    @property
    def label(self) -> int:
        return self.classes.most_common(1)[0][0]

    def state(self) -> dict[str, Any]:
        """The track as JSON values (its mask's bits packed, in base64)."""
        return {"id": self.id, "x": self.x, "y": self.y, "shape": list(self.bits.shape),
                "bits": base64.b64encode(np.packbits(self.bits, axis=None).tobytes()).decode(),
                "box": self.box.tolist(), "first_frame": self.first_frame, "first_time": self.first_time,
                "last_frame": self.last_frame, "last_time": self.last_time, "shown_frame": self.shown_frame,
                "shown_time": self.shown_time, "velocity": self.velocity.tolist(),
                "classes": [[k, n] for k, n in self.classes.items()], "area": self.area}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Track:
        w, h = state["shape"]
        packed = np.frombuffer(base64.b64decode(state["bits"]), np.uint8)
        bits = np.unpackbits(packed, count=w * h).reshape(w, h).astype(bool)
        return cls(state["id"], state["x"], state["y"], bits, np.array(state["box"], np.float64),
                   state["first_frame"], state["first_time"], state["last_frame"], state["last_time"],
                   state["shown_frame"], state["shown_time"], np.array(state["velocity"], np.float64),
                   Counter({k: n for k, n in state["classes"]}), state["area"])


def _event(kind: str, track: Track) -> TrackEvent:
    return TrackEvent(kind, track.id, track.label, track.first_frame, track.shown_frame, track.first_time,
                      track.shown_time)


def overlap(ax: int, ay: int, a: np.ndarray, bx: int, by: int, b: np.ndarray) -> int:
    """Pixels two masks share, given as regions (left column, top row, ``bool[w, h]``)."""
    x0, x1 = max(ax, bx), min(ax + a.shape[0], bx + b.shape[0])
    y0, y1 = max(ay, by), min(ay + a.shape[1], by + b.shape[1])
    if x0 >= x1 or y0 >= y1:
        return 0
    return int(np.count_nonzero(a[x0 - ax:x1 - ax, y0 - ay:y1 - ay] & b[x0 - bx:x1 - bx, y0 - by:y1 - by]))


def _rects(regions: list[tuple[int, int, np.ndarray]]) -> np.ndarray:
    """``int64[N, 4]``, ``[x0, y0, x1, y1]`` of regions given as (left column, top row, ``bool[w, h]``)."""
    return np.array([(x, y, x + bits.shape[0], y + bits.shape[1]) for x, y, bits in regions], np.int64).reshape(-1, 4)


def _touching(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``bool[len(a), len(b)]``: which rectangles of ``a`` overlap which of ``b``."""
    return ((np.maximum(a[:, None, 0], b[None, :, 0]) < np.minimum(a[:, None, 2], b[None, :, 2]))
            & (np.maximum(a[:, None, 1], b[None, :, 1]) < np.minimum(a[:, None, 3], b[None, :, 3])))


def similarity(inter: int, area_a: int, area_b: int) -> float:
    """The IoU of two masks from the pixels they share and their areas."""
    return inter / (area_a + area_b - inter) if inter else 0.0


class StreamTracker:
    """The tracks of one stream; :meth:`update` once a frame, in frame order."""

    def __init__(self, config: TrackConfig, ordinal: int = 0, streams: int = 1) -> None:
        self.config = config
        self.ordinal, self.streams = ordinal, streams
        self.started = 0
        """Tracks started so far (the next id's place in this stream's series)."""
        self.tracks: list[Track] = []
        self.frame = -1
        self.time = -np.inf

    def new_id(self) -> int:
        self.started += 1
        return (self.started - 1) * self.streams + self.ordinal + 1

    def state(self) -> dict[str, Any]:
        """Everything the tracker knows, as JSON values (:meth:`restore` takes it back)."""
        return {"started": self.started, "frame": self.frame, "time": None if self.time == -np.inf else self.time,
                "tracks": [t.state() for t in self.tracks]}

    def restore(self, state: dict[str, Any]) -> None:
        self.started, self.frame = state["started"], state["frame"]
        self.time = -np.inf if state["time"] is None else state["time"]
        self.tracks = [Track.from_state(t) for t in state["tracks"]]

    def update(self, frame: int, time_s: float, detections: Detections, high_score: float
               ) -> tuple[np.ndarray, list[TrackEvent]]:
        """The track id of each detection (``int64[N]``; -1 for a low-score one, which is not written
        out, or one below ``low_score``), and the tracks that started and ended at this frame."""
        events: list[TrackEvent] = []
        if time_s < self.time:  # time went backwards: a restart, never the same objects
            events += self.finish()
        ids = np.full(len(detections), -1, np.int64)
        masks = detections.masks
        if masks is None:
            raise ValueError("tracking needs masks: the model has no mask head")
        offsets = masks.offsets
        regions = [self._region(masks, i, offsets) for i in range(len(detections))]
        areas = [int(np.count_nonzero(r[2])) for r in regions]
        scores = detections.scores
        high = [i for i in range(len(detections)) if scores[i] >= high_score]
        low = [i for i in range(len(detections)) if self.config.low_score <= scores[i] < high_score]
        for track in [t for t in self.tracks if time_s - t.last_time > self.config.max_age_s]:
            self.tracks.remove(track)  # over before this frame (a gap, a jump forward): never matched again
            events.append(_event("end", track))
        live = list(self.tracks)
        predicted = [self._predicted(t, time_s, masks.width, masks.height) for t in live]
        # the first stage: the high-score detections against every live track, lost ones too
        matched: set[int] = set()
        for k, i in self._assign(high, list(range(len(live))), live, predicted, regions, areas, detections.labels,
                                 self.config.match_iou):
            matched.add(k)
            ids[i] = live[k].id
            live[k].shown_frame, live[k].shown_time = frame, time_s
            self._see(live[k], frame, time_s, regions[i], areas[i], detections.boxes[i], int(detections.labels[i]))
        # the second: the low-score ones against the tracks seen in the frame before and not yet matched;
        # a match keeps the track going, but the detection is not written out (its id stays -1)
        recent = [k for k in range(len(live)) if k not in matched and live[k].last_frame == self.frame]
        for k, i in self._assign(low, recent, live, predicted, regions, areas, detections.labels,
                                 self.config.low_match_iou):
            matched.add(k)
            self._see(live[k], frame, time_s, regions[i], areas[i], detections.boxes[i], int(detections.labels[i]))
        # the third: a track seen once, in the frame before, has no motion to predict where it went; a
        # shape fast for its size leaves its own outline between two frames. Such a track and a
        # high-score detection nothing took, of its class and size and near it, are the same object
        newborn = [k for k in recent if k not in matched and live[k].first_frame == self.frame]
        for k, i in self._nearest([i for i in high if ids[i] < 0], newborn, live, areas, detections):
            ids[i] = live[k].id
            live[k].shown_frame, live[k].shown_time = frame, time_s
            self._see(live[k], frame, time_s, regions[i], areas[i], detections.boxes[i], int(detections.labels[i]))
        for i in high:
            if ids[i] < 0:
                x, y, bits = regions[i]
                track = Track(self.new_id(), x, y, bits.copy(), detections.boxes[i].astype(np.float64), frame, time_s,
                              frame, time_s, frame, time_s, area=areas[i])
                track.classes[int(detections.labels[i])] += 1
                self.tracks.append(track)
                ids[i] = track.id
                events.append(_event("start", track))
        self.frame, self.time = frame, time_s
        return ids, events

    def finish(self) -> list[TrackEvent]:
        """End every track (the stream ended, or started over); the next track gets a new id."""
        events = [_event("end", t) for t in self.tracks]
        self.tracks, self.time = [], -np.inf
        return events

    @staticmethod
    def _region(masks: MaskRegions, i: int, offsets: np.ndarray) -> tuple[int, int, np.ndarray]:
        x, y, bits = masks.region(i, offsets)
        return x, y, bits.T  # [x, y]: a view of the region's pixels as they are kept, column by column

    def _predicted(self, track: Track, time_s: float, width: int, height: int
                   ) -> tuple[int, int, np.ndarray, int, int, int]:
        """The track's mask where its motion puts it now, cut to the frame (left column, top row, bits,
        area: a shape leaving the frame is compared by what is left of it), and the left column and top
        row where it was last seen."""
        dx, dy = (track.velocity * (time_s - track.last_time)) if self.config.motion else (0.0, 0.0)
        x, y, bits = track.x + round(float(dx)), track.y + round(float(dy)), track.bits
        if x < 0 or y < 0 or x + bits.shape[0] > width or y + bits.shape[1] > height:
            bits = bits[max(0, -x):max(0, width - x), max(0, -y):max(0, height - y)]
            x, y = max(x, 0), max(y, 0)
            return x, y, bits, int(np.count_nonzero(bits)), track.x, track.y
        return x, y, bits, track.area, track.x, track.y

    def _assign(self, dets: list[int], candidates: list[int], live: list[Track],
                predicted: list[tuple[int, int, np.ndarray, int, int, int]], regions: list[tuple[int, int, np.ndarray]],
                areas: list[int], labels: np.ndarray, least: float) -> list[tuple[int, int]]:
        """Pairs (track index, detection index) of an optimal assignment by mask IoU, each at least
        ``least``: a track's mask where its motion puts it, or, for a track seen in the frame before,
        where it was, whichever fits better (a shape cut by the frame's edge or by another shape moves
        its box's centre, and so its velocity, where the shape does not go; a track lost for longer is
        only looked for where its motion took it, not where it was lost, which other shapes pass)."""
        from scipy.optimize import linear_sum_assignment

        if not dets or not candidates:
            return []
        # only the pairs whose regions overlap can have an IoU: found for all pairs at once, at each
        # place a track is compared at
        b = _rects([regions[i] for i in dets])
        sim = np.zeros((len(candidates), len(dets)))
        here = [predicted[k][:3] for k in candidates]
        for row, col in zip(*np.nonzero(_touching(_rects(here), b))):
            (px, py, bits), (x, y, det_bits) = here[row], regions[dets[col]]
            sim[row, col] = similarity(overlap(px, py, bits, x, y, det_bits), predicted[candidates[row]][3],
                                       areas[dets[col]])
        back = [row for row, k in enumerate(candidates)
                if live[k].last_frame == self.frame and predicted[k][:2] != predicted[k][4:]]
        was = [(live[candidates[row]].x, live[candidates[row]].y, live[candidates[row]].bits) for row in back]
        for i, col in zip(*np.nonzero(_touching(_rects(was), b))):
            track, (x, y, det_bits) = live[candidates[back[i]]], regions[dets[col]]
            sim[back[i], col] = max(sim[back[i], col], similarity(overlap(track.x, track.y, track.bits, x, y, det_bits),
                                                                  track.area, areas[dets[col]]))
        # where the model gives one object twice, as two classes, each track keeps the detection of
        # its own class: two near-equal masks would otherwise swap their ids from frame to frame
        same = np.array([live[k].label for k in candidates])[:, None] == labels[dets][None, :]
        rows, cols = linear_sum_assignment(-(sim + CLASS_BONUS * (same & (sim > 0))))
        return [(candidates[r], dets[c]) for r, c in zip(rows, cols) if sim[r, c] >= least]

    @staticmethod
    def _nearest(dets: list[int], candidates: list[int], live: list[Track], areas: list[int],
                 detections: Detections) -> list[tuple[int, int]]:
        """Pairs (track index, detection index) nearest first, by the distance of their boxes' centres:
        the same class, areas within a factor of :data:`NEWBORN_AREA`, at most :data:`NEWBORN_REACH`
        times the larger one's width apart."""
        from scipy.optimize import linear_sum_assignment

        if not dets or not candidates:
            return []
        boxes = detections.boxes[dets].astype(np.float64)
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        cost = np.full((len(candidates), len(dets)), np.inf)
        for row, k in enumerate(candidates):
            track = live[k]
            for col, i in enumerate(dets):
                ratio = areas[i] / max(track.area, 1)
                reach = NEWBORN_REACH * np.sqrt(max(areas[i], track.area))
                distance = float(np.hypot(*(centres[col] - (track.box[:2] + track.box[2:]) / 2)))
                if (track.label == detections.labels[i] and 1 / NEWBORN_AREA <= ratio <= NEWBORN_AREA
                        and distance <= reach):
                    cost[row, col] = distance
        if not np.isfinite(cost).any():
            return []
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e12))
        return [(candidates[r], dets[c]) for r, c in zip(rows, cols) if np.isfinite(cost[r, c])]

    @staticmethod
    def _see(track: Track, frame: int, time_s: float, region: tuple[int, int, np.ndarray], area: int,
             box: np.ndarray, label: int) -> None:
        dt = time_s - track.last_time
        # a mask that shrank or grew much since the last sighting is the shape going behind another, out
        # of the frame or coming back: its box's centre moves where the shape does not, and the velocity
        # from before goes on (it is what finds the shape again when it comes out)
        if dt > 0 and (track.last_frame == track.first_frame or STEADY * track.area <= area <= track.area / STEADY):
            centre, before = (box[:2] + box[2:]) / 2, (track.box[:2] + track.box[2:]) / 2
            seen = (centre - before) / dt
            track.velocity = seen if track.last_frame == track.first_frame else 0.5 * (seen + track.velocity)
        track.x, track.y, track.bits, track.area = region[0], region[1], region[2].copy(), area
        track.box = box.astype(np.float64)
        track.last_frame, track.last_time = frame, time_s
        track.classes[label] += 1
