"""Stages as plain objects, without processes or sockets: the lifecycle each one promises."""

from __future__ import annotations

import dataclasses
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import decode_all, encode_all, make_clip, read_video
from pycocotools import mask as mask_utils

from streamseg.config import BatchConfig, EncodeConfig, InputConfig, RenderConfig
from streamseg.errors import InputError
from streamseg.formats.records import frame_record
from streamseg.masks import decode_rle, encode_rle
from streamseg.models import model_info
from streamseg.runtime.messages import (
    Batch,
    Detections,
    EndOfStream,
    Frame,
    FrameResult,
    MaskRegions,
    StreamStart,
)
from streamseg.stages.batch import BatchStage
from streamseg.stages.decode import DecodeStage
from streamseg.stages.encode import EncodeStage
from streamseg.stages.maskwriter import MaskWriterStage
from streamseg.stages.render import RenderStage, draw

TB = Fraction(1, 30000)
INFO = model_info("tiny-random")


def _frame(i: int, h: int = 48, w: int = 64) -> Frame:
    return Frame("s", i, i * 1001, TB, np.full((h, w, 3), i, np.uint8))


def test_batch_by_size_then_flush_on_end_of_stream() -> None:
    stage = BatchStage(BatchConfig(max_batch=3, max_wait_ms=10_000))
    out = [e for i in range(7) for e in stage.process(_frame(i))]
    assert [len(b.frames) for _, b in out] == [3, 3]
    rest = list(stage.flush(EndOfStream("s", 7)))
    assert [[f.index for f in b.frames] for _, b in rest] == [[6]]


def test_batch_by_deadline() -> None:
    stage = BatchStage(BatchConfig(max_batch=8, max_wait_ms=20))
    assert list(stage.process(_frame(0))) == []
    assert 0 < stage.timeout_s() <= 0.02
    time.sleep(0.03)
    assert stage.timeout_s() == 0
    (port, batch), = stage.on_timeout()
    assert port == "batches" and isinstance(batch, Batch) and len(batch.frames) == 1
    assert stage.timeout_s() is None


def test_batch_passes_stream_start_after_pending_frames() -> None:
    stage = BatchStage(BatchConfig(max_batch=8))
    stage.process(_frame(0))
    start = StreamStart("t", 64, 48, Fraction(25), TB, 0, "x", False)
    out = list(stage.process(start))
    assert isinstance(out[0][1], Batch) and out[1][1] is start


def _live(policy: str, queue: int = 3) -> BatchStage:
    stage = BatchStage(BatchConfig(max_batch=4, live_policy=policy, live_queue=queue))
    list(stage.process(StreamStart("s", 64, 48, Fraction(25), TB, 0, "rtsp://x", False, live=True)))
    return stage


@pytest.mark.parametrize("policy, kept", [("latest", [9]), ("drop_oldest", [7, 8, 9]), ("drop_newest", [0, 1, 2])])
def test_live_frames_wait_for_room_and_the_policy_says_which_are_dropped(policy: str, kept: list[int]) -> None:
    stage = _live(policy)
    for i in range(10):  # the model is busy: nothing is sent until there is room
        assert list(stage.process(_frame(i))) == []
    assert stage.waiting_port() == "batches"
    (port, batch), = stage.on_room()
    assert [f.index for f in batch.frames] == kept
    assert stage.counters["dropped"] == 10 - len(kept) and stage.report()["dropped_by_stream"] == {"s": 10 - len(kept)}
    assert stage.waiting_port() is None


def test_block_policy_and_files_never_drop() -> None:
    for stage in (_live("block"), BatchStage(BatchConfig(max_batch=4))):
        out = [e for i in range(10) for e in stage.process(_frame(i))]
        out += list(stage.flush(EndOfStream("s", 10)))
        assert [f.index for _, b in out for f in b.frames] == list(range(10))
        assert "dropped" not in stage.counters and stage.waiting_port() is None


def test_held_live_frames_are_flushed_on_end_of_stream() -> None:
    stage = _live("drop_oldest", queue=6)
    for i in range(6):
        stage.process(_frame(i))
    out = list(stage.flush(EndOfStream("s", 6)))
    assert [[f.index for f in b.frames] for _, b in out] == [[0, 1, 2, 3], [4, 5]]


