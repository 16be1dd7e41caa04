"""Mask writer: per-frame instances to JSON Lines, masks as COCO compressed RLE at source resolution.

One line per frame::

    {"stream": "0", "frame": 7, "pts": 7007, "time": 0.233567, "width": 640, "height": 360,
     "instances": [{"class_id": 1, "class": "person", "score": 0.987, "box": [x1, y1, x2, y2],
                    "mask": {"size": [360, 640], "counts": "..."},
                    "keypoints": [[x, y, score], ...]}]}

The record is :func:`streamseg.formats.records.frame_record`'s, which says what each field holds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Iterable

from ..errors import MessageError, OutputError
from ..formats.records import frame_record
from ..formats.segments import segment_of
from ..models.registry import ModelInfo
from ..runtime.messages import EndOfStream, FrameResult, StreamStart
from ..runtime.stage import Emit, Stage

log = logging.getLogger(__name__)

FSYNC_EVERY_S = 2.0
"""How often the masks files are synced to disk: what a power cut can cost of a live run."""
RESUME_TAIL_BYTES = 8 << 20
"""How much of a file's end a restarted mask writer reads to learn the newest frame of each stream."""


class MaskWriterStage(Stage):
    """Appends one JSON line per FrameResult to its stream's file.

    ``paths`` maps stream id -> file (``path`` alone: one file for every stream, for the
    one-stream case). Files are created when the stage starts, so a bad path fails the run early.
    Each line goes to the operating system in one write before its frame counts as written (a
    crash of this process loses none), and the files are synced to disk every ``FSYNC_EVERY_S``
    (a power cut loses at most that much). A restarted mask writer appends to the files, after
    cutting off a line the crash tore, and skips frames they already hold.
    """

    totals = ("frames",)

    def __init__(self, path: str, model_info: dict[str, Any], paths: dict[str, str] | None = None,
                 segment_s: float | None = None) -> None:
        """``segment_s``: ``output.segment_s``, a file per segment of that many seconds (None: one per stream)."""
        super().__init__()
        self.paths = dict(paths or {}) or ({"": path} if path else {})
        """Stream id -> file; in a service, also each stream's own, from its StreamStart."""
        self.segment_s = segment_s
        self.starts: dict[str, float] = {}
        """Stream -> when it started (its segments' names), when in segments."""
        self.segment: dict[str, int] = {}
        self.opened: dict[str, str] = {}
        """Stream -> the segment file it writes now."""
        self.fixed = bool(self.paths)
        """The run's files are given here; otherwise (a service) a stream without a file of its own has none."""
        self.service: set[str] = set()
        """Streams whose file their StreamStart named (a service's), closed and forgotten at their end."""
        self.info = ModelInfo.from_dict(model_info)
        self.files: dict[str, int] = {}
        self.written: dict[str, int] = {}
        """Stream id -> index of the newest frame its file holds (from before a restart, then ours)."""
        self.last_sync = time.monotonic()
        self.failed = False
        """Whether an error about these files was raised (and so said)."""
        self.born = time.time()
        """When this stage began (Unix time): a service's stream that started later is not one its
        predecessor wrote, though its file may exist (an id added again with the same masks file)."""

    def setup(self) -> None:
        if self.segment_s:
            return  # each file opens with the first frame of its segment
        for stream_id, path in self.paths.items():
            self._open_file(stream_id, path)

    def _open_file(self, stream_id: str, path: str, new: bool = False) -> None:
        """Open ``path`` for ``stream_id``; a replacement appends to what its predecessor wrote, unless
        the stream is ``new`` (begun after this stage)."""
        resume = self.restarted and not new and os.path.exists(path)
        try:
            if resume:
                self.count("frames", self._resume(path))
            mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if resume else os.O_TRUNC)
            self.files[stream_id] = os.open(path, mode, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot write masks to {path}: {exc.strerror}") from None

    def _resume(self, path: str) -> int:
        """Cut off a torn last line, learn each stream's newest frame in the file; returns its line count."""
        lines = 0
        end = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                lines += chunk.count(b"\n")
                end += len(chunk)
            f.seek(max(0, end - RESUME_TAIL_BYTES))
            tail = f.read()
        complete = tail.rfind(b"\n") + 1
        whole = tail[:complete] if end <= RESUME_TAIL_BYTES else tail[tail.find(b"\n") + 1:complete]
        if end - len(tail) + complete < end:
            os.truncate(path, end - len(tail) + complete)
            log.warning("%s: cut off a line torn by the crash of the mask writer", path)
        for line in whole.splitlines():
            try:
                record = json.loads(line)
                stream, frame = str(record["stream"]), int(record["frame"])
            except (ValueError, KeyError, TypeError):
                continue
            self.written[stream] = max(frame, self.written.get(stream, -1))
        return lines

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, StreamStart) and message.masks and message.stream_id not in self.files:
            self.paths[message.stream_id] = message.masks
            self.service.add(message.stream_id)
            if not self.segment_s:
                self._open_file(message.stream_id, message.masks, new=message.started > self.born)
        if isinstance(message, StreamStart):
            self.starts[message.stream_id] = message.started
        if isinstance(message, FrameResult) and self.segment_s and message.stream_id in self.starts:
            self._to_segment(message)
        if isinstance(message, FrameResult):
            fd = self.files.get(message.stream_id, self.files.get(""))
            if fd is None and self.fixed:
                raise MessageError(f"no masks file is configured for stream {message.stream_id!r}")
            if fd is None:
                return ()  # a service's stream that writes no masks
            if message.index <= self.written.get(message.stream_id, -1):
                return ()  # sent again after a restart; the file has it
            line = (json.dumps(frame_record(message, self.info), separators=(",", ":")) + "\n").encode()
            self._append(fd, message.stream_id, line)
            self.written[message.stream_id] = message.index
            self.count("frames")
            self.wrote(message.stream_id, message.captured)
            if time.monotonic() - self.last_sync >= FSYNC_EVERY_S:
                self._sync()
        return ()

    def _to_segment(self, result: FrameResult) -> None:
        """Close the stream's file when ``result`` begins its next segment, and open that one's."""
        sid = result.stream_id
        path = self.paths.get(sid, self.paths.get(""))
        if path is None:
            return
        k, file = segment_of(path, self.starts[sid], result.time_s, self.segment_s)
        if self.segment.get(sid) == k:
            return
        fd = self.files.pop(sid, None)
        if fd is not None:
            os.fsync(fd)
            os.close(fd)
        self.segment[sid] = k
        self.written.pop(sid, None)
        self._open_file(sid, file)
        self.opened[sid] = file

    def _append(self, fd: int, stream_id: str, line: bytes) -> None:
        """Write one whole line; when it cannot be (a full disk), cut off what of it was written."""
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(fd, view):]
        except OSError as exc:
            try:  # the file ends on a whole line, as a reader expects: cut what of this one went in
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - (len(line) - len(view)))
            except OSError:
                pass
            self.failed = True
            raise OutputError(f"cannot write masks to {self._path(stream_id)}: {exc.strerror} (it ends on the "
                              f"last whole line, frame {self.written.get(stream_id, -1)})") from None

    def _path(self, stream_id: str) -> str:
        return self.opened.get(stream_id) or self.paths.get(stream_id, self.paths.get("", stream_id))

    def _sync(self) -> None:
        for stream_id, fd in self.files.items():
            try:
                os.fsync(fd)
            except OSError as exc:
                self.failed = True
                raise OutputError(f"cannot write masks to {self._path(stream_id)}: {exc.strerror}") from None
        self.last_sync = time.monotonic()

    def flush(self, eos: EndOfStream) -> Iterable[Emit]:
        self._sync()
        path = self._path(eos.stream_id)
        if eos.stream_id in self.files or "" in self.files:
            if not os.path.exists(path):
                self.failed = True
                raise OutputError(f"the masks file {path} was removed while it was written (its folder is gone?)")
        if self.segment_s and eos.stream_id in self.files:  # its last segment is complete
            os.close(self.files.pop(eos.stream_id))
            self.segment.pop(eos.stream_id, None)
            self.opened.pop(eos.stream_id, None)
        if eos.stream_id in self.service:  # a service's stream: its file is complete, and its id may come again
            self.service.discard(eos.stream_id)
            self.written.pop(eos.stream_id, None)
            self.paths.pop(eos.stream_id, None)
            if eos.stream_id in self.files:
                os.close(self.files.pop(eos.stream_id))
        return ()

    def close(self) -> None:
        while self.files:
            stream_id, fd = self.files.popitem()
            path = self._path(stream_id)
            try:
                os.fsync(fd)
            except OSError as exc:
                if not self.failed:
                    log.error("cannot write masks to %s: %s", path, exc.strerror)
                self.failed = True
            finally:
                try:
                    os.close(fd)
                except OSError:
                    pass
            if not os.path.exists(path) and not self.failed:
                log.error("the masks file %s was removed while it was written (its folder is gone?)", path)
