"""Synthetic video with exact ground truth: moving, rotating, scaling shapes that occlude each other.

Every frame is drawn from a *label map* (which instance owns each pixel, painted back to front), so
the ground truth is exact: an instance's mask is precisely its visible pixels and an occluded
pixel belongs to one instance only. Images get textures, noise and motion blur on top; masks are
the geometric regions before blur.

Classes (ids are the shipped model's class ids): 1 circle, 2 rectangle, 3 triangle, 4 star.
Keypoints, the same five for every class: the shape's extreme points (``top``, ``right``,
``bottom``, ``left``; where an edge is nearly flat, the middle of its extreme part, so the point
moves continuously as the shape turns) and its ``center``. Visibility as in COCO: 0 outside the
frame, 1 inside but hidden by another shape, 2 visible.

Instances whose visible area is under :data:`MIN_AREA_PX` pixels or under :data:`MIN_VISIBLE`
of their full area are marked ``iscrowd: 1`` in the COCO ground truth, so evaluation neither
rewards nor punishes detections of slivers.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from ..masks import encode_rle
from ..models.registry import SHAPE_CLASSES, SHAPE_KEYPOINTS, SHAPE_SKELETON

CLASSES = SHAPE_CLASSES[1:]
MIN_AREA_PX = 40
MIN_VISIBLE = 0.15
_SUBPIXEL = 4  # cv2.fillPoly fixed-point bits: vertices at 1/16 pixel


@dataclass
class Shape:
    """One object in a scene. Angles in radians, lengths in pixels, rates per frame."""

    label: int
    track_id: int
    x: float
    y: float
    vx: float
    vy: float
    angle: float
    spin: float
    radius: float
    grow: float
    aspect: float
    colour: np.ndarray
    stripes: float
    phase: float

    def outline(self) -> np.ndarray:
        """``float[P, 2]`` polygon (x, y) of the shape, densely sampled (about 1 px apart)."""
        r = self.radius
        if self.label == 1:  # circle
            t = np.linspace(0, 2 * np.pi, max(24, int(2 * np.pi * r)), endpoint=False)
            pts = np.stack([np.cos(t), np.sin(t)], 1) * r
        else:
            if self.label == 2:  # rectangle
                w, h = r, r * self.aspect
                corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]])
            elif self.label == 3:  # triangle
                t = np.array([-np.pi / 2, np.pi / 6, 5 * np.pi / 6])
                corners = np.stack([np.cos(t), np.sin(t)], 1) * r
            else:  # star: five points
                t = -np.pi / 2 + np.arange(10) * np.pi / 5
                radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
                corners = np.stack([np.cos(t) * radii, np.sin(t) * radii], 1)
            pts = _densify(corners)
        c, s = math.cos(self.angle), math.sin(self.angle)
        rotated = pts @ np.array([[c, s], [-s, c]])
        return rotated + (self.x, self.y)

    def step(self) -> None:
        """Advance one frame."""
        self.x += self.vx
        self.y += self.vy
        self.angle += self.spin
        self.radius = float(np.clip(self.radius * (1 + self.grow), 8, 70))
        if self.radius in (8, 70):
            self.grow = -self.grow


def _densify(corners: np.ndarray) -> np.ndarray:
    pts = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0)):
        n = max(1, int(np.ceil(np.linalg.norm(b - a))))
        pts.append(a + (b - a) * np.arange(n)[:, None] / n)
    return np.concatenate(pts)


def extreme_keypoints(outline: np.ndarray) -> np.ndarray:
    """``float[5, 2]``: top, right, bottom, left, centre of a polygon.

    Each extreme point is the mean of the outline points within a small tolerance of the extreme,
    so a flat edge gives its middle and the point moves continuously as the shape rotates.
    """
    size = max(np.ptp(outline[:, 0]), np.ptp(outline[:, 1]), 1.0)
    tol = 0.04 * size
    out = []
    for axis, sign in ((1, -1), (0, 1), (1, 1), (0, -1)):  # top: min y; right: max x; bottom; left
        values = outline[:, axis] * sign
        out.append(outline[values >= values.max() - tol].mean(0))
    out.append(outline.mean(0))
    return np.array(out)


class Background:
    """A textured background that drifts slowly: smooth noise, a gradient and a pattern."""

    def __init__(self, rng: np.random.Generator, width: int, height: int) -> None:
        big_w, big_h = width + 64, height + 64
        low = rng.random((big_h // 16 + 2, big_w // 16 + 2, 3)).astype(np.float32)
        smooth = cv2.resize(low, (big_w, big_h), interpolation=cv2.INTER_CUBIC)
        yy, xx = np.mgrid[0:big_h, 0:big_w].astype(np.float32)
        theta = rng.uniform(0, np.pi)
        freq = rng.uniform(0.05, 0.3)
        kind = rng.integers(3)
        if kind == 0:
            pattern = np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * freq)
        elif kind == 1:
            pattern = np.sign(np.sin(xx * freq) * np.sin(yy * freq))
        else:
            pattern = cv2.GaussianBlur(rng.standard_normal((big_h, big_w)).astype(np.float32), (0, 0), 1.5)
        base = rng.uniform(40, 200, 3)
        tint = rng.uniform(-50, 50, 3)
        gradient = (xx / big_w)[..., None] * rng.uniform(-60, 60, 3)
        image = base + tint * (smooth - 0.5) * 2 + gradient + pattern[..., None] * rng.uniform(8, 30)
        self.image = np.clip(image, 0, 255).astype(np.float32)
        self.width, self.height = width, height
        self.drift = rng.uniform(-0.4, 0.4, 2)

    def at(self, frame: int) -> np.ndarray:
        dx = int(32 + self.drift[0] * frame) % 64
        dy = int(32 + self.drift[1] * frame) % 64
        return self.image[dy:dy + self.height, dx:dx + self.width].copy()


@dataclass
class Instance:
    """Ground truth of one shape in one frame."""

    label: int
    track_id: int
    mask: np.ndarray
    full_area: int
    keypoints: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def box(self) -> tuple[float, float, float, float]:
        """``[x1, y1, x2, y2]`` of the visible pixels (x2, y2 exclusive)."""
        ys, xs = np.nonzero(self.mask)
        return float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)

    @property
    def crowd(self) -> bool:
        return self.area < MIN_AREA_PX or self.area < MIN_VISIBLE * self.full_area


TRAIN_SEED_FLOOR = 1 << 20
"""Scene seeds at or above this are training scenes (:func:`random_frame` draws only those); the ones
below are held out, for evaluation, the accuracy suite and the demo."""


def is_training_seed(seed: int) -> bool:
    return seed >= TRAIN_SEED_FLOOR


def training_seed(rng: np.random.Generator) -> int:
    """A training scene's seed: never one of the held-out scenes'."""
    return int(rng.integers(TRAIN_SEED_FLOOR, 2**31))


@dataclass(frozen=True)
class SceneStyle:
    """What kind of scene a seed draws: how many shapes, how large and fast, and their colours. The
    default is the scenes the shipped model was trained on."""

    shapes: tuple[int, int] = (3, 7)
    """Fewest and most shapes in the scene at once (new ones enter as others leave)."""
    radius: tuple[float, float] | None = None
    """A shape's radius, from and to, in pixels of a frame 240 pixels high, scaled with the frame's
    short side (small for the frame at every size); None: 12 pixels to 12 plus a fifth of the short side."""
    speed: tuple[float, float] = (0.5, 5.0)
    """Pixels a frame."""
    one_colour: bool = False
    """Every shape in the first shape's colour (occlusion by same-coloured shapes)."""