def test_decoder_loop_keeps_timestamps_increasing(clip: Path) -> None:
    source = DecodeStage(InputConfig(loop=True, max_frames=100), str(clip), "0")
    source.setup()
    source.bind_events(lambda event, **data: None)
    frames = [m for _, m in source.produce() if isinstance(m, Frame)]
    source.close()
    assert [f.index for f in frames] == list(range(100))
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in zip(pts, pts[1:]))
    step = pts[1] - pts[0]
    assert pts[48] == pts[47] + step  # one frame after the last one of the first pass
    assert source.counters["loops"] == 2


def test_sources_are_told_apart_and_passwords_hidden(tmp_path: Path) -> None:
    from streamseg.pipeline import stream_output
    from streamseg.sources import is_live, safe_url, source_kind

    assert [source_kind(u) for u in ("rtsp://h/x", "rtmp://h/x", "https://h/a.m3u8", "/dev/video0",
                                     str(tmp_path), str(tmp_path / "*.jpg"), "clip.mp4")] == \
        ["network", "network", "network", "device", "images", "images", "file"]
    assert is_live("rtsp://h/x", "auto") and is_live("/dev/video0", "auto") and not is_live("clip.mp4", "auto")
    assert not is_live("rtsp://h/x", "false") and is_live("clip.mp4", "true")
    assert safe_url("rtsp://admin:hunter2@cam:554/s") == "rtsp://admin:***@cam:554/s"
    assert safe_url("rtsp://cam/s") == "rtsp://cam/s"
    assert stream_output("out.mp4", "cam1", True) == "out-cam1.mp4"
    assert stream_output("out.mp4", "cam1", False) == "out.mp4"
    assert stream_output("out/{stream}/a.jsonl", "c", True) == "out/c/a.jsonl"
    assert stream_output("rtsp://server:8554/live", "c", True) == "rtsp://server:8554/live-c"


def test_latency_meter_compares_halves() -> None:
    from streamseg.runtime.stage import LatencyMeter

    meter = LatencyMeter()
    now = time.time()
    for i in range(100):
        meter.add(now - (0.1 if i < 50 else 0.5))
    meter.add(0.0)  # no capture time: not a sample
    summary = meter.summary()
    assert summary["frames"] == 100
    assert 0.1 <= summary["p99_first_half_s"] < 0.2 and 0.5 <= summary["p99_second_half_s"] < 0.6


