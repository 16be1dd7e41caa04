"""Model speed: frames per second of a model alone on decoded frames, batch 1 and batched.

The baseline row is the same model at batch 1 on the same frames, so the table's ratios say what
batching buys; the issue's figure is the absolute fps at 320x240.

    python benchmarks/model_speed.py [--model streamseg-small] [--size 320x240] [--frames 150] [--input WxH]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from common import decoded_frames, model_fps

from streamseg.config import ModelConfig
from streamseg.models.predictor import Predictor
from streamseg.tools.synth import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--size", default="320x240")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--input", default="", metavar="WxH", help="model.input (default: the model's own)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_video(clip, None, seed=7, frames=args.frames, width=width, height=height)
        frames = decoded_frames(clip)
    predictor = Predictor(ModelConfig(name=args.model, device="cpu", score_thresh=args.score_thresh, input=args.input))
    rows = [(batch, model_fps(predictor, frames, batch)) for batch in (1, 2, 4)]
    print(f"# model speed, {args.model}{', model.input ' + args.input if args.input else ''}, {width}x{height}, "
          f"{len(frames)} synthetic frames, score >= {args.score_thresh}")
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch threads {__import__('torch').get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| batch | fps | ratio to batch 1 |")
    print("|---|---|---|")
    for batch, value in rows:
        print(f"| {batch} | {value:.1f} | {value / rows[0][1]:.2f} |")


if __name__ == "__main__":
    main()
