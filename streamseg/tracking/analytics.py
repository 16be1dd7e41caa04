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

from collections import Counter
from typing import Any

import numpy as np

from ..config import AnalyticsConfig, LineConfig, ZoneConfig
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


def check_zone(zone: ZoneConfig, key: str) -> None:
    """A ConfigError naming ``key`` for a zone that is no polygon: fewer than 3 corners, no area, or
    edges that cross each other."""
    points = np.asarray(zone.points, np.float64).reshape(-1, 2)
    if not zone.name:
        raise ConfigError(f"{key} needs a name")
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
    points = np.asarray(line.points, np.float64).reshape(-1, 2)
    if not line.name:
        raise ConfigError(f"{key} needs a name")
    if len(points) != 2:
        raise ConfigError(f"{key} ({line.name}): a line is 2 points, got {len(points)}")
    if np.allclose(points[0], points[1]):
        raise ConfigError(f"{key} ({line.name}): the line has zero length")


def check_analytics(config: AnalyticsConfig) -> None:
    """Every zone and line of the ``analytics`` section well formed, names unique per stream."""
    seen: set[tuple[str, str]] = set()
    for kind, items, check in (("zones", config.zones, check_zone), ("lines", config.lines, check_line)):
        for i, item in enumerate(items):
            check(item, f"analytics.{kind}[{i}]")
            if (item.stream, item.name) in seen:
                raise ConfigError(f"analytics.{kind}[{i}]: the name {item.name!r} is used twice")
            seen.add((item.stream, item.name))


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
        self.last: dict[int, list[float]] = {}
        """Track -> its anchor when last seen."""
        self.present: list[dict[int, list[float]]] = [{} for _ in self.zones]
        """Per zone: track inside -> [time it was first inside, time last inside]; a track hidden
        for a moment stays inside until it is seen outside or ends."""
        self.now: list[set[int]] = [set() for _ in self.zones]
        """Per zone: the tracks seen inside it in the last frame (its occupancy)."""
        self.entered = [0] * len(self.zones)
        self.dwell: list[list[float]] = [[] for _ in self.zones]
        """Per zone: the seconds each track that left it stayed."""
        self.crossed: list[dict[str, Counter[str]]] = [{"in": Counter(), "out": Counter()} for _ in self.lines]
        """Per line: direction -> class name -> crossings."""

    def update(self, detections: Detections, time_s: float, names: list[str]) -> tuple[AreaCount, ...]:
        """Take one frame's tracked instances (``names``: their class names); the figures after it."""
        ids = [] if detections.track_ids is None else detections.track_ids.tolist()
        points = anchors(detections, self.anchor) if ids else np.zeros((0, 2))
        for line, crossed in zip(self.segments, self.crossed):
            for track, point, name in zip(ids, points, names):
                before = self.last.get(track)
                if before is not None and segments_cross(np.asarray(before), point, line[0], line[1]):
                    side = _cross(line[0], line[1], point)  # < 0: now on the left, looking along the line
                    crossed["in" if side < 0 else "out"][name] += 1
        self.now = []
        for k, (polygon, present) in enumerate(zip(self.polygons, self.present)):
            now = {track for track, is_in in zip(ids, inside(polygon, points)) if is_in}
            self.now.append(now)
            for track in now:
                if track not in present:
                    present[track] = [time_s, time_s]
                    self.entered[k] += 1
                present[track][1] = time_s
            for track in [t for t in present if t not in now and t in ids]:  # seen, outside: it left
                self._leave(k, track)
        self.last.update((track, point.tolist()) for track, point in zip(ids, points))
        return self.counts()

    def _leave(self, zone: int, track: int) -> None:
        first, last = self.present[zone].pop(track)
        self.dwell[zone].append(last - first)

    def end(self, tracks: list[int]) -> None:
        """Tracks that are over: out of every zone (their dwell counted), forgotten."""
        for k, present in enumerate(self.present):
            for track in [t for t in tracks if t in present]:
                self._leave(k, track)
        for track in tracks:
            self.last.pop(track, None)

    def counts(self) -> tuple[AreaCount, ...]:
        """Each zone's occupancy and entries, each line's crossings, for drawing."""
        return (*(AreaCount("zone", z.name, len(n), e, 0) for z, n, e in zip(self.zones, self.now, self.entered)),
                *(AreaCount("line", ln.name, 0, sum(c["in"].values()), sum(c["out"].values()))
                  for ln, c in zip(self.lines, self.crossed)))

    def report(self) -> dict[str, Any]:
        """The figures as JSON values: per zone its occupancy, who is inside, entries and dwell times;
        per line its crossings in and out, per class and in all."""
        zones = {z.name: {"occupancy": len(n), "inside": sorted(n), "entered": e,
                          "dwell_s": {"count": len(d), "mean": round(float(np.mean(d)), 3) if d else 0.0,
                                      "max": round(max(d), 3) if d else 0.0}}
                 for z, n, e, d in zip(self.zones, self.now, self.entered, self.dwell)}
        lines = {ln.name: {"in": sum(c["in"].values()), "out": sum(c["out"].values()),
                           "in_by_class": dict(sorted(c["in"].items())), "out_by_class": dict(sorted(c["out"].items()))}
                 for ln, c in zip(self.lines, self.crossed)}
        return {"zones": zones, "lines": lines}

    def state(self) -> dict[str, Any]:
        return {"last": {str(k): v for k, v in self.last.items()}, "now": [sorted(n) for n in self.now],
                "present": [{str(k): v for k, v in p.items()} for p in self.present], "entered": self.entered,
                "dwell": self.dwell, "crossed": [{d: dict(c[d]) for d in c} for c in self.crossed]}

    def restore(self, state: dict[str, Any]) -> None:
        self.last = {int(k): v for k, v in state["last"].items()}
        self.now = [set(n) for n in state["now"]]
        self.present = [{int(k): v for k, v in p.items()} for p in state["present"]]
        self.entered, self.dwell = state["entered"], state["dwell"]
        self.crossed = [{d: Counter(c[d]) for d in c} for c in state["crossed"]]
