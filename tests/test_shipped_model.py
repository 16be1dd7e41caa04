"""The shipped default model, through the real multi-process pipeline, against exact ground truth."""

from __future__ import annotations

import json
from pathlib import Path


from conftest import read_jsonl, read_video
from streamseg.models.registry import SHIPPED_WEIGHTS
from streamseg.synth import write_video



def test_shipped_model_reaches_an_ap_floor_through_the_pipeline(cli, tmp_path: Path) -> None:
    write_video(tmp_path / "clip.mp4", tmp_path / "gt.json", seed=21, frames=60)  # a held-out seed
    run = cli.run("run", "clip.mp4", "-o", "out.mp4", "--masks", "m.jsonl", "-q")  # the default model
    assert run.returncode == 0, run.stderr
    assert read_video(tmp_path / "out.mp4")["frames"] == 60 and len(read_jsonl(tmp_path / "m.jsonl")) == 60
    result = cli.run("eval", "m.jsonl", "gt.json", "--json", "stats.json")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["segm"]["AP"] >= 0.5, stats["segm"]
    assert stats["bbox"]["AP"] >= 0.5, stats["bbox"]
    assert stats["keypoints"]["AP"] >= 0.3, stats["keypoints"]


def test_demo_prints_ap_and_fps(cli, tmp_path: Path) -> None:
    result = cli.run("demo", "--frames", "30", "--out", "d", "-q", timeout=240)
    assert result.returncode == 0, result.stderr
    assert "mask AP" in result.stdout and "keypoint AP" in result.stdout and "fps" in result.stdout
    for name in ("annotated.mp4", "masks.jsonl", "input.mp4", "ground_truth.json"):
        assert (tmp_path / "d" / name).is_file()
    assert read_video(tmp_path / "d" / "annotated.mp4")["frames"] == 30


def test_model_card_matches_the_shipped_weights() -> None:
    card = json.loads(Path(SHIPPED_WEIGHTS).with_suffix(".json").read_text())
    assert card["name"] == "streamseg-small" and card["keypoint_names"] and card["skeleton"]
    assert Path(SHIPPED_WEIGHTS).stat().st_size <= 15 * 1024 * 1024
    accuracy = card["accuracy"]
    assert accuracy["frames"] == 300 and accuracy["size"] == [320, 240]
