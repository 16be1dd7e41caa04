"""Render: draw masks (alpha-blended, with contours), boxes, labels and keypoint skeletons on frames."""

from __future__ import annotations

import colorsys
from typing import Any, Iterable

import cv2
import numpy as np

from ..messages import Detections, Frame, FrameResult, StreamStart
from ..models.registry import ModelInfo
from ..stage import ALL_PORTS, Emit, Stage


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


def _roi(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer box around ``box`` with a margin (pasted masks may reach past their box), clipped."""
    x1, y1, x2, y2 = box
    mx, my = 0.1 * (x2 - x1) + 2, 0.1 * (y2 - y1) + 2
    return (max(0, int(x1 - mx)), max(0, int(y1 - my)), min(width, int(np.ceil(x2 + mx)) + 1),
            min(height, int(np.ceil(y2 + my)) + 1))


def draw(image: np.ndarray, detections: Detections, info: ModelInfo, alpha: float = 0.45,
         contour_px: int = 2, boxes: bool = True, labels: bool = True, keypoints: bool = True,
         keypoint_thresh: float = 0.0) -> np.ndarray:
    """Draw ``detections`` onto a copy of ``image`` (``uint8[H, W, 3]`` RGB) and return it.

    Work is limited to each instance's box region, so cost grows with object area, not frame area.
    """
    out = np.array(image, copy=True)
    height, width = out.shape[:2]
    colours = instance_colours(detections)
    order = np.argsort(detections.scores, kind="stable")  # best-scoring instance drawn last, on top
    if detections.masks is not None:
        for i in order:
            x1, y1, x2, y2 = _roi(detections.boxes[i], width, height)
            if x2 <= x1 or y2 <= y1:
                continue
            mask = detections.masks[i, y1:y2, x1:x2]
            if not mask.any():
                continue
            region = out[y1:y2, x1:x2]
            colour = colours[i].astype(np.float32)
            region[mask] = (region[mask] * (1.0 - alpha) + colour * alpha).astype(np.uint8)
            if contour_px:
                contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
                cv2.drawContours(region, contours, -1, colours[i].tolist(), contour_px, cv2.LINE_AA)
    thickness = max(1, round(min(width, height) / 360))
    scale = max(0.35, min(width, height) / 900)
    for i in order:
        colour = colours[i].tolist()
        x1, y1, x2, y2 = (int(round(v)) for v in detections.boxes[i])
        if boxes:
            cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        if labels:
            label = int(detections.labels[i])
            name = info.categories[label] if 0 <= label < len(info.categories) else str(label)
            text = f"{name} {detections.scores[i]:.2f}"
            (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
            ty = y1 - 2 if y1 - th - base - 2 >= 0 else min(height - 1, y1 + th + base + 2)
            cv2.rectangle(out, (x1, ty - th - base), (x1 + tw + 2, ty + 1), colour, -1)
            cv2.putText(out, text, (x1 + 1, ty - base + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1,
                        cv2.LINE_AA)
        if keypoints and detections.keypoints is not None:
            _draw_keypoints(out, detections.keypoints[i], info.skeleton, colour, keypoint_thresh, thickness)
    return out


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
    """Turns each FrameResult (with its image) into an annotated Frame for the encoder."""

    outputs = ("frames",)

    def __init__(self, model_info: dict[str, Any], mask_alpha: float = 0.45, contour_px: int = 2,
                 boxes: bool = True, labels: bool = True, keypoints: bool = True,
                 keypoint_thresh: float = 0.0) -> None:
        super().__init__()
        self.info = ModelInfo.from_dict(model_info)
        self.options = dict(alpha=mask_alpha, contour_px=contour_px, boxes=boxes, labels=labels,
                            keypoints=keypoints, keypoint_thresh=keypoint_thresh)

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            return [(ALL_PORTS, message)]
        if not isinstance(message, FrameResult) or message.image is None:
            return []
        image = draw(message.image, message.detections, self.info, **self.options)
        self.count("frames")
        return [("frames", Frame(message.stream_id, message.index, message.pts, message.time_base, image,
                                 message.captured))]
