"""Tracking evaluation: TrackEval's HOTA, IDF1, MOTA and ID switches, and YouTube-VIS track AP."""

from __future__ import annotations

import copy
import importlib.util
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from streamseg.errors import InputError
from streamseg.masks import encode_rle
from streamseg.tools.evaluate import load_ground_truth
from streamseg.tools.suite import pool_scene
from streamseg.tools.synth import write_video
from streamseg.tools.tracking_eval import (
    format_tracking,
    has_track_ids,
    track_ap,
    tracking_metrics,
    tracking_report,
)

needs_trackeval = pytest.mark.skipif(importlib.util.find_spec("trackeval") is None,
                                     reason="needs TrackEval: pip install --no-deps trackeval==1.3.0")


def _load(gt: dict, path: Path) -> Any:
    path.write_text(json.dumps(gt))
    return load_ground_truth(path)


def _records(gt: dict, keep: Callable[[dict], bool] = lambda ann: True,
             track: Callable[[dict, int], int] = lambda ann, frame: ann["track_id"]) -> list[dict]:
    """The ground truth fed back as masks JSONL records: its objects (not crowd) that ``keep`` keeps,
    with the track id ``track`` gives (ann, frame)."""
    by_frame: dict[int, list] = {im["frame_index"]: [] for im in gt["images"]}
    frame_of = {im["id"]: im["frame_index"] for im in gt["images"]}
    for ann in gt["annotations"]:
        if ann["iscrowd"] or not keep(ann):
            continue
        frame = frame_of[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        by_frame[frame].append({"class_id": ann["category_id"], "score": 0.9, "box": [x, y, x + w, y + h],
                                "mask": ann["segmentation"], "track_id": track(ann, frame)})
    return [{"frame": f, "instances": insts} for f, insts in sorted(by_frame.items())]


def _squares(frames: int = 10) -> dict:
    """A 40x40 clip: object 1 (8x8) on top and object 2 below, both moving right 2 px a frame, and a
    still 10x10 crowd region in the bottom-right corner that neither reaches."""
    images, annotations = [], []
    for t in range(frames):
        boxes = {1: (4, 2 + 2 * t, 8, False), 2: (24, 2 + 2 * t, 8, False), 3: (30, 30, 10, True)}
        images.append({"id": t + 1, "frame_index": t, "width": 40, "height": 40})
        for track_id, (y, x, side, crowd) in boxes.items():
            mask = np.zeros((1, 40, 40), bool)
            mask[0, y:y + side, x:x + side] = True
            annotations.append({"id": len(annotations) + 1, "image_id": t + 1, "category_id": 1,
                                "segmentation": encode_rle(mask)[0], "area": side * side, "bbox": [x, y, side, side],
                                "iscrowd": int(crowd), "track_id": track_id})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "square"}]}


def _with_box(records: list[dict], y: int, x: int, side: int, track_id: int) -> list[dict]:
    """``records`` with one more square predicted in every frame, scored above the others."""
    mask = np.zeros((1, 40, 40), bool)
    mask[0, y:y + side, x:x + side] = True
    extra = {"class_id": 1, "score": 1.0, "box": [x, y, x + side, y + side], "mask": encode_rle(mask)[0],
             "track_id": track_id}
    return [{**r, "instances": r["instances"] + [extra]} for r in records]


@pytest.fixture(scope="module")
def squares(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Any]:
    gt = _squares()
    return gt, _load(gt, tmp_path_factory.mktemp("squares") / "gt.json")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[dict, Any]]:
    """Two synthetic scenes' ground truth (dict, COCO)."""
    folder = tmp_path_factory.mktemp("synth")
    scenes = []
    for seed in (9, 3):
        gt = write_video(folder / f"{seed}.mp4", folder / f"{seed}.json", seed=seed, frames=30)
        scenes.append((gt, load_ground_truth(folder / f"{seed}.json")))
    return scenes


@needs_trackeval
def test_ground_truth_fed_back_scores_one(synth) -> None:
    scenes = [(_records(gt), coco) for gt, coco in synth]
    result = tracking_metrics(scenes, names=["a", "b"])
    for figures in (*result["scenes"].values(), result["pooled"]):
        for key in ("HOTA", "DetA", "AssA", "IDF1", "MOTA"):
            assert figures[key] == pytest.approx(1.0), key
        assert figures["IDSW"] == figures["FP"] == figures["FN"] == 0
        assert figures["gt_ids"] == figures["pred_ids"] > 0
    assert result["pooled"]["frames"] == 60
    assert track_ap(scenes) == pytest.approx({"AP": 1.0, "AP50": 1.0, "AP75": 1.0})
    assert "worst scene by HOTA" in format_tracking(result, track_ap(scenes))


@needs_trackeval
def test_swapped_ids_are_two_id_switches(squares) -> None:
    gt, coco = squares
    swapped = _records(gt, track=lambda ann, frame: 3 - ann["track_id"] if frame >= 5 else ann["track_id"])
    figures = tracking_metrics([(swapped, coco)])["pooled"]
    assert figures["IDSW"] == 2
    # 20 detections, all matched at IoU 1: MOTA = 1 - IDSW / 20
    assert figures["MOTA"] == pytest.approx(0.9)
    # the best one-to-one id pairing (1 with 1, 2 with 2) agrees on 5 frames of 10 each:
    # IDTP 10, IDFP 10, IDFN 10, IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN) = 20 / 40
    assert figures["IDF1"] == pytest.approx(0.5)
    # every matched pair shares 5 of 15 frames of its two ids: AssA 1/3, DetA 1, HOTA = sqrt(1/3)
    assert figures["AssA"] == pytest.approx(1 / 3) and figures["HOTA"] == pytest.approx(np.sqrt(1 / 3))


