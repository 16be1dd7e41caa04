"""Presentation timestamps of decoded frames, as FFmpeg's own tools would give them.

A decoder hands its frames out in presentation order, but the timestamps they carry are not always
usable: AVI has no presentation timestamps (with packed B-frames they come out 1, 2, 3, 5, 4, ...),
some encoders write a timestamp twice, and a remuxed file may carry decode timestamps as
presentation ones. Frames are never dropped for that. Each frame gets

1. FFmpeg's *best-effort timestamp*: its presentation timestamp, unless those have gone wrong
   (not increasing) more often than its decode timestamps have, then its decode timestamp
   (:class:`BestEffort`, the rule of libavcodec's ``guess_correct_pts``);
2. where that is missing or does not move forward, the previous frame's plus one frame duration at
   the stream's frame rate (:class:`Timeline`), counted as repaired.

Timestamps that move forward are kept as they are: a variable frame rate, a gap (a pause in the
recording) and a first timestamp far from zero all stay.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class BestEffort:
    """FFmpeg's best-effort timestamp of each decoded frame of one decoding run (reset on a seek)."""

    def __init__(self) -> None:
        self.faulty_pts = 0
        self.faulty_dts = 0
        self.last_pts: int | None = None
        self.last_dts: int | None = None
        self.departed = False
        """Whether a frame was given another timestamp than its own pts (its dts): then the timestamps
        depend on what came before, and a seek would give other ones."""

    def __call__(self, pts: int | None, dts: int | None) -> int | None:
        """The timestamp to show a frame at, from its presentation and decode timestamps (None: missing)."""
        if dts is not None:
            self.faulty_dts += self.last_dts is not None and dts <= self.last_dts
            self.last_dts = dts
        elif pts is not None:
            self.last_dts = pts
        if pts is not None:
            self.faulty_pts += self.last_pts is not None and pts <= self.last_pts
            self.last_pts = pts
        elif dts is not None:
            self.last_pts = dts
        if pts is not None and (self.faulty_pts <= self.faulty_dts or dts is None):
            return pts
        self.departed = self.departed or (pts is not None and dts != pts)
        return dts


@dataclass
class Timeline:
    """Output timestamps that always increase: a frame's own where it moves forward, otherwise the
    previous one's plus ``step`` (one frame at the stream's rate)."""

    step: int
    """One frame's duration in the stream's time base (at least 1)."""
    last: int | None = None
    """The previous frame's output timestamp."""
    repaired: int = 0
    """Frames whose timestamp was missing, repeated or went backwards."""
    first: int | None = None
    """The first output timestamp."""
    shortest: int = 0
    longest: int = 0
    """The shortest and longest frame duration seen (0 before two frames)."""

    def __call__(self, pts: int | None) -> int:
        if pts is None or (self.last is not None and pts <= self.last):
            pts = 0 if self.last is None else self.last + self.step
            self.repaired += 1
        if self.last is not None:
            duration = pts - self.last
            self.shortest = min(self.shortest or duration, duration)
            self.longest = max(self.longest, duration)
        if self.first is None:
            self.first = pts
        self.last = pts
        return pts

    @property
    def variable(self) -> bool:
        """Whether frame durations vary by more than a time base's rounding (a variable frame rate)."""
        return self.longest > self.shortest * 1.1 + 1


@dataclass
class CaptureClock:
    """When each frame of a live source was captured, as well as the receiving side can tell: the
    earliest arrival seen in this session, advanced by the frames' timestamps. A backlog that builds up
    before the decoder (in the network, the server, the camera) then counts as latency too. A new
    session (a reconnection) starts a new clock: the time the source was away is a gap, not latency."""

    origin: float | None = None
    """Wall time of the session's media time 0."""
    first_s: float | None = None
    """Media time (seconds) of the session's first frame."""

    def __call__(self, media_s: float, now: float) -> float:
        if self.first_s is None:
            self.first_s = media_s
        stream_s = media_s - self.first_s
        if self.origin is None or now - stream_s < self.origin:
            self.origin = now - stream_s
        return self.origin + stream_s

    def new_session(self) -> None:
        self.origin = self.first_s = None


@dataclass
class Pacer:
    """Frames of a recording read as live come out at their own rate, as ``ffmpeg -re`` reads a file:
    each when its media time has passed on the wall clock since the first."""

    origin: tuple[float, float] | None = field(default=None)
    """(wall time, media time) of the first frame."""

    def wait_s(self, media_s: float, now: float) -> float:
        """How long to wait before the frame at ``media_s`` is due."""
        if self.origin is None:
            self.origin = (now, media_s)
        return max(0.0, self.origin[0] + (media_s - self.origin[1]) - now)
