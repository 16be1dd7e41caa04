"""Against the loops people write: one process that decodes, runs the model, draws and encodes.

Every side is a whole process, timed from outside from its spawn to its exit (interpreter,
imports, model loading and shutdown included), reading the same clip and writing the same
outputs: an annotated H.264 MP4 (libx264 at streamseg's settings: crf 20, preset veryfast,
yuv420p, the input's timestamps) and a masks JSON Lines file (COCO RLE), with the same model,
weights and thresholds. The sides:

- ``streamseg run`` with its defaults (batch 4) but without tracking (``track.enabled=false``: no
  loop tracks): the pipeline of worker processes;
- ``naive``, the loop most users write (a baseline, target >= 2.0x): the torchvision model called
  as ``model([image])`` with its own ``box_score_thresh`` (torchvision's 0.05), so that torchvision
  pastes a full-frame mask (``paste_masks_in_image``) for every detection above it, and the
  instances below ``--score-thresh`` dropped afterwards (the same instances as the other sides:
  a lower threshold only adds boxes that score lower); the masks thresholded, COCO RLE with pycocotools one mask at a time,
  each mask blended over the whole frame with OpenCV and outlined, boxes, labels and keypoints
  drawn with OpenCV; frame by frame (on a GPU with fp16 autocast, as the pipeline);
- ``batch1``, the same loop written with streamseg's parts (a baseline, target >= 1.15x):
  :class:`~streamseg.models.predictor.Predictor` (masks pasted region by region), streamseg's
  ``draw`` and its masks records, frame by frame;
- ``batched``: that loop with the pipeline's batch of 4 (reported, without a target).

Thread settings, the same wherever the same work runs: PyAV decodes with
``thread_type = "AUTO"`` (frame and slice threads) on every side, as streamseg's decoder does,
and libx264 encodes with ``thread_type = "AUTO"`` and FFmpeg's thread count, as its encoder
does. torch: the pipeline's model runs on cores - 1 threads because the other stages run beside
it on the last core; a loop runs its steps one after another, so while its model runs nothing
else wants a core, and cores - 1 threads would leave one idle. The loops therefore keep torch's
own default, every core (``--torch-threads`` sets another count): each side gets the whole
machine, and each uses it as well as its structure allows, the loops at their fastest. The loops
get the environment the pipeline gives its model worker (``OMP_WAIT_POLICY=PASSIVE``, unless the
environment sets it): idle OpenMP threads sleep instead of spinning, so decoder and encoder
threads are not kept off the cores.

Outputs are compared mask by mask, each side's masks file against ``streamseg run``'s: per frame
the same number of instances, and each instance matched (same class, greatest IoU first) with a
mask IoU of at least 0.99. Identical RLE is not required, only reported: the pipeline's batches
(4 frames, or fewer when a batch waited ``batch.max_wait_ms``, so not the batched loop's groups
either) and batch 1 round differently inside the model (scores differ in the last digits), which
can flip a pixel at a mask's border; torchvision's paste and streamseg's give the same masks.

    python benchmarks/single_loop.py bench [--seconds 60] [--fps 25] [--size 640x360] [--rounds 3]
    python benchmarks/single_loop.py loop --mode batch1|batched|naive CLIP -o OUT.mp4 --masks OUT.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from common import machine, run_summary, runs, streamseg_run, timed

from streamseg.clock import process_started
from streamseg.config import BatchConfig, EncodeConfig, ModelConfig

IOU_MIN = 0.99
"""Least mask IoU of an instance against the pipeline's for the outputs to count as the same."""
LOOP_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""The environment ``streamseg.plan`` gives the pipeline's model worker; the loops get it too."""


# --- the loops (``loop`` subcommand: one process each) ---------------------------------------------