def test_rle_round_trip_is_exact() -> None:
    rng = np.random.default_rng(0)
    masks = rng.random((5, 37, 53)) > 0.6
    masks[2] = False  # an empty mask
    rles = encode_rle(masks)
    for mask, rle in zip(masks, rles):
        assert isinstance(rle["counts"], str) and rle["size"] == [37, 53]
        assert np.array_equal(decode_rle(rle), mask)
        assert np.array_equal(mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
    assert encode_rle(np.zeros((0, 4, 4), bool)) == []


def _result(n: int, h: int = 48, w: int = 64) -> FrameResult:
    masks = np.zeros((n, h, w), bool)
    boxes = np.zeros((n, 4), np.float32)
    for i in range(n):
        masks[i, 5 + i:20 + i, 10:30] = True
        boxes[i] = (10, 5 + i, 30, 20 + i)
    det = Detections(boxes, np.linspace(0.9, 0.5, n).astype(np.float32), np.ones(n, np.int64) * 2,
                     MaskRegions.from_full(masks), np.full((n, 5, 3), 12, np.float32))
    return FrameResult("s", 0, 0, TB, w, h, det, np.zeros((h, w, 3), np.uint8))


def test_frame_record_format() -> None:
    record = frame_record(_result(2), INFO)
    assert record["width"] == 64 and record["height"] == 48 and record["frame"] == 0 and record["time"] == 0
    first = record["instances"][0]
    assert first["class"] == INFO.categories[2] and first["class_id"] == 2
    assert first["box"] == [10, 5, 30, 20] and len(first["keypoints"]) == 5
    assert decode_rle(first["mask"]).sum() == 15 * 20
    assert frame_record(FrameResult("s", 1, 1, TB, 64, 48, Detections.empty(48, 64)), INFO)["instances"] == []


def test_render_draws_inside_masks_only_and_handles_no_detections() -> None:
    stage = RenderStage(RenderConfig(boxes=False, labels=False, keypoints=False, contour_px=0), INFO.to_dict())
    result = _result(1)
    (_, frame), = stage.process(result)
    changed = np.any(frame.image != 0, axis=2)
    assert np.array_equal(changed, result.detections.masks.full()[0])
    empty = FrameResult("s", 1, 1, TB, 64, 48, Detections.empty(48, 64), np.zeros((48, 64, 3), np.uint8))
    (_, frame), = stage.process(empty)
    assert not frame.image.any()
    full = draw(result.image, result.detections, INFO)  # everything on: boxes, labels, keypoints
    assert full.shape == result.image.shape and full.any()
    # a mask that is not a rectangle lands pixel for pixel (its bits are stored column by column)
    notched = np.zeros((1, 48, 64), bool)
    notched[0, 5:20, 10:40] = True
    notched[0, 5:9, 10:17] = False
    det = dataclasses.replace(result.detections, masks=MaskRegions.from_full(notched))
    drawn = draw(result.image, det, INFO, RenderConfig(boxes=False, labels=False, keypoints=False, contour_px=0))
    assert np.array_equal(np.any(drawn != 0, axis=2), notched[0])


def test_decode_then_encode_keeps_count_rate_and_pts(tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "in.mp4", frames=12)
    source = DecodeStage(InputConfig(), str(clip), "0")
    source.setup()
    messages = [m for _, m in source.produce()]
    source.close()
    assert isinstance(messages[0], StreamStart) and isinstance(messages[-1], EndOfStream)
    assert messages[-1].reason == "end" and messages[-1].frames == 12
    sink = EncodeStage(EncodeConfig(), path=str(tmp_path / "out.mp4"))
    for m in messages[:-1]:
        sink.process(m)
    sink.flush(messages[-1])
    sink.close()
    got, want = read_video(tmp_path / "out.mp4"), read_video(clip)
    assert (got["frames"], got["rate"], got["pts"]) == (want["frames"], want["rate"], want["pts"])
    assert got["pix_fmt"] == "yuv420p" and got["codec"] == "h264"
    assert (tmp_path / "out.mp4").read_bytes()[:64].find(b"moov") > 0  # index first: streams in a browser


def test_encoder_close_without_end_of_stream_leaves_a_playable_file(tmp_path: Path) -> None:
    sink = EncodeStage(EncodeConfig(), path=str(tmp_path / "out.mp4"))
    sink.process(StreamStart("s", 64, 48, Fraction(25), Fraction(1, 25), 0, "x", False))
    for i in range(5):
        sink.process(Frame("s", i, i, Fraction(1, 25), np.zeros((48, 64, 3), np.uint8)))
    sink.close()  # what an abort does
    assert read_video(tmp_path / "out.mp4")["frames"] == 5


def test_encoder_pads_odd_sizes_by_a_pixel_without_scaling(tmp_path: Path) -> None:
    import av

    rng = np.random.default_rng(0)
    # grey noise: every pixel differs from its neighbours, and 4:2:0 keeps grey (luma) exactly at crf 0
    images = [rng.integers(16, 235, (47, 63, 1), dtype=np.uint8).repeat(3, 2) for _ in range(5)]
    sink = EncodeStage(EncodeConfig(crf=0), path=str(tmp_path / "o.mp4"))
    sink.process(StreamStart("s", 63, 47, Fraction(25), TB, 0, "x", False))
    for i, image in enumerate(images):
        sink.process(Frame("s", i, i, TB, image))
    sink.flush(EndOfStream("s", 5))
    sink.close()
    with av.open(str(tmp_path / "o.mp4")) as out:
        pictures = [f.to_ndarray(format="rgb24").astype(int) for f in out.decode(video=0)]
    assert len(pictures) == 5 and pictures[0].shape == (48, 64, 3)
    for picture, image in zip(pictures, images):
        # the picture where it was (not scaled: scaling would blur every column), and its edges once more
        assert np.abs(picture[:47, :63] - image).mean() < 3
        assert np.abs(picture[:47, 63] - picture[:47, 62]).mean() < 3 and np.abs(picture[47] - picture[46]).mean() < 3


def test_mask_writer_stream_with_only_end_of_stream(tmp_path: Path) -> None:
    stage = MaskWriterStage(str(tmp_path / "m.jsonl"), INFO.to_dict())
    stage.setup()
    stage.flush(EndOfStream("s", 0))
    stage.close()
    assert (tmp_path / "m.jsonl").read_text() == ""


def test_decode_errors_say_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "text.mp4").write_text("hello, not a video\n" * 10)
    (tmp_path / "empty.mp4").write_bytes(b"")
    for name, needle in [("missing.mp4", "not found"), ("text.mp4", "cannot read"), ("empty.mp4", "empty")]:
        with pytest.raises(InputError, match=needle):
            DecodeStage(InputConfig(), str(tmp_path / name), "0").setup()


