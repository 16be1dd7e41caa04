"""Decode: read one source with PyAV (or OpenCV for still images) into RGB frames, in presentation order.

Files: every frame FFmpeg decodes, once, in order, turned upright as the display matrix says
(:mod:`.readers`); timestamps kept where they move forward and repaired where they do not
(:mod:`.timing`); corrupt packets skipped and counted; ``loop`` starts the file again. Live sources
(network streams, cameras): a lost source is reopened with exponential backoff, and the loss and
each attempt flow downstream as :class:`StreamStatus` messages; timestamps keep increasing across
reconnections and loops, the time the source was away added, so the output's clock keeps real time.

A decode worker that crashes (FFmpeg can segfault on a damaged file) is replaced, and the new one
goes on after the newest frame downstream has: a file is sought back to it (read again from its
start when its timestamps were repaired), a live source is reopened and the frames it sent
meanwhile are lost (said in a status message and a warning). If the replacement fails again at the
same frame, the damage is in the file: the stream ends there (``truncated``) with every frame before.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Generator, Iterator

from ..config import InputConfig
from ..errors import InputError
from ..runtime.messages import EndOfStream, Frame, StreamStart
from ..runtime.stage import ALL_PORTS, Emit, Source
from ..sources import describe_input, safe_url, source_kind
from ..tracking.analytics import check_frame
from .readers import ImageSequence, VideoReader, shown_size, upright_rgb
from .reconnect import Reconnecting
from .timing import CaptureClock, Pacer, Timeline

log = logging.getLogger(__name__)


class DecodeStage(Reconnecting, Source):
    """Reads one source; emits StreamStart, every frame (and StreamStatus changes), then EndOfStream.

    A file that breaks off early ends with ``EndOfStream(reason="truncated")`` after every frame
    that could be decoded; a live source that cannot be reconnected ends with ``reason="lost"``.
    """

    def __init__(self, config: InputConfig, source: str, stream_id: str, live: bool = False,
                 drop_when_full: bool = False, **outputs: str) -> None:
        """``config``: the ``input`` section; ``source``: this stream's URL or path (one of the
        section's sources); ``live``: whether it is read as live; ``drop_when_full``: a live frame the
        batcher has no room for is dropped (every ``batch.live_policy`` but ``block``); ``outputs``: a
        service's stream's own ``video``, ``masks`` and ``analytics`` (its zones and lines, checked
        against its frame size when it opens), which its StreamStart carries."""
        super().__init__()
        self.outputs = {key: outputs.pop(key, "") for key in ("video", "masks", "analytics")}
        if outputs:
            raise TypeError(f"DecodeStage got unexpected parameters {sorted(outputs)}")
        self.config = config
        self.path = source
        self.shown = safe_url(source)
        self.stream_id = stream_id
        self.live = live
        self.drop_when_full = live and drop_when_full
        """A live source drops a frame the batcher has no room for rather than fall behind (not under
        the ``block`` policy); the batcher drains quickly, so this happens only when it is stalled."""
        self.reader: VideoReader | None = None
        self.images: ImageSequence | None = None
        self.start: StreamStart | None = None
        self.index = 0
        self.skipped = 0
        self.timeline = Timeline(1)
        """Output timestamps: kept where they move forward, repaired where not (set up per stream)."""
        self.next_base: int | None = None  # first pts of the next segment (after a loop or reconnection)
        self.clock = CaptureClock()
        """When a live frame was captured, per session of the source."""
        self.pacer: Pacer | None = None
        """Paces a recording read as live (a file, a finished HLS playlist) at its own frame rate."""
        self.timed_out = False
        """``input.duration_s`` of the stream's media time went by."""
        self.resume_point: tuple[int, int] | None = None
        """(index, pts) of the newest frame downstream has, for a replacement decoder."""
        self.resume_pts: int | None = None
        """While set, frames up to this pts are passed over silently (downstream has them)."""
        self.resume_index: int | None = None
        """While set, frames up to this index are passed over silently: a file whose timestamps were
        repaired is read again from its start, since its timestamps cannot be sought to."""
        self.announced = 0
        """Frames the input announces (0: unknown)."""
        self.checkpoint: dict[str, Any] = {}
        """What a replacement of this decoder needs to know (:meth:`_checkpoint`)."""

    @property
    def last_pts(self) -> int | None:
        """The output timestamp of the newest frame."""
        return self.timeline.last

    totals = ("frames",)

    def resume(self, points: dict[str, tuple[int, int]]) -> None:
        self.resume_point = points.get(self.stream_id)

    def setup(self) -> None:
        if source_kind(self.path) == "images":
            self.images = ImageSequence(self.path, self.config.fps)
            return
        self._open()
        assert self.reader is not None
        if self.live and self.config.live == "auto" and self.reader.recorded():
            self.live = self.drop_when_full = False  # a finished HLS playlist: a file behind a URL
            self.reader.turn, self.reader.waited = self.config.autorotate, None
            log.info("stream %s: %s is a recording: read as a file", self.stream_id, self.shown)
        elif self.live and (source_kind(self.path) == "file" or self.reader.recorded()):
            self.pacer = Pacer()  # read as live on purpose: as fast as a live source sends, not as the disk
        if self.outputs["analytics"]:  # a zone must lie inside the frame: said before the stream starts
            start = self.reader.stream_start(self.stream_id, self.live)
            check_frame(self.outputs["analytics"], self.stream_id, start.width, start.height)

    def _open(self) -> None:
        waited = self._waited if self.live else None  # a live source's reads wait for it to send
        opened = time.perf_counter()
        self.reader = VideoReader(self.path, self.config, turn=not self.live, waited=waited)
        if waited is not None:
            waited(time.perf_counter() - opened)  # so does opening it (a dead camera is not work)

    def _stream_start(self) -> StreamStart:
        """What the stream is; ``frames`` is what will be read when that is known (for progress)."""
        if self.images is not None:
            seq = self.images
            start = StreamStart(self.stream_id, seq.width, seq.height, seq.rate, seq.time_base, len(seq.paths),
                                self.shown, audio=False, live=self.live)
        else:
            assert self.reader is not None, "setup() first"
            start = self._video_start(self.reader)
        self.announced = start.frames  # by the input itself: what "cut off" is judged against
        frames = 0 if self.config.loop else start.frames
        if self.config.duration_s:
            frames = min(frames or 1 << 62, math.ceil(self.config.duration_s * start.rate))
        if self.config.max_frames:
            frames = min(frames, self.config.max_frames) if frames else self.config.max_frames
        started = float(self.previous.get("started", time.time()))  # a replacement keeps the first one's
        self._checkpoint(started=started)
        return dataclasses.replace(start, frames=frames, started=started, **self.outputs)

    def _video_start(self, reader: VideoReader) -> StreamStart:
        start = reader.stream_start(self.stream_id, self.live)  # a file's rotation is its first frame's
        info = {**reader.describe(), "shown": f"{start.width}x{start.height}", "rotation": start.rotation,
                "source": self.shown}
        self.notify("input", stream_id=self.stream_id, **info)
        log.info("stream %s: %s: %s", self.stream_id, self.shown, describe_input(info))
        return start

    def lossy(self, message: Any) -> bool:
        return self.drop_when_full and isinstance(message, Frame)

    def produce(self) -> Iterator[Emit | None]:
        start = self.start = self._stream_start()
        self.timeline = Timeline(self._frame_step(), self.timeline.last)
        self.notify("stream", stream_id=self.stream_id, frames=start.frames, width=start.width,
                    height=start.height, rate=str(start.rate), live=self.live)
        yield ALL_PORTS, start
        reason, error = "end", ""
        if self.restarted:
            ended = yield from self._after_failure()
            if ended is not None:
                yield ALL_PORTS, ended
                return
        if self.live and self.reader is not None:
            # opened in setup() to fail fast; what a live source sent while the model loaded is stale
            self._close_container()
            try:
                self._open()
            except InputError as exc:
                error = str(exc)  # gone in the meantime: reconnect as after any loss
        while True:
            error = error or (yield from self._segment())
            if self.stop_requested or self._enough():
                break
            if self.live:
                if (yield from self._reconnect(error or "the source ended")):
                    error = ""
                    continue
                reason = "lost"
                break
            if self.config.loop and not error:
                self._rewind()
                continue
            break
        repaired = self.timeline.repaired
        self.counters.update(frames=self.index, skipped=self.skipped, repaired=repaired)
        self.notify("input", stream_id=self.stream_id, variable_rate=self.timeline.variable, repaired=repaired)
        detail = ""
        if self.stop_requested:
            reason, detail = "stopped", "stopped on request"
        elif reason == "lost":
            detail = f"the source was lost and could not be reconnected: {error or 'it ended'}"
        elif not self._enough() and (error or self._short()):
            reason = "truncated"
            self.counters["truncated"] = 1
            detail = (f"input ended after {self.index} of {self.announced} frames" if self.announced else
                      f"input ended after {self.index} frames") + (f" ({error})" if error else "")
        if self.skipped:
            detail = (detail + "; " if detail else "") + f"{self.skipped} corrupt packets or frames skipped"
        if repaired:
            detail = (detail + "; " if detail else "") + (
                f"{repaired} of {self.index} frame timestamps were missing, repeated or went backwards "
                "and were repaired (every frame kept, in order)")
        if reason not in ("end", "stopped") or self.skipped or repaired:
            self.notify("warning", message=f"{self.shown}: {detail}")
        yield ALL_PORTS, EndOfStream(self.stream_id, self.index, reason, self.skipped, detail)

    def _after_failure(self) -> Generator[Emit, None, EndOfStream | None]:
        """A replacement for a decoder that failed: go on after the newest frame downstream has, or
        end the stream when the last one failed at that very frame too (damaged input)."""
        cause = str(self.previous.get("cause", "it failed"))
        if self.resume_point is None:
            self.notify("warning", message=f"{self.shown}: the decoder failed ({cause}) before any frame "
                                           "arrived downstream; starting again")
            return None
        index, pts = self.resume_point
        if self.previous.get("resumed_at") == index:
            self.index = index + 1
            detail = f"the decoder failed twice at frame {self.index} ({cause}); the stream ends there"
            self.counters.update(frames=self.index, truncated=1)
            self.notify("warning", message=f"{self.shown}: {detail}")
            return EndOfStream(self.stream_id, self.index, "truncated", 0, detail)
        self._checkpoint(resumed_at=index)
        if self.previous.get("repaired") and self.reader is not None and not (self.live or self.config.loop):
            self.resume_index = index  # read again from the start: the same frames get the same timestamps
            self.notify("warning", message=f"{self.shown}: the decoder failed ({cause}) and was restarted after "
                                           f"frame {index}; it goes on from there")
            return None
        self.index, self.timeline.last = index + 1, pts
        what = "frames it sent meanwhile are lost" if self.live else "it goes on from there"
        self.notify("warning", message=f"{self.shown}: the decoder failed ({cause}) and was restarted after "
                                       f"frame {index}; {what}")
        if self.live:
            yield self._status("lost", f"the decoder failed ({cause})", 0)
            self._continue_after(0.0)
            yield self._status("reconnected", "", 1)
        elif self.config.loop:
            self._continue_after(0.0)  # where in which pass it was is not known: start the file again
            self.counters["loops"] = int(self.previous.get("loops", 0)) + 1  # (the tracker starts afresh)
            self._checkpoint(loops=self.counters["loops"])
        elif self.reader is not None:
            self.resume_pts = pts
            self.reader.seek(pts)
        else:
            self.resume_pts = pts  # an image sequence: read up to it again, without sending
        return None

    # --- one open of the source -----------------------------------------------------------------
    def _segment(self) -> Generator[Emit, None, str]:
        """Emit the frames of the source as opened now; return why it ended ("" for a clean end)."""
        assert self.start is not None
        start = self.start
        seg_first: int | None = None
        base = 0
        source = self.images if self.images is not None else self.reader
        assert source is not None
        raw = source.frames(lambda: self.stop_requested)
        while True:
            try:
                pts, time_base, picture, rotation = next(raw)
            except StopIteration as end:
                return str(end.value or "")
            if picture is None:
                self.skipped += 1
                continue
            if pts is not None:
                if seg_first is None:
                    seg_first = pts
                    base = (round(pts * time_base / start.time_base) if self.next_base is None
                            else self.next_base)
                pts = base + round((pts - seg_first) * time_base / start.time_base)
            if self.resume_pts is not None:
                if pts is not None and pts <= self.resume_pts:
                    continue  # downstream has it from the decoder this one replaces
                self.resume_pts = None
            if not self.live and shown_size(picture, rotation) != (start.width, start.height):
                self.skipped += 1
                log.warning("%s: skipped frame %d with size %s", self.shown, self.index,
                            getattr(picture, "shape", None) or (picture.height, picture.width))
                continue
            pts_out = self.timeline(pts)
            departed = pts_out != pts or (self.reader is not None and self.reader.best_effort.departed)
            if departed and not self.checkpoint.get("repaired"):
                self._checkpoint(repaired=True)  # a replacement cannot seek by these timestamps
            if self.resume_index is not None:
                if self.index <= self.resume_index:
                    self.index += 1
                    continue  # downstream has it from the decoder this one replaces
                self.resume_index = None
            first = self.timeline.first
            if self.config.duration_s and (pts_out - first) * start.time_base >= self.config.duration_s:
                self.timed_out = True
                return ""
            if self.pacer is not None:
                yield from self._wait(self.pacer.wait_s(float(pts_out * start.time_base), time.monotonic()))
            yield "frames", Frame(self.stream_id, self.index, int(pts_out), start.time_base,
                                  upright_rgb(picture, rotation, (start.width, start.height)),
                                  captured=self._captured(pts_out), loop=self.counters.get("loops", 0))
            self.index += 1
            self.counters["frames"] = self.index
            if self.stop_requested or self._enough():
                return ""

    def _checkpoint(self, **what: Any) -> None:
        """Tell the supervisor something a replacement of this decoder needs (it gets all of it)."""
        self.checkpoint.update(what)
        self.notify("checkpoint", **self.checkpoint)

    def _captured(self, pts: int) -> float:
        """A file's frame: captured now (it is read when wanted); a live one: :class:`CaptureClock`."""
        assert self.start is not None
        return self.clock(float(pts * self.start.time_base), time.time()) if self.live else time.time()

    def _enough(self) -> bool:
        return 0 < self.config.max_frames <= self.index or self.timed_out

    def _short(self) -> bool:
        """Whether a file ended before the end its header announces (cut off)."""
        assert self.start is not None
        if not self.announced or self.index + self.skipped >= self.announced:
            return False
        if self.reader is None or self.last_pts is None:
            return True
        return self.reader.ends_after(self.last_pts + self._frame_step(), self.start.rate)

    # --- starting again -------------------------------------------------------------------------
    def _frame_step(self) -> int:
        """One frame's duration in the stream's time base."""
        assert self.start is not None
        return max(1, round(1 / (self.start.rate * self.start.time_base)))

    def _continue_after(self, gap_s: float) -> None:
        """The next segment starts one frame (or the time the source was away) after the last frame."""
        assert self.start is not None
        step = self._frame_step()
        gap = round(gap_s / self.start.time_base)
        self.next_base = (self.last_pts if self.last_pts is not None else -step) + max(step, gap)

    def _rewind(self) -> None:
        self.count("loops")
        self._checkpoint(loops=self.counters["loops"])  # a replacement goes on counting (Frame.loop)
        self._continue_after(0.0)
        if self.images is None:
            self._close_container()
            self._open()

    def _close_container(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None

    def close(self) -> None:
        self._close_container()
