"""The decoder on the files users have (``corpus.py``), each checked against FFmpeg's own decode of it:
every frame once, in presentation order, upright, with the input's timestamps or repaired ones."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from conftest import decode_all
from corpus import CASES, Case, build, ffmpeg_pictures, ffprobe_frames

from streamseg.config import InputConfig
from streamseg.runtime.messages import EndOfStream, Frame, StreamStart


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("corpus")


def expected_pts(reference: list[dict], step: int) -> tuple[list[int], int, int]:
    """The rule the decoder keeps: FFmpeg's best-effort timestamp where it moves forward, otherwise the
    previous frame's plus one frame; how many went backwards or repeated, and how many are missing.

    A missing one may be known to the decoder: the ffmpeg program here is older than PyAV's FFmpeg,
    which gives the last B-frame of an AVI file the timestamp that comes next."""
    out: list[int] = []
    repaired = missing = 0
    for frame in reference:
        t = frame.get("best_effort_timestamp")
        if t is None or (out and t <= out[-1]):
            repaired += t is not None
            missing += t is None
            t = out[-1] + step if out else 0
        out.append(t)
    return out, repaired, missing


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_frame_once_in_order_upright_with_its_timestamps(case: Case, corpus: Path) -> None:
    path = build(case, corpus)
    reference = ffprobe_frames(path, case.stream)
    messages, events = decode_all(str(path), InputConfig(**case.options))
    start, *frames, end = messages
    assert isinstance(start, StreamStart) and isinstance(end, EndOfStream)
    assert all(isinstance(f, Frame) for f in frames)

    # every frame FFmpeg decodes, once
    assert len(frames) == len(reference) and [f.index for f in frames] == list(range(len(reference)))
    assert end.reason == "end" and end.frames == len(frames) and end.skipped == 0

    # at the size shown: turned as the display matrix says
    stored = (reference[0]["width"], reference[0]["height"])
    turned = case.rotation in (90, 270) and case.options.get("autorotate", True)
    shown = stored[::-1] if turned else stored
    assert (start.width, start.height) == shown
    assert start.rotation == (case.rotation if case.options.get("autorotate", True) else 0)
    assert all(f.image.shape == (shown[1], shown[0], 3) for f in frames)

    # the input's timestamps where they move forward; repaired (and said so) where they do not
    step = round(1 / (start.rate * start.time_base))
    want, backwards, missing = expected_pts(reference, step)
    assert [f.pts for f in frames] == want
    assert all(b > a for a, b in zip(want, want[1:]))
    assert bool(backwards) == case.repaired
    repaired = [data for event, data in events if event == "input"][-1]["repaired"]
    assert backwards <= repaired <= backwards + missing
    if repaired:
        assert f"{repaired} of {len(frames)} frame timestamps were missing, repeated or went backwards" in end.detail
        assert any(event == "warning" and "repaired" in data["message"] for event, data in events)
    else:
        assert not end.detail and not [e for e, _ in events if e == "warning"]

    # in presentation order, the same pictures: a few frames against FFmpeg's decode, turned the same way
    pictures = ffmpeg_pictures(path, case, shown)
    assert len(pictures) == len(frames)
    for i in sorted({0, 1, len(frames) // 2, len(frames) - 1}):
        ours = frames[i].image.astype(np.int16)
        same = np.abs(ours - pictures[i]).mean()
        # the decoded pictures are the same; their conversion to RGB differs a little between the
        # ffmpeg program here and PyAV's newer FFmpeg for 10-bit and interlaced 4:2:0
        assert same < 3.0, (i, same)
        for j in (i - 1, i + 1):
            if 0 <= j < len(frames):
                assert np.abs(ours - pictures[j]).mean() > 1.5 * same + 1.0, (i, j)  # and not a neighbour


def test_the_input_is_described(corpus: Path) -> None:
    case = next(c for c in CASES if c.name == "default_video_stream.mkv")
    _, events = decode_all(str(build(case, corpus)))
    described = [data for event, data in events if event == "input"]
    assert described[0]["container"] == "matroska" and described[0]["codec"] == "h264"
    assert (described[0]["video_stream"], described[0]["video_streams"]) == (1, 2)
    assert described[-1]["variable_rate"] is False
    vfr = next(c for c in CASES if c.name == "variable_rate.mp4")
    _, events = decode_all(str(build(vfr, corpus)))
    assert [data for event, data in events if event == "input"][-1]["variable_rate"] is True


def test_a_missing_video_stream_is_named(corpus: Path) -> None:
    from streamseg.errors import InputError

    case = next(c for c in CASES if c.name == "video_stream_0.mkv")
    with pytest.raises(InputError, match=r"has 2 video streams \(0 to 1\); input.video_stream is 2"):
        decode_all(str(build(case, corpus)), InputConfig(video_stream=2))


def test_rates_and_time_bases_are_the_inputs(corpus: Path) -> None:
    case = next(c for c in CASES if c.name == "pts_out_of_order.mkv")
    messages, _ = decode_all(str(build(case, corpus)))
    assert messages[0].rate == 25 and messages[0].time_base == Fraction(1, 1000)


def test_awkward_files_through_the_whole_pipeline(cli, corpus: Path) -> None:
    """Out-of-order timestamps, a phone's rotation and an odd size in one run: every frame in the video
    and the masks, with the same timestamps; outputs at the size shown, the video padded to even."""
    from conftest import TEST_MODEL, read_jsonl, read_video

    cases = {c.name: c for c in CASES}
    names = ("pts_out_of_order.mkv", "rotated_90.mp4", "odd_size.mp4")
    sources = [str(build(cases[name], corpus)) for name in names]
    result = cli.run("run", *sources, "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL,
                     *(arg for sid in "abc" for arg in ("--stream-id", sid)))
    assert result.returncode == 0, result.stderr
    for sid, name, size, video_size in (("a", names[0], (320, 240), (320, 240)),
                                        ("b", names[1], (240, 320), (240, 320)),
                                        ("c", names[2], (321, 241), (322, 242))):
        reference = ffprobe_frames(Path(sources["abc".index(sid)]))
        video = read_video(cli.cwd / f"out-{sid}.mp4")
        records = read_jsonl(cli.cwd / f"m-{sid}.jsonl")
        assert video["frames"] == len(records) == len(reference), name
        assert (video["width"], video["height"]) == video_size, name
        assert all((r["width"], r["height"]) == size for r in records), name
        assert all(i["mask"]["size"] == [size[1], size[0]] for r in records for i in r["instances"]), name
        # the same times (the MP4 muxer may count them in another time base than the input's)
        assert all(abs(r["time"] - p * float(video["time_base"])) < 1e-6 for r, p in zip(records, video["pts"]))
        assert all(b["time"] > a["time"] for a, b in zip(records, records[1:]))
    assert "input b: " in result.stderr and "shown 240x320 (turned 90 degrees)" in result.stderr
    assert "input a: " in result.stderr and "matroska, mpeg4" in result.stderr
    assert "frame timestamps were missing, repeated or went backwards and were repaired" in result.stderr


def test_a_replacement_decoder_goes_on_after_repaired_timestamps(corpus: Path) -> None:
    """Repaired timestamps cannot be sought to: the replacement reads the file again from its start and
    sends what comes after the newest frame downstream has, with the same timestamps and pictures."""
    from streamseg.stages.decode import DecodeStage

    path = str(build(next(c for c in CASES if c.name == "pts_out_of_order.mkv"), corpus))
    messages, events = decode_all(path)
    frames = [m for m in messages if isinstance(m, Frame)]
    checkpoints = [data for event, data in events if event == "checkpoint"]
    assert checkpoints and checkpoints[-1]["repaired"] is True  # what the supervisor hands a replacement
    replacement = DecodeStage(InputConfig(), path, "0")
    replacement.restarted = True
    replacement.previous = {**checkpoints[-1], "cause": "worker process died (SIGSEGV)"}
    replacement.bind_events(lambda event, **data: events.append((event, data)))
    replacement.setup()
    replacement.resume({"0": (30, frames[30].pts)})
    rest = [m for _, m in (e for e in replacement.produce() if e is not None)]
    replacement.close()
    after = [m for m in rest if isinstance(m, Frame)]
    assert [f.index for f in after] == list(range(31, 50))
    assert [f.pts for f in after] == [f.pts for f in frames[31:]]
    assert all(np.array_equal(a.image, b.image) for a, b in zip(after, frames[31:]))
    assert rest[-1].reason == "end" and rest[-1].frames == 50
    # (and the stream's start time: the replacement's StreamStart says the first one's)
    assert [data for event, data in events if event == "checkpoint"][-1] == {
        "resumed_at": 30, "repaired": True, "started": checkpoints[-1]["started"]}


def test_audio_stays_in_sync_through_an_edit_list(corpus: Path, tmp_path: Path) -> None:
    """The cut file's audio packets go over as they are: the output starts its audio where the input
    does, against the same first video frame."""
    import json
    import subprocess

    from conftest import encode_all

    path = build(next(c for c in CASES if c.name == "edit_list_audio.mp4"), corpus)
    messages, _ = decode_all(str(path))
    encode_all(messages, tmp_path / "out.mp4")

    def timing(file: Path) -> tuple[list, list]:
        probe = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "stream=index,codec_type,start_time",
                                "-show_entries", "packet=stream_index,pts_time", "-of", "json", str(file)],
                               capture_output=True, text=True, check=True, timeout=60)
        info = json.loads(probe.stdout)
        audio = next(s["index"] for s in info["streams"] if s["codec_type"] == "audio")
        starts = sorted((s["codec_type"], s["start_time"]) for s in info["streams"])
        return starts, [p["pts_time"] for p in info["packets"] if p["stream_index"] == audio][:20]

    assert timing(tmp_path / "out.mp4") == timing(path)


def test_a_live_source_is_shown_as_stored(corpus: Path) -> None:
    """A live source's size is fixed before its first frame: it is not turned (said in the README)."""
    path = build(next(c for c in CASES if c.name == "rotated_90.mp4"), corpus)
    messages, _ = decode_all(str(path), InputConfig(max_frames=30), live=True)  # live: it would be reopened
    start, *frames, _ = messages
    assert (start.width, start.height, start.rotation) == (320, 240, 0)
    assert frames and all(f.image.shape == (240, 320, 3) for f in frames if isinstance(f, Frame))