def test_audio_is_copied_in_sync(tmp_path: Path) -> None:
    import av

    clip = make_clip(tmp_path / "av.mp4", frames=30, audio=True)
    messages, _ = decode_all(str(clip))
    assert messages[0].audio and messages[0].source == str(clip)
    encode_all(messages, tmp_path / "out.mp4")
    info = read_video(tmp_path / "out.mp4")
    assert info["audio"] == "aac" and info["frames"] == 30
    with av.open(str(tmp_path / "out.mp4")) as out, av.open(str(clip)) as src:
        got = [p.pts for p in out.demux(audio=0) if p.pts is not None]
        want = [p.pts for p in src.demux(audio=0) if p.pts is not None]
        assert got == want  # remuxed packet for packet: same timestamps, so the same sync
        assert out.streams.audio[0].time_base == src.streams.audio[0].time_base


def test_audio_mp4_cannot_hold_is_reencoded_to_aac(tmp_path: Path) -> None:
    import av

    src = tmp_path / "pcm.mkv"
    with av.open(str(src), "w") as out:
        video = out.add_stream("libx264", rate=25)
        video.width, video.height, video.pix_fmt = 160, 120, "yuv420p"
        audio = out.add_stream("pcm_s16le", rate=16000)
        audio.layout = "mono"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((120, 160, 3), i * 8, np.uint8), format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
            pcm = av.AudioFrame.from_ndarray(np.zeros((1, 640), np.int16), format="s16", layout="mono")
            pcm.sample_rate, pcm.pts = 16000, i * 640
            out.mux(audio.encode(pcm))
        out.mux(video.encode())
        out.mux(audio.encode())
    messages, _ = decode_all(str(src))
    encode_all(messages, tmp_path / "out.mp4")
    info = read_video(tmp_path / "out.mp4")
    assert info["audio"] == "aac" and info["frames"] == 25
    with av.open(str(tmp_path / "out.mp4")) as out:
        seconds = sum(f.samples for f in out.decode(audio=0)) / out.streams.audio[0].sample_rate
    assert abs(seconds - 1.0) < 0.1  # all of the one second of audio, no more


def test_loop_restarts_a_file_with_increasing_timestamps(clip: Path, tmp_path: Path) -> None:
    messages, _ = decode_all(str(clip), InputConfig(loop=True, max_frames=100))
    frames = [m for m in messages if isinstance(m, Frame)]
    assert [f.index for f in frames] == list(range(100))
    assert messages[0].frames == 100 and messages[-1].reason == "end" and messages[-1].frames == 100
    encode_all(messages, tmp_path / "out.mp4")
    out = read_video(tmp_path / "out.mp4")
    assert out["frames"] == 100 and out["pts"] == [f.pts for f in frames]
    assert all(b > a for a, b in zip(out["pts"], out["pts"][1:]))


