"""Live and network sources against real servers: GStreamer's RTSP server, Python's HTTP server,
the ffmpeg program receiving pushed RTSP/RTMP; plus image folders, looping and several sources."""

from __future__ import annotations

import functools
import http.server
import signal
import subprocess
import threading
import time
from pathlib import Path

import av
import pytest
from conftest import (
    TEST_MODEL,
    TEST_SCORE_THRESH,
    Collector,
    as_expected,
    assert_clean_error,
    assert_same_detections,
    free_endpoint,
    free_port,
    have_ffmpeg,
    make_clip,
    read_jsonl,
    read_video,
)

import streamseg
from streamseg.masks import decode_rle

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
LIVE_OPTIONS = dict(model__name="tiny-random", model__score_thresh=TEST_SCORE_THRESH,
                    input__read_timeout_s=3.0, input__reconnect_initial_s=0.2)


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 frames (10 s at 29.97 fps) for servers to stream in real time."""
    return make_clip(tmp_path_factory.mktemp("live") / "long.mp4", frames=300, seed=3)


def increasing(values: list[int]) -> bool:
    return all(b > a for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_to_a_subscriber_one_message_per_processed_frame(rtsp_server, long_clip: Path, tmp_path: Path,
                                                              transport: str) -> None:
    server = rtsp_server(long_clip)
    endpoint = free_endpoint()
    collector = Collector(endpoint, timeout_s=60)
    collector.start()
    summary = streamseg.run(server.url, masks=str(tmp_path / "m.jsonl"), output__publish=endpoint,
                            input__max_frames=60, input__rtsp_transport=transport, **LIVE_OPTIONS)
    collector.join(30)
    assert not collector.is_alive()
    decoded = summary.stages["decode"]["counters"]["frames"]
    assert decoded == 60
    records = read_jsonl(tmp_path / "m.jsonl")
    frames = collector.of_type("frame")
    # every frame that reached the model was published and written; the rest were counted as dropped
    assert len(frames) == len(records) == summary.frames and summary.frames + summary.dropped == decoded
    assert [f["frame"] for f in frames] == [r["frame"] for r in records]
    assert increasing([r["pts"] for r in records]) and increasing([r["frame"] for r in records])
    start = collector.of_type("stream_start")[0]
    assert start["live"] is True and (start["width"], start["height"]) == (322, 242)
    masks = [decode_rle(i["mask"]) for f in frames for i in f["instances"]]
    assert masks and all(m.shape == (242, 322) for m in masks)
    assert all(f["capture_time"] > 0 for f in frames)
    assert summary.latency["frames"] == len(frames) and summary.latency_at == "publish"


def test_a_killed_and_restarted_server_is_reconnected(cli, rtsp_server, long_clip: Path, tmp_path: Path) -> None:
    server = rtsp_server(long_clip)
    endpoint = free_endpoint()
    collector = Collector(endpoint, timeout_s=90)
    collector.start()
    run = cli.start("run", server.url, "--config", str(PIPELINES / "rtsp_to_publish.yaml"), "--masks", "m.jsonl",
                    "--publish", endpoint, "--frames", "150", *TEST_MODEL,
                    "--set", "input.read_timeout_s=3", "--set", "input.reconnect_initial_s=0.2")
    try:
        assert collector.wait_for(lambda ms: sum(m["type"] == "frame" for m in ms) >= 15, 90), "no frames"
        server.kill()
        assert collector.wait_for(lambda ms: any(m.get("state") == "lost" for m in ms), 20), "loss not reported"
        time.sleep(1.0)  # down for a while: at least one attempt fails
        rtsp_server(long_clip, port=server.port)
        assert collector.wait_for(lambda ms: any(m.get("state") == "reconnected" for m in ms), 30)
        stdout, stderr = run.communicate(timeout=90)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stderr
    assert "lost" in stderr and "reconnected" in stderr
    states = [m["state"] for m in collector.of_type("status")]
    assert states[0] == "lost" and states[-1] == "reconnected" and "reconnecting" in states
    collector.join(30)
    frames = collector.of_type("frame")
    reconnected_at = next(i for i, m in enumerate(collector.messages) if m.get("state") == "reconnected")
    assert any(m["type"] == "frame" for m in collector.messages[reconnected_at:]), "nothing after reconnecting"
    records = read_jsonl(tmp_path / "m.jsonl")
    assert [r["frame"] for r in records] == [f["frame"] for f in frames]
    assert {r["stream"] for r in records} == {"cam"}  # the pipeline's stream id
    assert increasing([r["pts"] for r in records]), "timestamps must keep increasing across the reconnection"
    assert cli.leftovers() == []


def test_a_source_that_stays_away_is_given_up_with_outputs_kept(cli, rtsp_server, long_clip: Path,
                                                                 tmp_path: Path) -> None:
    server = rtsp_server(long_clip)
    endpoint = free_endpoint()
    collector = Collector(endpoint, timeout_s=60)
    collector.start()
    run = cli.start("run", server.url, "--masks", "m.jsonl", "--publish", endpoint, *TEST_MODEL,
                    "--set", "input.read_timeout_s=3", "--set", "input.reconnect_initial_s=0.2",
                    "--set", "input.reconnect_attempts=2")
    try:
        assert collector.wait_for(lambda ms: sum(m["type"] == "frame" for m in ms) >= 10, 90), "no frames"
        server.kill()
        stdout, stderr = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 3, stderr
    assert "gave up" in stderr and "Traceback" not in stderr
    collector.join(30)
    states = [m["state"] for m in collector.of_type("status")]
    # the kill: lost, two failed attempts, given up (on a loaded machine the 10 s clip may have
    # ended once before the kill, which shows as an earlier lost/reconnected)
    assert states[-4:] == ["lost", "reconnecting", "reconnecting", "gave_up"], states
    (end,) = collector.of_type("end_of_stream")
    assert end["reason"] == "lost"
    assert [r["frame"] for r in read_jsonl(tmp_path / "m.jsonl")] == [f["frame"] for f in collector.of_type("frame")]
    assert cli.leftovers() == []


def test_slow_inference_on_a_live_source_drops_and_keeps_latency_bounded(rtsp_server, long_clip: Path,
                                                                         tmp_path: Path) -> None:
    server = rtsp_server(long_clip)
    summary = streamseg.run(server.url, masks=str(tmp_path / "m.jsonl"), output__publish=free_endpoint(),
                            input__max_frames=240, model__max_fps=6.0, **LIVE_OPTIONS)
    lat = summary.latency
    assert summary.dropped > 0 and summary.frames + summary.dropped == 240
    # the batcher drops what inference cannot keep up with; the decoder drops a frame only when a
    # burst from the network finds the batcher's input full
    assert summary.stages["batch"]["counters"]["dropped"] > 0
    assert summary.dropped == sum(st["counters"].get("dropped", 0) for st in summary.stages.values())
    assert summary.frames >= 20  # about 6 a second for 8 s
    # bounded: a queue that grew would make the second half far worse than the first (and seconds long)
    # (the latency's size, p99 included, is a figure of benchmarks/live_latency.py)
    assert lat["p99_second_half_s"] <= lat["p99_first_half_s"] * 1.25 + 0.05, lat


def test_without_drops_a_live_backlog_shows_as_growing_latency(rtsp_server, long_clip: Path, tmp_path: Path) -> None:
    # the contrast that makes the bound above mean something: block drops nothing, so frames wait
    # (before the decoder, on the source's clock) and the latency grows for as long as the run lasts
    server = rtsp_server(long_clip)
    summary = streamseg.run(server.url, masks=str(tmp_path / "m.jsonl"), input__max_frames=60,
                            model__max_fps=15.0, batch__live_policy="block", **LIVE_OPTIONS)
    lat = summary.latency
    assert summary.dropped == 0 and summary.frames == 60
    assert lat["p99_second_half_s"] > lat["p99_first_half_s"] + 0.5, lat


def test_two_sources_in_one_run_each_complete_and_attributed(two_sources: dict, clip_masks: list[dict]) -> None:
    # left: the shared clip (48 frames), right: its first 30 frames, so both compare with clip_masks
    folder = two_sources["folder"]
    assert read_video(folder / "out-left.mp4")["frames"] == 48
    assert read_video(folder / "out-right.mp4")["frames"] == 30
    left, right = read_jsonl(folder / "m-left.jsonl"), read_jsonl(folder / "m-right.jsonl")
    assert {r["stream"] for r in left} == {"left"} and {r["stream"] for r in right} == {"right"}
    assert_same_detections(left, as_expected(clip_masks))
    assert_same_detections(right, as_expected(clip_masks[:30]))
    published = [m for m in two_sources["published"] if m["type"] == "frame"]
    assert [f["frame"] for f in published if f["stream"] == "left"] == list(range(48))
    assert [f["frame"] for f in published if f["stream"] == "right"] == list(range(30))
    ends = [m for m in two_sources["published"] if m["type"] == "end_of_stream"]
    assert sorted((m["stream"], m["frames"]) for m in ends) == [("left", 48), ("right", 30)]
    assert "frames 78" in two_sources["stderr"]
    assert two_sources["leftovers"] == []


@pytest.fixture
def http_root(tmp_path: Path):
    """Python's HTTP server on a free port, serving ``tmp_path/www``."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _write_hls(clip: Path, folder: Path) -> Path:
    playlist = folder / "index.m3u8"
    with av.open(str(clip)) as src, av.open(str(playlist), "w", format="hls", options={"hls_time": "1"}) as out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return playlist


