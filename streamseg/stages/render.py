"""Render: draw masks (alpha-blended, with contours), boxes, labels and keypoint skeletons on frames."""

from __future__ import annotations

import colorsys
import dataclasses
import json
import time
import zlib
from collections import deque
from typing import Any, Iterable

import cv2
import numpy as np

from ..config import AnalyticsConfig, RenderConfig, section_from_dict
from ..models.registry import ModelInfo
from ..runtime.messages import (
    AreaCount,
    Detections,
    EndOfStream,
    Frame,
    FrameResult,
    MaskRegions,
    StreamStart,
)
from ..runtime.stage import ALL_PORTS, Emit, Published, Stage
from ..tracking.analytics import own_areas


def palette(n: int = 64) -> np.ndarray:
    """``uint8[n, 3]`` RGB colours with well-separated hues (golden-ratio steps), bright and saturated."""
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95) for i in range(n)]
    return (np.array(colours) * 255).astype(np.uint8)


_PALETTE = palette()


def track_colour(track_id: int) -> np.ndarray:
    """A track's colour: the same in every frame, different for tracks started one after another."""
    return _PALETTE[(track_id * 7) % len(_PALETTE)]


def instance_colours(detections: Detections) -> np.ndarray:
    """One colour per instance, stable across frames: its track's, where tracked; otherwise the k-th
    instance of a class counted from the left gets the same colour in every frame."""
    n = len(detections)
    if detections.track_ids is not None:
        return np.array([track_colour(int(t)) for t in detections.track_ids], np.uint8).reshape(n, 3)
    colours = np.zeros((n, 3), np.uint8)
    centres = (detections.boxes[:, 0] + detections.boxes[:, 2]) / 2 if n else np.zeros(0)
    for label in np.unique(detections.labels):
        members = np.flatnonzero(detections.labels == label)
        for rank, i in enumerate(members[np.argsort(centres[members], kind="stable")]):
            colours[i] = _PALETTE[(int(label) * 5 + rank * 3) % len(_PALETTE)]
    return colours