class Loop:
    """Decoding and encoding as streamseg's stages set them up, and the masks file, for a loop."""

    def __init__(self, clip: str, video: str, masks: str) -> None:
        self.source = av.open(clip)
        self.stream = self.source.streams.video[0]
        self.stream.thread_type = "AUTO"  # as streamseg's decoder (stages/decode.py)
        ctx = self.stream.codec_context
        self.width, self.height = ctx.width, ctx.height
        self.time_base = Fraction(self.stream.time_base)
        config = EncodeConfig()
        self.output = av.open(video, "w", options={"movflags": "+faststart"})
        encoder = self.output.add_stream(config.codec, rate=self.stream.average_rate)
        encoder.width, encoder.height, encoder.pix_fmt = self.width, self.height, "yuv420p"
        encoder.time_base = self.time_base
        encoder.codec_context.time_base = self.time_base
        encoder.thread_type = "AUTO"  # as streamseg's encoder (stages/encode.py)
        encoder.options = {"crf": str(config.crf), "preset": config.preset}
        self.encoder = encoder
        self.lines = open(masks, "w")  # noqa: SIM115 (closed in close())
        self.frames = self.instances = 0

    def decoded(self) -> Any:
        """(index, pts, RGB image) of every frame."""
        for index, frame in enumerate(self.source.decode(self.stream)):
            yield index, frame.pts, frame.to_ndarray(format="rgb24")

    def write(self, pts: int, drawn: np.ndarray, record: dict[str, Any]) -> None:
        out = av.VideoFrame.from_ndarray(drawn, format="rgb24")
        out.pts, out.time_base = pts, self.time_base
        self.output.mux(self.encoder.encode(out))
        self.lines.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.frames += 1
        self.instances += len(record["instances"])

    def close(self) -> None:
        self.output.mux(self.encoder.encode(None))
        self.output.close()
        self.source.close()
        self.lines.close()


def streamseg_loop(loop: Loop, args: argparse.Namespace, batch: int) -> float:
    """streamseg's Predictor, draw and records, ``batch`` frames a model call; returns when the model was ready."""
    from streamseg.formats.records import frame_record
    from streamseg.models.predictor import Predictor
    from streamseg.runtime.messages import FrameResult
    from streamseg.stages.render import draw

    predictor = Predictor(ModelConfig(name=args.model, weights=args.weights, score_thresh=args.score_thresh,
                                      mask_thresh=args.mask_thresh, torch_threads=args.torch_threads,
                                      detections_per_img=args.detections_per_img))
    ready = time.monotonic()
    pending: list[tuple[int, int, np.ndarray]] = []

    def flush() -> None:
        for (index, pts, image), detections in zip(pending, predictor([image for _, _, image in pending])):
            result = FrameResult("0", index, pts, loop.time_base, loop.width, loop.height, detections)
            loop.write(pts, draw(image, detections, predictor.info), frame_record(result, predictor.info))
        pending.clear()

    for item in loop.decoded():
        pending.append(item)
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    return ready


