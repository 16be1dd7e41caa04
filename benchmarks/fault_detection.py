"""Fault detection: how soon a run notices a worker that dies, stops, or whose host vanishes.

The tests (tests/test_failures.py, test_reliability.py, test_remote.py) prove that each fault is
noticed and handled; how fast is a figure of the machine and its load, so it is measured here:

- ``kill``: a render worker is SIGKILLed with ``runtime.max_restarts=0``; seconds from the kill to
  the run's exit (the run fails, its outputs finished);
- ``stop``: a render worker is SIGSTOPped with ``runtime.heartbeat_timeout_s=2``; the silence the
  supervisor reports, and seconds from the stop to its report;
- ``vanish``: the worker of a stage run on "another host" (``streamseg worker`` over tcp) is
  SIGKILLed with ``heartbeat_timeout_s=2``; seconds from the kill to the supervisor's report.

    python benchmarks/fault_detection.py [--rounds 3] [--model tiny-random]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from common import free_port, machine, make_clip, runs, workers

FRAMES = 300


class _Run:
    """``streamseg run`` in the background, its stderr read line by line with arrival times."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "streamseg", "run", *args], cwd=folder,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     stdin=subprocess.DEVNULL)
        self.folder = folder
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line))

    def first(self, pattern: str) -> tuple[float, re.Match[str]] | None:
        for at, line in list(self.lines):
            found = re.search(pattern, line)
            if found:
                return at, found
        return None

    def wait_for_frames(self, count: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        path = self.folder / "m.jsonl"
        while not (path.exists() and path.read_bytes().count(b"\n") >= count):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the run ended or stalled before frame {count}:\n{''.join(l for _, l in self.lines)[-2000:]}")
            time.sleep(0.01)

    def end(self, timeout_s: float = 120) -> int:
        try:
            code = self.proc.wait(timeout_s)
        finally:
            self.proc.kill()
        self.reader.join(10)
        return code


def worker_pid(parent: int, stage: str) -> int:
    """The pid of ``parent``'s worker process that runs ``stage``."""
    pid = workers(parent).get(stage)
    if pid is None:
        sys.exit(f"no {stage} worker under pid {parent}")
    return pid


@contextlib.contextmanager
def _render_signalled(clip: Path, model: list[str], sig: int, setting: str) -> Iterator[tuple[_Run, float]]:
    """A run with ``--set setting``, its render worker sent ``sig`` after 10 frames: (the run, when)."""
    with tempfile.TemporaryDirectory() as tmp:
        run = _Run(Path(tmp), str(clip), "-o", "out.mp4", "--masks", "m.jsonl", *model, "--set", setting)
        run.wait_for_frames(10)
        os.kill(worker_pid(run.proc.pid, "render"), sig)
        yield run, time.monotonic()


def kill_to_exit(clip: Path, model: list[str]) -> float:
    with _render_signalled(clip, model, signal.SIGKILL, "runtime.max_restarts=0") as (run, killed):
        code = run.end()
        took = time.monotonic() - killed
        if code != 1:
            sys.exit(f"expected exit code 1 after the kill, got {code}")
        return took


def stop_to_report(clip: Path, model: list[str]) -> tuple[float, float]:
    with _render_signalled(clip, model, signal.SIGSTOP, "runtime.heartbeat_timeout_s=2") as (run, stopped):
        pattern = r"render: stopped responding \(no heartbeat for ([0-9.]+) s\)"
        deadline = stopped + 60
        while run.first(pattern) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        found = run.first(pattern)
        run.end()
        if found is None:
            sys.exit("the stopped worker was not reported")
        return found[0] - stopped, float(found[1].group(1))


def vanish_to_report(clip: Path, model: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        run = _Run(Path(tmp), str(clip), "-o", "out.mp4", "--masks", "m.jsonl", *model,
                   "--set", "transport.endpoints=tcp", "--set", "transport.remote=[infer]",
                   "--set", f"transport.join_port={port}", "--set", "runtime.heartbeat_timeout_s=2")
        other = Path(tmp) / "other-host"
        other.mkdir()
        workers = [subprocess.Popen([sys.executable, "-m", "streamseg", "worker", f"tcp://127.0.0.1:{port}"],
                                    cwd=other, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        try:
            run.wait_for_frames(20)
            workers[0].kill()
            vanished = time.monotonic()
            pattern = r"infer: the worker on .* stopped responding"
            while run.first(pattern) is None and time.monotonic() < vanished + 60:
                time.sleep(0.01)
            found = run.first(pattern)
            workers.append(subprocess.Popen([sys.executable, "-m", "streamseg", "worker", f"tcp://127.0.0.1:{port}"],
                                            cwd=other, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            run.end(180)
        finally:
            for worker in workers:
                worker.kill()
        if found is None:
            sys.exit("the vanished worker was not reported")
        return found[0] - vanished


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tiny-random")
    args = parser.parse_args()
    model = ["--model", args.model, "--score-thresh", "0.37"] if args.model == "tiny-random" else ["--model", args.model]
    with tempfile.TemporaryDirectory() as tmp:
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, FRAMES, 320, 240)
        kills = [kill_to_exit(clip, model) for _ in range(args.rounds)]
        stops = [stop_to_report(clip, model) for _ in range(args.rounds)]
        vanishes = [vanish_to_report(clip, model) for _ in range(args.rounds)]
    print(f"## Fault detection (`benchmarks/fault_detection.py`), {machine()}\n")
    print("| fault | allowed | median s | runs |")
    print("|---|---|---|---|")
    print(f"| render SIGKILL, no restarts: kill to run exit | - | {sorted(kills)[len(kills) // 2]:.2f} | {runs(kills, 2)} |")
    reported = [r for r, _ in stops]
    print(f"| render SIGSTOP: stop to report | 2 s of silence | {sorted(reported)[len(reported) // 2]:.2f} | "
          f"{runs(reported, 2)} (silence reported: {runs([s for _, s in stops], 1)}) |")
    print(f"| remote infer host vanishes: kill to report | 2 s of silence | {sorted(vanishes)[len(vanishes) // 2]:.2f} | "
          f"{runs(vanishes, 2)} |")


if __name__ == "__main__":
    main()
