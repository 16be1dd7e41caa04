"""Synthetic video with exact ground truth, and COCO evaluation that can fail."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from streamseg.errors import InputError
from streamseg.masks import decode_rle, encode_rle
from streamseg.tools.evaluate import evaluate, load_ground_truth
from streamseg.tools.synth import _SUBPIXEL, Scene, write_video


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    a = write_video(tmp_path / "a.mp4", tmp_path / "a.json", seed=11, frames=20)
    b = write_video(tmp_path / "b.mp4", tmp_path / "b.json", seed=11, frames=20)
    c = write_video(tmp_path / "c.mp4", None, seed=12, frames=20)
    def unnamed(images: list[dict]) -> list[dict]:
        return [{k: v for k, v in im.items() if k != "file_name"} for im in images]

    assert a["annotations"] == b["annotations"] and unnamed(a["images"]) == unnamed(b["images"])
    assert a["annotations"] != c["annotations"]
    for (ia, ga), (ib, gb) in zip(Scene(11).frames(20), Scene(11).frames(20)):
        assert np.array_equal(ia, ib) and len(ga) == len(gb)
    assert json.loads((tmp_path / "a.json").read_text())["categories"][0]["keypoints"]


def test_masks_are_exactly_the_visible_pixels() -> None:
    scene = Scene(5)
    checked = 0
    for _, instances in scene.frames(40):
        shapes = {s.track_id: s for s in scene.shapes}
        polygons = {}
        for track, shape in shapes.items():
            full = np.zeros((scene.height, scene.width), np.uint8)
            cv2.fillPoly(full, [np.round(shape.outline() * (1 << _SUBPIXEL)).astype(np.int32)], 1, shift=_SUBPIXEL)
            polygons[track] = full.astype(bool)
        owners = np.zeros((scene.height, scene.width), int)
        for inst in instances:
            owners += inst.mask
            assert not (inst.mask & ~polygons[inst.track_id]).any()  # only pixels of its own shape
        assert owners.max() <= 1  # an occluded pixel belongs to one instance only
        union = np.logical_or.reduce(list(polygons.values())) if polygons else np.zeros_like(owners, bool)
        assert np.array_equal(owners.astype(bool), union)  # every pixel some shape covers is owned
        # the front-most shape is never occluded: its mask is its whole polygon
        front = scene.shapes[-1].track_id
        front_inst = [i for i in instances if i.track_id == front]
        if front_inst:
            assert np.array_equal(front_inst[0].mask, polygons[front])
        checked += len(instances)
        scene.step()
    assert checked > 100


def test_synth_ground_truth_is_consistent(tmp_path: Path) -> None:
    gt = write_video(tmp_path / "v.mp4", tmp_path / "v.json", seed=3, frames=30)
    assert [im["frame_index"] for im in gt["images"]] == list(range(30))
    assert {c["id"] for c in gt["categories"]} == {1, 2, 3, 4}
    tracks_per_frame: dict[int, set[int]] = {}
    for ann in gt["annotations"]:
        mask = decode_rle(ann["segmentation"])
        assert mask.shape == (240, 320) and mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        assert len(ann["keypoints"]) == 15 and ann["num_keypoints"] == sum(v > 0 for v in ann["keypoints"][2::3])
        assert ann["track_id"] not in tracks_per_frame.setdefault(ann["image_id"], set())
        tracks_per_frame[ann["image_id"]].add(ann["track_id"])
    # objects enter and leave: the set of tracks changes over the clip
    assert len({t for ts in tracks_per_frame.values() for t in ts}) > max(len(ts) for ts in tracks_per_frame.values())


def _gt_as_records(gt: dict, keep=lambda ann: not ann["iscrowd"]) -> list[dict]:
    by_frame: dict[int, list] = {im["frame_index"]: [] for im in gt["images"]}
    frame_of = {im["id"]: im["frame_index"] for im in gt["images"]}
    for ann in gt["annotations"]:
        if not keep(ann):
            continue
        x, y, w, h = ann["bbox"]
        kp = ann["keypoints"]
        by_frame[frame_of[ann["image_id"]]].append({
            "class_id": ann["category_id"], "score": 1.0, "box": [x, y, x + w, y + h], "mask": ann["segmentation"],
            "keypoints": [kp[i:i + 3] for i in range(0, len(kp), 3)]})
    return [{"frame": f, "instances": insts} for f, insts in sorted(by_frame.items())]


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, object]:
    path = tmp_path_factory.mktemp("gt") / "gt.json"
    gt = write_video(path.with_suffix(".mp4"), path, seed=9, frames=40)
    return gt, load_ground_truth(path)


def test_ground_truth_fed_back_scores_ap_one(ground_truth) -> None:
    gt, coco = ground_truth
    stats = evaluate(_gt_as_records(gt), coco, verbose=False)
    assert stats["bbox"]["AP"] == pytest.approx(1.0) and stats["segm"]["AP"] == pytest.approx(1.0)
    with_keypoints = evaluate(_gt_as_records(gt, lambda a: not a["iscrowd"] and a["num_keypoints"] > 0), coco,
                              verbose=False)
    assert with_keypoints["keypoints"]["AP"] == pytest.approx(1.0)


def test_val2017_style_ground_truth_matches_frames_in_image_order(ground_truth, tmp_path: Path) -> None:
    gt, _ = ground_truth
    plain = copy.deepcopy(gt)
    for image in plain["images"]:  # a user's own COCO file: no frame_index, ids in frame order
        del image["frame_index"]
        image["id"] += 1000
    for ann in plain["annotations"]:
        ann["image_id"] += 1000
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    stats = evaluate(_gt_as_records(gt), load_ground_truth(tmp_path / "plain.json"), verbose=False)
    assert stats["segm"]["AP"] == pytest.approx(1.0)


def test_shifted_masks_and_wrong_classes_score_less(ground_truth) -> None:
    gt, coco = ground_truth
    shifted = copy.deepcopy(_gt_as_records(gt))
    for record in shifted:
        for inst in record["instances"]:
            mask = np.roll(decode_rle(inst["mask"]), 3, axis=1)
            inst["mask"] = encode_rle(mask[None])[0]
            inst["box"] = [inst["box"][0] + 3, inst["box"][1], inst["box"][2] + 3, inst["box"][3]]
            inst["keypoints"] = [[x + 3, y, v] for x, y, v in inst["keypoints"]]
    wrong = copy.deepcopy(_gt_as_records(gt))
    for record in wrong:
        for inst in record["instances"]:
            inst["class_id"] = inst["class_id"] % 4 + 1
    s_shift = evaluate(shifted, coco, verbose=False)
    s_wrong = evaluate(wrong, coco, verbose=False)
    assert s_shift["segm"]["AP"] < 0.8 and s_shift["bbox"]["AP"] < 0.9 and s_shift["keypoints"]["AP"] < 0.8
    assert s_wrong["segm"]["AP"] < 0.05 and s_wrong["bbox"]["AP"] < 0.05
    empty = [{"frame": r["frame"], "instances": []} for r in _gt_as_records(gt)]
    assert evaluate(empty, coco, verbose=False)["segm"]["AP"] == 0.0  # nothing found in any frame


@pytest.mark.parametrize("change, needle", [
    (lambda rs: rs[:-5], "the predictions hold 35 frames and the ground truth 40 images"),
    (lambda rs: [{**r, "width": 640, "height": 360} for r in rs], "are of 640x360 frames and the ground truth's "
                                                                  "images are 320x240"),
    (lambda rs: [{**r, "instances": [{**i, "class_id": 9} for i in r["instances"]]} for r in rs],
     "predicted class ids 9 are not ground-truth categories (1, 2, 3, 4)"),
    (lambda rs: [{**r, "instances": [{**i, "keypoints": i["keypoints"] * 4}
                                     for i in r["instances"]]} for r in rs], "20 keypoints per instance"),
])
def test_eval_refuses_predictions_of_another_clip_or_model(ground_truth, change, needle) -> None:
    gt, coco = ground_truth
    records = [{**r, "width": 320, "height": 240} for r in _gt_as_records(gt)]
    with pytest.raises(InputError) as caught:
        evaluate(change(records), coco, verbose=False)
    assert needle in str(caught.value) and len(str(caught.value)) < 300


def test_eval_cli_prints_the_ap_tables(cli, tmp_path: Path, ground_truth) -> None:
    gt, _ = ground_truth
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _gt_as_records(gt)))
    result = cli.run("eval", "pred.jsonl", "gt.json", "--json", "stats.json")
    assert result.returncode == 0, result.stderr
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in result.stdout
    assert "--- segm ---" in result.stdout and "--- keypoints ---" in result.stdout
    assert json.loads((tmp_path / "stats.json").read_text())["segm"]["AP"] == pytest.approx(1.0)
    bad = cli.run("eval", "pred.jsonl", "missing.json")
    assert bad.returncode == 3 and "ground truth not found" in bad.stderr


def test_synth_cli(cli, tmp_path: Path) -> None:
    result = cli.run("synth", "s.mp4", "--gt", "s.json", "--frames", "12", "--size", "160x120", "--fps", "30000/1001")
    assert result.returncode == 0, result.stderr
    from conftest import read_video

    info = read_video(tmp_path / "s.mp4")
    assert (info["frames"], info["width"], info["height"]) == (12, 160, 120)
    assert str(info["rate"]) == "30000/1001"
    assert len(json.loads((tmp_path / "s.json").read_text())["images"]) == 12
    assert cli.run("synth", "s.mp4", "--gt", "s.json", "--size", "161x120").returncode == 2


def test_train_cli_runs_and_writes_a_model_card(cli, tmp_path: Path) -> None:
    result = cli.run("train", "--out", "w", "--iters", "2", "--batch", "1", "--eval-frames", "3", "-q", timeout=180)
    assert result.returncode == 0, result.stderr
    card = json.loads((tmp_path / "w" / "streamseg_small.json").read_text())
    assert card["classes"][1:] == ["circle", "rectangle", "triangle", "star"]
    assert card["training"]["iters"] == 2 and card["training"]["seed"] == 0
    assert {"mask_AP", "box_AP", "keypoint_AP"} <= set(card["accuracy"])
    # the weights load into the registered architecture
    write_video(tmp_path / "c.mp4", None, seed=1, frames=3)
    run = cli.run("run", "c.mp4", "--masks", "m.jsonl",
                  "--weights", str(tmp_path / "w" / "streamseg_small.pt"), "--score-thresh", "0.0", "-q")
    assert run.returncode == 0, run.stderr


def test_eval_takes_ground_truth_of_some_frames_and_of_fewer_classes(ground_truth) -> None:
    """Ground truth may annotate some frames only (by frame_index), and lack classes a model predicts."""
    gt, coco = ground_truth
    records = _gt_as_records(gt)
    extra = [{**r, "instances": [*r["instances"], {**r["instances"][0], "class_id": 9}] if r["instances"] else []}
             for r in records]
    extra.append({"frame": 999, "instances": []})  # a frame the ground truth does not annotate
    assert evaluate(extra, coco, verbose=False)["segm"]["AP"] == pytest.approx(1.0)


def test_held_out_scenes_are_never_training_scenes(cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import assert_clean_error

    from streamseg.tools import synth
    from streamseg.tools.suite import SCENES
    from streamseg.tools.synth import TRAIN_SEED_FLOOR, is_training_seed, random_frame

    # every training frame's scene is drawn at or above the floor (the shipped weights predate this: their
    # 16,000 scenes, replayed, held five seeds below it, 199654 to 1046223, none a seed used here)
    seeds: list[int] = []
    real_scene = synth.Scene

    def scene(seed: int, *args, **kwargs):  # type: ignore[no-untyped-def]
        seeds.append(seed)
        return real_scene(seed, 32, 24, *args[2:], **kwargs)  # tiny frames: only the seed matters here

    monkeypatch.setattr(synth, "Scene", scene)
    for i in range(2000):
        random_frame(np.random.default_rng(i))
    assert len(seeds) == 2000 and min(seeds) >= TRAIN_SEED_FLOOR
    held_out = [s.seed for s in SCENES] + [7, 1, 3, 5, 9, 11, 12]  # the suite's, the demo's, the tests'
    assert not any(is_training_seed(seed) for seed in held_out)
    result = cli.run("demo", "--seed", str(TRAIN_SEED_FLOOR), "--frames", "2")
    assert_clean_error(result, "training scenes")


def test_scene_styles_make_the_scenes_they_name() -> None:
    from streamseg.tools.suite import SCENES
    from streamseg.tools.synth import STYLES

    CROWDED, SAME_COLOUR, SMALL, SPARSE = (STYLES[k] for k in ("crowded", "same-colour", "small", "sparse"))

    assert len(SCENES) >= 24 and {s.size for s in SCENES} == {(320, 240), (640, 360), (1280, 720)}
    assert len({s.seed for s in SCENES}) == len(SCENES)
    assert len(Scene(5, style=CROWDED).shapes) >= 9 and len(Scene(5, style=SPARSE).shapes) <= 2
    assert all(5 * 1.5 <= s.radius <= 14 * 1.5 for s in Scene(5, 640, 360, SMALL).shapes)  # scaled to 360 high
    colours = {tuple(s.colour) for s in Scene(5, style=SAME_COLOUR).shapes}
    assert len(colours) == 1 and len(Scene(5, style=SAME_COLOUR).shapes) >= 4
    # the default style draws what scenes drew before styles: the demo's clip stays (hash from the code before)
    digest = hashlib.sha256()
    for _, instances in Scene(7).frames(10):
        for inst in instances:
            digest.update(np.packbits(inst.mask).tobytes())
            digest.update(np.round(inst.keypoints, 2).tobytes())
    assert digest.hexdigest()[:32] == "b0c221f58418c4bfdd822e40712f5a62"


def test_pooled_scenes_are_scored_as_one_set(tmp_path: Path) -> None:
    from streamseg.tools.suite import pool_scene

    scenes = [write_video(tmp_path / f"{seed}.mp4", None, seed=seed, frames=6) for seed in (21, 22)]
    records: list[dict] = []
    pooled: dict = {"images": [], "annotations": [], "categories": []}
    for gt, found in zip(scenes, (True, False)):  # the model finds all of the first scene, none of the second
        stray = {"frame": 6, "instances": [{"class_id": 1, "score": 1.0, "box": [0, 0, 9, 9]}]}  # past its end
        pool_scene([*_gt_as_records(gt, keep=lambda ann: found and not ann["iscrowd"]), stray], gt, records, pooled)
    (tmp_path / "pooled.json").write_text(json.dumps(pooled))
    stats = evaluate(records, load_ground_truth(tmp_path / "pooled.json"), verbose=False)
    assert len(pooled["images"]) == 12 and [r["frame"] for r in records] == list(range(12))
    found = sum(1 for a in scenes[0]["annotations"] if not a["iscrowd"])
    total = found + sum(1 for a in scenes[1]["annotations"] if not a["iscrowd"])
    assert stats["segm"]["AR100"] == pytest.approx(found / total, abs=0.1) and 0.2 < stats["segm"]["AP"] < 0.8


def test_train_names_an_unknown_scene_style(cli) -> None:
    from conftest import assert_clean_error

    assert_clean_error(cli.run("train", "--out", "w", "--styles", "trained,nope"), "unknown scene style nope")


def test_the_suite_makes_its_clips_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streamseg.tools import suite

    monkeypatch.setattr(suite, "SCENES", suite.SCENES[:2])
    suite.make_clips(tmp_path, 3)
    made = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert len(made) == 4
    suite.make_clips(tmp_path, 3)  # the same scenes: kept
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == made
    suite.make_clips(tmp_path, 4)  # another length: made again
    assert all(p.stat().st_mtime_ns != made[p.name] for p in tmp_path.iterdir())
