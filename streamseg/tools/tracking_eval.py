"""Tracking evaluation of the pipeline's per-frame output against ground truth with ``track_id``.

Two views of the same scenes:

* :func:`tracking_metrics`: HOTA (with its DetA and AssA), IDF1, MOTA and ID switches, computed by
  TrackEval's own metric classes (``HOTA``, ``CLEAR``, ``Identity``) on data prepared the way its
  MOTS Challenge loader prepares it: similarity is mask IoU, ground-truth annotations with
  ``iscrowd: 1`` are no objects, and a prediction not matched to an object (Hungarian, IoU >= 0.5)
  that lies more than half inside the frame's crowd regions is removed before scoring, so slivers
  are neither rewarded nor punished (as COCO ignores detections of crowd regions). The evaluation is
  class-agnostic, as MOT's is: a track followed under the wrong class still counts as followed.
  Scenes are pooled by TrackEval's ``combine_sequences`` (sums of its counts), not by averaging.
* :func:`track_ap`: YouTube-VIS track AP. A track (one ``track_id`` in one scene) is one detection,
  of its instances' most frequent class and with the mean of their scores; its IoU with a
  ground-truth track is the spatio-temporal IoU ``sum_t |d∩g| / sum_t |d∪g|``. Each class's crowd
  regions of a scene form one ``iscrowd`` track, which a predicted track overlaps by
  ``sum_t |d∩g| / sum_t |d|``, COCO's rule for crowd. pycocotools' COCOeval does the matching and
  the precision/recall, with scenes as its images.

Frames are matched to ground-truth images as :func:`~streamseg.tools.evaluate.records_to_results`
matches them; only frames the ground truth annotates are timesteps. Predictions need ``mask`` and
``track_id`` on every instance. TrackEval is optional: :data:`TRACKEVAL_INSTALL` installs it.
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ..errors import ConfigError, InputError
from .evaluate import check_inputs, records_to_results

TRACKEVAL_INSTALL = "pip install --no-deps trackeval==1.3.0"
"""TrackEval declares opencv-python, which would shadow our opencv-python-headless; the metrics need
only numpy and scipy, which streamseg has."""
MATCH_IOU = 0.5
"""Mask IoU at which a prediction matches an object (CLEAR's threshold and the crowd rule's)."""
CROWD_IOA = 0.5
"""An unmatched prediction with more than this share of its pixels in crowd regions is removed."""
FIGURES = ("HOTA", "DetA", "AssA", "IDF1", "MOTA", "IDSW", "FP", "FN", "gt_ids", "pred_ids", "frames")
"""The keys of each scene's figures and of the pooled ones."""
_EPS = np.finfo(float).eps


class _Instance(NamedTuple):
    """A ground-truth annotation or a predicted instance in one frame (ground truth scores 1)."""

    track_id: int
    class_id: int
    rle: dict[str, Any]
    score: float = 1.0


@dataclass
class _Frame:
    """One ground-truth image: its objects, its crowd regions and the predictions for it."""

    gt: list[_Instance] = field(default_factory=list)
    crowd: list[_Instance] = field(default_factory=list)
    dt: list[_Instance] = field(default_factory=list)


def has_track_ids(gt: Any) -> bool:
    """Whether a ground truth (a pycocotools ``COCO``) can score tracking: it has annotations, and
    every one that is not crowd carries a ``track_id``."""
    anns = gt.dataset.get("annotations", [])
    return bool(anns) and all("track_id" in ann for ann in anns if not ann.get("iscrowd"))