@pytest.fixture
def http_folder(tmp_path: Path):
    """A real HTTP server (the standard library's) over a folder; yields (folder, base URL)."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_finished_hls_playlist_is_read_as_a_file(http_folder) -> None:
    """A VOD playlist (#EXT-X-ENDLIST) over HTTP: a recording, so every frame and an end, not a live feed
    read as fast as the server gives it (with frames dropped) and then reopened for ever."""
    import subprocess

    folder, base = http_folder
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=3",
                    "-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-f", "hls", "-hls_time", "1",
                    "-hls_playlist_type", "vod", str(folder / "vod.m3u8")], check=True, timeout=60)
    assert "#EXT-X-ENDLIST" in (folder / "vod.m3u8").read_text()
    # live=True is what input.live auto makes of an http:// URL; max_frames: a live read would never end
    messages, _ = decode_all(f"{base}/vod.m3u8", InputConfig(max_frames=150), live=True)
    start, *frames, end = messages
    assert start.live is False  # so the batcher drops nothing, and the end is the end
    assert len(frames) == 75 and end.reason == "end" and end.frames == 75


def test_a_network_stream_opens_without_probing_the_rate_and_still_has_its_own(http_folder) -> None:
    """A network stream is opened without FFmpeg's reading 20 frames to guess the rate (they would then
    come at once, late); MPEG-TS, what HLS, UDP and SRT carry, then has only the codec's rate, and
    FFmpeg's guess says twice it."""
    import subprocess

    folder, base = http_folder
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=30:duration=1", "-c:v", "libx264", "-preset", "ultrafast",
                    "-f", "mpegts", str(folder / "feed.ts")], check=True, timeout=60)
    messages, _ = decode_all(f"{base}/feed.ts", InputConfig(max_frames=10), live=True)
    start, *frames, end = messages
    assert start.live and start.rate == 30 and len(frames) == 10


