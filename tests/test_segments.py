"""Recording in segments (``output.segment_s``): one complete MP4 and masks file per segment."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

import pytest
from conftest import CLI, TEST_MODEL, make_clip, read_jsonl, read_video

from streamseg.formats.segments import segment_of


def test_a_frame_s_segment_and_its_name_by_start_time() -> None:
    started = calendar.timegm((2026, 12, 5, 14, 0, 0))
    assert segment_of("/rec/cam1.mp4", started, 0.0, 60) == (0, "/rec/cam1-20261205T140000Z.mp4")
    assert segment_of("/rec/cam1.mp4", started, 59.99, 60) == (0, "/rec/cam1-20261205T140000Z.mp4")
    assert segment_of("/rec/cam1.jsonl", started, 3600.0, 60) == (60, "/rec/cam1-20261205T150000Z.jsonl")


@pytest.mark.slow
def test_every_segment_is_a_whole_video_with_the_same_frames_as_its_masks(cli: CLI, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=30)  # 30000/1001 fps: 60 frames in 2 s
    before = time.time()
    result = cli.run("run", str(clip), "-o", "out.mp4", "--masks", "out.jsonl", "--loop", "--frames", "150",
                     "--set", "output.segment_s=2", *TEST_MODEL, "-q")
    assert result.returncode == 0, result.stderr
    videos, masks = sorted(tmp_path.glob("out-*.mp4")), sorted(tmp_path.glob("out-*.jsonl"))
    assert [v.stem for v in videos] == [m.stem for m in masks] and len(videos) == 3
    start = time.strptime(videos[0].stem.removeprefix("out-"), "%Y%m%dT%H%M%SZ")
    assert abs(calendar.timegm(start) - before) < 60  # named by when the stream started
    frames = []
    for video, mask in zip(videos, masks):
        records = read_jsonl(mask)
        assert read_video(video)["frames"] == len(records)
        frames += [r["frame"] for r in records]
    assert frames == list(range(150))  # every frame once, in order, across the segments
    assert [len(read_jsonl(m)) for m in masks] == [60, 60, 30]
