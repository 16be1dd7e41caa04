"""Decode: demux and decode a video file with PyAV into RGB frames, in presentation order."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Iterator

import av

from ..errors import InputError
from ..messages import EndOfStream, Frame, StreamStart
from ..stage import ALL_PORTS, Emit, Source

log = logging.getLogger(__name__)


def open_video(path: str) -> tuple[av.container.InputContainer, av.video.stream.VideoStream]:
    """Open ``path`` and pick its first video stream, or raise an :class:`InputError` that says why not."""
    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if os.path.isdir(path):
        raise InputError(f"input is a folder, not a video file: {path}")
    if os.path.getsize(path) == 0:
        raise InputError(f"input is empty (0 bytes): {path}")
    try:
        container = av.open(path, "r", timeout=10.0)
    except av.FFmpegError as exc:
        raise InputError(f"cannot read {path} as video: {exc.strerror or exc}") from None
    if not container.streams.video and not container.streams.audio:
        container.close()
        raise InputError(f"cannot read {path} as video: it holds no audio or video stream (cut off or damaged?)")
    if not container.streams.video:
        kinds = ", ".join(f"{s.type} ({s.codec_context.name if s.codec_context else 'unknown codec'})"
                          for s in container.streams) or "none"
        container.close()
        raise InputError(f"{path} has no video stream (streams: {kinds})")
    stream = container.streams.video[0]
    if stream.codec_context is None or not stream.codec_context.width or not stream.codec_context.height:
        container.close()
        raise InputError(f"cannot read {path} as video: its video stream has no codec or frame size (damaged header?)")
    return container, stream


class DecodeStage(Source):
    """Reads one video file; emits StreamStart, every decodable Frame, then EndOfStream.

    Corrupt packets are skipped and counted (``skipped``); a file that breaks off early ends with
    ``EndOfStream(reason="truncated")`` after every frame that could be decoded.
    """

    outputs = ("frames",)

    def __init__(self, path: str, stream_id: str = "0", threads: int = 0) -> None:
        super().__init__()
        self.path = path
        self.stream_id = stream_id
        self.threads = threads
        self.container: av.container.InputContainer | None = None

    def setup(self) -> None:
        self.container, stream = open_video(self.path)
        stream.thread_type = "AUTO"  # frame + slice threads: decode keeps ahead of the model
        if self.threads:
            stream.codec_context.thread_count = self.threads

    def produce(self) -> Iterator[Emit]:
        assert self.container is not None, "setup() first"
        container = self.container
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or Fraction(25)
        time_base = stream.time_base or Fraction(1, 90000)
        expected = int(stream.frames or 0)
        start = StreamStart(self.stream_id, stream.codec_context.width, stream.codec_context.height,
                            Fraction(rate), Fraction(time_base), expected, self.path,
                            audio=bool(container.streams.audio))
        self.notify("stream", stream_id=self.stream_id, frames=expected, width=start.width,
                    height=start.height, rate=str(rate))
        yield ALL_PORTS, start
        index = 0
        skipped = 0
        error = ""
        last_pts = None
        packets = container.demux(stream)
        while not self.stop_requested:
            try:
                packet = next(packets)
            except StopIteration:
                break
            except av.FFmpegError as exc:  # the demuxer gave up: the file breaks off here
                error = f"demuxing stopped: {exc.strerror or exc}"
                break
            try:
                frames = packet.decode()
            except av.FFmpegError as exc:
                skipped += 1
                log.warning("%s: skipped a corrupt packet at pts %s: %s", self.path, packet.pts, exc)
                continue
            for vf in frames:
                pts = vf.pts if vf.pts is not None else (last_pts + 1 if last_pts is not None else 0)
                if last_pts is not None and pts <= last_pts:
                    skipped += 1  # a duplicate or out-of-order timestamp would break the output's pts
                    continue
                last_pts = pts
                image = vf.to_ndarray(format="rgb24")
                if image.shape[:2] != (start.height, start.width):
                    skipped += 1
                    log.warning("%s: skipped frame %d with size %s", self.path, index, image.shape[:2])
                    continue
                yield "frames", Frame(self.stream_id, index, int(pts), start.time_base, image)
                index += 1
        self.counters.update(frames=index, skipped=skipped)
        reason, detail = "end", ""
        if self.stop_requested:
            reason, detail = "stopped", "stopped on request"
        elif error or (expected and index + skipped < expected):
            reason = "truncated"
            self.counters["truncated"] = 1
            detail = (f"input ended after {index} of {expected} frames" if expected else
                      f"input ended after {index} frames") + (f" ({error})" if error else "")
        if skipped:
            detail = (detail + "; " if detail else "") + f"{skipped} corrupt packets or frames skipped"
        if reason != "end" or skipped:
            self.notify("warning", message=f"{self.path}: {detail}")
        yield ALL_PORTS, EndOfStream(self.stream_id, index, reason, skipped, detail)

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None