def test_an_image_folder_and_a_glob_give_the_frames_pictures(clip: Path, tmp_path: Path) -> None:
    from conftest import decoded

    folder = tmp_path / "frames"
    folder.mkdir()
    pictures = [image for _, image in decoded(clip)]
    for i, image in enumerate(pictures):
        cv2.imwrite(str(folder / f"{i:04d}.png"), image[:, :, ::-1])
    (folder / "notes.txt").write_text("not an image")
    for source, count in ((str(folder), 48), (str(folder / "00[0-2]*.png"), 30)):
        messages, _ = decode_all(source, InputConfig(fps=10))
        start, *frames, end = messages
        assert (start.width, start.height, start.rate, start.frames, start.live) == (322, 242, 10, count, False)
        assert [f.index for f in frames] == list(range(count)) and end.frames == count and end.reason == "end"
        assert all(np.array_equal(f.image, p) for f, p in zip(frames, pictures))  # PNG: the very pixels
        assert [f.pts for f in frames] == list(range(count)) and frames[0].time_base == Fraction(1, 10)


def test_labels_at_320x240_stay_inside_the_frame_and_apart_where_there_is_room() -> None:
    import cv2

    from streamseg.stages.render import label_text, place_labels, text_scale

    width, height = 320, 240
    scale = text_scale(width, height)
    # three shapes side by side near the top, one at the right edge, one in the bottom-left corner
    boxes = np.array([[20, 4, 80, 60], [70, 8, 130, 70], [120, 2, 180, 50], [270, 100, 320, 160], [0, 200, 40, 240]],
                     np.float32)
    texts = [label_text(INFO, 2, 0.97)] * len(boxes)  # "rectangle 0.97", the longest of the shipped classes
    sizes = [(w + 2, h + base + 1) for (w, h), base in (cv2.getTextSize(t, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
                                                       for t in texts)]
    assert sizes[0][1] <= height // 16 and sizes[0][0] <= width // 4  # small for the frame, still 7+ px high
    spots = place_labels(boxes, sizes, width, height)
    for x, y, w, h in spots:
        assert 0 <= x and x + w <= width and 0 <= y and y + h <= height
    for i, a in enumerate(spots):
        for b in spots[i + 1:]:
            assert not (a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3])
    # drawn last: a keypoint under a label does not show through it
    image = np.zeros((height, width, 3), np.uint8)
    det = Detections(boxes[:1], np.array([0.97], np.float32), np.array([2]), None,
                     np.array([[[spots[0][0] + 3, spots[0][1] + 3, 1.0]] * 5], np.float32))
    drawn = draw(image, det, INFO, RenderConfig(boxes=False, keypoints=True))
    x, y, w, h = spots[0]
    label_colour = drawn[y + h - 1, x + w - 1]
    assert label_colour.any() and not (drawn[y:y + h, x:x + w] == 255).all(axis=2).any()  # no white marker


def test_the_budget_policy_drops_only_what_would_be_late_and_never_a_streams_newest() -> None:
    import time as clock

    stage = _live("budget")
    assert stage.caps == {"s": 64} and stage.budget_s == 0.5  # 64x48 frames: the count bounds memory, not the bytes
    now = clock.time()
    # a burst that arrives while the model is busy: all of it gets through, nothing was late
    for i in range(3):
        assert list(stage.process(dataclasses.replace(_frame(i), captured=now - 0.01 * i))) == []
    (_, batch), = stage.on_room()
    assert [f.index for f in batch.frames] == [0, 1, 2] and "dropped" not in stage.counters
    stage.acknowledged("batches", batch, True)  # done (its time is not known: the model's stays unknown)
    # the model is behind: frames older than the budget go, the stream's newest stays, whatever its age
    for i, age in ((3, 0.9), (4, 0.6), (5, 0.2), (6, 0.1)):
        stage.process(dataclasses.replace(_frame(i), captured=now - age))
    (_, batch), = stage.on_room()
    assert [f.index for f in batch.frames] == [5, 6] and stage.counters["dropped"] == 2
    stage.acknowledged("batches", batch, True)
    for i in (7, 8):
        stage.process(dataclasses.replace(_frame(i), captured=now - 5.0))
    (_, batch), = stage.on_room()
    assert [f.index for f in batch.frames] == [8]  # late, but the newest: a slow model still sees the stream
    # a model that takes 0.1 s a frame took that batch just now: the next holds what can be done within the budget
    stage.frame_s = 0.1
    stage.acknowledged("batches", batch, False)
    for i, age in ((9, 0.35), (10, 0.2), (11, 0.03), (12, 0.0)):
        stage.process(dataclasses.replace(_frame(i), captured=now - age))
    (_, batch), = stage.on_room()
    # 9 would be through the model 0.35 + 0.1 (the batch it runs) + 0.1 (its own) = 0.55 s after capture, and
    # the stages after it have the last 0.05 s: late, dropped; 10 fits, and no frame after it
    assert [f.index for f in batch.frames] == [10] and stage.counters["dropped"] == 4
    assert stage.holds() == frozenset({("s", 11), ("s", 12)})  # the next batch's


