"""Encode: annotated frames to H.264 (libx264, yuv420p) in MP4 with the moov atom first, audio copied in."""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from typing import Any, Iterable, Iterator

import av

from ..errors import OutputError
from ..messages import EndOfStream, Frame, StreamStart
from ..stage import Emit, Stage

log = logging.getLogger(__name__)

MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
"""Audio codecs MP4 holds as they are; anything else is re-encoded to AAC."""


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


class EncodeStage(Stage):
    """Writes every Frame of the stream into ``path``, with the input's pts, rate and size.

    The file is finished (encoder flushed, index written) on EndOfStream, and also by ``close()``
    when the run is aborted, so it is playable for every frame written.
    """

    def __init__(self, path: str, codec: str = "libx264", crf: int = 20, preset: str = "veryfast",
                 threads: int = 0, audio: bool = True) -> None:
        super().__init__()
        self.path = path
        self.codec = codec
        self.crf = crf
        self.preset = preset
        self.threads = threads
        self.audio = audio
        self.output: av.container.OutputContainer | None = None
        self.stream: av.video.stream.VideoStream | None = None
        self.audio_copier: _AudioCopier | None = None
        self.last_time = 0.0

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            self._open(message)
        elif isinstance(message, Frame):
            self._write(message)
        return ()

    def _open(self, start: StreamStart) -> None:
        if self.output is not None:
            return  # a second StreamStart (a reconnected live source) continues the same file
        if start.width % 2 or start.height % 2:
            raise OutputError(f"H.264 yuv420p needs even frame sizes; the input is {start.width}x{start.height}")
        ext = os.path.splitext(self.path)[1].lower()
        options = {"movflags": "+faststart"} if ext in (".mp4", ".m4v", ".mov") else {}
        try:
            self.output = av.open(self.path, "w", options=options)
            stream = self.output.add_stream(self.codec, rate=start.rate)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise OutputError(f"cannot write {self.path}: {exc}") from None
        stream.width, stream.height = start.width, start.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = start.time_base
        stream.thread_type = "AUTO"
        if self.threads:
            stream.codec_context.thread_count = self.threads
        if self.codec in ("libx264", "libx265"):
            stream.options = {"crf": str(self.crf), "preset": self.preset}
        self.stream = stream
        if self.audio and start.audio and os.path.isfile(start.source):
            try:
                self.audio_copier = _AudioCopier(start.source, self.output)
            except (av.FFmpegError, ValueError, IndexError) as exc:
                log.warning("%s: audio not copied: %s", self.path, exc)
                self.notify("warning", message=f"audio not copied into {self.path}: {exc}")

    def _write(self, frame: Frame) -> None:
        if self.output is None or self.stream is None:
            raise OutputError("encode received a frame before its StreamStart")
        video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
        video_frame.pts = frame.pts
        video_frame.time_base = Fraction(frame.time_base)
        try:
            for packet in self.stream.encode(video_frame):
                self.output.mux(packet)
        except av.FFmpegError as exc:
            raise OutputError(f"encoding {self.path} failed at frame {frame.index}: {exc}") from None
        self.last_time = frame.time_s
        if self.audio_copier is not None:
            self.audio_copier.until(self.last_time)
        self.count("frames")

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        self._finish(all_audio=eos.reason == "end")
        return ()

    def _finish(self, all_audio: bool) -> None:
        if self.output is None:
            return
        output, self.output = self.output, None
        try:
            if self.stream is not None:
                for packet in self.stream.encode(None):
                    output.mux(packet)
            if self.audio_copier is not None:
                self.audio_copier.until(None if all_audio else self.last_time)
                self.audio_copier.close()
        finally:
            output.close()

    def close(self) -> None:
        if self.output is not None:
            log.info("%s: finishing the file early", self.path)
            self._finish(all_audio=False)
