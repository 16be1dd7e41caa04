"""Opening inputs for the decoder: anything PyAV reads (files, ``rtsp://``, ``rtmp://``, ``http(s)://``
including HLS, ``/dev/videoN`` through V4L2) with timeouts, so a dead source raises
:class:`~streamseg.errors.InputError` instead of blocking; and a folder or glob of still images as
one stream (:class:`ImageSequence`).
"""

from __future__ import annotations

import glob
import logging
import os
from fractions import Fraction
from typing import Iterator

import av
import cv2
import numpy as np
from av.codec.hwaccel import HWAccel

from ..config import InputConfig
from ..errors import InputError
from ..sources import IMAGE_EXTENSIONS, safe_url, source_kind

log = logging.getLogger(__name__)


def open_video(url: str, opts: InputConfig) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``url`` as the ``input`` section says (timeouts, RTSP transport, FFmpeg options, hardware
    decoding) and pick its first video stream, or raise an :class:`InputError` that says why not."""
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
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise InputError(f"cannot read {shown} as video: it holds no audio or video stream (cut off or damaged?)")
    if not container.streams.video:
        kinds = ", ".join(f"{s.type} ({s.codec_context.name if s.codec_context else 'unknown codec'})"
                          for s in container.streams) or "none"
        container.close()
        raise InputError(f"{shown} has no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.width or not stream.codec_context.height:
        container.close()
        raise InputError(f"cannot read {shown} as video: its video stream has no codec or frame size (damaged header?)")
    return container, stream


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


def read_image(path: str) -> np.ndarray | None:
    """An image file as ``uint8[H, W, 3]`` RGB, or None when it cannot be read."""
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    return None if bgr is None else np.ascontiguousarray(bgr[:, :, ::-1])

