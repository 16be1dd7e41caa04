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
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from common import decoded_frames, model_fps

import streamseg
from streamseg.stages.infer import Predictor


def make_clip(path: Path, frames: int, width: int, height: int) -> None:
    """Moving textured rectangles, H.264."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 120, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.roll(texture, 2 * i, axis=1)
            for k in range(4):
                x = (40 + 60 * k + 3 * i * (k + 1)) % (width - width // 5)
                y = (30 + 50 * k) % (height - height // 4)
                image[y:y + height // 5, x:x + width // 6] = (200 - 40 * k, 60 + 40 * k, 120)
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode())


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