STYLES = {"trained": SceneStyle(), "sparse": SceneStyle(shapes=(1, 2)), "crowded": SceneStyle(shapes=(9, 12)),
          "small": SceneStyle(shapes=(4, 8), radius=(5.0, 14.0)), "fast": SceneStyle(speed=(6.0, 14.0)),
          "same-colour": SceneStyle(shapes=(4, 7), one_colour=True)}
"""The kinds of scene, by name: the shipped model's training scenes (``trained``), and sparse, crowded,
small, fast (motion-blurred) and one-colour ones."""


class Scene:
    """A moving scene of shapes; :meth:`render` draws the current frame and its exact ground truth."""

    def __init__(self, seed: int, width: int = 320, height: int = 240, style: SceneStyle = SceneStyle()) -> None:
        self.rng = np.random.default_rng(seed)
        self.width, self.height = width, height
        self.style = style
        self.colour: np.ndarray | None = None
        self.background = Background(self.rng, width, height)
        self.min_shapes, self.max_shapes = style.shapes
        self.noise = self.rng.uniform(2, 8)
        self.blur_speed = self.rng.uniform(2.5, 5)  # shapes faster than this (px/frame) are motion-blurred
        self.shapes: list[Shape] = []
        self.next_track = 1
        self.frame = 0
        for _ in range(self.rng.integers(self.min_shapes, self.max_shapes + 1)):
            self.shapes.append(self._new_shape(inside=True))

    def _new_shape(self, inside: bool) -> Shape:
        rng, w, h, style = self.rng, self.width, self.height, self.style
        scale = min(w, h) / 240
        radius = rng.uniform(*((style.radius[0] * scale, style.radius[1] * scale) if style.radius else
                               (12, 0.2 * min(w, h) + 12)))
        speed = rng.uniform(*style.speed)
        if inside:
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            heading = rng.uniform(0, 2 * np.pi)
        else:  # enter from an edge, heading inwards
            edge = rng.integers(4)
            x = [-radius, w + radius, rng.uniform(0, w), rng.uniform(0, w)][edge]
            y = [rng.uniform(0, h), rng.uniform(0, h), -radius, h + radius][edge]
            heading = math.atan2(h / 2 - y, w / 2 - x) + rng.uniform(-0.6, 0.6)
        colour = np.array(cv2.cvtColor(np.uint8([[[rng.integers(180), rng.integers(150, 256),
                                                   rng.integers(120, 256)]]]), cv2.COLOR_HSV2RGB)[0, 0], np.float32)
        if style.one_colour:  # drawn all the same, so that a style changes nothing else of the scene
            self.colour = colour if self.colour is None else self.colour
            colour = self.colour
        shape = Shape(int(rng.integers(1, len(SHAPE_CLASSES))), self.next_track, x, y,
                      speed * math.cos(heading), speed * math.sin(heading), rng.uniform(0, 2 * np.pi),
                      rng.uniform(-0.08, 0.08), radius, rng.uniform(-0.015, 0.015), rng.uniform(0.4, 1.0),
                      colour, rng.uniform(0.1, 0.6), rng.uniform(0, 2 * np.pi))
        self.next_track += 1
        return shape

    def step(self) -> None:
        """Advance the scene one frame: move shapes, drop those gone, let new ones enter."""
        self.frame += 1
        margin = 80
        for shape in self.shapes:
            shape.step()
        self.shapes = [s for s in self.shapes
                       if -margin - s.radius < s.x < self.width + margin + s.radius
                       and -margin - s.radius < s.y < self.height + margin + s.radius]
        if len(self.shapes) < self.min_shapes or (len(self.shapes) < self.max_shapes and self.rng.random() < 0.03):
            self.shapes.append(self._new_shape(inside=False))
        if self.rng.random() < 0.01 and len(self.shapes) > 1:  # depth order changes now and then
            i, j = self.rng.choice(len(self.shapes), 2, replace=False)
            self.shapes[i], self.shapes[j] = self.shapes[j], self.shapes[i]

    def render(self) -> tuple[np.ndarray, list[Instance]]:
        """``(uint8[H, W, 3] RGB image, instances)`` of the current frame; shapes fully hidden or
        outside the frame have no instance."""
        h, w = self.height, self.width
        owner = np.full((h, w), -1, np.int16)
        outlines = [s.outline() for s in self.shapes]
        full_areas = []
        for k, pts in enumerate(outlines):  # back to front: later shapes cover earlier ones
            poly = np.round(pts * (1 << _SUBPIXEL)).astype(np.int32)
            alone = np.zeros((h, w), np.uint8)
            cv2.fillPoly(alone, [poly], 1, lineType=cv2.LINE_8, shift=_SUBPIXEL)
            full_areas.append(int(cv2.contourArea(pts.astype(np.float32))))
            owner[alone.astype(bool)] = k
        image = self.background.at(self.frame)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        instances = []
        for k, (shape, pts) in enumerate(zip(self.shapes, outlines)):
            mask = owner == k
            if not mask.any():
                continue
            c, s = math.cos(shape.angle), math.sin(shape.angle)
            local = (xx[mask] - shape.x) * c + (yy[mask] - shape.y) * s
            shade = 0.8 + 0.2 * np.sin(local * shape.stripes + shape.phase)
            image[mask] = shape.colour * shade[:, None]
            instances.append(Instance(shape.label, shape.track_id, mask, full_areas[k],
                                      self._visibility(extreme_keypoints(pts), shape, owner, k)))
        for shape, pts in zip(self.shapes, outlines):
            speed = math.hypot(shape.vx, shape.vy)
            if speed > self.blur_speed:
                self._motion_blur(image, pts, shape, speed)
        image += self.rng.normal(0, self.noise, image.shape).astype(np.float32)
        return np.clip(image, 0, 255).astype(np.uint8), instances

    def _visibility(self, points: np.ndarray, shape: Shape, owner: np.ndarray, k: int) -> np.ndarray:
        out = np.zeros((len(points), 3), np.float32)
        out[:, :2] = points
        for i, (x, y) in enumerate(points):
            if not (0 <= x < self.width and 0 <= y < self.height):
                continue  # v = 0: outside the frame
            # look just inside the shape: the extreme point itself lies on the edge
            dx, dy = shape.x - x, shape.y - y
            norm = max(1e-6, math.hypot(dx, dy))
            px = int(np.clip(x + 2 * dx / norm, 0, self.width - 1))
            py = int(np.clip(y + 2 * dy / norm, 0, self.height - 1))
            out[i, 2] = 2 if owner[py, px] == k else 1
        return out

    def _motion_blur(self, image: np.ndarray, pts: np.ndarray, shape: Shape, speed: float) -> None:
        length = int(min(9, speed))
        kernel = np.zeros((length, length), np.float32)
        angle = math.atan2(shape.vy, shape.vx)
        centre = (length - 1) / 2
        for t in np.linspace(-centre, centre, length * 2):
            kernel[int(round(centre + t * math.sin(angle))), int(round(centre + t * math.cos(angle)))] = 1
        kernel /= kernel.sum()
        x1, y1 = np.floor(pts.min(0)).astype(int) - length
        x2, y2 = np.ceil(pts.max(0)).astype(int) + length
        x1, y1, x2, y2 = max(0, x1), max(0, y1), min(self.width, x2), min(self.height, y2)
        if x2 - x1 > length and y2 - y1 > length:
            image[y1:y2, x1:x2] = cv2.filter2D(image[y1:y2, x1:x2], -1, kernel)

    def frames(self, count: int) -> Iterator[tuple[np.ndarray, list[Instance]]]:
        """``count`` consecutive frames with their ground truth."""
        for i in range(count):
            if i:
                self.step()
            yield self.render()


