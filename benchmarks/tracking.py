"""Tracking on the accuracy suite's 26 held-out scenes: streamseg's tracker against ByteTrack, an
oracle, and the tracker's speed.

1. **Through the pipeline.** ``streamseg run`` over the suite's scenes (as ``benchmarks/accuracy.py``
   runs them), with ``track.detections_file`` writing every detection the tracker was given, the
   low-score ones included. Roboflow's ByteTrack (``trackers``) then tracks exactly those detections
   (``bytetrack_baseline.py``), and both sides are scored the same way, pooled over the scenes
   (:mod:`streamseg.tools.tracking_eval`: HOTA, IDF1, MOTA, ID switches by TrackEval; track AP).
2. **Oracle.** The ground truth's own masks fed to each tracker as detections (score 0.9), in
   process: what the tracker alone loses. Scenes where no shape is hidden (nearly) whole for a while
   (under 15% visible: it leaves the ground truth's objects, and comes back) are also reported apart.
3. **Zones and lines.** Four of each kind a scene (lines through the middle, the left half, a
   box in the middle): entries and crossings counted by the pipeline (the model's detections), and
   by the same code over the ground truth's masks tracked by our tracker, against those counted
   over the ground truth's own track ids.
4. **Speed.** ``StreamTracker.update`` alone on 640x360 frames with about 20 shapes (the ground
   truth's masks), per frame; and ``streamseg run`` with tracking on and off, in turns (what the stage costs
   the pipeline, and that the instances written are the same).

Needs TrackEval and trackers (``make bench-deps``, or the lines in ``bytetrack_baseline.py``).

    python benchmarks/tracking.py [--weights W] [--frames 100] [--clips DIR]
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bytetrack_baseline import bytetrack_records
from common import machine, runs, streamseg_run, suite_parser, timed
from pycocotools import mask as mask_util

from streamseg.config import ModelConfig, TrackConfig, section_from_dict
from streamseg.runtime.messages import Detections, MaskRegions
from streamseg.tools.evaluate import load_ground_truth, read_predictions
from streamseg.tools.suite import SCENES, run_suite
from streamseg.tools.synth import Scene, SceneStyle, write_video
from streamseg.tools.tracking_eval import track_ap, tracking_metrics
from streamseg.tracking.analytics import StreamAnalytics
from streamseg.tracking.tracker import StreamTracker

FPS = 30.0
"""The suite's clips' frame rate (streamseg.tools.synth.write_video's default, which the suite uses)."""


def _row(name: str, scenes: list[tuple[list[dict[str, Any]], Any]], names: list[str]) -> dict[str, Any]:
    metrics, ap = tracking_metrics(scenes, names), track_ap(scenes)
    worst = min(metrics["scenes"], key=lambda n: metrics["scenes"][n]["HOTA"])
    return {"tracker": name, **metrics["pooled"], "track_AP": ap["AP"], "worst": worst,
            "worst_HOTA": metrics["scenes"][worst]["HOTA"], "scenes": metrics["scenes"]}


def _print(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}\n")
    print("| tracker | HOTA | DetA | AssA | IDF1 | MOTA | ID switches | track AP | ids (gt ids) "
          "| worst scene by HOTA |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['tracker']} | {r['HOTA']:.3f} | {r['DetA']:.3f} | {r['AssA']:.3f} | {r['IDF1']:.3f} | "
              f"{r['MOTA']:.3f} | {r['IDSW']} | {r['track_AP']:.3f} | {r['pred_ids']} ({r['gt_ids']}) | "
              f"{r['worst']} {r['worst_HOTA']:.3f} |")


def oracle_records(gt: Any, tracker: StreamTracker | None, truth_ids: bool = False) -> list[dict[str, Any]]:
    """The ground truth's objects as detections (score 0.9, crowd slivers left out), frame by frame;
    with ``tracker``, each with the id it gives; with ``truth_ids``, with the ground truth's own track
    id; else with none (ByteTrack's input)."""
    records = []
    images = sorted(gt.dataset["images"], key=lambda im: im["frame_index"])
    for image in images:
        anns = [a for a in gt.imgToAnns[image["id"]] if not a.get("iscrowd")]
        rles = [gt.annToRLE(a) for a in anns]
        x, y, w, h = (np.array([a["bbox"][k] for a in anns], np.float32).reshape(-1) for k in range(4))
        boxes = np.stack([x, y, x + w, y + h], 1).reshape(-1, 4).astype(np.float32)
        record = {"frame": image["frame_index"], "time": image["frame_index"] / FPS,
                  "width": image["width"], "height": image["height"],
                  "instances": [{"class_id": a["category_id"], "score": 0.9, "box": boxes[k].tolist(),
                                 "mask": {"size": rles[k]["size"], "counts": rles[k]["counts"].decode()
                                          if isinstance(rles[k]["counts"], bytes) else rles[k]["counts"]}}
                                for k, a in enumerate(anns)]}
        if truth_ids:
            for inst, a in zip(record["instances"], anns):
                inst["track_id"] = a["track_id"]
        if tracker is not None:
            full = (mask_util.decode(rles).transpose(2, 0, 1).astype(bool) if rles
                    else np.zeros((0, image["height"], image["width"]), bool))
            dets = Detections(boxes, np.full(len(anns), 0.9, np.float32),
                              np.array([a["category_id"] for a in anns], np.int64), MaskRegions.from_full(full))
            ids, _ = tracker.update(record["frame"], record["time"], dets, ModelConfig.score_thresh)
            for inst, track_id in zip(record["instances"], ids.tolist()):
                inst["track_id"] = track_id
        records.append(record)
    return records


def hidden_whole(gt: Any) -> bool:
    """Whether a shape of the scene is hidden (nearly) whole for a while and comes back: its ground
    truth goes from an object to crowd (under 15% of it visible, or under 40 pixels: what scoring
    ignores, and what the oracle does not feed the tracker) and back to an object."""
    frames: dict[int, list[int]] = {}
    for image in gt.dataset["images"]:
        for a in gt.imgToAnns[image["id"]]:
            if not a.get("iscrowd"):
                frames.setdefault(a["track_id"], []).append(image["frame_index"])
    return any(max(f) - min(f) + 1 > len(set(f)) for f in frames.values())


def suite_areas(scenes: Any = SCENES) -> dict[str, list[dict[str, Any]]]:
    """The zones and lines counted on every scene, each scene's own (its stream): a vertical and a
    horizontal line through the middle, the left half, and a box in the middle (a quarter of the frame)."""
    zones, lines = [], []
    for scene in scenes:
        w, h = scene.size
        lines += [{"name": "vertical", "points": [[w / 2, 0], [w / 2, h]], "stream": scene.name},
                  {"name": "horizontal", "points": [[0, h / 2], [w, h / 2]], "stream": scene.name}]
        zones += [{"name": "left", "points": [[0, 0], [w / 2, 0], [w / 2, h], [0, h]], "stream": scene.name},
                  {"name": "middle", "points": [[w / 4, h / 4], [3 * w / 4, h / 4], [3 * w / 4, 3 * h / 4],
                                                [w / 4, 3 * h / 4]], "stream": scene.name}]
    return {"zones": zones, "lines": lines}


def counted(records: list[dict[str, Any]], name: str, width: int, height: int,
            tracker: StreamTracker | None = None) -> dict[str, int]:
    """Entries per zone and crossings per line and direction of a scene's records (with their own
    ``track_id``, or with ``tracker``'s ids), by the track stage's counting code."""
    config = section_from_dict("analytics", suite_areas([s for s in SCENES if s.name == name]))
    counter, figures = StreamAnalytics(config, name, width, height), {}
    for record in records:
        instances = record["instances"]
        boxes = np.array([i["box"] for i in instances], np.float32).reshape(-1, 4)
        ids = np.array([i["track_id"] for i in instances], np.int64)
        dets = Detections(boxes, np.array([i["score"] for i in instances], np.float32),
                          np.array([i["class_id"] for i in instances], np.int64), None, track_ids=ids)
        counter.update(dets, record["time"], [str(i["class_id"]) for i in instances])
    report = counter.report()
    for zone, z in report["zones"].items():
        figures[f"{zone} entered"] = z["entered"]
    for line, ln in report["lines"].items():
        figures[f"{line} in"], figures[f"{line} out"] = ln["in"], ln["out"]
    return figures


def count_rows(scenes: Any, gts: list[Any], ours: list[tuple[list[dict[str, Any]], Any]],
               pipeline: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """How the model's counts (the pipeline's summary; checked equal to the same code over its masks
    file) and the oracle's (the truth's masks, our tracker's ids) compare with the truth's own ids."""
    rows = {"model, through the pipeline": [], "oracle: the truth's masks, our tracker": []}
    truths = []
    for scene, gt, (records, _) in zip(scenes, gts, ours):
        w, h = scene.size
        truth = counted(oracle_records(gt, None, truth_ids=True), scene.name, w, h)
        model = counted(records, scene.name, w, h)
        report = pipeline[scene.name]
        said = {**{f"{z} entered": v["entered"] for z, v in report["zones"].items()},
                **{f"{ln} {d}": v[d] for ln, v in report["lines"].items() for d in ("in", "out")}}
        if said != model:
            raise SystemExit(f"{scene.name}: the pipeline's counts {said} are not its masks' {model}")
        rows["model, through the pipeline"].append(model)
        rows["oracle: the truth's masks, our tracker"].append(
            counted(oracle_records(gt, StreamTracker(TrackConfig())), scene.name, w, h))
        truths.append(truth)
    out = []
    for what, counts in rows.items():
        pairs = [(c[k], t[k]) for c, t in zip(counts, truths) for k in t]
        out.append({"what": what, "figures": len(pairs), "equal": sum(a == b for a, b in pairs),
                    "close": sum(abs(a - b) <= max(1, 0.05 * b) for a, b in pairs),
                    "off": sum(abs(a - b) for a, b in pairs), "truth": sum(b for _, b in pairs)})
    return out


def tracker_speed(frames: int = 300, shapes: int = 25) -> dict[str, float]:
    """Milliseconds per frame of ``StreamTracker.update`` alone, 640x360, ``shapes`` shapes' true masks
    (25: about 20 in the frame at a time, the others coming in or gone)."""
    scene = Scene(901, 640, 360, SceneStyle(shapes=(shapes, shapes)))
    tracker, times, counts = StreamTracker(TrackConfig()), [], []
    for frame in range(frames):
        _, instances = scene.render()
        shown = [i for i in instances if i.area >= 20]
        masks = MaskRegions.from_full(np.stack([i.mask for i in shown]))
        x, y, w, h = masks.regions.T
        dets = Detections(np.stack([x, y, x + w, y + h], 1).astype(np.float32), np.full(len(shown), 0.9, np.float32),
                          np.array([i.label for i in shown], np.int64), masks)
        start = time.perf_counter()
        tracker.update(frame, frame / FPS, dets, 0.5)
        times.append(time.perf_counter() - start)
        counts.append(len(shown))
        scene.step()
    ms = np.array(times[10:]) * 1000  # after the first frames (imports, first allocations)
    return {"median_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "p99_ms": float(np.percentile(ms, 99)),
            "objects": float(np.mean(counts[10:]))}


STAGE_ROW = re.compile(r"^track\s+(?P<busy_s>[\d.]+)\s+(?P<busy_pct>\d+)%\s+(?P<blocked_s>[\d.]+)\s+(?P<cpu_s>[\d.]+)",
                       re.MULTILINE)


def pipeline_cost(folder: Path, rounds: int = 3) -> dict[str, Any]:
    """``streamseg run`` over a held-out 640x360 clip (300 frames) with tracking on and off, in turns,
    whole processes timed from outside: wall seconds each round, the outputs' instances the same,
    and the track stage's busy and CPU seconds from the summary."""
    clip = folder / "cost-640x360.mp4"
    if not clip.exists():
        write_video(clip, None, seed=7, frames=300, width=640, height=360, crf=23)
    wall: dict[str, list[float]] = {"on": [], "off": []}
    stage: list[dict[str, float]] = []
    boxes: dict[str, list[Any]] = {}
    for r in range(rounds):
        for side in ("on", "off") if r % 2 == 0 else ("off", "on"):
            masks = folder / f"cost-{side}.jsonl"
            result = timed(streamseg_run(str(clip), "--masks", str(masks), "--set", f"track.enabled={side == 'on'}"))
            wall[side].append(result.wall_s)
            if side == "on":
                row = STAGE_ROW.search(result.stderr)
                stage.append({k: float(v) for k, v in row.groupdict().items()} if row else {})
            boxes[side] = [[i["box"] for i in rec["instances"]] for rec in read_predictions(masks)]
    return {"wall_s": wall, "track_stage": stage, "same_instances": boxes["on"] == boxes["off"], "frames": 300}


def main() -> None:
    parser = suite_parser(__doc__)
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    args = parser.parse_args()
    folder, started = Path(args.clips), time.monotonic()
    suite = run_suite(folder, args.frames, args.model, args.weights,
                      progress=lambda line: print(line, file=sys.stderr), model__input=args.input,
                      track__detections_file=str(folder / "{stream}.given.jsonl"),
                      analytics__zones=lambda scenes: suite_areas(scenes)["zones"],
                      analytics__lines=lambda scenes: suite_areas(scenes)["lines"])
    names = [s.name for s in SCENES]
    gts = [load_ground_truth(folder / f"{n}.json") for n in names]
    ours = [(read_predictions(folder / f"{n}.jsonl"), gt) for n, gt in zip(names, gts)]
    given = [read_predictions(folder / f"{n}.given.jsonl") for n in names]
    high = ModelConfig.score_thresh
    rows = [_row("streamseg (mask IoU, two stages)", ours, names),
            _row("ByteTrack (trackers 2.6.1, boxes)", [(bytetrack_records(g, FPS, high), gt)
                                                       for g, gt in zip(given, gts)], names),
            _row("ByteTrack, first ids back-filled (not online)",
                 [(bytetrack_records(g, FPS, high, backfill=True), gt) for g, gt in zip(given, gts)], names)]
    wall = time.monotonic() - started
    print(f"# tracking, {args.model}{' ' + args.weights if args.weights else ''}"
          f"{', model.input ' + args.input if args.input else ''}, {len(SCENES)} held-out scenes x "
          f"{args.frames} frames, {machine()}, {wall:.0f} s")
    _print("Through the pipeline (the same detections on every row, pooled over the scenes):", rows)
    whole = [not hidden_whole(gt) for gt in gts]
    oracle = []
    for label, keep in (("all scenes", [True] * len(gts)), ("no shape hidden whole", whole)):
        picked = [(n, gt) for n, gt, k in zip(names, gts, keep) if k]
        oracle += [_row(f"streamseg, oracle, {label} ({len(picked)})",
                        [(oracle_records(gt, StreamTracker(TrackConfig())), gt) for _, gt in picked],
                        [n for n, _ in picked]),
                   _row(f"ByteTrack, oracle, {label} ({len(picked)})",
                        [(bytetrack_records(oracle_records(gt, None), FPS, high), gt) for _, gt in picked],
                        [n for n, _ in picked])]
    _print("Oracle: the ground truth's masks as detections:", oracle)
    areas = count_rows(SCENES, gts, ours, suite.analytics)
    print("\nZones and lines (entries per zone, crossings per line and direction; 4 of each kind a scene): "
          "the model's through the pipeline, and the ground truth's masks through the same tracker, against "
          "the ground truth's own tracks\n")
    print("| counts | figures | equal to the truth's | within 5% or 1 | total abs. difference | truth's total |")
    print("|---|---|---|---|---|---|")
    for row in areas:
        print(f"| {row['what']} | {row['figures']} | {row['equal']} | {row['close']} | {row['off']} | {row['truth']} |")
    speed = tracker_speed()
    print(f"\nStreamTracker.update alone, 640x360, {speed['objects']:.1f} shapes a frame: median "
          f"{speed['median_ms']:.2f} ms, mean {speed['mean_ms']:.2f} ms, p99 {speed['p99_ms']:.2f} ms a frame")
    cost = pipeline_cost(folder)
    on, off = (float(np.median(cost["wall_s"][k])) for k in ("on", "off"))
    cpu = float(np.median([r.get("cpu_s", np.nan) for r in cost["track_stage"]]))
    busy = float(np.median([r.get("busy_pct", np.nan) for r in cost["track_stage"]]))
    print(f"\nstreamseg run, 640x360, 300 frames, whole processes: {on:.1f} s with tracking, {off:.1f} s without "
          f"(median of {len(cost['wall_s']['on'])} each, in turns: {runs(cost['wall_s']['on'])} / "
          f"{runs(cost['wall_s']['off'])}); the track stage {cpu / cost['frames'] * 1000:.2f} ms of CPU a frame "
          f"(its process, messages included), busy {busy:.0f}% of the run; the same instances written: "
          f"{cost['same_instances']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"pipeline": rows, "oracle": oracle, "areas": areas, "speed": speed,
                                               "cost": cost}, indent=1))


if __name__ == "__main__":
    main()
