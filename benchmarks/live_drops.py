"""Live drops against model load: what a camera feed loses when the model is busy some of the time.

A real RTSP server (GStreamer's gst-rtsp-server, ``tests/rtsp_server.py``) sends a 768x576 clip at
10 fps, in real time, as a camera would. The model's load is set with ``model.max_fps`` (inference
takes 1/max_fps a frame, whatever the model computes beneath it; the test model's own time is
far below): load = feed rate / max_fps, at 25%, 50%, 90% and 150%. Each run reads ``--seconds`` of
the feed with the default live policy (``budget``, ``batch.live_max_wait_ms`` 500) and writes masks.
Targets: no drops at or below 50% load, at most 2% at 90%, latency (capture to the masks file) p99
within the budget at every load. The ``latest`` policy, the default before it, runs beside it at
each load: the baseline.

    python benchmarks/live_drops.py [--seconds 30] [--policies budget,latest]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from common import free_port, machine, make_clip, start_rtsp_server

from streamseg.config import load_config
from streamseg.pipeline import run_config

FEED_FPS = 10
LOADS = (0.25, 0.5, 0.9, 1.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="feed time read per run")
    parser.add_argument("--policies", default="budget,latest")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "feed.mp4"
        make_clip(clip, int(FEED_FPS * (args.seconds + 20)), 768, 576, rate=FEED_FPS)
        port = free_port()
        for load in LOADS:
            for policy in args.policies.split(","):
                server = start_rtsp_server(clip, port)
                try:
                    config = load_config([], [{
                        "input": {"path": f"rtsp://127.0.0.1:{port}/cam", "duration_s": args.seconds},
                        "batch": {"live_policy": policy},
                        "model": {"name": "tiny-random", "score_thresh": 0.37, "max_fps": FEED_FPS / load},
                        "output": {"masks": os.path.join(tmp, "m.jsonl")}, "runtime": {"quiet": True}}])
                    started = time.monotonic()
                    summary = run_config(config)
                    wall = time.monotonic() - started
                finally:
                    server.kill()
                    server.wait()
                decoded = int(summary.stages.get("decode", {}).get("counters", {}).get("frames", 0))
                where = {name: st["counters"].get("dropped", 0) for name, st in summary.stages.items()
                         if st.get("counters", {}).get("dropped")}
                busy = summary.stages.get("infer", {}).get("busy_s", 0.0) / max(1e-9, wall - summary.startup_s)
                rows.append((load, policy, decoded, summary, where, busy))
    print(f"# live drops, {machine()}; RTSP 768x576 at {FEED_FPS} fps over TCP, {args.seconds:g} s a run, "
          "tiny-random with model.max_fps = feed rate / load")
    print("| load | policy | frames decoded | processed | dropped | dropped % | where | latency p50 ms | p99 ms | "
          "p99 2nd half ms | infer busy | bottleneck |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for load, policy, decoded, s, where, busy in rows:
        lat = s.latency
        share = 100 * s.dropped / max(1, decoded)
        print(f"| {load:.0%} | {policy} | {decoded} | {s.frames} | {s.dropped} | {share:.1f} | "
              f"{', '.join(f'{k} {v}' for k, v in where.items()) or '-'} | {lat.get('p50_s', 0) * 1000:.0f} | "
              f"{lat.get('p99_s', 0) * 1000:.0f} | {lat.get('p99_second_half_s', 0) * 1000:.0f} | {busy:.0%} | "
              f"{s.bottleneck()} |")


if __name__ == "__main__":
    main()
