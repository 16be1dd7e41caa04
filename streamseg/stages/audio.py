"""The source's audio into an output: packets remuxed, or re-encoded to AAC where MP4 cannot hold them."""

from __future__ import annotations

from typing import Iterator

import av

MP4_AUDIO_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "opus", "alac", "flac"})
"""Audio codecs MP4 holds as they are; anything else is re-encoded to AAC."""


class AudioCopier:
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