def test_a_file_read_as_live_comes_at_its_own_rate_and_duration_ends_it(corpus: Path) -> None:
    import time

    path = build(next(c for c in CASES if c.name == "vp9.webm"), corpus)  # 30 frames at 25 fps
    from streamseg.stages.decode import DecodeStage

    stage = DecodeStage(InputConfig(max_frames=25), str(path), "0", live=True)
    stage.bind_events(lambda event, **data: None)
    stage.setup()
    began = time.monotonic()
    messages = [m for _, m in (e for e in stage.produce() if e is not None)]
    stage.close()
    assert time.monotonic() - began >= 0.9  # the 25th frame is due 0.96 s after the first
    assert len([m for m in messages if isinstance(m, Frame)]) == 25
    assert stage.waited_s >= 0.8  # waiting for a frame's time is not work: not counted as busy
    messages, _ = decode_all(str(path), InputConfig(duration_s=0.5))
    frames = [m for m in messages if isinstance(m, Frame)]
    assert [f.pts for f in frames] == [40 * i for i in range(13)] and messages[-1].reason == "end"


def test_live_true_on_a_file_paces_it_so_a_model_that_keeps_up_sees_every_frame(cli, clip: Path) -> None:
    from conftest import TEST_MODEL, read_jsonl

    result = cli.run("run", str(clip), "--live", "true", "--frames", "48", "--masks", "m.jsonl", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    # read as fast as the disk gives it, all but a few would be dropped (4 of 60 before pacing); at its
    # own 30 fps the test model keeps up with it, but for a frame or two on a busy machine
    assert len(read_jsonl(cli.cwd / "m.jsonl")) >= 40