def test_http_file_and_hls_playlist(cli, http_root, clip_masks: list[dict], tmp_path: Path) -> None:
    root, base = http_root
    # the pictures of the shared clip; its index first: Python's test server cannot serve the byte
    # ranges a seek to a trailing index needs
    clip = make_clip(root / "clip.mp4", faststart=True)
    _write_hls(clip, root)
    want = as_expected(clip_masks)
    # recorded files served over HTTP: read every frame (a live HTTP stream would drop when behind);
    # both sources in one run
    result = cli.run("run", f"{base}/clip.mp4", f"{base}/index.m3u8", "--stream-id", "http", "--stream-id", "hls",
                     "--masks", "{stream}.jsonl", "--live", "false", *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    for name in ("http", "hls"):
        assert_same_detections(read_jsonl(tmp_path / f"{name}.jsonl"), want)


def _receiver(url: str, out: Path, listen: list[str]) -> subprocess.Popen[bytes]:
    """The ffmpeg program as a server that receives a pushed stream and records it."""
    return subprocess.Popen(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *listen, "-i", url,
                             "-c", "copy", str(out)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.skipif(not have_ffmpeg(), reason="the ffmpeg program is not installed (.ci/run installs it)")
@pytest.mark.parametrize("scheme", ["rtsp", "rtmp"])
def test_annotated_output_pushed_to_a_stream_server(cli, clip: Path, tmp_path: Path, scheme: str) -> None:
    port = free_port()
    if scheme == "rtsp":
        url, listen, recording = f"rtsp://127.0.0.1:{port}/live", ["-rtsp_flags", "listen"], tmp_path / "got.mkv"
    else:
        url, listen, recording = f"rtmp://127.0.0.1:{port}/live/cam", ["-listen", "1"], tmp_path / "got.flv"
    receiver = _receiver(url, recording, listen)
    try:
        time.sleep(1.0)  # the receiver listens
        result = cli.run("run", str(clip), "-o", url, *TEST_MODEL)
        assert result.returncode == 0, result.stderr
        receiver.wait(30)
    finally:
        if receiver.poll() is None:
            receiver.send_signal(signal.SIGINT)
            receiver.wait(10)
    got = read_video(recording)
    assert got["frames"] == 48 and (got["width"], got["height"]) == (322, 242)


def test_dead_sources_fail_fast_with_a_clear_line(tmp_path: Path) -> None:
    from streamseg.config import InputConfig
    from streamseg.errors import InputError
    from streamseg.stages.decode import DecodeStage

    cases = [(f"rtsp://127.0.0.1:{free_port()}/none", "cannot read rtsp://127.0.0.1"),
             ("/dev/video99", "camera not found"),
             (str(tmp_path / "nothing-*.png"), "holds no images"),
             (f"rtsp://user:secret@127.0.0.1:{free_port()}/cam", "user:***@")]
    for source, needle in cases:
        stage = DecodeStage(InputConfig(open_timeout_s=10.0), source, "0", live=True)
        with pytest.raises(InputError) as info:
            stage.setup()
        stage.close()
        assert needle in str(info.value) and "secret" not in str(info.value)


def test_a_dead_source_fails_the_run_with_one_line_and_the_password_hidden(cli) -> None:
    # the decode worker's error through the supervisor to the command line
    result = cli.run("run", f"rtsp://user:secret@127.0.0.1:{free_port()}/cam", "--masks", "m.jsonl", *TEST_MODEL,
                     timeout=60)
    assert_clean_error(result, "decode:", "cannot read rtsp://user:***@127.0.0.1")
    assert "secret" not in result.stderr
    assert result.returncode == 3
    assert cli.leftovers() == []


def test_status_messages_follow_the_schema(tmp_path: Path) -> None:
    import json

    import jsonschema

    from streamseg.models import model_info
    from streamseg.runtime.messages import StreamStatus
    from streamseg.stages.publish import PublishStage

    schema = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "detections-v1.schema.json").read_text())
    stage = PublishStage(model_info("tiny-random").to_dict())
    for state in ("lost", "reconnecting", "reconnected", "gave_up"):
        (port, published), = stage.process(StreamStatus("cam", state, "why", 1, time.time()))
        message = json.loads(published.parts[1])
        jsonschema.validate(message, schema)
        assert published.parts[0] == b"cam" and message["state"] == state


def test_a_finite_rtsp_stream_ends_as_the_readme_says(rtsp_server, long_clip: Path,
                                                                       tmp_path: Path) -> None:
    """A file an RTSP server plays is reopened when it ends (a live source must come back); --duration
    ends the run, after 3 s of the stream's time. The model keeps up: what is dropped is at most a
    few frames of the server's burst on connecting (2 s of frames at once), as the README says."""
    server = rtsp_server(long_clip)
    summary = streamseg.run(server.url, masks=str(tmp_path / "m.jsonl"), input__duration_s=3.0, **LIVE_OPTIONS)
    records = read_jsonl(tmp_path / "m.jsonl")
    times = [r["time"] for r in records]
    decoded = summary.stages["decode"]["counters"]["frames"]
    assert 85 <= decoded <= 90 and len(records) == summary.frames == decoded - summary.dropped  # 3 s at 29.97 fps
    assert times[-1] - times[0] < 3.0 and summary.dropped <= 9
    assert increasing([r["frame"] for r in records])
