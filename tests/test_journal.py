"""The encoder's crash journal (:mod:`streamseg.formats.journal`): packets and checkpoints written,
read back up to the last checkpoint, torn and damaged tails, the finish mark, rewriting; and an
encoder that rebuilds its output from one (real PyAV)."""

from __future__ import annotations

import os
import zlib
from fractions import Fraction
from pathlib import Path

import av
import pytest
from conftest import make_clip, read_video

from streamseg.config import EncodeConfig
from streamseg.formats.journal import Journal, JournalPacket, Recovered
from streamseg.runtime.messages import EndOfStream, Frame, StreamStart
from streamseg.stages.encode import EncodeStage


def _packet(i: int, size: int = 50) -> JournalPacket:
    return JournalPacket(bytes([i % 256]) * size + i.to_bytes(4, "little"), pts=i * 1001, dts=i * 1001 - 2002,
                         duration=1001, keyframe=i % 10 == 0)


def _write(journal: Journal, records: list[JournalPacket | tuple[bytes, int, int]]) -> None:
    journal.start()
    for record in records:
        if isinstance(record, JournalPacket):
            journal.packet(record)
        else:
            journal.record(*record)
    journal.close()


def test_the_journal_lies_hidden_beside_its_output(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    assert journal.path == str(tmp_path / ".out.mp4.streamseg-journal")
    assert not journal.exists()
    journal.start()
    assert journal.exists()
    journal.remove()
    journal.remove()  # twice: nothing left to remove, no error
    assert not journal.exists() and journal.fd is None


def test_read_gives_the_packets_up_to_the_last_checkpoint(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    packets = [_packet(i, size=10 + 300 * i) for i in range(7)]
    _write(journal, [*packets[:3], (b"K", packets[2].pts, 3), *packets[3:5], (b"K", packets[4].pts, 5),
                     *packets[5:]])  # two packets after the last checkpoint: not yet a closed prefix
    got = journal.read()
    assert got == Recovered(packets[:5], packets[4].pts, 5, False)
    assert got.packets[4].data == packets[4].data and got.packets[0].keyframe and not got.packets[1].keyframe


def test_the_empty_cases(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    nothing = Recovered([], None, 0, False)
    _write(journal, [])  # started, then the crash: only the magic
    assert journal.read() == nothing
    _write(journal, [_packet(0), _packet(1)])  # packets but no checkpoint yet
    assert journal.read() == nothing
    Path(journal.path).write_bytes(b"")  # the crash came before the magic was written
    assert journal.read() == nothing
    Path(journal.path).write_bytes(b"SSJ0" + Path(journal.path).read_bytes())  # not a journal of ours
    assert journal.read() == nothing


def test_a_new_journal_replaces_an_old_one(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    _write(journal, [_packet(0), (b"K", 0, 1)])
    _write(journal, [_packet(5), _packet(6), (b"K", 6006, 2)])
    assert [p.pts for p in journal.read().packets] == [5005, 6006]


@pytest.mark.parametrize("cut", [1, Journal.RECORD.size - 1, Journal.RECORD.size + 3])
def test_a_torn_tail_keeps_what_comes_before_the_last_checkpoint(tmp_path: Path, cut: int) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    packets = [_packet(i) for i in range(4)]
    _write(journal, [*packets[:2], (b"K", packets[1].pts, 2), packets[2], (b"K", packets[2].pts, 3), packets[3]])
    whole = Path(journal.path).read_bytes()
    last = Journal.RECORD.size + len(packets[3].data)
    Path(journal.path).write_bytes(whole[:len(whole) - last + cut])  # the crash tore the last record
    assert journal.read() == Recovered(packets[:3], packets[2].pts, 3, False)
    # torn inside the last checkpoint itself: the one before it counts
    Path(journal.path).write_bytes(whole[:len(whole) - last - 5])
    assert journal.read() == Recovered(packets[:2], packets[1].pts, 2, False)


def test_a_damaged_record_ends_what_can_be_trusted(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    packets = [_packet(i) for i in range(4)]
    _write(journal, [packets[0], (b"K", packets[0].pts, 1), packets[1], packets[2], (b"K", packets[2].pts, 3),
                     packets[3], (b"K", packets[3].pts, 4)])
    data = bytearray(Path(journal.path).read_bytes())
    # one flipped bit in the body of packet 1: its CRC no longer matches, and nothing after it counts
    body_1 = 4 + 2 * Journal.RECORD.size + len(packets[0].data) + Journal.RECORD.size
    data[body_1 + 7] ^= 0x10
    Path(journal.path).write_bytes(bytes(data))
    assert journal.read() == Recovered(packets[:1], packets[0].pts, 1, False)
    # a record of a kind that does not exist
    data[body_1 + 7] ^= 0x10
    data[4 + Journal.RECORD.size + len(packets[0].data)] = ord("X")
    Path(journal.path).write_bytes(bytes(data))
    assert journal.read() == Recovered([], None, 0, False)
    # a size that reaches past the end of the file
    head = Journal.RECORD.pack(b"P", 1, 1, 1, 0, 1 << 30, zlib.crc32(b""))
    Path(journal.path).write_bytes(b"SSJ1" + head + b"short")
    assert journal.read() == Recovered([], None, 0, False)


def test_the_finish_mark(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    packets = [_packet(i) for i in range(3)]
    _write(journal, [*packets, (b"K", packets[2].pts, 3), (b"F", 0, 0)])
    assert journal.read() == Recovered(packets, packets[2].pts, 3, True)
    _write(journal, [(b"F", 0, 0)])  # finished without a frame (an empty stream)
    assert journal.read() == Recovered([], None, 0, True)


def test_rewrite_holds_exactly_what_was_recovered(tmp_path: Path) -> None:
    journal = Journal(str(tmp_path / "out.mp4"))
    packets = [_packet(i) for i in range(5)]
    _write(journal, [*packets[:3], (b"K", packets[2].pts, 3), *packets[3:]])
    recovered = journal.read()
    journal.rewrite(recovered)  # what a replacement encoder does before going on
    journal.packet(packets[3])
    journal.record(b"K", packets[3].pts, 4)
    journal.close()
    assert journal.read() == Recovered(packets[:4], packets[3].pts, 4, False)
    journal.rewrite(Recovered([], None, 0, False))  # nothing recovered: an empty journal
    journal.close()
    assert journal.read() == Recovered([], None, 0, False)
    assert os.path.getsize(journal.path) == len(Journal.MAGIC)


def _encoding(tmp_path: Path, audio: bool) -> tuple[Path, StreamStart, list[Frame], EncodeStage]:
    """A 60-frame clip (with ``audio``), its frames, and an encoder into ``out.mp4`` that was given its
    StreamStart and its first 40 frames, and is still open (as a crash or a full disk finds it)."""
    clip = make_clip(tmp_path / "in.mp4", frames=60, audio=audio)
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        frames = [Frame("0", i, f.pts, Fraction(stream.time_base), f.to_ndarray(format="rgb24"))
                  for i, f in enumerate(container.decode(stream))]
    start = StreamStart("0", 322, 242, Fraction(30000, 1001), frames[0].time_base, 60, str(clip), audio)
    encoder = EncodeStage(EncodeConfig(), path=str(tmp_path / "out.mp4"))
    encoder.process(start)
    for frame in frames[:40]:
        encoder.process(frame)
    return clip, start, frames, encoder


def test_a_replacement_encoder_rebuilds_the_output_from_the_journal(tmp_path: Path) -> None:
    clip, start, frames, first = _encoding(tmp_path, audio=False)
    out = tmp_path / "out.mp4"
    held = first.holds()
    assert held and min(i for _, i in held) > 0  # the encoder's delay: its latest frames are not written yet
    saved = first.writers["0"].saved_pts
    journal = Journal(str(out))
    # what a crash here leaves on disk: the journal as it is now, with a torn last record, and an
    # MP4 without its index (the first encoder is then finished, only to release its files)
    on_disk = Path(journal.path).read_bytes() + b"P\x00\x01torn"
    first.close()
    Path(journal.path).write_bytes(on_disk)
    out.write_bytes(out.read_bytes()[:2000])
    second = EncodeStage(EncodeConfig(), path=str(out))
    second.restarted = True
    second.process(start)
    assert second.counters["frames"] == 40 - len(held)
    for frame in frames:
        if frame.pts > saved:  # what upstream sends again, and the rest
            second.process(frame)
    second.flush(EndOfStream("0", 60))
    second.close()
    info = read_video(out)
    assert info["frames"] == 60 and info["pts"] == [f.pts for f in frames]
    assert not Path(journal.path).exists()


def test_a_replacement_encoder_leaves_a_finished_output_alone(tmp_path: Path) -> None:
    import numpy as np

    out = tmp_path / "out.mp4"
    start = StreamStart("0", 64, 48, Fraction(25), Fraction(1, 25), 5, "x", False)
    first = EncodeStage(EncodeConfig(), path=str(out))
    first.process(start)
    for i in range(5):
        first.process(Frame("0", i, i, Fraction(1, 25), np.full((48, 64, 3), 40 * i, np.uint8)))
    first.flush(EndOfStream("0", 5))  # finished; the crash comes before close() removes the journal
    before = out.read_bytes()
    assert Journal(str(out)).read().finished
    second = EncodeStage(EncodeConfig(), path=str(out))
    second.restarted = True
    second.process(start)  # sent again: its stream's end had not been acknowledged
    second.process(Frame("0", 4, 4, Fraction(1, 25), np.zeros((48, 64, 3), np.uint8)))
    assert second.counters["frames"] == 5 and not second.writers
    second.flush(EndOfStream("0", 5))
    second.close()
    assert out.read_bytes() == before and read_video(out)["frames"] == 5
    assert not Journal(str(out)).exists()


def test_recover_makes_a_playable_mp4_of_a_journal_alone(tmp_path: Path) -> None:
    """What ``streamseg recover`` does with the journal an unfinished output leaves: the whole frames up to
    its last checkpoint, the very packets the encoder made, with the source's audio."""
    import numpy as np

    from streamseg.errors import InputError
    from streamseg.tools.recover import recover

    clip, _, frames, encoder = _encoding(tmp_path, audio=True)
    out = tmp_path / "out.mp4"
    journal = Journal(str(out))
    left = Path(journal.path).read_bytes() + b"P\x00\x01torn"  # as a full disk leaves it: a torn last record
    kept = encoder.writers["0"].checkpointed
    encoder.close()  # finishes out.mp4 with all 40 frames: the reference
    Path(journal.path).write_bytes(left)
    assert recover(journal.path, str(tmp_path / "rebuilt.mp4")) == kept and 0 < kept < 40
    rebuilt, whole = read_video(tmp_path / "rebuilt.mp4"), read_video(out)
    assert rebuilt["frames"] == kept and rebuilt["pts"] == [f.pts for f in frames[:kept]]
    assert (rebuilt["width"], rebuilt["height"], rebuilt["rate"]) == (322, 242, Fraction(30000, 1001))
    assert rebuilt["audio"] == "aac"
    with av.open(str(tmp_path / "rebuilt.mp4")) as a, av.open(str(out)) as b:
        for x, y in zip(a.decode(video=0), b.decode(video=0)):
            assert np.array_equal(x.to_ndarray(), y.to_ndarray())  # the same packets: the same pictures
    with av.open(str(tmp_path / "rebuilt.mp4")) as a:
        seconds = sum(f.samples for f in a.decode(audio=0)) / a.streams.audio[0].sample_rate
    assert abs(seconds - kept * 1001 / 30000) < 0.1
    assert whole["frames"] == 40
    Path(journal.path).write_bytes(Journal.MAGIC)
    with pytest.raises(InputError, match="holds no stream header"):
        recover(journal.path, str(tmp_path / "nothing.mp4"))