def _scene_frames(records: list[dict[str, Any]], gt: Any) -> list[_Frame]:
    """The ground truth's images in frame order, each with its annotations and predictions."""
    check_inputs(records, gt)
    if not has_track_ids(gt):
        raise InputError("the ground truth's annotations carry no track_id: it cannot score tracking")
    images = sorted(gt.dataset["images"], key=lambda im: (im.get("frame_index", -1), im["id"]))
    frames = {im["id"]: _Frame() for im in images}
    for image_id, frame in frames.items():
        for ann in gt.imgToAnns[image_id]:
            instance = _Instance(ann.get("track_id", -1), ann["category_id"], gt.annToRLE(ann))
            (frame.crowd if ann.get("iscrowd") else frame.gt).append(instance)
        ids = [g.track_id for g in frame.gt]
        if len(set(ids)) < len(ids):
            raise InputError(f"ground-truth image {image_id} has two objects of one track_id")
    for record in records:
        instances = record.get("instances", [])
        ids = [inst.get("track_id") for inst in instances]
        if None in ids or any("mask" not in inst for inst in instances):
            raise InputError(f"frame {record.get('frame')} has an instance without track_id or mask: "
                             "tracking is scored on masks from a run with tracking on")
        if len(set(ids)) < len(ids):
            raise InputError(f"frame {record.get('frame')} has two instances of one track_id")
        # records_to_results maps a frame to its image (or leaves it out) and keeps the instances' order
        for result, inst in zip(records_to_results([record], gt), instances):
            frames[result["image_id"]].dt.append(
                _Instance(inst["track_id"], inst["class_id"], inst["mask"], inst["score"]))
    return list(frames.values())


