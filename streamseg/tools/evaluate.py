"""COCO evaluation (pycocotools) of the pipeline's per-frame output against COCO ground truth.

Predictions are the masks JSON Lines that ``streamseg run --masks`` writes (or a COCO results
list). Frames are matched to ground-truth images by ``frame_index`` where the ground truth has it
(``streamseg synth`` writes it); otherwise the n-th frame is the n-th image in id order, which
fits a val2017-style file listing a video's frames. Class ids must be the ground truth's category
ids (true for the shipped model on synth clips and for torchvision's COCO models on COCO).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
KEYPOINT_STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
COCO_PERSON_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87,
                               .89, .89]) / 10.0


def load_ground_truth(path: str | Path) -> Any:
    """A pycocotools ``COCO`` object for a ground-truth JSON file, or an InputError."""
    from pycocotools.coco import COCO

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"ground truth not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"ground truth {path} is not JSON: {exc}") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise InputError(f"ground truth {path} is not COCO format (needs images, annotations, categories)")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def check_inputs(records: list[dict[str, Any]], gt: Any) -> None:
    """Raise an :class:`InputError` (one line) when the predictions cannot be of the ground truth's clip:
    another frame count or size, class ids it does not have, another number of keypoints."""
    images = sorted(gt.dataset["images"], key=lambda im: im["id"])
    indexed = any("frame_index" in im for im in images)
    by_frame = {im.get("frame_index", i): im for i, im in enumerate(images)}
    frames = {r.get("frame") for r in records}
    missing = sorted(f for f in by_frame if f not in frames)
    if missing or (not indexed and len(records) != len(images)):
        # with frame_index the ground truth may annotate some frames only; without, n-th frame is n-th image
        raise InputError(f"the predictions hold {len(records)} frames and the ground truth {len(images)} images"
                         + (f" (frame {missing[0]} has no prediction)" if missing else "")
                         + ": evaluate a run over the whole clip the ground truth describes")
    for record in records:
        image = by_frame.get(record.get("frame"))
        if image is None:
            continue  # a frame the ground truth does not annotate
        size, want = (record.get("width"), record.get("height")), (image.get("width"), image.get("height"))
        if None not in size and None not in want and size != want:
            raise InputError(f"the predictions are of {size[0]}x{size[1]} frames and the ground truth's images are "
                             f"{want[0]}x{want[1]} (frame {record['frame']}): not the same clip, or it was resized")
    categories = {c["id"]: c for c in gt.dataset["categories"]}
    predicted = {i["class_id"] for r in records for i in r.get("instances", ())}
    ids = sorted(predicted - set(categories))
    if predicted and len(ids) == len(predicted):  # none in common; classes the ground truth lacks are ignored
        raise InputError(f"predicted class ids {', '.join(map(str, ids[:5]))} are not ground-truth categories "
                         f"({', '.join(map(str, sorted(categories)))}): a model of other classes?")
    for record in records:
        for inst in record.get("instances", ()):
            if inst["class_id"] not in categories:
                continue
            want_kp = len(categories[inst["class_id"]].get("keypoints", []))
            if "keypoints" in inst and want_kp and len(inst["keypoints"]) != want_kp:
                raise InputError(f"the predictions have {len(inst['keypoints'])} keypoints per instance and the "
                                 f"ground truth's {categories[inst['class_id']].get('name')} {want_kp}: a model "
                                 "with other keypoints?")


def records_to_results(records: list[dict[str, Any]], gt: Any) -> list[dict[str, Any]]:
    """COCO results (one per instance) from masks JSONL records, mapped onto the ground truth's images."""
    images = sorted(gt.dataset["images"], key=lambda im: im["id"])
    by_frame = {im["frame_index"]: im["id"] for im in images if "frame_index" in im}
    if not by_frame:
        by_frame = {i: im["id"] for i, im in enumerate(images)}
    results = []
    for record in records:
        image_id = by_frame.get(record["frame"])
        if image_id is None:
            continue
        for inst in record["instances"]:
            x1, y1, x2, y2 = inst["box"]
            result = {"image_id": image_id, "category_id": inst["class_id"], "score": inst["score"],
                      "bbox": [x1, y1, x2 - x1, y2 - y1]}
            if "mask" in inst:
                result["segmentation"] = inst["mask"]
            if "keypoints" in inst:
                result["keypoints"] = [v for x, y, s in inst["keypoints"] for v in (x, y, 1.0)]
            results.append(result)
    return results


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Masks JSONL records (one per frame) from ``path``."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"predictions not found: {path}") from None
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except json.JSONDecodeError as exc:
        raise InputError(f"predictions {path} are not JSON Lines: {exc}") from None


def evaluate(records: list[dict[str, Any]], gt: Any, kpt_sigma: float | None = None,
             verbose: bool = True) -> dict[str, dict[str, float]]:
    """COCO AP per task (``bbox``, ``segm``, ``keypoints`` where both sides have them).

    ``kpt_sigma``: the OKS sigma of every keypoint; None takes COCO's person sigmas for 17
    keypoints and 0.05 otherwise. With ``verbose`` the standard AP tables are printed.
    """
    from pycocotools.cocoeval import COCOeval

    check_inputs(records, gt)
    results = records_to_results(records, gt)
    tasks = ["bbox"]
    if any("segmentation" in r for r in results) or not results:
        tasks.append("segm")
    num_kp = max((len(c.get("keypoints", [])) for c in gt.dataset["categories"]), default=0)
    if num_kp and any("keypoints" in r for r in results):
        tasks.append("keypoints")
    out: dict[str, dict[str, float]] = {}
    image_ids = sorted(gt.getImgIds())
    for task in tasks:
        if not results:
            out[task] = {name: 0.0 for name in (KEYPOINT_STAT_NAMES if task == "keypoints" else STAT_NAMES)}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            dt = gt.loadRes([r for r in results if task != "segm" or "segmentation" in r])
        evaluator = COCOeval(gt, dt, task)
        evaluator.params.imgIds = image_ids
        if task == "keypoints":
            sigmas = (np.full(num_kp, kpt_sigma) if kpt_sigma is not None else
                      COCO_PERSON_SIGMAS if num_kp == 17 else np.full(num_kp, 0.05))
            evaluator.params.kpt_oks_sigmas = sigmas
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        if verbose:
            print(f"--- {task} ---")
            print(buffer.getvalue().rstrip())
        names = KEYPOINT_STAT_NAMES if task == "keypoints" else STAT_NAMES
        out[task] = {name: float(v) for name, v in zip(names, evaluator.stats)}
    return out
