"""Opening inputs for the decoder: anything PyAV reads (files, ``rtsp://``, ``rtmp://``, ``http(s)://``
including HLS, ``/dev/videoN`` through V4L2) with timeouts, so a dead source raises
:class:`~streamseg.errors.InputError` instead of blocking; and a folder or glob of still images as
one stream (:class:`ImageSequence`).
"""

from __future__ import annotations

import glob
import logging
import math
import os
import time
from fractions import Fraction
from typing import Any, Callable, Generator, Iterator

import av
import av.filter
import cv2
import numpy as np
from av.codec.hwaccel import HWAccel
from av.stream import Disposition

from ..config import InputConfig
from ..errors import InputError
from ..runtime.messages import StreamStart
from ..sources import IMAGE_EXTENSIONS, safe_url, source_kind
from .timing import BestEffort

log = logging.getLogger(__name__)


def open_video(url: str, opts: InputConfig) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``url`` as the ``input`` section says (timeouts, RTSP transport, FFmpeg options, hardware
    decoding) and pick its video stream (:func:`pick_stream`), or raise an :class:`InputError` that
    says why not."""
    kind = source_kind(url)
    shown = safe_url(url)
    if kind == "file":
        if not os.path.exists(url):
            raise InputError(f"input not found: {url}")
        if os.path.getsize(url) == 0:
            raise InputError(f"input is empty (0 bytes): {url}")
    if kind == "device" and not os.path.exists(url):
        raise InputError(f"camera not found: {url} (is it plugged in? `ls /dev/video*` lists cameras)")
    options = {str(k): str(v) for k, v in opts.options.items()}
    if url.lower().startswith(("rtsp://", "rtsps://")):
        options.setdefault("rtsp_transport", opts.rtsp_transport)
        options.setdefault("timeout", str(int(opts.read_timeout_s * 1_000_000)))  # socket I/O, microseconds
    if kind == "network":
        # FFmpeg otherwise reads 20 frames to guess the frame rate before the open returns (2 s of a 10 fps
        # camera), which then reach the decoder at once, already late; the container or the codec gives the
        # rate (VideoReader.stream_start)
        options.setdefault("fpsprobesize", "0")
    form = "v4l2" if kind == "device" else None
    timeout = (opts.open_timeout_s, opts.read_timeout_s)
    try:
        container = None
        if opts.hwaccel != "none":
            try:
                container = av.open(url, "r", format=form, options=options, timeout=timeout,
                                    hwaccel=HWAccel(opts.hwaccel, allow_software_fallback=True))
            except av.FFmpegError as exc:
                log.warning("%s: %s decoding is not available here (%s); decoding on the CPU", shown, opts.hwaccel,
                            exc.strerror or exc)
        if container is None:
            container = av.open(url, "r", format=form, options=options, timeout=timeout)
    except av.FFmpegError as exc:
        raise InputError(f"cannot read {shown} as video: {exc.strerror or exc}") from None
    try:
        stream = pick_stream(container, opts.video_stream, shown)
    except InputError:
        container.close()
        raise
    if stream.codec_context is None or not stream.codec_context.width or not stream.codec_context.height:
        container.close()
        raise InputError(f"cannot read {shown} as video: its video stream has no codec or frame size (damaged header?)")
    return container, stream


def pick_stream(container: av.container.InputContainer, wanted: int, shown: str) -> av.video.stream.VideoStream:
    """The video stream to read: ``wanted`` (0 is the first video stream) or, for -1, the one the file
    marks as default, else its first; a cover picture (an attached still image) is never the video."""
    if not container.streams.video and not container.streams.audio:
        raise InputError(f"cannot read {shown} as video: it holds no audio or video stream (cut off or damaged?)")
    videos = [s for s in container.streams.video if not s.disposition & Disposition.attached_pic]
    if not videos:
        kinds = ", ".join(f"{s.type} ({s.codec_context.name if s.codec_context else 'unknown codec'})"
                          + (" cover picture" if s.type == "video" else "") for s in container.streams) or "none"
        raise InputError(f"{shown} has no video stream (streams: {kinds})")
    if wanted >= 0:
        if wanted >= len(container.streams.video):
            raise InputError(f"{shown} has {len(container.streams.video)} video streams (0 to "
                             f"{len(container.streams.video) - 1}); input.video_stream is {wanted}")
        return container.streams.video[wanted]
    return next((s for s in videos if s.disposition & Disposition.default), videos[0])


class VideoReader:
    """An open video input: the frames of its video stream as the decoder gives them out (in
    presentation order), each with FFmpeg's best-effort timestamp (:mod:`.timing`), deinterlaced
    when ``input.deinterlace`` is set, and the rotation its display matrix asks for."""

    def __init__(self, url: str, config: InputConfig, turn: bool = True,
                 waited: Callable[[float], None] | None = None) -> None:
        """``turn``: turn frames as their display matrix says (``input.autorotate``; a live source's
        are shown as stored, since its size is fixed before its first frame). ``waited(seconds)``:
        told how long each read from the source took (a live source's wait for data)."""
        self.url, self.shown, self.config = url, safe_url(url), config
        self.waited = waited
        self.turn = turn and config.autorotate
        self.container, self.stream = open_video(url, config)
        self.stream.thread_type = "AUTO"  # frame + slice threads: decode keeps ahead of the model
        if config.decode_threads:
            self.stream.codec_context.thread_count = config.decode_threads
        self.time_base = Fraction(self.stream.time_base or Fraction(1, 90000))
        self.best_effort = BestEffort()
        self.deinterlacer: av.filter.Graph | None = None
        self.rotation = 0
        """The rotation of the frame decoded last (the deinterlacer's frames carry it on)."""
        self.peeked: list[RawFrame] = []
        self.items = self._decoded()
        self.ended = ""
        """Why decoding ended ("" at a clean end)."""

    def first_rotation(self) -> int:
        """The rotation of the first frame (decoded now and kept for :meth:`frames`); 0 when none decodes."""
        for item in self.items:
            self.peeked.append(item)
            if item[2] is not None:
                return item[3]
        return 0

    def frames(self, stopped: Callable[[], bool]) -> Generator[RawFrame, None, str]:
        """(best-effort pts, time base, frame or None for a corrupt packet, rotation) of each frame; returns
        why it ended ("" at a clean end)."""
        while self.peeked:
            yield self.peeked.pop(0)
        for item in self.items:
            yield item
            if stopped():
                return ""
        return self.ended

    def _decoded(self) -> Iterator[RawFrame]:
        packets = self.container.demux(self.stream)
        while True:
            asked = time.perf_counter()
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:  # the demuxer gave up: the input breaks off (or the link dropped)
                self.ended = f"demuxing stopped: {exc.strerror or exc}"
                try:  # what the decoder holds (frame threads, B-frames waiting to be shown) comes out too
                    held = self.stream.codec_context.decode(None)
                except av.FFmpegError:
                    held = []
                for vf in held:
                    yield from self._shaped(vf)
                break
            finally:
                if self.waited is not None:
                    self.waited(time.perf_counter() - asked)
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                log.warning("%s: skipped a corrupt packet at pts %s: %s", self.shown, packet.pts, exc)
                yield None, self.time_base, None, 0
                continue
            for vf in frames:
                yield from self._shaped(vf)
        yield from self._shaped(None)

    def _shaped(self, vf: av.VideoFrame | None) -> Iterator[RawFrame]:
        """``vf`` with its best-effort pts, through the deinterlacer when there is one (None: flush it)."""
        if vf is not None:
            vf.pts = self.best_effort(vf.pts, vf.dts)
            if self.turn:  # a quarter turn at a time: a matrix that says 88 degrees means 90
                self.rotation = round(vf.rotation / 90) * 90 % 360
        if not self.config.deinterlace:
            if vf is not None:
                yield vf.pts, self.time_base, vf, self.rotation
            return
        if vf is not None and self.deinterlacer is None:
            self.deinterlacer = self._graph(vf)
        if self.deinterlacer is None:
            return
        self.deinterlacer.push(vf)
        while True:
            try:
                out = self.deinterlacer.pull()
            except (av.BlockingIOError, av.EOFError):
                return
            pts = out.pts if out.pts is None or out.time_base in (None, self.time_base) else \
                round(out.pts * out.time_base / self.time_base)  # bwdif counts in half the input's time base
            yield pts, self.time_base, out, self.rotation

    def _graph(self, first: av.VideoFrame) -> av.filter.Graph:
        """FFmpeg's bwdif deinterlacer, one frame out per frame in (progressive frames pass as they are)."""
        graph = av.filter.Graph()
        source = graph.add_buffer(width=first.width, height=first.height, format=first.format.name,
                                  time_base=self.time_base)
        bwdif = graph.add("bwdif", DEINTERLACE_FILTER)
        sink = graph.add("buffersink")
        source.link_to(bwdif)
        bwdif.link_to(sink)
        graph.configure()
        return graph

    def seek(self, pts: int) -> None:
        """Go back to the keyframe at or before ``pts`` (best-effort timestamps start over)."""
        self.container.seek(pts, stream=self.stream, backward=True)
        self.best_effort = BestEffort()
        self.peeked.clear()
        self.items = self._decoded()
        self.deinterlacer = None

    def stream_start(self, stream_id: str, live: bool) -> StreamStart:
        """The stream as shown: a file turned as its first frame says (decoded now, kept for
        :meth:`frames`); a live source's frames are turned as they come, each at the size it starts at."""
        stream = self.stream
        # the codec's own rate (H.264's timing information) before FFmpeg's guess from a few timestamps,
        # which is all a network stream opened without probing the rate has (it may say 60 for 30)
        rate = Fraction(stream.average_rate or stream.codec_context.framerate or stream.guessed_rate or Fraction(25))
        rotation = 0 if live or not self.turn else self.first_rotation()
        width, height = stream.codec_context.width, stream.codec_context.height
        if rotation in (90, 270):
            width, height = height, width
        return StreamStart(stream_id, width, height, rate, self.time_base, 0 if live else self.frame_count(rate),
                           self.shown, audio=bool(self.container.streams.audio), live=live, rotation=rotation)

    def recorded(self) -> bool:
        """Whether a network source is a recording of known length (an HLS playlist with its end list),
        not a live feed."""
        return self.container.format.name == "hls" and bool(self.container.duration)

    def frame_count(self, rate: Fraction) -> int:
        """Frames the header announces (0: unknown), no more than its duration shows: an edit list
        hides frames that the file holds."""
        frames = int(self.stream.frames or 0)
        if frames and self.stream.duration and rate:
            frames = min(frames, math.ceil(self.stream.duration * self.time_base * rate))
        return frames

    def ends_after(self, pts: int, rate: Fraction) -> bool:
        """Whether the stream's announced end lies more than a frame and a half after ``pts`` (it was cut
        short). Counted in time, not frames: AVI headers count dropped frames that hold no picture, and
        an MP4 cut with an edit list holds frames that are never shown. Unknown: True."""
        if not self.stream.duration:
            return True
        end = (self.stream.start_time or 0) + self.stream.duration
        return float((end - pts) * self.time_base) > 1.5 / float(rate)

    def describe(self) -> dict[str, Any]:
        """What the input is: container, codec, stored size, which of how many video streams."""
        ctx = self.stream.codec_context
        videos = list(self.container.streams.video)
        names = self.container.format.name.split(",")  # "mov,mp4,m4a,...": the one the file is named after
        ext = os.path.splitext(self.url)[1].lower().lstrip(".")
        return {"container": ext if ext in names else names[0], "codec": ctx.name,
                "pix_fmt": ctx.pix_fmt or "", "stored": f"{ctx.width}x{ctx.height}",
                "video_stream": videos.index(self.stream), "video_streams": len(videos)}

    def close(self) -> None:
        try:
            self.container.close()
        except av.FFmpegError:
            pass


DEINTERLACE_FILTER = "mode=send_frame:parity=auto:deint=interlaced"
"""bwdif's settings: one output frame per input frame, only frames marked interlaced are changed.
``ffmpeg -vf bwdif=mode=send_frame:parity=auto:deint=interlaced`` gives the same pictures."""

RawFrame = tuple["int | None", Fraction, "av.VideoFrame | np.ndarray | None", int]
"""(pts in the reader's time base or None, that time base, the picture (None: a corrupt packet
skipped), the rotation in degrees counter-clockwise that shows it upright)."""


TURNS = {90: cv2.ROTATE_90_COUNTERCLOCKWISE, 180: cv2.ROTATE_180, 270: cv2.ROTATE_90_CLOCKWISE}
"""Counter-clockwise degrees (a display matrix's rotation) -> the OpenCV turn that shows a picture upright."""


def shown_size(picture: av.VideoFrame | np.ndarray, rotation: int) -> tuple[int, int]:
    """(width, height) of a picture turned upright."""
    if isinstance(picture, np.ndarray):
        return picture.shape[1], picture.shape[0]
    return (picture.height, picture.width) if rotation % 180 else (picture.width, picture.height)


def upright_rgb(picture: av.VideoFrame | np.ndarray, rotation: int, size: tuple[int, int]) -> np.ndarray:
    """RGB pixels, turned upright (``rotation`` degrees counter-clockwise), at ``size`` (width, height)
    when shown: a live source that comes back at another size is scaled to it."""
    if isinstance(picture, np.ndarray):
        return picture
    turn = TURNS.get(rotation % 360)
    width, height = size[::-1] if turn is not None and rotation % 180 else size
    if (picture.width, picture.height) == (width, height):
        image = picture.to_ndarray(format="rgb24")
    else:
        image = picture.reformat(width=width, height=height, format="rgb24").to_ndarray()
    return image if turn is None else cv2.rotate(image, turn)


class ImageSequence:
    """The still images of a folder (sorted by name) or of a glob pattern, as frames of one size.

    The first readable image fixes the frame size; an image that cannot be read or has another
    size is skipped and counted by the caller.
    """

    def __init__(self, pattern: str, fps: float) -> None:
        if os.path.isdir(pattern):
            names = sorted(os.path.join(pattern, n) for n in os.listdir(pattern))
            where = f"folder {pattern}"
        else:
            names = sorted(glob.glob(pattern))
            where = f"pattern {pattern}"
        self.paths = [p for p in names if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS and os.path.isfile(p)]
        if not self.paths:
            raise InputError(f"the {where} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); "
                             "give a video file, a URL or a folder of images")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.time_base = 1 / self.rate
        first = next((img for img in map(read_image, self.paths) if img is not None), None)
        if first is None:
            raise InputError(f"none of the {len(self.paths)} images of the {where} can be read")
        self.height, self.width = first.shape[:2]

    def __iter__(self) -> Iterator[tuple[str, np.ndarray | None]]:
        for path in self.paths:
            yield path, read_image(path)

    def frames(self, stopped: Callable[[], bool]) -> Generator[RawFrame, None, str]:
        """The images as :data:`RawFrame`s, numbered from 0 in the time base 1/fps (None: unreadable)."""
        for i, (path, image) in enumerate(self):
            if image is None:
                log.warning("%s: skipped an image that cannot be read", path)
            yield i, self.time_base, image, 0
            if stopped():
                break
        return ""


def read_image(path: str) -> np.ndarray | None:
    """An image file as ``uint8[H, W, 3]`` RGB, or None when it cannot be read."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])

