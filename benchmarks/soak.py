"""Soak: the memory (RSS) of every worker over a long live run; none may keep growing.

An endless live RTSP feed (GStreamer's test pattern at 30 fps, served by ``tests/rtsp_server.py``
with Debian's gst-rtsp-server) goes through the whole pipeline, annotated video, masks and
publishing on, for ``--minutes``. Every ``--sample-s`` seconds the resident memory of the
supervisor and of each worker process is read from ``/proc``. The baseline is each process's own
RSS once the run has warmed up (the median over the minute after ``--warmup-min``); the figure
is its RSS at the end (the median of the last three samples) as a ratio of that baseline, and
the growth in percent. A leak of anything per frame shows as a ratio that grows with the run.

    python benchmarks/soak.py [--minutes 20] [--size 640x360] [--model streamseg-small]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import free_port, start_rtsp_server, workers

RSS_KINDS = ("VmRSS", "RssAnon", "RssShmem")
"""Resident memory in all, its private part (heap: where a leak shows), and the shared memory
(/dev/shm frame slots) the process has touched, which counts in its RSS once touched."""


def rss_kib(pid: int) -> tuple[int, int, int] | None:
    """:data:`RSS_KINDS` of a process in KiB, or None when it is gone."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":" in line)
        return tuple(int(fields[kind].split()[0]) for kind in RSS_KINDS)  # type: ignore[return-value]
    except (OSError, KeyError, ValueError):
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--size", default="640x360")
    parser.add_argument("--model", default="streamseg-small")
    parser.add_argument("--sample-s", type=float, default=10.0)
    parser.add_argument("--warmup-min", type=float, default=2.0)
    args = parser.parse_args()
    port = free_port()
    server = start_rtsp_server(f"pattern:{args.size}@30", port)
    frames = int(args.minutes * 60 * 30)
    samples: dict[str, list[tuple[float, tuple[int, int, int]]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.Popen([sys.executable, "-m", "streamseg", "run", f"rtsp://127.0.0.1:{port}/cam",
                                "-o", "soak.mp4", "--masks", "soak.jsonl", "--publish", f"tcp://127.0.0.1:{free_port()}",
                                "--model", args.model, "--frames", str(frames)],
                               cwd=tmp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        start = time.monotonic()
        try:
            while run.poll() is None:
                now = time.monotonic() - start
                for name, pid in workers(run.pid).items():
                    value = rss_kib(pid)
                    if value is not None:
                        samples.setdefault(name, []).append((now, value))
                time.sleep(args.sample_s)
            _, stderr = run.communicate()
        finally:
            if run.poll() is None:
                run.terminate()
                run.wait(60)
            server.kill()
            server.wait()
        output_mb = (Path(tmp) / "soak.mp4").stat().st_size / 1e6 if (Path(tmp) / "soak.mp4").exists() else 0.0
    wall = time.monotonic() - start
    warm = args.warmup_min * 60
    print(f"# soak: {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; {args.model}, "
          f"live RTSP test pattern {args.size} at 30 fps, {frames} source frames, {wall / 60:.1f} min, "
          f"exit {run.returncode}")
    print(f"# baseline: each process's median RSS in the minute after {args.warmup_min:g} min; "
          f"end: the median of its last 3 samples (every {args.sample_s:g} s); output video {output_mb:.1f} MB")
    print("| process | baseline MiB | end MiB | max MiB | end / baseline | growth | private (anon) growth | "
          "shared memory touched: baseline / end MiB |")
    print("|---|---|---|---|---|---|---|---|")
    worst = worst_anon = 0.0
    for name, series in sorted(samples.items()):
        base = [v for t, v in series if warm <= t < warm + 60]
        if not base or len(series) < 4:
            print(f"| {name} | - | - | - | - | too few samples | - | - |")
            continue
        baseline = [statistics.median(v[k] for v in base) for k in range(len(RSS_KINDS))]
        end = [statistics.median(v[k] for _, v in series[-3:]) for k in range(len(RSS_KINDS))]
        growth = 100 * (end[0] - baseline[0]) / baseline[0]
        anon = 100 * (end[1] - baseline[1]) / baseline[1]
        worst, worst_anon = max(worst, growth), max(worst_anon, anon)
        peak = max(v[0] for _, v in series)
        print(f"| {name} | {baseline[0] / 1024:.1f} | {end[0] / 1024:.1f} | {peak / 1024:.1f} | "
              f"{end[0] / baseline[0]:.3f} | {growth:+.1f}% | {anon:+.1f}% | "
              f"{baseline[2] / 1024:.1f} / {end[2] / 1024:.1f} |")
    print(f"largest growth: {worst:+.1f}% of RSS, {worst_anon:+.1f}% of private memory (target under 5%)")
    print("\n".join(line for line in stderr.splitlines() if not line.startswith("streamseg: WARNING"))[-3000:])


if __name__ == "__main__":
    main()