def _overlaps(dt: list[dict[str, Any]], gt: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of RLE masks: ``|d∩g|`` (int64[D, G]), ``|d|`` (int64[D]) and ``|g|`` (int64[G]).

    One pycocotools call: with iscrowd set it returns ``|d∩g| / |d|``, from which the exact count
    comes back, and IoU and IoA both follow from the counts."""
    dt_area = np.asarray(mask_util.area(dt), np.int64).reshape(len(dt))
    gt_area = np.asarray(mask_util.area(gt), np.int64).reshape(len(gt))
    ioa = np.asarray(mask_util.iou(dt, gt, [1] * len(gt)), float).reshape(len(dt), len(gt))
    return np.rint(ioa * dt_area[:, None]).astype(np.int64), dt_area, gt_area


def _sequence(frames: list[_Frame], name: str) -> dict[str, Any]:
    """TrackEval's input for one sequence: ids relabelled 0..n-1 (its metrics index arrays with them),
    mask IoU ``[gt, prediction]`` per timestep, predictions inside crowd regions removed."""
    from scipy.optimize import linear_sum_assignment

    gt_ids, dt_ids, similarity = [], [], []
    for frame in frames:
        crowd = [mask_util.merge([c.rle for c in frame.crowd])] if frame.crowd else []
        inter, dt_area, gt_area = _overlaps([d.rle for d in frame.dt], [g.rle for g in frame.gt] + crowd)
        n = len(frame.gt)
        iou = (inter[:, :n] / np.maximum(dt_area[:, None] + gt_area[:n] - inter[:, :n], 1)).T
        keep = np.ones(len(frame.dt), bool)
        if crowd:
            # MOTS Challenge's rule, as TrackEval's loader has it
            scores = np.where(iou >= MATCH_IOU - _EPS, iou, -10000.0)
            rows, cols = linear_sum_assignment(-scores)
            matched = np.zeros(len(frame.dt), bool)
            matched[cols[scores[rows, cols] > _EPS]] = True
            keep = matched | (inter[:, n] / np.maximum(dt_area, 1) <= CROWD_IOA + _EPS)
        gt_ids.append(np.array([g.track_id for g in frame.gt], int))
        dt_ids.append(np.array([d.track_id for d in frame.dt], int)[keep])
        similarity.append(iou[:, keep])
    gt_unique = np.unique(np.concatenate([np.empty(0, int), *gt_ids]))
    dt_unique = np.unique(np.concatenate([np.empty(0, int), *dt_ids]))
    return {"seq": name, "num_timesteps": len(frames),
            "gt_ids": [np.searchsorted(gt_unique, ids) for ids in gt_ids],
            "tracker_ids": [np.searchsorted(dt_unique, ids) for ids in dt_ids],
            "similarity_scores": similarity, "num_gt_ids": len(gt_unique), "num_tracker_ids": len(dt_unique),
            "num_gt_dets": sum(map(len, gt_ids)), "num_tracker_dets": sum(map(len, dt_ids))}


def _trackeval_metrics() -> tuple[Any, Any, Any]:
    """TrackEval's HOTA, CLEAR and Identity metrics, or a ConfigError that says how to install it."""
    try:
        # importing the package prints a line when tabulate (for its BURST loader only) is missing
        with contextlib.redirect_stdout(io.StringIO()):
            from trackeval.metrics import CLEAR, HOTA, Identity
    except ImportError as exc:
        raise ConfigError(f"tracking evaluation needs TrackEval ({exc}): {TRACKEVAL_INSTALL}") from None
    config = {"THRESHOLD": MATCH_IOU, "PRINT_CONFIG": False}
    return HOTA(), CLEAR(config), Identity(config)


def _figures(hota: dict[str, Any], clear: dict[str, Any], identity: dict[str, Any]) -> dict[str, float]:
    """The figures we report from TrackEval's results of one sequence or of several combined."""
    # HOTA, DetA and AssA are arrays over 19 IoU thresholds; TrackEval reports their means
    return {"HOTA": float(np.mean(hota["HOTA"])), "DetA": float(np.mean(hota["DetA"])),
            "AssA": float(np.mean(hota["AssA"])), "IDF1": float(identity["IDF1"]), "MOTA": float(clear["MOTA"]),
            "IDSW": int(clear["IDSW"]), "FP": int(clear["CLR_FP"]), "FN": int(clear["CLR_FN"])}


def tracking_metrics(scenes: Sequence[tuple[list[dict[str, Any]], Any]],
                     names: Sequence[str] | None = None) -> dict[str, Any]:
    """HOTA, DetA, AssA, IDF1, MOTA, ID switches (``IDSW``), false positives and negatives (``FP``,
    ``FN``, CLEAR's) and counts (``gt_ids``, ``pred_ids``, ``frames``) of each scene and pooled.

    ``scenes``: (masks JSONL records, ground truth from
    :func:`~streamseg.tools.evaluate.load_ground_truth`) pairs; ``names`` name them (default "1",
    "2", ...). Returns ``{"scenes": {name: figures}, "pooled": figures}``, figures keyed by
    :data:`FIGURES`. Raises an InputError for predictions without ``track_id`` or ``mask``.
    """
    names = list(names) if names is not None else [str(i + 1) for i in range(len(scenes))]
    if not scenes or len(names) != len(scenes) or len(set(names)) != len(names):
        raise ValueError(f"{len(scenes)} scenes need as many distinct names (and at least one), not {names}")
    metrics = _trackeval_metrics()
    results: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name, (records, gt) in zip(names, scenes):
        data = _sequence(_scene_frames(records, gt), name)
        results[name] = [metric.eval_sequence(data) for metric in metrics]
        counts[name] = {"gt_ids": data["num_gt_ids"], "pred_ids": data["num_tracker_ids"],
                        "frames": data["num_timesteps"]}
    pooled = [metric.combine_sequences({name: res[i] for name, res in results.items()})
              for i, metric in enumerate(metrics)]
    return {"scenes": {name: {**_figures(*res), **counts[name]} for name, res in results.items()},
            "pooled": {**_figures(*pooled), **{key: sum(c[key] for c in counts.values())
                                               for key in ("gt_ids", "pred_ids", "frames")}}}


class _TrackCOCOeval(COCOeval):
    """COCOeval over videos: an image is a scene, an annotation a whole track (its ``track`` key
    indexing the scene's matrix), and the IoU the spatio-temporal IoU, computed beforehand."""

    def __init__(self, gt: COCO, dt: COCO, st_iou: dict[int, np.ndarray]) -> None:
        super().__init__(gt, dt, iouType="bbox")  # bbox: _prepare leaves the annotations as they are
        self.st_iou = st_iou
        self.params.areaRng = [[0, 1e10], [0, 128 ** 2], [128 ** 2, 256 ** 2], [256 ** 2, 1e10]]  # YouTube-VIS's

    def computeIoU(self, imgId: int, catId: int) -> np.ndarray | list:  # COCOeval's name
        gts, dts = self._gts[imgId, catId], self._dts[imgId, catId]
        if not gts and not dts:
            return []
        # predictions in COCOeval's order: by score, stable, at most maxDets
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")[:self.params.maxDets[-1]]
        rows = np.array([dts[i]["track"] for i in order], np.intp)
        return self.st_iou[imgId][np.ix_(rows, np.array([g["track"] for g in gts], np.intp))]


def _scene_tracks(frames: list[_Frame], video: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]], np.ndarray]:
    """One scene's ground-truth and predicted tracks as COCO annotations (without ids), and their
    spatio-temporal IoU ``[prediction, ground truth]`` (IoA where the ground truth is crowd)."""
    dt_index: dict[int, int] = {}
    gt_index: dict[tuple[str, int], int] = {}
    steps = []
    for frame in frames:
        crowd: dict[int, list[dict[str, Any]]] = {}
        for c in frame.crowd:
            crowd.setdefault(c.class_id, []).append(c.rle)
        gt = [(("track", g.track_id), g.class_id, g.rle) for g in frame.gt]
        gt += [(("crowd", cls), cls, mask_util.merge(rles)) for cls, rles in crowd.items()]
        inter, dt_area, gt_area = _overlaps([d.rle for d in frame.dt], [rle for _, _, rle in gt])
        rows = [dt_index.setdefault(d.track_id, len(dt_index)) for d in frame.dt]
        cols = [gt_index.setdefault(key, len(gt_index)) for key, _, _ in gt]
        steps.append((frame, gt, rows, cols, inter, dt_area, gt_area))
    inter_sum = np.zeros((len(dt_index), len(gt_index)), np.int64)
    dt_sum, gt_sum = np.zeros(len(dt_index), np.int64), np.zeros(len(gt_index), np.int64)
    dt_info: list[list[tuple[int, float]]] = [[] for _ in dt_index]
    gt_info: list[list[int]] = [[] for _ in gt_index]
    for frame, gt, rows, cols, inter, dt_area, gt_area in steps:
        inter_sum[np.ix_(rows, cols)] += inter  # a track is in a frame once, so no index repeats
        dt_sum[rows] += dt_area
        gt_sum[cols] += gt_area
        for row, d in zip(rows, frame.dt):
            dt_info[row].append((d.class_id, d.score))
        for col, (_, cls, _) in zip(cols, gt):
            gt_info[col].append(cls)
    crowd_col = np.array([key[0] == "crowd" for key in gt_index], bool)
    # frames where only one of the two tracks exists add to the union: sum|d∪g| = sum|d| + sum|g| - sum|d∩g|
    union = np.where(crowd_col, dt_sum[:, None], dt_sum[:, None] + gt_sum - inter_sum)
    st_iou = inter_sum / np.maximum(union, 1)
    dts = [{"image_id": video, "track": row, "category_id": Counter(c for c, _ in info).most_common(1)[0][0],
            "score": float(np.mean([s for _, s in info])), "area": float(dt_sum[row] / len(info))}
           for row, info in enumerate(dt_info)]
    gts = [{"image_id": video, "track": col, "category_id": Counter(info).most_common(1)[0][0],
            "iscrowd": int(crowd_col[col]), "area": float(gt_sum[col] / len(info))}
           for col, info in enumerate(gt_info)]
    return gts, dts, st_iou


