"""Encode: annotated frames to H.264 (libx264, yuv420p): MP4 files with the moov atom first and the
input's audio copied in, or a live stream pushed to an ``rtsp://`` or ``rtmp://`` server.

An MP4 cannot be read until it is finished, so a file output also keeps a *journal* beside it
(:mod:`streamseg.formats.journal`): every packet as the encoder gives it out, and a checkpoint
each time the packets written so far hold every frame up to some point. A frame counts as
written (its input is acknowledged) only at a checkpoint. When the encode worker dies, its
replacement rebuilds the output from the journal up to the last checkpoint, then encodes the
frames that its upstream sends again; the journal is removed once the output is finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from fractions import Fraction
from typing import Any, Iterable

import av
import cv2

from ..config import EncodeConfig
from ..errors import MessageError, OutputError
from ..formats.journal import Journal, JournalPacket, Recovered
from ..formats.segments import segment_of
from ..runtime.messages import EndOfStream, Frame, StreamStart
from ..runtime.stage import Emit, Stage
from ..sources import safe_url, stream_format
from .audio import AudioCopier

log = logging.getLogger(__name__)

class _Writer:
    """One output (file or stream URL) for one stream.

    A file output keeps ``journal``; with ``recovered`` (a replaced encode worker) the output is
    first rebuilt from it. :attr:`held` are the frames given to the encoder and not yet at a checkpoint.
    """

    def __init__(self, path: str, start: StreamStart, config: EncodeConfig, journal: Journal | None = None,
                 recovered: Recovered | None = None) -> None:
        self.size = (start.width, start.height)
        self.pad = (start.width % 2, start.height % 2)
        """Pixels added on the right and at the bottom: yuv420p needs even sizes (masks keep the input's)."""
        self.path = path
        self.service = bool(start.video)
        """A stream added to a service, which names its output itself."""
        self.shown = safe_url(path)
        fmt = stream_format(path)
        ext = os.path.splitext(path)[1].lower()
        options = {"movflags": "+faststart"} if fmt is None and ext in (".mp4", ".m4v", ".mov") else {}
        if fmt == "rtsp":
            options["rtsp_transport"] = "tcp"
        self.journal = journal
        if journal is not None:
            try:
                journal.start() if recovered is None else None  # before the output, so that a crash leaves one
            except OSError as exc:
                raise OutputError(f"cannot write {journal.path}: {exc.strerror}") from None
        try:
            self.output = av.open(path, "w", format=fmt, options=options, timeout=10.0)
            stream = self.output.add_stream(config.codec, rate=start.rate)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise OutputError(f"cannot write {self.shown}: {exc}") from None
        stream.width, stream.height = start.width + self.pad[0], start.height + self.pad[1]
        stream.pix_fmt = "yuv420p"
        stream.time_base = start.time_base
        stream.codec_context.time_base = start.time_base  # exact input timestamps, not rounded to 1/rate
        stream.thread_type = "AUTO"
        if config.threads:
            stream.codec_context.thread_count = config.threads
        if config.codec in ("libx264", "libx265"):
            stream.options = {"crf": str(config.crf), "preset": config.preset}
            if fmt is not None:  # a live stream: no frame reordering delay, a keyframe every 2 s to join at
                stream.options.update(tune="zerolatency", g=str(max(1, round(2 * start.rate))))
        self.stream = stream
        self.time_base = Fraction(start.time_base)
        self.audio_copier: AudioCopier | None = None
        self.last_time = 0.0
        self.frames = 0
        """Frames in the output (with those rebuilt from the journal)."""
        self.warning = ""
        if config.audio and start.audio and fmt is None and os.path.isfile(start.source):
            try:
                self.audio_copier = AudioCopier(start.source, self.output)
            except (av.FFmpegError, ValueError, IndexError) as exc:
                log.warning("%s: audio not copied: %s", path, exc)
                self.warning = f"audio not copied into {path}: {exc}"
        self.fed: deque[tuple[int, tuple[str, int]]] = deque()
        """(pts, stream position) of frames given to the encoder whose packet has not come out."""
        self.out_of_order: set[int] = set()
        """pts of packets out ahead of an earlier frame's (B-frames): not yet a closed prefix."""
        self.unsaved: list[tuple[str, int]] = []
        """Frames whose packets are out, waiting for the next checkpoint."""
        self.saved_pts: int | None = None
        """pts of the last frame at a checkpoint: it and every frame before are in the output."""
        self.saved_candidate: int | None = None
        self.last_dts: int | None = None
        self.checkpointed = 0
        """Frames the journal holds up to its last checkpoint (what ``streamseg recover`` would make)."""
        self.headed = False
        """Whether the journal has the stream's header."""
        self.source = start.source if self.audio_copier is not None else ""
        self.failed = ""
        """Why writing failed (an output that failed is not finished again at close)."""
        if recovered is not None:
            self._recover(recovered)

    @property
    def held(self) -> set[tuple[str, int]]:
        return {key for _, key in self.fed} | set(self.unsaved)

    def _recover(self, recovered: Recovered) -> None:
        """Rebuild the output from the journal of the encoder this one replaces."""
        assert self.journal is not None
        self.saved_pts, self.frames = recovered.saved_pts, recovered.frames
        self.checkpointed, self.headed = recovered.frames, bool(recovered.header)
        for packet in recovered.packets:
            self._mux(packet.data, packet.pts, packet.dts, packet.duration, packet.keyframe, journal=False)
        self.journal.rewrite(recovered)
        if self.saved_pts is not None:
            self.last_time = float(self.saved_pts * self.time_base)
            if self.audio_copier is not None:
                self.audio_copier.until(self.last_time)
        log.warning("%s: rebuilt %d frames from the journal of the encoder that failed", self.shown, self.frames)

    def write(self, frame: Frame) -> bool:
        """Encode one frame; False when the output already has it (sent again after a restart)."""
        if self.saved_pts is not None and frame.pts <= self.saved_pts:
            return False
        if frame.image.shape[:2] != self.size[::-1]:
            raise MessageError(f"a frame of {frame.image.shape[1]}x{frame.image.shape[0]} for "
                               f"{self.size[0]}x{self.size[1]} output {self.shown}")
        image = frame.image
        if any(self.pad):  # odd sizes: the edge pixels once more, so that the picture is not scaled
            image = cv2.copyMakeBorder(image, 0, self.pad[1], 0, self.pad[0], cv2.BORDER_REPLICATE)
        # OpenCV's BT.601 conversion to the encoder's yuv420p costs a quarter of FFmpeg's swscale's
        video_frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
        video_frame.pts = frame.pts
        video_frame.time_base = self.time_base
        self.fed.append((frame.pts, (frame.stream_id, frame.index)))
        try:
            self._encode(video_frame)
            self.last_time = frame.time_s
            if self.audio_copier is not None:
                self.audio_copier.until(self.last_time)
        except (av.FFmpegError, OSError) as exc:
            self.failed = f"{reason(exc)}, at frame {frame.index}"
            raise OutputError(_unfinished(self, self.failed)) from None
        return True

    def _encode(self, frame: av.VideoFrame | None) -> None:
        for packet in self.stream.encode(frame):
            self._mux(bytes(packet), packet.pts, packet.dts, packet.duration or 0, packet.is_keyframe)

    def _mux(self, data: bytes, pts: int, dts: int, duration: int, keyframe: bool, journal: bool = True) -> None:
        """Write one packet to the output (and the journal), keeping decode timestamps increasing: a
        replacement encoder starts with a new keyframe whose reordering delay would step back."""
        if self.last_dts is not None and dts <= self.last_dts:
            dts = self.last_dts + 1
        self.last_dts = dts
        packet = av.Packet(data)
        packet.pts, packet.dts, packet.duration, packet.time_base = pts, dts, duration, self.time_base
        packet.is_keyframe = keyframe
        packet.stream = self.stream
        self.output.mux(packet)
        if journal and self.journal is not None:
            if not self.headed:
                self.journal.header(self._header())
                self.headed = True
            self.journal.packet(JournalPacket(data, pts, dts, duration, keyframe))
        if journal:
            self._advance(pts)

    def _advance(self, pts: int) -> None:
        """A packet is out: move the frames that now form a closed prefix towards the checkpoint."""
        self.out_of_order.add(pts)
        while self.fed and self.fed[0][0] in self.out_of_order:
            done_pts, key = self.fed.popleft()
            self.out_of_order.discard(done_pts)
            self.unsaved.append(key)
            self.frames += 1
            self.saved_candidate = done_pts
        if self.unsaved and not self.out_of_order:
            # the packets so far hold exactly the frames up to here: a point to rebuild from
            self.saved_pts = self.saved_candidate
            if self.journal is not None:
                self.journal.record(b"K", self.saved_pts, self.frames)
                self.checkpointed = self.frames
            self.unsaved.clear()

    def _header(self) -> dict[str, Any]:
        """What ``streamseg recover`` needs to make an MP4 of the journal's packets alone."""
        ctx = self.stream.codec_context
        return {"codec": ctx.name, "width": ctx.width, "height": ctx.height, "pix_fmt": ctx.pix_fmt,
                "time_base": str(self.time_base), "rate": str(self.stream.average_rate or ctx.framerate or 25),
                "extradata": (ctx.extradata or b"").hex(),
                "source": os.path.abspath(self.source) if self.source else ""}

    def finish(self, all_audio: bool) -> None:
        """Flush the encoder, finish the audio and close the container (playable from here on)."""
        try:
            self._encode(None)
            if self.audio_copier is not None:
                self.audio_copier.until(None if all_audio else self.last_time)
                self.audio_copier.close()
        finally:
            self.output.close()
            if self.journal is not None:
                self.journal.record(b"F")  # finished: a replacement must leave this output alone
                self.journal.close()


class EncodeStage(Stage):
    """Writes every Frame of each stream into that stream's output, with the input's pts, rate and size.

    ``paths`` maps stream id -> output file or stream URL (``path`` alone: every stream, for the
    one-stream case). Each output is finished (encoder flushed, index written) on its stream's
    EndOfStream, and also by ``close()`` when the run is aborted, so it is playable for every
    frame written. A restarted encode stage rebuilds each file output from its journal and leaves
    alone the outputs its predecessor finished.
    """

    totals = ("frames",)

    def __init__(self, config: EncodeConfig, paths: dict[str, str] | None = None, path: str = "",
                 segment_s: float | None = None) -> None:
        """``segment_s``: ``output.segment_s``, a file output in segments of that many seconds (None: whole)."""
        super().__init__()
        self.config = config
        self.paths = dict(paths or {})
        self.path = path
        self.segment_s = segment_s
        self.segmented: dict[str, tuple[str, StreamStart]] = {}
        """Stream -> (its output, its start), for a stream recorded in segments."""
        self.segment: dict[str, int] = {}
        """Stream -> the segment its writer writes."""
        self.writers: dict[str, _Writer] = {}
        self.finished: set[str] = set()
        """Streams whose output is complete (by this process or the one it replaced)."""
        self.journals: list[Journal] = []
        """Journals of finished outputs, removed when the stage closes."""

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart):
            self._open(message)
        elif isinstance(message, Frame) and message.stream_id not in self.finished:
            if message.stream_id in self.segmented:
                self._to_segment(message)
            writer = self.writers.get(message.stream_id)
            if writer is None and message.stream_id in self.segmented:
                return ()  # a segment its predecessor finished
            if writer is None:
                raise MessageError(f"a frame of stream {message.stream_id!r} came before its StreamStart")
            if writer.write(message):
                self.count("frames")
                self.wrote(message.stream_id, message.captured)
        return ()

    def holds(self) -> frozenset[tuple[str, int]]:
        return frozenset(key for writer in self.writers.values() for key in writer.held)

    def _open(self, start: StreamStart) -> None:
        if start.stream_id in self.writers or start.stream_id in self.finished and not start.video:
            return  # a second StreamStart for a stream continues the same output
        self.finished.discard(start.stream_id)  # a service's stream added again under the same id
        path = start.video or self.paths.get(start.stream_id, self.path)
        if not path and not self.paths and not self.path:
            return  # a service's stream without a video (render sends none of its frames)
        if not path:
            raise MessageError(f"no output is configured for stream {start.stream_id!r}")
        if self.segment_s and stream_format(path) is None:
            # its writer comes with its first frame; a segment carries no audio (the source's would
            # be copied from its start), and its timestamps go on from the stream's
            self.segmented[start.stream_id] = (path, dataclasses.replace(start, audio=False))
            return
        self._writer(start.stream_id, path, start)

    def _to_segment(self, frame: Frame) -> None:
        """Finish the stream's segment when ``frame`` begins the next one; open the next one's file."""
        sid = frame.stream_id
        path, start = self.segmented[sid]
        k, file = segment_of(path, start.started, frame.time_s, self.segment_s)
        if self.segment.get(sid) == k:
            return
        writer = self.writers.pop(sid, None)
        if writer is not None:
            self._finish(writer, all_audio=False)
            self._forget(writer)
        self.segment[sid] = k
        self._writer(sid, file, start)

    def _writer(self, sid: str, path: str, start: StreamStart) -> None:
        """A writer of ``path`` for stream ``sid``; a replacement's goes on from its journal."""
        journal = Journal(path) if stream_format(path) is None else None
        recovered = None
        if self.restarted and journal is not None and journal.exists():
            recovered = journal.read()
            self.count("frames", recovered.frames)
            if recovered.finished:
                log.info("%s: finished before this encode worker started", path)
                if sid not in self.segmented:
                    self.finished.add(sid)
                self.journals.append(journal)
                return
        writer = self.writers[sid] = _Writer(path, start, self.config, journal, recovered)
        if writer.warning:
            self.notify("warning", message=writer.warning)

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        writer = self.writers.pop(eos.stream_id, None)
        self.segment.pop(eos.stream_id, None)
        if self.segmented.pop(eos.stream_id, None) is not None and writer is not None:
            self._finish(writer, all_audio=False)
            self._forget(writer)
            return ()
        if writer is not None:
            self._finish(writer, all_audio=eos.reason == "end")
            if writer.service:  # a service's stream: nothing of it is left to resume
                self._forget(writer)
                return ()
        self.finished.add(eos.stream_id)
        return ()

    def _forget(self, writer: _Writer) -> None:
        if writer.journal is not None and writer.journal in self.journals:
            self.journals.remove(writer.journal)
            try:
                writer.journal.remove()
            except OSError as exc:
                log.warning("%s: cannot remove this journal of a finished output: %s", writer.journal.path, reason(exc))

    def _finish(self, writer: _Writer, all_audio: bool) -> None:
        """Finish ``writer``'s output, or raise an :class:`OutputError` that says what became of it."""
        if writer.failed:  # said when it failed, and cleared up then: only its files are let go
            try:
                writer.output.close()
            except (av.FFmpegError, OSError):
                pass
            return
        try:
            writer.finish(all_audio)
            if stream_format(writer.path) is None and not os.path.exists(writer.path):
                raise OSError("it was removed while it was written (its folder is gone?)")
        except (av.FFmpegError, OSError) as exc:
            raise OutputError(_unfinished(writer, reason(exc))) from None
        if writer.journal is not None:
            self.journals.append(writer.journal)

    def close(self) -> None:
        while self.writers:
            _, writer = self.writers.popitem()
            log.info("%s: finishing the output early", writer.shown)
            try:
                self._finish(writer, all_audio=False)
            except OutputError as exc:
                log.error("%s", exc)  # the run already failed: one line for this output, no traceback
        while self.journals:
            journal = self.journals.pop()
            try:
                journal.remove()
            except OSError as exc:
                log.warning("%s: cannot remove this journal of a finished output: %s", journal.path, reason(exc))


def reason(exc: BaseException) -> str:
    """An OS or FFmpeg error in words, without its file name (the caller names the output)."""
    return getattr(exc, "strerror", None) or str(exc)


def _unfinished(writer: _Writer, reason: str) -> str:
    """Clear up an output that could not be finished, and say what became of it and of its journal."""
    if writer.journal is None:
        return f"{writer.shown}: the stream could not be finished: {reason}"
    writer.journal.close()
    try:
        os.remove(writer.path)  # without its index an MP4 cannot be played: it only takes room
        text = f"{writer.shown} could not be finished ({reason}) and was removed"
    except FileNotFoundError:
        text = f"{writer.shown} could not be finished ({reason})"
    except OSError as exc:
        text = f"{writer.shown} could not be finished ({reason}) and cannot be played (nor removed: {exc.strerror})"
    if writer.checkpointed and writer.journal.exists():
        return (f"{text}; `streamseg recover {writer.journal.path} OUT.mp4` makes a playable MP4 of its first "
                f"{writer.checkpointed} frames, kept in that journal")
    try:
        writer.journal.remove()
    except OSError:
        pass
    return f"{text}; no frame of it could be kept"

