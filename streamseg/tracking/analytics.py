"""Zones and lines over tracks: who is inside, for how long, and who crossed which way.

Each tracked instance stands at one point of its frame, its *anchor* (``analytics.anchor``: the
bottom centre of its box, where an object stands on the ground; or its centre). A **zone** is a
polygon: an instance is inside when its anchor is (its edges count as inside). Its figures are
who is seen inside in the last frame (occupancy), how many tracks entered it, and for how long each
stayed (dwell, from the frame it was first inside to the last, counted when it is seen outside or
its track ends: a track hidden for a moment is still inside). A
**line** is a segment: a track *crosses* it when the step of its anchor from one sighting to the
next goes from one side of the line to the other through the segment itself. Looking along the
line from its first point to its second, as the picture shows it (y grows downwards), a crossing
from the right-hand side to the left-hand side is ``in``, the other way ``out``; both are counted
per class.

All of it is plain state per stream (:class:`StreamAnalytics`), carried as JSON values like the
tracker's, so that a replaced tracker worker goes on with the same counts.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import numpy as np

from ..config import AnalyticsConfig, LineConfig, ZoneConfig, section_from_dict
from ..errors import ConfigError
from ..runtime.messages import AreaCount, Detections


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The z of (a - o) x (b - o): positive on one side of o->a, negative on the other, 0 on the line."""
    return (a[..., 0] - o[..., 0]) * (b[..., 1] - o[..., 1]) - (a[..., 1] - o[..., 1]) * (b[..., 0] - o[..., 0])


def segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    """Whether segments p1p2 and q1q2 cross at a point inside both (touching at an end is not)."""
    d1, d2 = _cross(q1, q2, p1), _cross(q1, q2, p2)
    d3, d4 = _cross(p1, p2, q1), _cross(p1, p2, q2)
    return bool(d1 * d2 < 0 and d3 * d4 < 0)