def naive_loop(loop: Loop, args: argparse.Namespace) -> float:
    """The loop a user writes around the torchvision model; returns when the model was ready."""
    import cv2
    import torch
    from pycocotools import mask as mask_utils
    from torchvision.transforms.functional import to_tensor

    # the model's architecture and shipped weights, as torchvision's MaskRCNN in eval mode
    from streamseg.models.registry import load_model

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, info = load_model(args.model, args.weights, 0)
    # as users call it: the model's own box_score_thresh (0.05, torchvision's default, or a lower
    # --score-thresh), so torchvision pastes a full-frame mask for every detection above it; the score
    # filter comes after
    model.roi_heads.score_thresh = min(0.05, args.score_thresh)
    if args.detections_per_img:
        model.roi_heads.detections_per_img = args.detections_per_img
    model.to(device)
    fp16 = device == "cuda" and ModelConfig().fp16  # fp16 autocast on a GPU, as the pipeline
    ready = time.monotonic()
    rng = np.random.default_rng(0)
    colours = [tuple(int(c) for c in rng.integers(64, 256, 3)) for _ in range(len(info.categories))]
    alpha = 0.45
    for index, pts, image in loop.decoded():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            out = model([to_tensor(image).to(device)])[0]
        keep = out["scores"] >= args.score_thresh
        boxes = out["boxes"][keep].float().cpu().numpy()
        scores = out["scores"][keep].float().cpu().numpy()
        labels = out["labels"][keep].cpu().numpy()
        masks = (out["masks"][keep][:, 0] >= args.mask_thresh).cpu().numpy()  # full-frame masks, N x H x W
        keypoints = None
        if "keypoints" in out:
            keypoints = out["keypoints"][keep].float().cpu().numpy()
            keypoints[..., 2] = out["keypoints_scores"][keep].float().cpu().numpy()
        drawn = image.copy()
        instances = []
        for i in range(len(scores)):
            label = int(labels[i])
            name = info.categories[label]
            colour = colours[label]
            mask = masks[i]
            blended = cv2.addWeighted(drawn, 1 - alpha, np.full_like(drawn, colour), alpha, 0)
            drawn[mask] = blended[mask]
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(drawn, contours, -1, colour, 2)
            x1, y1, x2, y2 = (round(float(v)) for v in boxes[i])
            cv2.rectangle(drawn, (x1, y1), (x2, y2), colour, 1)
            cv2.putText(drawn, f"{name} {scores[i]:.2f}", (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                        colour, 1, cv2.LINE_AA)
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            instance = {"class_id": label, "class": name, "score": round(float(scores[i]), 6),
                        "box": [round(float(v), 3) for v in boxes[i]],
                        "mask": {"size": [loop.height, loop.width], "counts": rle["counts"].decode("ascii")}}
            if keypoints is not None:
                points = keypoints[i]
                for a, b in info.skeleton:
                    cv2.line(drawn, (int(points[a, 0]), int(points[a, 1])), (int(points[b, 0]), int(points[b, 1])),
                             colour, 1, cv2.LINE_AA)
                for x, y, _ in points:
                    cv2.circle(drawn, (int(x), int(y)), 2, (255, 255, 255), -1)
                instance["keypoints"] = [[round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                                         for x, y, s in points]
            instances.append(instance)
        record = {"stream": "0", "frame": index, "pts": pts, "time": round(float(pts * loop.time_base), 6),
                  "width": loop.width, "height": loop.height, "instances": instances}
        loop.write(pts, drawn, record)
    return ready


def loop_main(args: argparse.Namespace) -> None:
    started = process_started()
    loop = Loop(args.clip, args.output, args.masks)
    if args.mode == "naive":
        ready = naive_loop(loop, args)
    else:
        ready = streamseg_loop(loop, args, 1 if args.mode == "batch1" else args.batch)
    loop.close()
    import torch

    print(json.dumps({"frames": loop.frames, "instances": loop.instances, "startup_s": round(ready - started, 3),
                      "wall_s": round(time.monotonic() - started, 3), "torch_threads": torch.get_num_threads()}))


# --- comparing masks files -------------------------------------------------------------------------

@dataclass
class Comparison:
    """One side's masks against the reference's."""

    frames: tuple[int, int] = (0, 0)
    """(this side's, the reference's) frames."""
    same_count: int = 0
    """Frames with as many instances as the reference's."""
    instances: int = 0
    """The reference's instances."""
    matched: int = 0
    identical: int = 0
    """Matched masks whose RLE is the reference's."""
    below: int = 0
    """Matched masks with IoU under IOU_MIN."""
    min_iou: float = 1.0

    @property
    def same(self) -> bool:
        return (self.frames[0] == self.frames[1] == self.same_count and self.matched == self.instances
                and self.below == 0)

    def worse(self, other: Comparison) -> bool:
        """Whether this one is further from the reference than ``other``."""
        def key(c: Comparison) -> tuple[bool, int, int, float]:
            return c.same, c.same_count - c.frames[1], -c.below, c.min_iou

        return key(self) < key(other)


def read_records(path: Path) -> dict[int, list[dict[str, Any]]]:
    with open(path) as f:
        return {record["frame"]: record["instances"] for record in map(json.loads, f)}


def compare(path: Path, reference: Path) -> Comparison:
    """``path``'s masks against ``reference``'s: instances matched per frame by class, greatest IoU first."""
    from pycocotools import mask as mask_utils

    mine, theirs = read_records(path), read_records(reference)
    c = Comparison(frames=(len(mine), len(theirs)))
    for frame, ref in theirs.items():
        got = mine.get(frame, [])
        c.same_count += len(got) == len(ref)
        c.instances += len(ref)
        if not got or not ref:
            continue
        iou = np.asarray(mask_utils.iou([g["mask"] for g in got], [r["mask"] for r in ref], [0] * len(ref)))
        iou = iou.reshape(len(got), len(ref))
        same_rle = np.array([[g["mask"]["counts"] == r["mask"]["counts"] for r in ref] for g in got])
        iou[same_rle] = 1.0  # two empty masks too
        iou[np.array([g["class_id"] for g in got])[:, None] != np.array([r["class_id"] for r in ref])[None, :]] = -1
        used_g, used_r = set(), set()
        for flat in np.argsort(-iou, axis=None, kind="stable"):
            g, r = divmod(int(flat), len(ref))
            if g in used_g or r in used_r or iou[g, r] < 0:
                continue
            used_g.add(g)
            used_r.add(r)
            c.matched += 1
            c.min_iou = min(c.min_iou, float(iou[g, r]))
            c.below += bool(iou[g, r] < IOU_MIN)
            c.identical += bool(same_rle[g, r])
    return c


def video_frames(path: Path) -> int:
    """Frames of an annotated MP4, counted by demuxing it."""
    with av.open(str(path)) as container:
        return sum(1 for packet in container.demux(video=0) if packet.size)


# --- the driver (``bench`` subcommand) -------------------------------------------------------------

SIDES = {
    "naive": "naive loop: torchvision's full-frame masks, OpenCV drawing, batch 1",
    "batch1": "loop with streamseg's paste and drawing, batch 1",
    "batched": "the same loop, batched as the pipeline (batch 4)",
    "run": "`streamseg run` (its defaults: batch 4; no tracking, as no loop tracks)",
}
TARGETS = {"naive": 2.0, "batch1": 1.15}
"""Least speed-up of ``streamseg run`` (whole processes, start-up included) over a baseline."""


def bench_main(args: argparse.Namespace) -> None:
    width, height = (int(v) for v in args.size.split("x"))
    frames = round(args.seconds * args.fps)
    loop_env = {**LOOP_ENV, **os.environ}
    common = ["--model", args.model, "--score-thresh", str(args.score_thresh), "--mask-thresh", str(args.mask_thresh),
              *(["--weights", args.weights] if args.weights else [])]
    wall: dict[str, list[float]] = {side: [] for side in SIDES}
    cpu: dict[str, list[float]] = {side: [] for side in SIDES}
    startup: dict[str, list[float]] = {side: [] for side in SIDES}
    checks: dict[str, Comparison] = {}
    videos: dict[str, int] = {}
    threads = 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        clip = out / "clip.mp4"
        start = time.perf_counter()
        write_clip(clip, frames, width, height, args.fps)
        print(f"clip: {frames} frames {width}x{height} at {args.fps} fps in {time.perf_counter() - start:.0f} s",
              file=sys.stderr)

        def command(side: str) -> list[str]:
            video, masks = str(out / f"{side}.mp4"), str(out / f"{side}.jsonl")
            if side == "run":
                sets = [arg for s in [*args.sets, *([f"model.detections_per_img={args.detections_per_img}"]
                                                    if args.detections_per_img else [])] for arg in ("--set", s)]
                # without the track stage: no loop tracks, and tracking has the model keep and paste
                # low-score detections too (its cost is benchmarks/tracking.py's)
                return streamseg_run(str(clip), "-o", video, "--masks", masks, "--max-batch", str(args.batch),
                                     "--set", "track.enabled=false", *common, *sets)
            return [sys.executable, str(Path(__file__).resolve()), "loop", "--mode", side, str(clip), "-o", video,
                    "--masks", masks, "--batch", str(args.batch), "--torch-threads", str(args.torch_threads),
                    "--detections-per-img", str(args.detections_per_img), *common]

        timed([sys.executable, "-c", "import torch, torchvision, cv2, av"])  # files into the page cache
        sides = list(SIDES)
        for r in range(args.rounds):
            for side in sides[r % len(sides):] + sides[:r % len(sides)]:
                result = timed(command(side), env=None if side == "run" else loop_env)
                if side == "run":
                    summary = run_summary(result.stderr)
                    done, started = int(summary["frames"]), summary["startup_s"]
                else:
                    report = json.loads(result.stdout.strip().splitlines()[-1])
                    done, started, threads = report["frames"], report["startup_s"], report["torch_threads"]
                if done != frames:
                    sys.exit(f"{side} wrote {done} frames of {frames}")
                wall[side].append(result.wall_s)
                cpu[side].append(result.cpu_s)
                startup[side].append(started)
                print(f"round {r + 1} {side}: {result.wall_s:.1f} s wall, {result.cpu_s:.1f} s CPU, "
                      f"start-up {started:.1f} s", file=sys.stderr)
            for side in SIDES:
                if side != "run":
                    check = compare(out / f"{side}.jsonl", out / "run.jsonl")
                    checks[side] = check if side not in checks or check.worse(checks[side]) else checks[side]
            for side in SIDES:
                videos[side] = min(videos.get(side, frames), video_frames(out / f"{side}.mp4"))
    report_table(args, frames, width, height, wall, cpu, startup, threads)
    report_outputs(checks, videos, frames)


def write_clip(path: Path, frames: int, width: int, height: int, fps: int) -> None:
    from streamseg.tools.synth import write_video

    write_video(path, None, seed=7, frames=frames, width=width, height=height, fps=Fraction(fps), crf=23)


def report_table(args: argparse.Namespace, frames: int, width: int, height: int, wall: dict[str, list[float]],
                 cpu: dict[str, list[float]], startup: dict[str, list[float]], threads: int) -> None:
    med = {side: statistics.median(values) for side, values in wall.items()}
    cores = os.cpu_count() or 1
    print(f"# against single-process loops: {args.model} (score >= {args.score_thresh}), {width}x{height} synth clip "
          f"(crf 23), {args.seconds:g} s at {args.fps} fps = {frames} frames, annotated MP4 + masks JSONL from every "
          f"side; whole processes timed from outside (start-up included); rounds: {args.rounds}, in turns; medians")
    print(f"# {machine()}")
    print(f"# threads: decoding and encoding thread_type AUTO everywhere; the loops' torch {threads} threads, "
          f"OMP_WAIT_POLICY={LOOP_ENV['OMP_WAIT_POLICY']}; streamseg run's model {ModelConfig().worker_threads(cores)}")
    print("| what | wall s (median) | fps end to end | start-up s | CPU s | `streamseg run` speed-up | target | met "
          "| rounds: wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for side, name in SIDES.items():
        speedup = med[side] / med["run"]
        target = TARGETS.get(side)
        met = "" if target is None else "yes" if speedup >= target else "no"
        target_text = "" if side == "run" else f">= {target:.2f}x" if target else "(reported)"
        print(f"| {name} | {med[side]:.1f} | {frames / med[side]:.2f} | {statistics.median(startup[side]):.1f} | "
              f"{statistics.median(cpu[side]):.1f} | {speedup:.2f}x | {target_text} | {met} | {runs(wall[side])} |")
    floor = statistics.median(cpu["run"]) / cores
    print(f"The {cores}-core bound: `streamseg run` used {statistics.median(cpu['run']):.1f} s of CPU (every process, "
          f"start-up included); packed perfectly on {cores} cores that is at least {floor:.1f} s of wall, so at most "
          f"{med['batch1'] / floor:.2f}x the batch-1 loop ({med['batch1']:.1f} s) and {med['naive'] / floor:.2f}x the "
          f"naive loop. The run took {med['run']:.1f} s, {100 * floor / med['run']:.0f}% of that bound's speed.")


def report_outputs(checks: dict[str, Comparison], videos: dict[str, int], frames: int) -> None:
    print()
    print(f"| masks against `streamseg run`'s | frames | same instance count | instances matched | identical RLE "
          f"| min IoU | IoU < {IOU_MIN} | same |")
    print("|---|---|---|---|---|---|---|---|")
    for side, c in checks.items():
        print(f"| {SIDES[side]} | {c.frames[0]} / {c.frames[1]} | {c.same_count} | {c.matched} / {c.instances} | "
              f"{c.identical} | {c.min_iou:.4f} | {c.below} | {'yes' if c.same else 'NO'} |")
    print(f"The worst round of each side. Same: every frame has as many instances as the pipeline's, each matched "
          f"(same class, greatest IoU first) with mask IoU >= {IOU_MIN}. Annotated videos: "
          f"{', '.join(f'{side} {n}' for side, n in videos.items())} frames of {frames} (fewest over the rounds).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("bench", "loop"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="streamseg-small")
        p.add_argument("--score-thresh", type=float, default=ModelConfig().score_thresh)
        p.add_argument("--mask-thresh", type=float, default=ModelConfig().mask_thresh)
        p.add_argument("--batch", type=int, default=BatchConfig().max_batch,
                       help="frames a model call in the batched loop and in streamseg run")
        p.add_argument("--torch-threads", type=int, default=0, help="the loops' torch threads; 0: torch's default")
        p.add_argument("--weights", default=None, help="a weights file for the model (default: its own)")
        p.add_argument("--detections-per-img", type=int, default=ModelConfig().detections_per_img,
                       help="at most this many instances a frame on every side (0: the model's own limit)")
    bench, loop = sub.choices["bench"], sub.choices["loop"]
    bench.add_argument("--seconds", type=float, default=60.0, help="of the synthetic clip")
    bench.add_argument("--fps", type=int, default=25, help="of the synthetic clip")
    bench.add_argument("--size", default="640x360", help="of the synthetic clip")
    bench.add_argument("--rounds", type=int, default=3)
    bench.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="config override for streamseg run (as its --set)")
    loop.add_argument("--mode", choices=("naive", "batch1", "batched"), required=True)
    loop.add_argument("clip")
    loop.add_argument("-o", "--output", required=True, help="annotated MP4")
    loop.add_argument("--masks", required=True, help="masks JSON Lines")
    args = parser.parse_args()
    loop_main(args) if args.command == "loop" else bench_main(args)


if __name__ == "__main__":
    main()
