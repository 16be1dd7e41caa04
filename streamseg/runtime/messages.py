"""The messages that flow between stages: small frozen dataclasses with documented fields.

Each is checked when built (``__post_init__``), so a message decoded from a socket is validated
by the same code that validates one built in-process. :mod:`streamseg.runtime.codec` turns them into
multipart ZeroMQ frames and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from ..errors import MessageError


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MessageError(message)


def _check_array(array: object, name: str, dtype: type, ndim: int) -> None:
    _check(isinstance(array, np.ndarray), f"{name} must be an ndarray, got {type(array).__name__}")
    assert isinstance(array, np.ndarray)
    _check(array.dtype == dtype, f"{name} must be {np.dtype(dtype).name}, got {array.dtype}")
    _check(array.ndim == ndim, f"{name} must have {ndim} dimensions, got shape {array.shape}")


@dataclass(frozen=True)
class StreamStart:
    """Opens a stream: what downstream stages need before its first frame.

    Sent once per stream, before its frames (and again after a reconnection, for live sources).
    """

    stream_id: str
    """Name of the stream (masks JSONL ``stream`` field)."""
    width: int
    """Frame width in pixels, as shown (after any rotation, before the encoder's padding)."""
    height: int
    """Frame height in pixels, as shown."""
    rate: Fraction
    """Average frame rate in frames per second (``30000/1001`` for NTSC)."""
    time_base: Fraction
    """Unit of every ``pts`` in this stream, in seconds."""
    frames: int
    """Frame count the container announces; 0 when unknown."""
    source: str
    """Path or URL the stream was read from (the encoder copies audio from it)."""
    audio: bool
    """Whether the source has an audio stream."""
    live: bool = False
    """Whether the source is live (camera, network stream): frames may then be dropped before
    inference when it falls behind; never for files."""
    rotation: int = 0
    """Degrees (counter-clockwise) the stored pictures are turned to show them upright, as the
    file's display matrix says; ``width`` and ``height`` are the size shown, after the turn."""
    video: str = ""
    """Where this stream's annotated video goes, for a stream added to a running service (``streamseg
    serve``); empty: where the run's plan sends it (the encoder's own paths)."""
    masks: str = ""
    """Where this stream's masks file goes, likewise; empty: the mask writer's own paths."""
    started: float = 0.0
    """Unix time the stream started (its decoder's first start): recorded segments are named from it."""
    analytics: str = ""
    """This stream's own zones and lines (the ``analytics`` section's JSON form), for a stream added to
    a service with them; empty: the run's ``analytics`` section, if any."""

    def __post_init__(self) -> None:
        _check(self.width > 0 and self.height > 0, f"bad frame size {self.width}x{self.height}")
        _check(self.rate > 0, f"bad frame rate {self.rate}")
        _check(self.time_base > 0, f"bad time base {self.time_base}")


@dataclass(frozen=True)
class Frame:
    """One decoded (or rendered) video frame."""

    stream_id: str
    """Stream the frame belongs to."""
    index: int
    """0-based position of the frame in its stream, in presentation order."""
    pts: int
    """Presentation timestamp, in ``time_base`` units."""
    time_base: Fraction
    """Unit of ``pts``, in seconds."""
    image: np.ndarray
    """Pixels, ``uint8[H, W, 3]``, RGB."""
    captured: float = 0.0
    """Wall-clock time (``time.time()``) the frame was captured, latency is measured from it: when
    the decoder read it (files), or when the source delivered it on its own clock (live sources:
    the earliest arrival, advanced by the timestamps), so that a backlog before the decoder counts."""
    prev: int = -1
    """Index of the frame of this stream sent before it on the way to this stage, stamped by the
    inference stage that all of a stream's frames pass through; -1 when there was none or it is not
    known. A stage fed by several parallel workers restores the order by it (:mod:`streamseg.runtime.reorder`)."""
    loop: int = 0
    """How many times the source started over (``input.loop``) before this frame: the tracker starts
    fresh tracks when it changes, though the timestamps go on."""

    def __post_init__(self) -> None:
        _check(self.index >= 0, f"bad frame index {self.index}")
        _check(-1 <= self.prev < self.index, f"frame {self.index} cannot come after frame {self.prev}")
        _check_array(self.image, "Frame.image", np.uint8, 3)
        _check(self.image.shape[2] == 3, f"Frame.image must be [H, W, 3], got {self.image.shape}")

    @property
    def time_s(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


@dataclass(frozen=True)
class Batch:
    """Frames grouped for one inference call (possibly from several streams)."""

    frames: tuple[Frame, ...]
    """The frames, in the order they arrived."""

    def __post_init__(self) -> None:
        _check(len(self.frames) > 0, "a Batch must hold at least one frame")


@dataclass(frozen=True)
class MaskRegions:
    """Binary masks of N instances at the frame's resolution, each kept only within its region.

    Instance ``i`` covers the frame's columns ``x .. x + w - 1`` and rows ``y .. y + h - 1``
    (``regions[i] = [x, y, w, h]``, inside the frame) and is empty outside them; its pixels are
    ``bits[offsets[i] : offsets[i] + h * w]``, column by column, as COCO's RLE runs (so it is
    encoded without reordering). Most of a frame lies outside every instance, so this is far
    smaller than ``bool[N, H, W]`` and costs nothing to carry.
    """

    bits: np.ndarray
    """``bool[sum of h * w]``, the regions' pixels one after the other, each region column by column."""
    regions: np.ndarray
    """``int64[N, 4]``, ``[x, y, w, h]`` of each instance's region, in pixels."""
    height: int
    """Frame height in pixels."""
    width: int
    """Frame width in pixels."""

    def __post_init__(self) -> None:
        _check_array(self.bits, "MaskRegions.bits", np.bool_, 1)
        _check_array(self.regions, "MaskRegions.regions", np.int64, 2)
        _check(self.height > 0 and self.width > 0, f"bad frame size {self.width}x{self.height}")
        _check(self.regions.shape[1] == 4, f"MaskRegions.regions must be [N, 4], got {self.regions.shape}")
        x, y, w, h = self.regions.T
        _check(bool(((x >= 0) & (y >= 0) & (w >= 0) & (h >= 0) & (x + w <= self.width)
                     & (y + h <= self.height)).all()), "MaskRegions: a region reaches outside the frame")
        _check(int((w * h).sum()) == self.bits.shape[0], "MaskRegions: bits do not match the regions' sizes")

    def __len__(self) -> int:
        return int(self.regions.shape[0])

    @property
    def offsets(self) -> np.ndarray:
        """``int64[N + 1]``: where each region's pixels start in :attr:`bits` (and where the last ends)."""
        return np.concatenate([[0], np.cumsum(self.regions[:, 2] * self.regions[:, 3])]).astype(np.int64)

    def region(self, i: int, offsets: np.ndarray | None = None) -> tuple[int, int, np.ndarray]:
        """``(x, y, bool[h, w])`` of instance ``i`` (a view, no copy); ``offsets``: :attr:`offsets`,
        when the caller has it already (a loop over the instances)."""
        x, y, w, h = (int(v) for v in self.regions[i])
        start = int((self.offsets if offsets is None else offsets)[i])
        return x, y, self.bits[start:start + w * h].reshape(w, h).T

    def full(self) -> np.ndarray:
        """The masks as ``bool[N, H, W]`` (for tests and small frames; large with many instances)."""
        out = np.zeros((len(self), self.height, self.width), bool)
        offsets = self.offsets
        for i in range(len(self)):
            x, y, bits = self.region(i, offsets)
            out[i, y:y + bits.shape[0], x:x + bits.shape[1]] = bits
        return out

    @classmethod
    def from_full(cls, masks: np.ndarray) -> MaskRegions:
        """The tight regions of ``bool[N, H, W]`` masks."""
        _check_array(masks, "masks", np.bool_, 3)
        n, height, width = masks.shape
        regions = np.zeros((n, 4), np.int64)
        parts = []
        for i in range(n):
            rows, cols = np.flatnonzero(masks[i].any(1)), np.flatnonzero(masks[i].any(0))
            if len(rows):
                y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
                regions[i] = (x0, y0, x1 - x0, y1 - y0)
                parts.append(masks[i, y0:y1, x0:x1].T.ravel())
        bits = np.concatenate(parts) if parts else np.zeros(0, bool)
        return cls(bits, regions, height, width)

    @classmethod
    def empty(cls, height: int, width: int) -> MaskRegions:
        return cls(np.zeros(0, bool), np.zeros((0, 4), np.int64), height, width)

    def select(self, keep: np.ndarray) -> MaskRegions:
        """The instances ``keep`` (indices, in order); a first few of them are a view, no copy."""
        offsets = self.offsets
        if np.array_equal(keep, np.arange(len(keep))):
            bits = self.bits[:offsets[len(keep)]]
        else:
            bits = np.concatenate([self.bits[offsets[i]:offsets[i + 1]] for i in keep] or [np.zeros(0, bool)])
        return MaskRegions(bits, self.regions[keep], self.height, self.width)


@dataclass(frozen=True)
class Detections:
    """The instances found in one frame, at the frame's resolution. N may be 0."""

    boxes: np.ndarray
    """``float32[N, 4]``, ``[x1, y1, x2, y2]`` in pixels."""
    scores: np.ndarray
    """``float32[N]``, in [0, 1]."""
    labels: np.ndarray
    """``int64[N]``, the model's class ids (0 is background and never appears)."""
    masks: MaskRegions | None
    """One binary mask per instance at the frame's resolution; None when the model has no mask
    head (Keypoint R-CNN)."""
    keypoints: np.ndarray | None = None
    """``float32[N, K, 3]`` of ``[x, y, score]``, or None when the model has no keypoint head."""
    rles: tuple[str, ...] | None = None
    """The masks as COCO compressed RLE ``counts`` strings (size ``[H, W]``), when already encoded
    (:class:`~streamseg.models.predictor.Predictor` with ``encode_rle``); the stages that write or
    publish masks encode them otherwise, so that the model's stage does only the model's work."""
    track_ids: np.ndarray | None = None
    """``int64[N]``, each instance's track (the ``track`` stage's; unique in the run), or None where the
    stream is not tracked."""

    def __post_init__(self) -> None:
        _check_array(self.boxes, "Detections.boxes", np.float32, 2)
        _check_array(self.scores, "Detections.scores", np.float32, 1)
        _check_array(self.labels, "Detections.labels", np.int64, 1)
        n = self.boxes.shape[0]
        _check(self.boxes.shape[1] == 4, f"Detections.boxes must be [N, 4], got {self.boxes.shape}")
        _check(bool(np.isfinite(self.boxes).all()), "Detections.boxes must be finite")
        _check(bool(((self.scores >= 0) & (self.scores <= 1)).all()), "Detections.scores must be within [0, 1]")
        _check(bool((self.labels >= 0).all()), "Detections.labels must be >= 0")
        _check(self.scores.shape[0] == n and self.labels.shape[0] == n,
               "Detections fields disagree on the instance count")
        if self.masks is not None:
            _check(isinstance(self.masks, MaskRegions), "Detections.masks must be MaskRegions")
            _check(len(self.masks) == n, "Detections.masks disagrees on the instance count")
        if self.rles is not None:
            _check(len(self.rles) == n, "Detections.rles disagrees on the instance count")
        if self.track_ids is not None:
            _check_array(self.track_ids, "Detections.track_ids", np.int64, 1)
            _check(self.track_ids.shape[0] == n, "Detections.track_ids disagrees on the instance count")
        if self.keypoints is not None:
            _check_array(self.keypoints, "Detections.keypoints", np.float32, 3)
            _check(self.keypoints.shape[0] == n and self.keypoints.shape[2] == 3,
                   f"Detections.keypoints must be [N, K, 3], got {self.keypoints.shape}")
            _check(bool(np.isfinite(self.keypoints).all()), "Detections.keypoints must be finite")

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def select(self, keep: np.ndarray, track_ids: np.ndarray | None = None) -> Detections:
        """The instances ``keep`` (indices, in order), with ``track_ids`` for them."""
        masks = None if self.masks is None else self.masks.select(keep)
        keypoints = None if self.keypoints is None else self.keypoints[keep]
        rles = None if self.rles is None else tuple(self.rles[i] for i in keep)
        return Detections(self.boxes[keep], self.scores[keep], self.labels[keep], masks, keypoints, rles, track_ids)

    @classmethod
    def empty(cls, height: int, width: int, num_keypoints: int | None = None,
              masks: bool = True) -> Detections:
        """No instances in a frame of the given size."""
        keypoints = None if num_keypoints is None else np.zeros((0, num_keypoints, 3), np.float32)
        return cls(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), np.zeros((0,), np.int64),
                   MaskRegions.empty(height, width) if masks else None, keypoints, () if masks else None)


@dataclass(frozen=True)
class AreaCount:
    """A zone's or a line's figures after a frame (for drawing them)."""

    kind: str
    """``zone`` or ``line``."""
    name: str
    inside: int
    """A zone: the tracks inside it now."""
    entered: int
    """A zone: the tracks that entered it so far; a line: its crossings ``in``."""
    out: int
    """A line: its crossings ``out``."""


TRACK_EVENTS = ("start", "end")


@dataclass(frozen=True)
class TrackEvent:
    """A track's start (in the frame it first appears) or end (once it is over: not seen for
    ``track.max_age_s``, or its stream ended or started over)."""

    kind: str
    """``start`` or ``end``."""
    track_id: int
    label: int
    """Its class id: the one it was seen as most often (so far, for a start)."""
    first_frame: int
    last_frame: int
    """Index of the last frame it was written out in (the first, for a start); a low-score sighting
    after it kept the track going but is not in the output."""
    first_time: float
    """Seconds: the stream's presentation time, or, for a live source, the wall-clock capture time."""
    last_time: float

    def __post_init__(self) -> None:
        _check(self.kind in TRACK_EVENTS, f"bad track event {self.kind!r}")
        _check(0 <= self.first_frame <= self.last_frame, "a track's last frame cannot come before its first")

    @property
    def duration_s(self) -> float:
        return self.last_time - self.first_time


@dataclass(frozen=True)
class FrameResult:
    """A frame's detections, with its pixels when the receiver draws them."""

    stream_id: str
    """Stream the frame belongs to."""
    index: int
    """0-based position of the frame in its stream."""
    pts: int
    """Presentation timestamp, in ``time_base`` units."""
    time_base: Fraction
    """Unit of ``pts``, in seconds."""
    width: int
    """Frame width in pixels."""
    height: int
    """Frame height in pixels."""
    detections: Detections
    """What the model found."""
    image: np.ndarray | None = None
    """``uint8[H, W, 3]`` RGB pixels, or None where the receiver does not need them."""
    captured: float = 0.0
    """Wall-clock time the frame was captured (decoded), copied from its :class:`Frame`."""
    prev: int = -1
    """Index of the result of this stream the inference stage sent before this one (-1: none, or
    not known); see :attr:`Frame.prev`."""
    loop: int = 0
    """:attr:`Frame.loop`, copied."""
    events: tuple[TrackEvent, ...] = ()
    """Tracks that started or ended at this frame (the ``track`` stage's)."""
    counts: tuple[AreaCount, ...] = ()
    """The stream's zones and lines after this frame (``analytics``)."""
    report: str = ""
    """The stream's zones and lines in full (JSON: :meth:`StreamAnalytics.report`), on the frames where
    a published ``counts`` message is due; empty on the others."""

    def __post_init__(self) -> None:
        _check(-1 <= self.prev < self.index, f"result {self.index} cannot come after result {self.prev}")
        masks = self.detections.masks
        _check(masks is None or (masks.height, masks.width) == (self.height, self.width),
               f"masks are {None if masks is None else (masks.height, masks.width)}, "
               f"frame is {(self.height, self.width)}")
        if self.image is not None:
            _check_array(self.image, "FrameResult.image", np.uint8, 3)
            _check(self.image.shape == (self.height, self.width, 3),
                   f"FrameResult.image is {self.image.shape}, expected {(self.height, self.width, 3)}")

    @property
    def time_s(self) -> float:
        """Presentation time in seconds."""
        return float(self.pts * self.time_base)


STATUS_STATES = ("lost", "reconnecting", "reconnected", "gave_up")
END_REASONS = ("end", "stopped", "truncated", "lost")


@dataclass(frozen=True)
class StreamStatus:
    """A change in a live source's connection, passed through to subscribers (never drawn)."""

    stream_id: str
    """Stream whose source changed."""
    state: str
    """``lost`` (the source failed), ``reconnecting`` (attempt ``attempt`` starts), ``reconnected``
    or ``gave_up`` (no more attempts; the stream ends)."""
    detail: str = ""
    """Why (the error), in words."""
    attempt: int = 0
    """Reconnection attempt number, from 1; 0 for ``lost``."""
    time: float = 0.0
    """Wall-clock time of the change (``time.time()``)."""

    def __post_init__(self) -> None:
        _check(self.state in STATUS_STATES, f"bad stream status {self.state!r}")
        _check(self.attempt >= 0, "StreamStatus.attempt must be >= 0")


@dataclass(frozen=True)
class EndOfStream:
    """Closes a stream. Every stage flushes on it and passes it on."""

    stream_id: str
    """Stream that ended."""
    frames: int
    """Frames the source emitted for this stream."""
    reason: str = "end"
    """``end`` (the input ended), ``stopped`` (Ctrl-C / SIGTERM), ``truncated`` (the input broke
    off) or ``lost`` (a live source could not be reconnected)."""
    skipped: int = 0
    """Packets or frames the decoder could not decode and skipped."""
    detail: str = ""
    """Human-readable explanation for a reason other than ``end``."""
    last: int = -1
    """Index of the stream's last frame the inference stage sent on (-1: none, or not known): where
    parallel workers join again, the end waits for that frame."""
    events: tuple[TrackEvent, ...] = ()
    """The ends of the stream's tracks still open when it ended (the ``track`` stage's)."""
    report: str = ""
    """The stream's zones and lines in full at its end (JSON), where it has any."""

    def __post_init__(self) -> None:
        _check(self.reason in END_REASONS, f"bad end-of-stream reason {self.reason!r}")
        _check(self.frames >= 0 and self.skipped >= 0, "EndOfStream counts must be >= 0")
        _check(self.last >= -1, f"bad last frame {self.last}")


Message = StreamStart | Frame | Batch | FrameResult | StreamStatus | EndOfStream
MESSAGE_TYPES: tuple[type, ...] = (StreamStart, Frame, Batch, MaskRegions, Detections, TrackEvent, AreaCount,
                                   FrameResult, StreamStatus, EndOfStream)