def inside(polygon: np.ndarray, points: np.ndarray) -> np.ndarray:
    """``bool[N]``: which ``points`` (``[N, 2]``) lie inside ``polygon`` (``[K, 2]``) or on its edges."""
    if not len(points):
        return np.zeros(0, bool)
    x, y = points[:, 0:1], points[:, 1:2]
    a, b = polygon, np.roll(polygon, -1, axis=0)
    # on an edge: collinear with it and within its extent
    on = ((np.abs(_cross(a[None], b[None], points[:, None])) < 1e-9)
          & (np.minimum(a[:, 0], b[:, 0]) <= x) & (x <= np.maximum(a[:, 0], b[:, 0]))
          & (np.minimum(a[:, 1], b[:, 1]) <= y) & (y <= np.maximum(a[:, 1], b[:, 1]))).any(1)
    # even-odd rule: edges that a ray to the right of the point crosses
    straddle = (a[:, 1] > y) != (b[:, 1] > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at = a[:, 0] + (y - a[:, 1]) * (b[:, 0] - a[:, 0]) / (b[:, 1] - a[:, 1])
    return on | ((straddle & (x < at)).sum(1) % 2 == 1)


def _points(item: ZoneConfig | LineConfig, key: str) -> np.ndarray:
    if not item.name:
        raise ConfigError(f"{key} needs a name")
    for j, point in enumerate(item.points):
        if len(point) != 2:
            raise ConfigError(f"{key}.points[{j}] ({item.name}): a point is [x, y], got {list(point)}")
    return np.asarray(item.points, np.float64).reshape(-1, 2)


def check_zone(zone: ZoneConfig, key: str) -> None:
    """A ConfigError naming ``key`` for a zone that is no polygon: fewer than 3 corners, no area, or
    edges that cross each other."""
    points = _points(zone, key)
    if len(points) < 3:
        raise ConfigError(f"{key} ({zone.name}): a zone needs at least 3 points, got {len(points)}")
    edges = [(points[i], points[(i + 1) % len(points)]) for i in range(len(points))]
    for i in range(len(edges)):
        for j in range(i + 2, len(edges)):
            if (i, j) != (0, len(edges) - 1) and segments_cross(*edges[i], *edges[j]):
                raise ConfigError(f"{key} ({zone.name}): the polygon crosses itself (edges {i + 1} and {j + 1})")
    if abs(_cross(points[0], points[1:-1], points[2:]).sum()) < 1e-9:
        raise ConfigError(f"{key} ({zone.name}): the polygon has no area")


def check_line(line: LineConfig, key: str) -> None:
    points = _points(line, key)
    if len(points) != 2:
        raise ConfigError(f"{key} ({line.name}): a line is 2 points, got {len(points)}")
    if np.allclose(points[0], points[1]):
        raise ConfigError(f"{key} ({line.name}): the line has zero length")


def check_analytics(config: AnalyticsConfig, streams: list[str]) -> None:
    """Every zone and line of the ``analytics`` section well formed, of one of the run's ``streams``,
    and named apart from the others of its kind that watch the same stream."""
    for kind, items, check in (("zones", config.zones, check_zone), ("lines", config.lines, check_line)):
        for i, item in enumerate(items):
            key = f"analytics.{kind}[{i}]"
            check(item, key)
            if item.stream and item.stream not in streams:
                raise ConfigError(f"{key} ({item.name}): no stream {item.stream!r} in this run "
                                  f"(its streams: {', '.join(streams)})")
            if any(other.name == item.name and (other.stream == item.stream or "" in (other.stream, item.stream))
                   for other in items[:i]):
                raise ConfigError(f"{key}: the name {item.name!r} is used twice for one stream")


def own_areas(analytics: str) -> AnalyticsConfig | None:
    """A service's stream's own zones and lines, from the JSON form its StreamStart carries (None for
    none: the run's ``analytics`` section, if any, is the stream's)."""
    return section_from_dict("analytics", json.loads(analytics)) if analytics else None


def check_frame(analytics: str, stream: str, width: int, height: int) -> None:
    """A ConfigError naming the zone of a stream's own zones and lines (``analytics``, the section's
    JSON form) that reaches outside its ``width`` x ``height`` frame."""
    areas = own_areas(analytics)
    if areas is not None:
        StreamAnalytics(areas, stream, width, height)


def anchors(detections: Detections, anchor: str) -> np.ndarray:
    """``float64[N, 2]``: where each instance stands (``bottom``: its box's bottom centre; ``center``)."""
    boxes = detections.boxes.astype(np.float64)
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    y = boxes[:, 3] if anchor == "bottom" else (boxes[:, 1] + boxes[:, 3]) / 2
    return np.stack([x, y], 1)


class StreamAnalytics:
    """The zones and lines of one stream, fed each tracked frame in order (:meth:`update`)."""

    def __init__(self, config: AnalyticsConfig, stream: str, width: int, height: int) -> None:
        self.anchor = config.anchor
        self.zones = [z for z in config.zones if z.stream in ("", stream)]
        self.lines = [ln for ln in config.lines if ln.stream in ("", stream)]
        for i, zone in enumerate(config.zones):
            corners = np.asarray(zone.points)
            if zone in self.zones and ((corners < 0).any() or (corners[:, 0] > width).any()
                                       or (corners[:, 1] > height).any()):
                raise ConfigError(f"analytics.zones[{i}] ({zone.name}) reaches outside stream {stream}'s "
                                  f"{width}x{height} frame")
        self.polygons = [np.asarray(z.points, np.float64) for z in self.zones]
        self.segments = [np.asarray(ln.points, np.float64) for ln in self.lines]
        self.sides: list[dict[int, list[float]]] = [{} for _ in self.lines]
        """Per line: track -> [the side it was last seen on (-1 left, 1 right), that anchor's x, y]
        (an anchor on the line itself changes nothing: the crossing counts when it is off it again)."""
        self.present: list[dict[int, list[float]]] = [{} for _ in self.zones]
        """Per zone: track inside -> [time it was first inside, time last inside]; a track hidden
        for a moment stays inside until it is seen outside or ends."""
        self.now: list[set[int]] = [set() for _ in self.zones]
        """Per zone: the tracks seen inside it in the last frame (its occupancy)."""
        self.entered = [0] * len(self.zones)
        self.dwell: list[list[float]] = [[0, 0.0, 0.0] for _ in self.zones]
        """Per zone: [stays over, their seconds in all, the longest]."""
        self.left: list[list[list[float]]] = [[] for _ in self.zones]
        """Per zone: [track, seconds] of each stay over since the report before (:meth:`report`)."""
        self.crossed: list[dict[str, Counter[str]]] = [{"in": Counter(), "out": Counter()} for _ in self.lines]
        """Per line: direction -> class name -> crossings."""

    def update(self, detections: Detections, time_s: float, names: list[str]) -> tuple[AreaCount, ...]:
        """Take one frame's tracked instances (``names``: their class names); the figures after it."""
        ids = [] if detections.track_ids is None else detections.track_ids.tolist()
        points = anchors(detections, self.anchor) if ids else np.zeros((0, 2))
        for (a, b), sides, crossed in zip(self.segments, self.sides, self.crossed):
            side = np.sign(_cross(a, b, points))  # -1: on the left, looking along the line
            for track, point, now, name in zip(ids, points, side.tolist(), names):
                before = sides.get(track)
                if now and before is not None and before[0] != now and _cross(np.asarray(before[1:]), point, a) \
                        * _cross(np.asarray(before[1:]), point, b) <= 0:  # the step meets the segment itself
                    crossed["in" if now < 0 else "out"][name] += 1
                if now:
                    sides[track] = [now, *point.tolist()]
        self.now = []
        for k, (polygon, present) in enumerate(zip(self.polygons, self.present)):
            now_in = {track for track, is_in in zip(ids, inside(polygon, points)) if is_in}
            self.now.append(now_in)
            for track in now_in:
                if track not in present:
                    present[track] = [time_s, time_s]
                    self.entered[k] += 1
                present[track][1] = time_s
            for track in [t for t in present if t not in now_in and t in ids]:  # seen, outside: it left
                self._leave(k, track)
        return self.counts()

    def _leave(self, zone: int, track: int) -> None:
        first, last = self.present[zone].pop(track)
        dwell = self.dwell[zone]
        dwell[0], dwell[1], dwell[2] = dwell[0] + 1, dwell[1] + last - first, max(dwell[2], last - first)
        self.left[zone].append([track, last - first])

    def end(self, tracks: list[int]) -> None:
        """Tracks that are over: out of every zone (their stay counted), forgotten."""
        for k, present in enumerate(self.present):
            for track in [t for t in tracks if t in present]:
                self._leave(k, track)
                self.now[k].discard(track)
        for sides in self.sides:
            for track in tracks:
                sides.pop(track, None)

    def counts(self) -> tuple[AreaCount, ...]:
        """Each zone's occupancy and entries, each line's crossings, for drawing."""
        return (*(AreaCount("zone", z.name, len(n), e, 0) for z, n, e in zip(self.zones, self.now, self.entered)),
                *(AreaCount("line", ln.name, 0, sum(c["in"].values()), sum(c["out"].values()))
                  for ln, c in zip(self.lines, self.crossed)))

    def report(self, drain: bool = False) -> dict[str, Any]:
        """The figures as JSON values. Per zone: ``occupancy`` and ``inside`` (who is seen inside now,
        each with its stay so far), ``entered``, ``dwell_s`` (the stays over: count, mean, longest) and
        ``left`` (each stay over since the report before, by track; ``drain`` starts the next). Per
        line: its crossings ``in`` and ``out``, in all and per class."""
        zones = {}
        for z, now, present, entered, (count, total, longest), left in zip(
                self.zones, self.now, self.present, self.entered, self.dwell, self.left):
            zones[z.name] = {
                "occupancy": len(now), "entered": entered,
                "inside": [{"track_id": t, "dwell_s": round(present[t][1] - present[t][0], 3)} for t in sorted(now)],
                "dwell_s": {"count": count, "mean": round(total / count, 3) if count else 0.0,
                            "max": round(longest, 3)},
                "left": [{"track_id": int(t), "dwell_s": round(d, 3)} for t, d in left]}
            if drain:
                left.clear()
        lines = {ln.name: {"in": sum(c["in"].values()), "out": sum(c["out"].values()),
                           "in_by_class": dict(sorted(c["in"].items())), "out_by_class": dict(sorted(c["out"].items()))}
                 for ln, c in zip(self.lines, self.crossed)}
        return {"zones": zones, "lines": lines}

    def state(self) -> dict[str, Any]:
        return {"sides": [{str(k): v for k, v in sides.items()} for sides in self.sides],
                "now": [sorted(n) for n in self.now], "entered": self.entered, "dwell": self.dwell, "left": self.left,
                "present": [{str(k): v for k, v in p.items()} for p in self.present],
                "crossed": [{d: dict(c[d]) for d in c} for c in self.crossed]}

    def restore(self, state: dict[str, Any]) -> None:
        self.sides = [{int(k): v for k, v in sides.items()} for sides in state["sides"]]
        self.now = [set(n) for n in state["now"]]
        self.present = [{int(k): v for k, v in p.items()} for p in state["present"]]
        self.entered, self.dwell, self.left = state["entered"], state["dwell"], state["left"]
        self.crossed = [{d: Counter(c[d]) for d in c} for c in state["crossed"]]
