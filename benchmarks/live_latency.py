"""Live latency: capture-to-publish latency of an RTSP feed whose inference cannot keep up.

A real RTSP server (GStreamer's gst-rtsp-server, run with Debian's /usr/bin/python3; see
``tests/rtsp_server.py``) streams a clip in real time at 30 fps; the inference stage is capped at
``--max-fps`` frames a second, so it is slower than the source. The baseline is the ``block``
policy, which drops nothing (what a pipeline without a drop policy does): its queue, and so its
latency, grows for as long as the run lasts. The default ``budget`` policy (and ``latest`` beside
it) should keep the latency flat, the second half of the run no worse than the first, and
``budget``'s p99 within ``batch.live_max_wait_ms``. A last run kills the server
mid-stream and restarts it after ``--down-s`` seconds, and times the reconnection.

    python benchmarks/live_latency.py [--model streamseg-small] [--frames 300] [--max-fps 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from common import free_port, make_clip
from common import start_rtsp_server as start_server

from streamseg.config import load_config
from streamseg.pipeline import run_config
from streamseg.summary import Summary


def run(url: str, tmp: str, args: argparse.Namespace, policy: str,
        on_event: Any = None) -> tuple[Summary, float]:
    config = load_config([], [{
        "input": {"path": url, "max_frames": args.frames, "reconnect_initial_s": 0.25, "read_timeout_s": 3.0},
        "batch": {"live_policy": policy},
        "model": {"name": args.model, "max_fps": args.max_fps},
        "output": {"masks": os.path.join(tmp, f"{policy}.jsonl"), "publish": f"tcp://127.0.0.1:{free_port()}"},
        "runtime": {"quiet": True}}])
    start = time.monotonic()
    summary = run_config(config, on_event)
    return summary, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--frames", type=int, default=300, help="frames to read from the feed (30 fps)")
    parser.add_argument("--max-fps", type=float, default=8.0, help="inference cap, below the feed's 30 fps")
    parser.add_argument("--down-s", type=float, default=2.0, help="how long the server stays down")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "feed.mp4"
        make_clip(clip, int(args.frames * 1.5), 640, 360)
        port = free_port()
        url = f"rtsp://127.0.0.1:{port}/cam"
        rows = []
        for policy in ("block", "budget", "latest"):
            server = start_server(clip, port)
            try:
                summary, wall = run(url, tmp, args, policy)
            finally:
                server.kill()
                server.wait()
            rows.append((policy, summary, wall))

        # reconnection: kill the server once frames flow, restart it after --down-s
        server = start_server(clip, port)
        marks: dict[str, float] = {}
        restarted: list[subprocess.Popen[str]] = []

        def on_event(event: dict[str, Any]) -> None:
            if event.get("event") == "progress" and event.get("frames", 0) >= 20 and "killed" not in marks:
                marks["killed"] = time.monotonic()
                server.kill()
                threading.Timer(args.down_s, lambda: restarted.append(start_server(clip, port))).start()
            if event.get("event") == "status":
                marks.setdefault(event["state"], time.monotonic())

        try:
            summary, wall = run(url, tmp, args, "budget", on_event)
        finally:
            for proc in [server, *restarted]:
                proc.kill()
                proc.wait()

    print(f"# live latency: {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print(f"# {args.model}, 640x360 RTSP feed at 30 fps over TCP, inference capped at {args.max_fps:g} fps, "
          f"{args.frames} frames read")
    print("| policy | processed | dropped | p50 ms | p99 ms | p99 1st half ms | p99 2nd half ms | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for policy, s, w in rows:
        lat = s.latency
        print(f"| {policy} | {s.frames} | {s.dropped} | {lat['p50_s'] * 1000:.0f} | {lat['p99_s'] * 1000:.0f} | "
              f"{lat['p99_first_half_s'] * 1000:.0f} | {lat['p99_second_half_s'] * 1000:.0f} | {w:.1f} |")
    block, budget = rows[0][1].latency, rows[1][1].latency
    print(f"p99 latency, block / budget: {block['p99_s'] / budget['p99_s']:.1f}x; budget's 2nd half / 1st half: "
          f"{budget['p99_second_half_s'] / budget['p99_first_half_s']:.2f}")
    if "reconnected" in marks and "lost" in marks:
        print(f"reconnection: server down {args.down_s:g} s; loss noticed {marks['lost'] - marks['killed']:.2f} s "
              f"after the kill, reconnected {marks['reconnected'] - marks['killed']:.2f} s after it; "
              f"{summary.frames} frames processed, decode counters {summary.stages['decode']['counters']}")
    else:
        print(f"reconnection: not observed (status events: {sorted(marks)})")


if __name__ == "__main__":
    main()