def _coco(videos: list[int], categories: list[int], anns: list[dict[str, Any]]) -> COCO:
    coco = COCO()
    coco.dataset = {"images": [{"id": v} for v in videos], "categories": [{"id": c} for c in categories],
                    "annotations": [{**ann, "id": i} for i, ann in enumerate(anns, 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def track_ap(scenes: Sequence[tuple[list[dict[str, Any]], Any]]) -> dict[str, float]:
    """YouTube-VIS track AP of all scenes pooled: ``AP`` (IoU 0.5:0.95), ``AP50`` and ``AP75``.

    ``scenes`` as for :func:`tracking_metrics`; each scene is one video of the evaluation. Classes
    are the ground truth's category ids; mean area (for COCOeval's area ranges) is YouTube-VIS's.
    """
    gts: list[dict[str, Any]] = []
    dts: list[dict[str, Any]] = []
    st_iou: dict[int, np.ndarray] = {}
    categories: set[int] = set()
    for video, (records, gt) in enumerate(scenes, 1):
        scene_gts, scene_dts, st_iou[video] = _scene_tracks(_scene_frames(records, gt), video)
        gts += scene_gts
        dts += scene_dts
        categories |= {c["id"] for c in gt.dataset["categories"]}
    if not dts or not any(not g["iscrowd"] for g in gts):
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}  # COCOeval has no precision to give
    videos = list(st_iou)
    evaluator = _TrackCOCOeval(_coco(videos, sorted(categories), gts), _coco(videos, sorted(categories), dts), st_iou)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(("AP", "AP50", "AP75"), evaluator.stats)}


def format_tracking(result: dict[str, Any], ap: dict[str, float] | None = None) -> str:
    """A few lines for a terminal: the pooled figures (with track AP when given), and with several
    scenes the worst by HOTA and a table of all."""
    p = result["pooled"]
    lines = [(f"tracking over {len(result['scenes'])} scene(s), {p['frames']} frames, {p['gt_ids']} ground-truth "
              f"tracks, {p['pred_ids']} predicted (mask IoU, class-agnostic, TrackEval):"),
             (f"  HOTA {p['HOTA']:.3f} (DetA {p['DetA']:.3f}, AssA {p['AssA']:.3f})  IDF1 {p['IDF1']:.3f}  "
              f"MOTA {p['MOTA']:.3f}  ID switches {p['IDSW']}  FP {p['FP']}  FN {p['FN']}")]
    if ap is not None:
        lines.append(f"  track AP {ap['AP']:.3f}  AP50 {ap['AP50']:.3f}  AP75 {ap['AP75']:.3f} (YouTube-VIS)")
    if len(result["scenes"]) > 1:
        worst = min(result["scenes"], key=lambda name: result["scenes"][name]["HOTA"])
        lines.append(f"  worst scene by HOTA: {worst} ({result['scenes'][worst]['HOTA']:.3f})")
        width = max(len("scene"), *map(len, result["scenes"]))
        lines.append(f"  {'scene':<{width}}   HOTA   DetA   AssA   IDF1   MOTA  IDSW  gt ids  pred ids  frames")
        for name, s in result["scenes"].items():
            lines.append(f"  {name:<{width}}  {s['HOTA']:.3f}  {s['DetA']:.3f}  {s['AssA']:.3f}  {s['IDF1']:.3f}  "
                         f"{s['MOTA']:6.3f}  {s['IDSW']:4d}  {s['gt_ids']:6d}  {s['pred_ids']:8d}  {s['frames']:6d}")
    return "\n".join(lines)


def tracking_report(records: list[dict[str, Any]], gt: Any) -> tuple[str, dict[str, Any] | None]:
    """What ``streamseg eval`` says of tracking: (the figures' text, ``{"metrics", "track_AP"}``), or
    (why there are none, None): the ground truth or the predictions carry no track ids, or TrackEval
    is not installed."""
    if not has_track_ids(gt):
        return "no tracking figures: the ground truth has no track_id", None
    if not any("track_id" in inst for record in records for inst in record.get("instances", [])):
        return "no tracking figures: the predictions have no track_id (a run with track.enabled: false?)", None
    try:
        metrics, ap = tracking_metrics([(records, gt)]), track_ap([(records, gt)])
    except ConfigError as exc:
        return f"no tracking figures: {exc}", None
    return format_tracking(metrics, ap), {"metrics": metrics, "track_AP": ap}