def test_the_budget_policy_times_the_model_by_the_batches_it_takes() -> None:
    stage = _live("budget")
    stage.process(_frame(0))
    (_, first), = stage.on_room()
    stage.acknowledged("batches", first, False)  # the model starts on it
    stage.process(_frame(1))
    stage.process(_frame(2))
    (_, second), = stage.on_room()  # sent the moment the model took the first: it waits for all of it
    time.sleep(0.05)
    stage.acknowledged("batches", second, False)  # taken: the model is done with the first
    assert 0.05 <= stage.frame_s < 1.0 and stage.running is not None and stage.running.batch is second
    measured = stage.frame_s
    time.sleep(0.05)  # the model is idle when the next batch goes, and is slow to take it (a busy machine)
    stage.process(_frame(3))
    (_, third), = stage.on_room()
    time.sleep(0.02)
    stage.acknowledged("batches", third, False)
    stage.process(_frame(4))
    (_, fourth), = stage.on_room()
    time.sleep(0.1)
    stage.acknowledged("batches", third, False)  # sent again, to a restarted inference stage
    assert stage.frame_s == measured and stage.running.batch is third  # neither wait was the model's
    for batch in (first, second, third, fourth):
        stage.acknowledged("batches", batch, True)
    assert stage.flight == {} and stage.running.batch is None  # a batch is kept only while it is on its way


def test_the_budget_policy_sends_at_a_streams_end_only_what_is_still_in_time() -> None:
    import time as clock

    stage = _live("budget")
    now = clock.time()
    for i, age in ((0, 2.0), (1, 1.0), (2, 0.1), (3, 1.5)):  # 3: the newest, late but kept
        stage.process(dataclasses.replace(_frame(i), captured=now - age))
    out = list(stage.flush(EndOfStream("s", 4)))
    assert [f.index for _, b in out for f in b.frames] == [2, 3] and stage.counters["dropped"] == 2


def test_the_budget_policy_serves_every_live_stream() -> None:
    import time as clock

    stage = BatchStage(BatchConfig(max_batch=4, live_policy="budget"))
    for sid in ("a", "b"):
        list(stage.process(StreamStart(sid, 64, 48, Fraction(25), TB, 0, "rtsp://x", False, live=True)))
    stage.process(dataclasses.replace(_frame(0), stream_id="a"))
    stage.process(dataclasses.replace(_frame(1), stream_id="a"))
    (_, running), = stage.on_room()
    stage.frame_s = 0.1
    stage.acknowledged("batches", running, False)  # the model took 2 frames just now: 0.2 s ahead
    now = clock.time()
    stage.process(dataclasses.replace(_frame(2), stream_id="a", captured=now - 0.15))
    stage.process(dataclasses.replace(_frame(0), stream_id="b", captured=now - 0.05))
    (_, batch), = stage.on_room()  # room for one frame in the budget, but each stream's newest goes
    assert [f.stream_id for f in batch.frames] == ["a", "b"]


def test_max_fps_makes_each_batch_take_its_frames_share_of_a_second() -> None:
    from streamseg.config import ModelConfig
    from streamseg.stages.infer import InferStage

    stage = InferStage(ModelConfig(name="tiny-random", max_fps=40.0), ports=("masks",))
    stage.setup()
    for first in range(0, 12, 4):  # the first batch too: a slower model would take longer on it as well
        started = time.monotonic()
        out = list(stage.process(Batch(tuple(_frame(i) for i in range(first, first + 4)))))
        assert time.monotonic() - started >= 4 / 40 and len(out) == 4  # no faster than 40 frames a second
