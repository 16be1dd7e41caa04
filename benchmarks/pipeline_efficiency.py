"""Pipeline efficiency: end-to-end fps of ``streamseg run`` against the model alone on the same frames.

The ceiling is the model called in this process on the already-decoded frames, batch by batch,
with the same batch size and thresholds: no decoding, drawing, encoding or transport. The
pipeline's ratio to it says how much of the model's speed survives the rest of the work.

    python benchmarks/pipeline_efficiency.py [--model NAME] [--size 640x360] [--frames 150]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from common import decoded_frames, make_clip, model_fps

import streamseg
from streamseg.stages.infer import Predictor


def model_alone(frames: list[np.ndarray], model: str, batch: int, score_thresh: float) -> float:
    """fps of the model on decoded frames in this process (warm-up batch excluded)."""
    return model_fps(Predictor(model, score_thresh=score_thresh), frames, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-random")
    parser.add_argument("--score-thresh", type=float, default=0.37)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--max-batch", type=int, default=4)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.frames, width, height)
        frames = decoded_frames(clip)
        alone = model_alone(frames, args.model, args.max_batch, args.score_thresh)
        summary = streamseg.run(str(clip), str(Path(tmp) / "out.mp4"), masks=str(Path(tmp) / "m.jsonl"),
                                model__name=args.model, model__score_thresh=args.score_thresh,
                                batch__max_batch=args.max_batch)
    print(f"# pipeline efficiency, {args.model}, {width}x{height}, {args.frames} frames, batch {args.max_batch}")
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| what | fps | ratio |")
    print("|---|---|---|")
    print(f"| model alone (ceiling) | {alone:.2f} | 1.00 |")
    print(f"| streamseg run, end to end after start-up | {summary.fps:.2f} | {summary.fps / alone:.2f} |")
    print(f"| streamseg run, including start-up ({summary.startup_s:.1f} s) | {summary.frames / summary.wall_s:.2f} | "
          f"{summary.frames / summary.wall_s / alone:.2f} |")
    print()
    print(summary.table())


if __name__ == "__main__":
    main()
