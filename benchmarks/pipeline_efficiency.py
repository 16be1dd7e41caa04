"""Pipeline efficiency: end-to-end fps of ``streamseg run`` against the model alone on the same frames.

The ceiling is the model called in this process on the already-decoded frames, batch by batch,
with the same batch size and thresholds: no decoding, drawing, encoding or transport. The
pipeline writes everything a user gets (annotated video and masks). Its fps counts from the
moment every worker is ready (model loaded). The two are measured in turns, ``--rounds`` times,
and the medians compared: this VM's speed drifts by 15% and more between minutes. The clip is a
held-out ``streamseg synth`` clip (the scenes the shipped model knows) at x264's default quality
(crf 23), as heavy to decode as a camera's stream.

    python benchmarks/pipeline_efficiency.py [--model streamseg-small] [--sizes 640x360,1280x720]
                                             [--frames 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from common import decoded_frames, model_fps

import streamseg
from streamseg.config import ModelConfig
from streamseg.models.predictor import Predictor
from streamseg.tools.synth import write_video


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--sizes", default="640x360,1280x720")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for the pipeline runs (as streamseg run --set)")
    args = parser.parse_args()
    predictor = Predictor(ModelConfig(name=args.model, score_thresh=args.score_thresh))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.split("x"))
            clip = Path(tmp) / f"clip-{size}.mp4"
            write_video(clip, None, seed=7, frames=args.frames, width=width, height=height, crf=23)
            frames = decoded_frames(clip)
            alone, piped, summaries = [], [], []
            for _ in range(args.rounds):
                alone.append(model_fps(predictor, frames, args.max_batch))
                summary = streamseg.run(str(clip), str(Path(tmp) / "out.mp4"), masks=str(Path(tmp) / "m.jsonl"),
                                        model__name=args.model, model__score_thresh=args.score_thresh,
                                        batch__max_batch=args.max_batch, sets=tuple(args.sets))
                piped.append(summary.fps)
                summaries.append(summary)
            median = sorted(summaries, key=lambda s: s.fps)[len(summaries) // 2]
            rows.append((size, alone, piped, median))
    print(f"# pipeline efficiency, {args.model}, synth clip (held-out seed 7), {args.frames} frames, "
          f"batch {args.max_batch}, video + masks written, {args.rounds} rounds in turns")
    print(f"# {platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
          + (f", --set {' '.join(args.sets)}" if args.sets else ""))
    print("| size | model alone fps (ceiling) | streamseg run fps | ratio | rounds: alone / run |")
    print("|---|---|---|---|---|")
    for size, alone, piped, _ in rows:
        a, p = statistics.median(alone), statistics.median(piped)
        detail = ", ".join(f"{x:.1f} / {y:.1f}" for x, y in zip(alone, piped))
        print(f"| {size} | {a:.2f} | {p:.2f} | {p / a:.2f} | {detail} |")
    for size, _, _, summary in rows:
        print(f"\n{size}, the median run:\n{summary.table()}")


if __name__ == "__main__":
    main()
