"""The accuracy suite: held-out synthetic scenes of every kind a model of shapes meets, through the pipeline.

Each scene is a held-out seed (below :data:`~streamseg.tools.synth.TRAIN_SEED_FLOOR`, so no training
run ever drew it), a frame size and a :class:`~streamseg.tools.synth.SceneStyle`: the scenes the
model was trained on, sparse ones, crowded ones, small shapes, fast (motion-blurred) ones, and
shapes lying over others of the same colour, at 320x240, 640x360 and 1280x720. The clips of one
size are the sources of one ``streamseg.run`` (its batches mix them, as they mix cameras), with
the run's defaults. Each scene is scored alone, and all together: one COCO evaluation over every
scene's annotations (the pooled figures), with the worst scene named.

    python benchmarks/accuracy.py [--model streamseg-small] [--weights W] [--frames 100]
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .synth import STYLES, is_training_seed, write_video


@dataclass(frozen=True)
class SuiteScene:
    kind: str
    seed: int
    size: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.size[0]}x{self.size[1]}-{self.kind}-{self.seed}"


def _scenes() -> tuple[SuiteScene, ...]:
    plan = {(320, 240): ["trained"] * 4 + ["sparse", "crowded", "crowded", "small", "fast", "same-colour",
                                           "same-colour"],
            (640, 360): ["trained"] * 4 + ["sparse", "crowded", "small", "small", "fast", "same-colour"],
            (1280, 720): ["trained", "crowded", "small", "fast", "same-colour"]}
    first = {(320, 240): 101, (640, 360): 201, (1280, 720): 301}
    return tuple(SuiteScene(kind, first[size] + i, size) for size, kinds in plan.items()
                 for i, kind in enumerate(kinds))


SCENES = _scenes()


@dataclass
class SuiteResult:
    scenes: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """Scene name -> task (``segm``, ``bbox``, ``keypoints``) -> COCO stats."""
    pooled: dict[str, dict[str, float]] = field(default_factory=dict)
    frames: int = 0
    analytics: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Scene name -> its zones' and lines' figures, where the run had any (``settings``' analytics)."""

    def worst(self, task: str = "segm") -> tuple[str, float]:
        name = min(self.scenes, key=lambda n: self.scenes[n].get(task, {}).get("AP", 0.0))
        return name, self.scenes[name].get(task, {}).get("AP", 0.0)


def make_clips(folder: Path, frames: int, progress: Callable[[str], None] = lambda line: None) -> None:
    """Each scene's clip and ground truth in ``folder`` (kept: a second run reuses them)."""
    for scene in SCENES:
        if is_training_seed(scene.seed):
            raise ValueError(f"suite scene {scene.name} has a training seed")
        clip, gt = folder / f"{scene.name}.mp4", folder / f"{scene.name}.json"
        want = json.loads(json.dumps({"seed": scene.seed, "frames": frames,  # as the ground truth's JSON has it
                                      "style": dataclasses.asdict(STYLES[scene.kind])}))
        if clip.exists() and gt.exists() and json.loads(gt.read_text())["info"].items() >= want.items():
            continue  # made before, the same
        progress(f"generating {scene.name} ({frames} frames)")
        write_video(clip, gt, scene.seed, frames, *scene.size, style=STYLES[scene.kind])


def run_suite(folder: Path, frames: int = 100, model: str = "streamseg-small", weights: str = "",
              progress: Callable[[str], None] = lambda line: None, **settings: Any) -> SuiteResult:
    """Generate the scenes (or reuse them), run the pipeline over them, one run a size, and score them.
    ``settings``: more of :func:`streamseg.run`'s (``track__detections_file=...``), or functions that
    make one from the scenes of a run (one run a size); each scene's masks are ``folder/NAME.jsonl``."""
    from ..pipeline import run
    from .evaluate import evaluate, load_ground_truth, read_predictions

    folder.mkdir(parents=True, exist_ok=True)
    make_clips(folder, frames, progress)
    result = SuiteResult()
    records_all: list[dict[str, Any]] = []
    gt_all: dict[str, Any] = {"images": [], "annotations": [], "categories": []}
    for size in sorted({s.size for s in SCENES}):
        scenes = [s for s in SCENES if s.size == size]
        progress(f"running the pipeline over {len(scenes)} scenes at {size[0]}x{size[1]}")
        summary = run([str(folder / f"{s.name}.mp4") for s in scenes], masks=str(folder / "{stream}.jsonl"),
                      input__stream_ids=tuple(s.name for s in scenes), model__name=model, model__weights=weights,
                      **{key: value(scenes) if callable(value) else value for key, value in settings.items()})
        result.analytics.update(summary.analytics)
        for scene in scenes:
            records = read_predictions(folder / f"{scene.name}.jsonl")
            gt = load_ground_truth(folder / f"{scene.name}.json")
            result.scenes[scene.name] = evaluate(records, gt, verbose=False)
            pool_scene(records, gt.dataset, records_all, gt_all)
    result.frames = len(gt_all["images"])
    progress(f"scoring {len(SCENES)} scenes pooled ({result.frames} frames)")
    pooled = folder / "pooled.json"
    pooled.write_text(json.dumps(gt_all))
    result.pooled = evaluate(records_all, load_ground_truth(pooled), verbose=False)
    os.remove(pooled)
    return result


def pool_scene(records: list[dict[str, Any]], gt: dict[str, Any], records_all: list[dict[str, Any]],
               gt_all: dict[str, Any]) -> None:
    """Add one scene to the pooled ground truth and predictions: its images and frames numbered after
    all those before; a prediction for a frame its ground truth does not have is left out, as it is
    when the scene is scored alone."""
    gt_all["categories"] = gt["categories"]
    image_offset = max((im["id"] for im in gt_all["images"]), default=0)
    frame_offset = 1 + max((im["frame_index"] for im in gt_all["images"]), default=-1)
    for image in gt["images"]:
        gt_all["images"].append({**image, "id": image_offset + image["id"],
                                 "frame_index": frame_offset + image["frame_index"]})
    first = max((ann["id"] for ann in gt_all["annotations"]), default=0)
    for n, ann in enumerate(gt["annotations"]):
        gt_all["annotations"].append({**ann, "id": first + n + 1, "image_id": image_offset + ann["image_id"]})
    frames = {image["frame_index"] for image in gt["images"]}
    records_all.extend({**record, "frame": frame_offset + record["frame"]} for record in records
                       if record["frame"] in frames)
