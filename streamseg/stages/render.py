"""Render: draw masks (alpha-blended, with contours), boxes, labels and keypoint skeletons on frames."""

from __future__ import annotations

import colorsys
from typing import Any, Iterable

import cv2
import numpy as np

from ..config import RenderConfig
from ..models.registry import ModelInfo
from ..runtime.messages import Detections, Frame, FrameResult, MaskRegions, StreamStart
from ..runtime.stage import ALL_PORTS, Emit, Stage


def palette(n: int = 64) -> np.ndarray:
    """``uint8[n, 3]`` RGB colours with well-separated hues (golden-ratio steps), bright and saturated."""
    colours = [colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95) for i in range(n)]
    return (np.array(colours) * 255).astype(np.uint8)


_PALETTE = palette()


def instance_colours(detections: Detections) -> np.ndarray:
    """One colour per instance, stable across frames for the same class: the k-th instance of a class
    counted from the left gets the same colour in every frame (no tracker needed)."""
    n = len(detections)
    colours = np.zeros((n, 3), np.uint8)
    centres = (detections.boxes[:, 0] + detections.boxes[:, 2]) / 2 if n else np.zeros(0)
    for label in np.unique(detections.labels):
        members = np.flatnonzero(detections.labels == label)
        for rank, i in enumerate(members[np.argsort(centres[members], kind="stable")]):
            colours[i] = _PALETTE[(int(label) * 5 + rank * 3) % len(_PALETTE)]
    return colours


def draw(image: np.ndarray, detections: Detections, info: ModelInfo, config: RenderConfig = RenderConfig(),
         out: np.ndarray | None = None) -> np.ndarray:
    """Draw ``detections`` onto a copy of ``image`` (``uint8[H, W, 3]`` RGB) and return it.

    ``config``: what to draw (the ``render`` section; its defaults draw everything). ``out``: where
    to put the copy (a buffer the caller owns); a new array when None. Work on masks is limited to
    each instance's region, so it grows with object area, not frame area.
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
    scale = max(0.35, min(width, height) / 900)
    for i in order:
        colour = colours[i].tolist()
        x1, y1, x2, y2 = (int(round(v)) for v in detections.boxes[i])
        if config.boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        if config.labels:
            label = int(detections.labels[i])
            name = info.categories[label] if 0 <= label < len(info.categories) else str(label)
            text = f"{name} {detections.scores[i]:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(height - 1, y1 + th + base + 2)
            cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), colour, -1)
            cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                        cv2.LINE_AA)
        if config.keypoints and detections.keypoints is not None:
            _draw_keypoints(out, detections.keypoints[i], info.skeleton, colour, config.keypoint_thresh, thickness)
    return out


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
    encoder that writes it.
    """

    def __init__(self, config: RenderConfig, model_info: dict[str, Any], routes: dict[str, str] | None = None) -> None:
        super().__init__()
        self.config = config
        self.routes = dict(routes or {})
        self.info = ModelInfo.from_dict(model_info)

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            return [(ALL_PORTS, message)]
        if not isinstance(message, FrameResult) or message.image is None:
            return []
        image = draw(message.image, message.detections, self.info, self.config,
                     out=self.allocate(message.image.shape, np.uint8))
        self.count("frames")
        return [(self.routes.get(message.stream_id, "frames"),
                 Frame(message.stream_id, message.index, message.pts, message.time_base, image, message.captured,
                       message.prev))]

    def stream_ports(self, stream_id: str) -> tuple[str, ...] | None:
        return (self.routes[stream_id],) if stream_id in self.routes else None