def random_frame(rng: np.random.Generator, width: int = 320, height: int = 240,
                 style: SceneStyle = SceneStyle()) -> tuple[np.ndarray, list[Instance]]:
    """One training frame: a fresh training scene (its seed at or above :data:`TRAIN_SEED_FLOOR`)
    advanced a random number of steps."""
    scene = Scene(training_seed(rng), width, height, style)
    for _ in range(int(rng.integers(0, 30))):
        scene.step()
    return scene.render()


def coco_categories() -> list[dict[str, Any]]:
    """COCO ``categories`` of the shape classes, with keypoint names and the 1-based skeleton."""
    return [{"id": i, "name": name, "supercategory": "shape", "keypoints": list(SHAPE_KEYPOINTS),
             "skeleton": [[a + 1, b + 1] for a, b in SHAPE_SKELETON]} for i, name in enumerate(CLASSES, 1)]


def write_video(path: str | Path, gt_path: str | Path | None, seed: int = 0, frames: int = 300,
                width: int = 320, height: int = 240, fps: Fraction = Fraction(30), crf: int = 16,
                style: SceneStyle = SceneStyle()) -> dict[str, Any]:
    """Write a synthetic clip (H.264 MP4) and its COCO ground truth; returns the ground truth dict.

    ``crf`` 16 keeps the pictures close to the ground truth; 23 (x264's default) makes a clip as
    heavy to decode as a camera's or a web video's."""
    import av

    scene = Scene(seed, width, height, style)
    images, annotations = [], []
    with av.open(str(path), "w", options={"movflags": "+faststart"}) as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for index, (image, instances) in enumerate(scene.frames(frames)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = index
            out.mux(stream.encode(frame))
            image_id = index + 1
            images.append({"id": image_id, "file_name": f"{Path(path).name}#{index}", "width": width,
                           "height": height, "frame_index": index})
            rles = encode_rle(np.stack([inst.mask for inst in instances])) if instances else []
            for inst, rle in zip(instances, rles):
                x1, y1, x2, y2 = inst.box()
                kps = inst.keypoints
                annotations.append({
                    "id": len(annotations) + 1, "image_id": image_id, "category_id": inst.label,
                    "segmentation": rle, "area": inst.area, "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "iscrowd": int(inst.crowd), "track_id": inst.track_id,
                    "keypoints": [round(float(v), 2) for v in kps.reshape(-1)],
                    "num_keypoints": int((kps[:, 2] > 0).sum()),
                })
        out.mux(stream.encode())
    gt = {"info": {"description": "streamseg synthetic shapes", "seed": seed, "frames": frames,
                   "width": width, "height": height, "fps": str(fps), "style": dataclasses.asdict(style)},
          "images": images, "annotations": annotations, "categories": coco_categories()}
    if gt_path is not None:
        Path(gt_path).write_text(json.dumps(gt))
    return gt
