"""Encode: annotated frames to H.264 (libx264, yuv420p): MP4 files with the moov atom first and the
input's audio copied in, or a live stream pushed to an ``rtsp://`` or ``rtmp://`` server."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Any, Iterable, Iterator

import av

from ..errors import MessageError, OutputError
from ..messages import EndOfStream, Frame, StreamStart
from ..sources import safe_url
from ..stage import Emit, Stage

log = logging.getLogger(__name__)

MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
"""Audio codecs MP4 holds as they are; anything else is re-encoded to AAC."""
STREAM_FORMATS = {"rtsp": "rtsp", "rtsps": "rtsp", "rtmp": "flv", "rtmps": "flv"}
"""Output URL scheme -> FFmpeg muxer that pushes to such a server."""


def stream_format(path: str) -> str | None:
    """The muxer for an output stream URL (``rtsp://``, ``rtmp://``), or None for a file."""
    scheme, sep, _ = path.partition("://")
    return STREAM_FORMATS.get(scheme.lower()) if sep else None


class _AudioCopier:
    """Moves the source's audio into the output: remuxed packets, or AAC re-encoded when MP4 needs it.

    ``until(t)`` writes everything up to presentation time ``t`` seconds, so audio interleaves with
    the video as it is encoded.
    """

    def __init__(self, source: str, output: av.container.OutputContainer) -> None:
        self.input = av.open(source, "r", timeout=10.0)
        self.in_stream = self.input.streams.audio[0]
        self.output = output
        self.remux = self.in_stream.codec_context.name in MP4_AUDIO_CODECS
        if self.remux:
            self.out_stream = output.add_stream_from_template(self.in_stream)
        else:
            ctx = self.in_stream.codec_context
            self.out_stream = output.add_stream("aac", rate=ctx.sample_rate or 48000)
            self.resampler = av.AudioResampler(format="fltp", layout=ctx.layout.name if ctx.layout else "stereo",
                                               rate=ctx.sample_rate or 48000)
        self.packets: Iterator[av.Packet] = self.input.demux(self.in_stream)
        self.pending: av.Packet | None = None
        self.done = False

    def until(self, t: float | None) -> None:
        while not self.done:
            packet = self.pending or next(self.packets, None)
            self.pending = None
            if packet is None:
                self.done = True
                if not self.remux:
                    self._encode(None)
                break
            if packet.dts is None and packet.pts is None:
                continue  # the demuxer's flush packet
            when = float((packet.pts if packet.pts is not None else packet.dts) * packet.time_base)
            if t is not None and when > t:
                self.pending = packet
                break
            if self.remux:
                packet.stream = self.out_stream
                self.output.mux(packet)
            else:
                for frame in packet.decode():
                    self._encode(frame)

    def _encode(self, frame: av.AudioFrame | None) -> None:
        frames = self.resampler.resample(frame) if frame is not None else [None]
        for f in frames:
            if f is not None:
                f.pts = None
            self.output.mux(self.out_stream.encode(f))

    def close(self) -> None:
        self.input.close()


class _Writer:
    """One output (file or stream URL) for one stream."""

    def __init__(self, path: str, start: StreamStart, codec: str, crf: int, preset: str, threads: int,
                 audio: bool) -> None:
        if start.width % 2 or start.height % 2:
            raise OutputError(f"H.264 yuv420p needs even frame sizes; the input is {start.width}x{start.height}")
        self.path = path
        self.shown = safe_url(path)
        fmt = stream_format(path)
        ext = os.path.splitext(path)[1].lower()
        options = {"movflags": "+faststart"} if fmt is None and ext in (".mp4", ".m4v", ".mov") else {}
        if fmt == "rtsp":
            options["rtsp_transport"] = "tcp"
        try:
            self.output = av.open(path, "w", format=fmt, options=options, timeout=10.0)
            stream = self.output.add_stream(codec, rate=start.rate)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise OutputError(f"cannot write {self.shown}: {exc}") from None
        stream.width, stream.height = start.width, start.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = start.time_base
        stream.thread_type = "AUTO"
        if threads:
            stream.codec_context.thread_count = threads
        if codec in ("libx264", "libx265"):
            stream.options = {"crf": str(crf), "preset": preset}
            if fmt is not None:  # a live stream: no frame reordering delay, a keyframe every 2 s to join at
                stream.options.update(tune="zerolatency", g=str(max(1, round(2 * start.rate))))
        self.stream = stream
        self.audio_copier: _AudioCopier | None = None
        self.last_time = 0.0
        self.frames = 0
        self.warning = ""
        if audio and start.audio and fmt is None and os.path.isfile(start.source):
            try:
                self.audio_copier = _AudioCopier(start.source, self.output)
            except (av.FFmpegError, ValueError, IndexError) as exc:
                log.warning("%s: audio not copied: %s", path, exc)
                self.warning = f"audio not copied into {path}: {exc}"

    def write(self, frame: Frame) -> None:
        if frame.image.shape[:2] != (self.stream.height, self.stream.width):
            raise MessageError(f"a frame of {frame.image.shape[1]}x{frame.image.shape[0]} for "
                               f"{self.stream.width}x{self.stream.height} output {self.shown}")
        video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        video_frame.pts = frame.pts
        video_frame.time_base = Fraction(frame.time_base)
        try:
            for packet in self.stream.encode(video_frame):
                self.output.mux(packet)
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(f"encoding {self.shown} failed at frame {frame.index}: {exc}") from None
        self.last_time = frame.time_s
        self.frames += 1
        if self.audio_copier is not None:
            self.audio_copier.until(self.last_time)

    def finish(self, all_audio: bool) -> None:
        """Flush the encoder, finish the audio and close the container (playable from here on)."""
        try:
            for packet in self.stream.encode(None):
                self.output.mux(packet)
            if self.audio_copier is not None:
                self.audio_copier.until(None if all_audio else self.last_time)
                self.audio_copier.close()
        finally:
            self.output.close()


class EncodeStage(Stage):
    """Writes every Frame of each stream into that stream's output, with the input's pts, rate and size.

    ``paths`` maps stream id -> output file or stream URL (``path`` alone: every stream, for the
    one-stream case). Each output is finished (encoder flushed, index written) on its stream's
    EndOfStream, and also by ``close()`` when the run is aborted, so it is playable for every
    frame written.
    """

    def __init__(self, path: str = "", codec: str = "libx264", crf: int = 20, preset: str = "veryfast",
                 threads: int = 0, audio: bool = True, paths: dict[str, str] | None = None) -> None:
        super().__init__()
        self.paths = dict(paths or {})
        self.path = path
        self.settings = dict(codec=codec, crf=crf, preset=preset, threads=threads, audio=audio)
        self.writers: dict[str, _Writer] = {}

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            self._open(message)
        elif isinstance(message, Frame):
            writer = self.writers.get(message.stream_id)
            if writer is None:
                raise MessageError(f"a frame of stream {message.stream_id!r} came before its StreamStart")
            writer.write(message)
            self.count("frames")
            self.latency.add(message.captured)
        return ()

    def _open(self, start: StreamStart) -> None:
        if start.stream_id in self.writers:
            return  # a second StreamStart for a stream continues the same output
        path = self.paths.get(start.stream_id, self.path)
        if not path:
            raise MessageError(f"no output is configured for stream {start.stream_id!r}")
        writer = self.writers[start.stream_id] = _Writer(path, start, **self.settings)
        if writer.warning:
            self.notify("warning", message=writer.warning)

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        writer = self.writers.pop(eos.stream_id, None)
        if writer is not None:
            writer.finish(all_audio=eos.reason == "end")
        return ()

    def close(self) -> None:
        while self.writers:
            _, writer = self.writers.popitem()
            log.info("%s: finishing the output early", writer.shown)
            writer.finish(all_audio=False)