def draw(image: np.ndarray, detections: Detections, info: ModelInfo, config: RenderConfig = RenderConfig(),
         out: np.ndarray | None = None, trails: dict[int, Any] | None = None) -> np.ndarray:
    """Draw ``detections`` onto a copy of ``image`` (``uint8[H, W, 3]`` RGB) and return it.

    ``config``: what to draw (the ``render`` section; its defaults draw everything). ``out``: where
    to put the copy (a buffer the caller owns); a new array when None. ``trails``: track id -> the
    points of its path to draw. Work on masks is limited to each instance's region, so it grows with
    object area, not frame area.
    """
    if out is None:
        out = np.array(image, copy=True)
    else:
        np.copyto(out, image)
    height, width = out.shape[:2]
    colours = instance_colours(detections)
    order = np.argsort(detections.scores, kind="stable")  # best-scoring instance drawn last, on top
    if detections.masks is not None:
        _draw_masks(out, detections.masks, order, colours, config.mask_alpha, config.contour_px)
    thickness = max(1, round(min(width, height) / 360))
    for track_id, points in (trails or {}).items():
        if len(points) > 1:
            cv2.polylines(out, [np.round(np.array(points)).astype(np.int32)], False, track_colour(track_id).tolist(),
                          thickness, cv2.LINE_AA)
    for i in order:
        colour = colours[i].tolist()
        x1, y1, x2, y2 = (int(round(v)) for v in detections.boxes[i])
        if config.boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        if config.keypoints and detections.keypoints is not None:
            _draw_keypoints(out, detections.keypoints[i], info.skeleton, colour, config.keypoint_thresh, thickness)
    if config.labels and len(detections):  # last, over everything else, best-scoring first for room
        scale = text_scale(width, height)
        best_first = order[::-1]
        ids = detections.track_ids
        texts = [label_text(info, int(detections.labels[i]), float(detections.scores[i]),
                            None if ids is None else int(ids[i])) for i in best_first]
        sizes = [cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1) for t in texts]
        spots = place_labels(detections.boxes[best_first], [(w + 2, h + base + 1) for (w, h), base in sizes],
                             width, height)
        drawn = list(zip(best_first, texts, sizes, spots))
        for i, text, ((_, _), base), (x, y, w, h) in reversed(drawn):  # the best one last, on top
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), colours[i].tolist(), -1)
            cv2.putText(out, text, (x + 1, y + h - base - 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return out


def draw_areas(out: np.ndarray, analytics: AnalyticsConfig, stream_id: str, counts: tuple[AreaCount, ...]) -> None:
    """Draw the stream's zones (outlined, with how many are inside and have entered) and lines (with
    their crossings in and out, and an arrow to the side that is ``in``) onto ``out``, in place."""
    height, width = out.shape[:2]
    thickness, scale = max(1, round(min(width, height) / 360)), text_scale(width, height)
    figures = {(c.kind, c.name): c for c in counts}
    white = (255, 255, 255)
    for zone in (z for z in analytics.zones if z.stream in ("", stream_id)):
        corners = np.round(np.asarray(zone.points)).astype(np.int32)
        cv2.polylines(out, [corners], True, white, thickness, cv2.LINE_AA)
        c = figures.get(("zone", zone.name))
        text = zone.name if c is None else f"{zone.name}: {c.inside} in, {c.entered} entered"
        _caption(out, text, corners.min(0), scale)
    for line in (ln for ln in analytics.lines if ln.stream in ("", stream_id)):
        a, b = np.asarray(line.points, np.float64)
        cv2.line(out, tuple(np.round(a).astype(int).tolist()), tuple(np.round(b).astype(int).tolist()), white,
                 thickness + 1, cv2.LINE_AA)
        middle, along = (a + b) / 2, (b - a) / np.linalg.norm(b - a)
        left = middle + np.array([along[1], -along[0]]) * 12 * thickness  # the "in" side, as drawn
        cv2.arrowedLine(out, tuple(np.round(middle).astype(int).tolist()), tuple(np.round(left).astype(int).tolist()),
                        white, thickness, cv2.LINE_AA, tipLength=0.4)
        c = figures.get(("line", line.name))
        text = line.name if c is None else f"{line.name}: {c.entered} in, {c.out} out"
        _caption(out, text, np.round(a).astype(int), scale)


def _caption(out: np.ndarray, text: str, at: np.ndarray, scale: float) -> None:
    (w, h), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    height, width = out.shape[:2]
    x, y = min(max(0, int(at[0])), max(0, width - w - 2)), min(max(h + base + 1, int(at[1]) - 2), height - 1)
    cv2.rectangle(out, (x, y - h - base - 1), (x + w + 1, y), (0, 0, 0), -1)
    cv2.putText(out, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)


def text_scale(width: int, height: int) -> float:
    """Label text size for a frame: a line about 1/30 of the shorter side high (at least 7 pixels,
    what Hershey's simplex font needs to stay legible)."""
    return max(0.3, min(width, height) / 900)


def label_text(info: ModelInfo, label: int, score: float, track_id: int | None = None) -> str:
    name = info.category(label)
    return f"{name} {score:.2f}" if track_id is None else f"#{track_id} {name} {score:.2f}"


def place_labels(boxes: np.ndarray, sizes: list[tuple[int, int]], width: int, height: int) -> list[tuple[int, ...]]:
    """Where each label goes, as ``(x, y, w, h)``: inside the frame, and on none placed before it where
    one of a few spots can manage that: above the box's top-left corner, inside it, below it, then
    the same at its right edge. Labels come in order of importance (the first gets its first choice)."""
    placed: list[tuple[int, int, int, int]] = []
    for box, (w, h) in zip(boxes, sizes):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        spots = [(x, y) for x in (x1, x2 - w) for y in (y1 - h, y1, y2)]
        fitted = [(min(max(0, x), max(0, width - w)), min(max(0, y), max(0, height - h))) for x, y in spots]
        free = [spot for spot in fitted if not any(_overlap((*spot, w, h), other) for other in placed)]
        x, y = (free or fitted)[0]
        placed.append((x, y, w, h))
    return placed


def _overlap(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def _draw_masks(out: np.ndarray, masks: MaskRegions, order: np.ndarray, colours: np.ndarray, alpha: float,
                contour_px: int) -> None:
    """Blend each mask's colour into its pixels and outline it, region by region (OpenCV writes
    through the region views into ``out``)."""
    offsets = masks.offsets
    for i in order:
        x, y, bits = masks.region(i, offsets)
        h, w = bits.shape
        if not w or not h:
            continue
        mask = np.ascontiguousarray(bits).view(np.uint8)  # stored column by column; OpenCV wants rows
        area = out[y:y + h, x:x + w]
        tint = np.empty_like(area)
        tint[:] = colours[i]
        cv2.copyTo(cv2.addWeighted(area, 1.0 - alpha, tint, alpha, 0), mask, area)
        if contour_px:
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE, offset=(x, y))
            cv2.drawContours(out, contours, -1, colours[i].tolist(), contour_px)  # pixel borders: no anti-aliasing


def _draw_keypoints(out: np.ndarray, points: np.ndarray, skeleton: tuple[tuple[int, int], ...],
                    colour: list[int], thresh: float, thickness: int) -> None:
    visible = points[:, 2] >= thresh
    xy = np.round(points[:, :2]).astype(int)
    for a, b in skeleton:
        if a < len(points) and b < len(points) and visible[a] and visible[b]:
            cv2.line(out, tuple(xy[a].tolist()), tuple(xy[b].tolist()), colour, thickness, cv2.LINE_AA)
    for k in np.flatnonzero(visible):
        cv2.circle(out, tuple(xy[k].tolist()), thickness + 2, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.circle(out, tuple(xy[k].tolist()), thickness + 1, colour, -1, cv2.LINE_AA)


class RenderStage(Stage):
    """Turns each FrameResult (with its image) into an annotated Frame for the encoder.

    Port ``frames``; with several encode workers, ``routes`` sends each stream to the port of the
    encoder that writes it (in a service, whose streams are not known beforehand, ``spread`` encoders
    share them by a hash of the stream id: port ``frames-J``).
    """

    def __init__(self, config: RenderConfig, model_info: dict[str, Any], routes: dict[str, str] | None = None,
                 analytics: dict[str, Any] | None = None, spread: int = 0, view_fps: float = 0.0) -> None:
        """``analytics``: the ``analytics`` section's JSON form, whose zones and lines are drawn;
        ``view_fps``: a service's live view, at most this many frames a second of a stream someone
        watches, as JPEG with the frame's detections on publish port ``view`` (0: none)."""
        super().__init__()
        self.config = config
        self.routes = dict(routes or {})
        self.spread = spread
        self.view_s = 1.0 / view_fps if view_fps else 0.0
        self.viewed: dict[str, float] = {}
        """Stream -> when its last frame went to the live view (monotonic)."""
        self.silent: set[str] = set()
        self.info = ModelInfo.from_dict(model_info)
        self.analytics = section_from_dict("analytics", analytics) if analytics else None
        self.areas: dict[str, AnalyticsConfig | None] = {}
        """A service's streams' own zones and lines (from their StreamStart; None: none of their own)."""
        self.trails: dict[str, dict[int, tuple[int, deque[tuple[float, float]]]]] = {}
        """Stream -> track id -> (the frame it was last seen in, its box's last centres)."""

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            if self.spread and not message.video:
                self.silent.add(message.stream_id)  # a service's stream without a video: nothing to draw
            else:
                self.silent.discard(message.stream_id)
            self.areas[message.stream_id] = own_areas(message.analytics)
            if self.spread > 1:
                self.routes[message.stream_id] = f"frames-{zlib.crc32(message.stream_id.encode()) % self.spread}"
            return [(ALL_PORTS, message)]
        if not isinstance(message, FrameResult) or message.image is None:
            return []
        sid = message.stream_id
        view = self._view_due(sid)
        if sid in self.silent and not view:
            return []
        out = np.empty(message.image.shape, np.uint8) if sid in self.silent else \
            self.allocate(message.image.shape, np.uint8)
        image = draw(message.image, message.detections, self.info, self.config, out=out,
                     trails=self._trails(message))
        areas = self.areas.get(sid) or self.analytics
        if areas is not None and message.detections.track_ids is not None:  # a tracked stream's
            draw_areas(image, areas, sid, message.counts)
        emits: list[Emit] = [("view", self._view(message, image))] if view else []
        if sid not in self.silent:
            self.count("frames")
            emits.append((self.routes.get(sid, "frames"), Frame(sid, message.index, message.pts, message.time_base,
                                                                image, message.captured, message.prev)))
        return emits

    def _view_due(self, sid: str) -> bool:
        """Whether this frame of ``sid`` goes to the live view: someone watches, and it is time."""
        if not self.view_s or not self.watched("view", view_topic(sid)):
            return False
        now = time.monotonic()
        if now - self.viewed.get(sid, -np.inf) < self.view_s:
            return False
        self.viewed[sid] = now
        return True

    def _view(self, result: FrameResult, image: np.ndarray) -> Published:
        """The live view's message: topic, the annotated frame as JPEG, its detections as JSON."""
        _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 80])
        det = result.detections
        ids = det.track_ids.tolist() if det.track_ids is not None else [None] * len(det.scores)
        found = [{"class": self.info.category(int(label)), "score": round(float(score), 3), "track_id": tid}
                 for label, score, tid in zip(det.labels.tolist(), det.scores.tolist(), ids)]
        body = {"stream": result.stream_id, "frame": result.index, "time": round(result.time_s, 3),
                "captured": result.captured, "detections": found,
                "counts": [dataclasses.asdict(count) for count in result.counts]}
        return Published((view_topic(result.stream_id), jpeg.tobytes(), json.dumps(body).encode()))

    def _trails(self, result: FrameResult) -> dict[int, deque[tuple[float, float]]] | None:
        """The paths of the frame's tracks over their last ``render.trail_frames`` sightings, this one
        included; a track not seen for that many frames is forgotten."""
        det, length = result.detections, self.config.trail_frames
        if not length or det.track_ids is None:
            return None
        kept = self.trails.setdefault(result.stream_id, {})
        for track_id, (x1, y1, x2, y2) in zip(det.track_ids.tolist(), det.boxes.tolist()):
            _, path = kept.get(track_id, (0, deque(maxlen=length)))
            path.append(((x1 + x2) / 2, (y1 + y2) / 2))
            kept[track_id] = (result.index, path)
        for track_id in [t for t, (seen, _) in kept.items() if seen <= result.index - length]:
            del kept[track_id]
        return {t: kept[t][1] for t in det.track_ids.tolist()}

    def stream_ports(self, stream_id: str) -> tuple[str, ...] | None:
        return (self.routes[stream_id],) if stream_id in self.routes else None

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        self.trails.pop(eos.stream_id, None)
        self.viewed.pop(eos.stream_id, None)
        self.areas.pop(eos.stream_id, None)
        return ()


def view_topic(stream_id: str) -> bytes:
    """The live view's topic of a stream (ended by a NUL: ``cam1`` is not a prefix of ``cam10``'s)."""
    return stream_id.encode() + b"\0"
