"""Against the loop people write: one process that decodes, runs the model, draws and encodes, frame by frame.

The baseline is the script a user writes first: PyAV decodes a frame, the same model (same
weights, thresholds) runs on it, the same drawing code draws it with OpenCV, PyAV encodes it with
the same encoder settings, and its masks go to a JSON Lines file; then the next frame. It uses
the model at its fastest (torch on every core). ``streamseg run`` writes the same outputs.
Both are measured ``--rounds`` times in turns (this VM's speed drifts); fps excludes model loading.

    python benchmarks/single_loop.py [--model streamseg-small] [--size 640x360] [--frames 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import av
from common import decoded_frames  # noqa: F401 (puts the repository on the path)

import streamseg
from streamseg.messages import FrameResult
from streamseg.stages.infer import Predictor
from streamseg.stages.maskwriter import frame_record
from streamseg.stages.render import draw
from streamseg.synth import write_video


def single_loop(clip: Path, video: Path, masks: Path, predictor: Predictor) -> tuple[float, int]:
    """The one-process loop; returns (fps, frames)."""
    start = time.perf_counter()
    frames = 0
    with av.open(str(clip)) as source, av.open(str(video), "w", options={"movflags": "+faststart"}) as output, \
            open(masks, "w") as lines:
        stream = source.streams.video[0]
        encoder = output.add_stream("libx264", rate=stream.average_rate)
        encoder.width, encoder.height, encoder.pix_fmt = stream.width, stream.height, "yuv420p"
        encoder.time_base = stream.time_base
        encoder.codec_context.time_base = stream.time_base
        encoder.options = {"crf": "20", "preset": "veryfast"}
        for index, frame in enumerate(source.decode(stream)):
            image = frame.to_ndarray(format="rgb24")
            detections = predictor([image])[0]
            drawn = draw(image, detections, predictor.info)
            out = av.VideoFrame.from_ndarray(drawn, format="rgb24")
            out.pts, out.time_base = frame.pts, stream.time_base
            for packet in encoder.encode(out):
                output.mux(packet)
            result = FrameResult("0", index, frame.pts, stream.time_base, stream.width, stream.height, detections)
            lines.write(json.dumps(frame_record(result, predictor.info), separators=(",", ":")) + "\n")
            frames += 1
        for packet in encoder.encode(None):
            output.mux(packet)
    return frames / (time.perf_counter() - start), frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--score-thresh", type=float, default=0.5)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    predictor = Predictor(args.model, score_thresh=args.score_thresh)
    loop_fps, run_fps = [], []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        write_video(clip, None, seed=7, frames=args.frames, width=width, height=height, crf=23)
        predictor([decoded_frames(clip)[0]])  # warm-up
        for _ in range(args.rounds):
            fps, frames = single_loop(clip, Path(tmp) / "loop.mp4", Path(tmp) / "loop.jsonl", predictor)
            loop_fps.append(fps)
            summary = streamseg.run(str(clip), str(Path(tmp) / "run.mp4"), masks=str(Path(tmp) / "run.jsonl"),
                                    model__name=args.model, model__score_thresh=args.score_thresh)
            run_fps.append(summary.fps)
        loop_lines = [json.loads(line) for line in open(Path(tmp) / "loop.jsonl")]
        run_lines = [json.loads(line) for line in open(Path(tmp) / "run.jsonl")]
        same_counts = sum(len(a["instances"]) == len(b["instances"]) for a, b in zip(loop_lines, run_lines))
    a, b = statistics.median(loop_fps), statistics.median(run_fps)
    print(f"# against the single-process loop, {args.model}, {width}x{height} synth clip (crf 23), "
          f"{args.frames} frames, annotated video + masks, {args.rounds} rounds in turns")
    print(f"# {platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| what | fps (median) | ratio | rounds |")
    print("|---|---|---|---|")
    print(f"| single-process loop (baseline) | {a:.2f} | 1.00 | {', '.join(f'{x:.1f}' for x in loop_fps)} |")
    print(f"| streamseg run | {b:.2f} | {b / a:.2f} | {', '.join(f'{x:.1f}' for x in run_fps)} |")
    print(f"same outputs: {len(loop_lines)} and {len(run_lines)} frames of masks; the same number of instances "
          f"in {same_counts} of them (the loop runs the model one frame at a time, the pipeline in batches of 4)")


if __name__ == "__main__":
    main()
