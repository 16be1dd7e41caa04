"""``streamseg recover``: a playable MP4 of what an encoder's crash journal holds.

An output that could not be finished (a full disk, a folder that went away) leaves its journal
(:mod:`streamseg.formats.journal`) beside it; its packets up to the last checkpoint are whole
frames, and its header says how they were encoded, so they become an MP4 without encoding again.
"""

from __future__ import annotations

import os
import sys
from fractions import Fraction

import av

from ..errors import InputError, OutputError
from ..formats.journal import Journal
from ..stages.audio import AudioCopier
from ..stages.encode import reason


def recover(journal_path: str, out: str) -> int:
    """Make a playable MP4 at ``out`` of the frames a journal holds up to its last checkpoint (the
    source's audio with them, when the source is still there); returns their count."""
    if not os.path.isfile(journal_path):
        raise InputError(f"no journal at {journal_path}")
    try:
        recovered = Journal("", journal_path).read()
    except OSError as exc:
        raise InputError(f"cannot read {journal_path}: {reason(exc)}") from None
    header = recovered.header
    if not header:
        raise InputError(f"{journal_path} holds no stream header (written by an older streamseg, or not a "
                         "journal): it cannot be made into a video alone")
    if not recovered.packets:
        raise InputError(f"{journal_path} holds no whole frame")
    time_base = Fraction(header["time_base"])
    if header["codec"] not in av.codecs_available:
        raise OutputError(f"{journal_path} holds {header['codec']} video, and this FFmpeg (PyAV's) has no "
                          f"{header['codec']} to describe it with: recover it where streamseg wrote it")
    source = header.get("source") or ""
    try:
        output = av.open(out, "w", options={"movflags": "+faststart"})
        stream = output.add_stream(header["codec"], rate=Fraction(header["rate"]))
        stream.width, stream.height, stream.pix_fmt = header["width"], header["height"], header["pix_fmt"]
        stream.time_base = stream.codec_context.time_base = time_base
        stream.codec_context.open()
        stream.codec_context.extradata = bytes.fromhex(header["extradata"]) or None  # the encoder's own
        audio = AudioCopier(source, output) if source and os.path.isfile(source) else None
        if source and audio is None:
            print(f"streamseg recover: {source} is not there: the video is made without its audio", file=sys.stderr)
        for p in recovered.packets:
            packet = av.Packet(p.data)
            packet.pts, packet.dts, packet.duration, packet.time_base = p.pts, p.dts, p.duration, time_base
            packet.is_keyframe, packet.stream = p.keyframe, stream
            output.mux(packet)
            if audio is not None:
                audio.until(float(p.dts * time_base))
        if audio is not None and recovered.saved_pts is not None:
            audio.until(float(recovered.saved_pts * time_base))
            audio.close()
        output.close()
    except (av.FFmpegError, OSError, ValueError) as exc:
        try:
            os.remove(out)  # half an MP4 would only mislead
        except OSError:
            pass
        raise OutputError(f"cannot write {out}: {reason(exc)}") from None
    return recovered.frames


def command(journal: str, out: str, keep: bool) -> int:
    """``streamseg recover JOURNAL OUT.mp4 [--keep]``."""
    frames = recover(journal, out)
    if not keep:
        try:
            os.remove(journal)
        except OSError as exc:
            keep = True
            print(f"streamseg recover: cannot remove {journal}: {exc.strerror}", file=sys.stderr)
    print(f"wrote {out} ({frames} frames)" + ("" if keep else f"; removed {journal}"), file=sys.stderr)
    return 0
