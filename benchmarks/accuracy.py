"""The accuracy suite (``streamseg.tools.suite``): a model on 26 held-out scenes through the pipeline.

Prints each scene's mask, box and keypoint AP, the pooled COCO AP (one evaluation over all the
scenes' annotations), and the worst scene. Clips are kept in ``--clips`` (default: a folder under
the system's temporary directory), so a second run only runs the pipeline.

    python benchmarks/accuracy.py [--model streamseg-small] [--weights W] [--frames 100] [--clips DIR]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import machine, suite_parser

from streamseg.tools.suite import SCENES, run_suite

TASKS = (("segm", "mask"), ("bbox", "box"), ("keypoints", "keypoint"))


def main() -> None:
    parser = suite_parser(__doc__)
    args = parser.parse_args()
    started = time.monotonic()
    result = run_suite(Path(args.clips), args.frames, args.model, args.weights,
                       progress=lambda line: print(line, file=sys.stderr, flush=True), model__input=args.input)
    wall = time.monotonic() - started
    print(f"# accuracy suite, {args.model}{' ' + args.weights if args.weights else ''}"
          f"{', model.input ' + args.input if args.input else ''}, {len(SCENES)} held-out "
          f"scenes x {args.frames} frames, {machine()}, {wall:.0f} s")
    print("| scene | mask AP | mask AP50 | mask AP75 | box AP | keypoint AP | mask AP small | mask AP medium |")
    print("|---|---|---|---|---|---|---|---|")
    rows = [*result.scenes.items(), ("**pooled**", result.pooled)]
    for name, stats in rows:
        seg, box, kp = (stats.get(task, {}) for task, _ in TASKS)
        print(f"| {name} | {seg.get('AP', 0):.3f} | {seg.get('AP50', 0):.3f} | {seg.get('AP75', 0):.3f} "
              f"| {box.get('AP', 0):.3f} "
              f"| {kp.get('AP', 0):.3f} | {_ap(seg.get('APs'))} | {_ap(seg.get('APm'))} |")
    for task, label in TASKS:
        name, ap = result.worst(task)
        print(f"worst scene, {label} AP: {name} {ap:.3f}")
    for task, label in TASKS:
        stats = result.pooled.get(task, {})
        print(f"pooled {label}: " + ", ".join(f"{k} {v:.3f}" for k, v in stats.items()))


def _ap(value: float | None) -> str:
    return "-" if value is None or value < 0 else f"{value:.3f}"  # -1: no instances of that size


if __name__ == "__main__":
    main()