@needs_trackeval
def test_missed_detections_lower_mota_by_misses_over_objects(squares) -> None:
    gt, coco = squares
    frame_of = {im["id"]: im["frame_index"] for im in gt["images"]}
    dropped = _records(gt, keep=lambda ann: not (ann["track_id"] == 1 and 3 <= frame_of[ann["image_id"]] < 6))
    figures = tracking_metrics([(dropped, coco)])["pooled"]
    assert figures["FN"] == 3 and figures["IDSW"] == 0  # the same id when it comes back: no switch
    assert figures["MOTA"] == pytest.approx(1 - 3 / 20)


@needs_trackeval
def test_detection_inside_a_crowd_region_is_not_a_false_positive(squares) -> None:
    gt, coco = squares
    in_crowd = tracking_metrics([(_with_box(_records(gt), 31, 31, 8, track_id=7), coco)])["pooled"]
    assert in_crowd["FP"] == 0 and in_crowd["MOTA"] == pytest.approx(1.0) and in_crowd["HOTA"] == pytest.approx(1.0)
    elsewhere = tracking_metrics([(_with_box(_records(gt), 14, 30, 8, track_id=7), coco)])["pooled"]
    assert elsewhere["FP"] == 10 and elsewhere["MOTA"] == pytest.approx(1 - 10 / 20)
    # as a track: ignored in the crowd; elsewhere a false positive ranked first, so precision is 1/2 at
    # recall 1/2 and 2/3 at recall 1, and COCO's interpolated precision 2/3 at every recall
    assert track_ap([(_with_box(_records(gt), 31, 31, 8, track_id=7), coco)])["AP"] == pytest.approx(1.0)
    assert track_ap([(_with_box(_records(gt), 14, 30, 8, track_id=7), coco)])["AP"] == pytest.approx(2 / 3)


def test_track_ap_drops_when_a_track_is_split(synth) -> None:
    gt, coco = synth[0]
    objects = [a for a in gt["annotations"] if not a["iscrowd"]]
    longest = max({a["track_id"] for a in objects}, key=lambda t: sum(a["track_id"] == t for a in objects))
    split = _records(gt, track=lambda ann, frame: 1000 if ann["track_id"] == longest and frame >= 15
                     else ann["track_id"])
    assert track_ap([(split, coco)])["AP"] < 1.0
    assert track_ap([(_records(gt), coco)])["AP"] == pytest.approx(1.0)


@needs_trackeval
def test_pooled_figures_are_trackevals_combination(synth, tmp_path: Path) -> None:
    # each scene's tracks get new ids halfway (ID switches, IDF1 < 1); pooled = one sequence of both
    def split(ann: dict, frame: int) -> int:
        return ann["track_id"] + (100 if frame >= 15 else 0)

    scenes = [(_records(gt, track=split), coco) for gt, coco in synth]
    pooled = tracking_metrics(scenes)["pooled"]
    assert pooled["IDF1"] < 1 and pooled["IDSW"] > 0
    records_all: list[dict] = []
    gt_all: dict = {"images": [], "annotations": [], "categories": []}
    for n, (gt, _) in enumerate(synth):
        moved = copy.deepcopy(gt)  # ids of the second scene moved off the first's
        for ann in moved["annotations"]:
            ann["track_id"] += 1000 * n
        pool_scene(_records(moved, track=split), moved, records_all, gt_all)
    one = tracking_metrics([(records_all, _load(gt_all, tmp_path / "all.json"))])["pooled"]
    assert one == pytest.approx(pooled)


@needs_trackeval
def test_no_predictions_and_bad_input(squares) -> None:
    gt, coco = squares
    empty = [{"frame": r["frame"], "instances": []} for r in _records(gt)]
    figures = tracking_metrics([(empty, coco)])["pooled"]
    assert figures["HOTA"] == figures["IDF1"] == figures["pred_ids"] == 0 and figures["FN"] == 20
    assert track_ap([(empty, coco)]) == {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    assert "HOTA 0.000" in format_tracking(tracking_metrics([(empty, coco)]))
    untracked = _records(gt)
    del untracked[4]["instances"][0]["track_id"]
    with pytest.raises(InputError, match="track_id"):
        tracking_metrics([(untracked, coco)])


def test_has_track_ids(squares, tmp_path: Path) -> None:
    gt, coco = squares
    assert has_track_ids(coco)
    plain = copy.deepcopy(gt)
    for ann in plain["annotations"]:
        del ann["track_id"]
    assert not has_track_ids(_load(plain, tmp_path / "plain.json"))


@needs_trackeval
def test_streamseg_eval_s_tracking_report_says_why_when_it_has_no_figures(squares, tmp_path: Path) -> None:
    gt, coco = squares
    text, figures = tracking_report(_records(gt), coco)
    assert figures is not None and figures["metrics"]["pooled"]["IDF1"] == pytest.approx(1.0)
    assert text.startswith("tracking over 1 scene(s)") and "track AP 1.000" in text
    untracked = [{**r, "instances": [{k: v for k, v in i.items() if k != "track_id"} for i in r["instances"]]}
                 for r in _records(gt)]
    assert tracking_report(untracked, coco) == (
        "no tracking figures: the predictions have no track_id (a run with track.enabled: false?)", None)
    plain = copy.deepcopy(gt)
    for ann in plain["annotations"]:
        del ann["track_id"]
    assert tracking_report(_records(gt), _load(plain, tmp_path / "plain.json"))[1] is None
