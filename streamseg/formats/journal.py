"""The encoder's crash journal: an append-only file of an output's encoded packets, with checkpoints.

It lies beside the output as ``.NAME.streamseg-journal`` while the output is written. An MP4 cannot
be read until it is finished; the journal can, up to its last checkpoint, so a replacement encode
worker rebuilds the output from it (:mod:`streamseg.stages.encode`).
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class JournalPacket:
    """One encoded video packet as the journal keeps it (times in the stream's time base)."""

    data: bytes
    pts: int
    dts: int
    duration: int
    keyframe: bool


class Journal:
    """An append-only record of an output's encoded packets, with checkpoints, that survives a crash.

    Record: ``kind``, pts, dts, duration, keyframe, size, CRC-32, then ``size`` bytes. Kinds: ``P``
    a packet; ``K`` a checkpoint (every frame up to its pts is in the packets before it; its dts
    field holds the frame count); ``F`` the output was finished; ``H`` the video stream's header
    (JSON: codec, size, time base, rate, the codec's extradata in hex, the source for audio),
    before the first packet, so that ``streamseg recover`` can make an MP4 of the journal alone.
    :meth:`read` stops at a torn or damaged record and keeps what comes before the last checkpoint.
    """

    MAGIC = b"SSJ1"
    RECORD = struct.Struct("<cqqqBII")

    def __init__(self, output: str, path: str = "") -> None:
        """The journal of ``output`` (beside it), or the one at ``path``."""
        folder, name = os.path.split(os.path.abspath(output))
        self.path = path or os.path.join(folder, f".{name}.streamseg-journal")
        self.fd: int | None = None

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def read(self) -> Recovered:
        """What the journal holds up to its last checkpoint."""
        with open(self.path, "rb") as f:
            data = f.read()
        packets: list[JournalPacket] = []
        kept = Recovered([], None, 0, False)
        at = len(self.MAGIC) if data[:len(self.MAGIC)] == self.MAGIC else len(data)
        while at + self.RECORD.size <= len(data):
            kind, pts, dts, duration, key, size, crc = self.RECORD.unpack_from(data, at)
            body = data[at + self.RECORD.size:at + self.RECORD.size + size]
            if len(body) != size or zlib.crc32(body) != crc or kind not in (b"P", b"K", b"F", b"H"):
                break  # torn by the crash, or damaged: what follows cannot be trusted
            at += self.RECORD.size + size
            if kind == b"H":
                header = json.loads(body)
                kept = Recovered(kept.packets, kept.saved_pts, kept.frames, kept.finished, header)
            elif kind == b"P":
                packets.append(JournalPacket(body, pts, dts, duration, bool(key)))
            elif kind == b"K":
                kept = Recovered(list(packets), pts, dts, False, kept.header)
            else:
                kept = Recovered(kept.packets, kept.saved_pts, kept.frames, True, kept.header)
        return kept

    def start(self) -> None:
        """Begin a new journal (replacing any old one)."""
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(self.fd, self.MAGIC)

    def rewrite(self, recovered: Recovered) -> None:
        """A new journal that holds what was recovered, to go on from."""
        self.start()
        if recovered.header:
            self.header(recovered.header)
        for packet in recovered.packets:
            self.packet(packet)
        if recovered.saved_pts is not None:
            self.record(b"K", recovered.saved_pts, recovered.frames)

    def packet(self, packet: JournalPacket) -> None:
        assert self.fd is not None
        head = self.RECORD.pack(b"P", packet.pts, packet.dts, packet.duration, int(packet.keyframe),
                                len(packet.data), zlib.crc32(packet.data))
        os.write(self.fd, head + packet.data)  # one write: in the OS, so a crash of this process keeps it

    def header(self, header: dict[str, Any]) -> None:
        """The video stream's header (once, before the first packet)."""
        assert self.fd is not None
        body = json.dumps(header).encode()
        os.write(self.fd, self.RECORD.pack(b"H", 0, 0, 0, 0, len(body), zlib.crc32(body)) + body)

    def record(self, kind: bytes, pts: int = 0, frames: int = 0) -> None:
        """A checkpoint (``K``) or the finish mark (``F``)."""
        assert self.fd is not None
        os.write(self.fd, self.RECORD.pack(kind, pts, frames, 0, 0, 0, zlib.crc32(b"")))

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def remove(self) -> None:
        """Close and delete the journal; an :class:`OSError` other than its being gone is raised."""
        self.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class Recovered:
    """What a journal holds: packets up to the last checkpoint, its pts, the frame count, finished or not."""

    packets: list[JournalPacket]
    saved_pts: int | None
    frames: int
    finished: bool
    header: dict[str, Any] = field(default_factory=dict)
    """The video stream's header (empty in a journal from before it was written)."""
