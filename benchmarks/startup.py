"""Start-up at its floor: ``streamseg run``'s start-up against a bare ``import torch, torchvision``.

Measured in turns, ``--rounds`` times (this VM's speed drifts), each side a new process:

- the baseline: ``python -c "import torch, torchvision"``, timed from outside: from its spawn to
  the moment the imports are done (it writes a line then, and exits), the same end point as
  ``streamseg run``'s start-up, which ends when the model is loaded, long before any exit. Its
  time to exit is printed too: on this machine the interpreter's shutdown with torch and
  torchvision loaded takes about a second more, which the start-up does not contain, so a
  baseline timed to the exit would hide about a second of start-up;
- ``python -m streamseg run CLIP --masks M.jsonl`` on a short synthetic clip with the default
  (shipped) model; its start-up is the one its summary prints: from the process's start (the
  interpreter, the CLI's imports and planning included) until every worker is ready (the model
  loaded). The whole command's wall time, timed from outside, is printed for context.

The row gives the medians and their difference, against the target: at most 0.5 s over the bare
import. One untimed run of each comes first, so that no round reads its files from disk.

    python benchmarks/startup.py [--rounds 5] [--frames 30] [--size 320x240]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import BARE_IMPORT, REPO, machine, run_summary, runs, streamseg_run, timed

from streamseg.tools.synth import write_video

TARGET_S = 0.5
"""Most seconds ``streamseg run``'s start-up may take over a bare torch import."""


def bare_import() -> tuple[float, float]:
    """Seconds from spawning ``python -c "import torch, torchvision"`` until the imports are done,
    and until it exited."""
    command = [*BARE_IMPORT[:-1], BARE_IMPORT[-1] + "; print('imported', flush=True)"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    imported = time.perf_counter() - start
    proc.stdout.read()
    if proc.wait() != 0 or line.strip() != "imported":
        raise SystemExit(f"{' '.join(command)} failed")
    return imported, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=30, help="frames of the synthetic clip")
    parser.add_argument("--size", default="320x240", help="of the synthetic clip")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    bare, bare_exit, startup, wall, summary_wall = [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        clip, masks = Path(tmp) / "clip.mp4", Path(tmp) / "masks.jsonl"
        write_video(clip, None, seed=7, frames=args.frames, width=width, height=height)
        command = streamseg_run(str(clip), "--masks", str(masks))
        bare_import()  # warm-up: the files in the page cache
        run_summary(timed(command).stderr)
        for r in range(args.rounds):
            for side in ("bare", "run") if r % 2 == 0 else ("run", "bare"):
                if side == "bare":
                    imported, exited = bare_import()
                    bare.append(imported)
                    bare_exit.append(exited)
                else:
                    result = timed(command)
                    summary = run_summary(result.stderr)
                    startup.append(summary["startup_s"])
                    summary_wall.append(summary["wall_s"])
                    wall.append(result.wall_s)
    a, b, c = statistics.median(bare), statistics.median(startup), statistics.median(bare_exit)
    difference = b - a
    print(f"# start-up of `python -m streamseg run CLIP --masks M.jsonl`, default model, {width}x{height} synth "
          f"clip of {args.frames} frames, against a bare `python -c \"import torch, torchvision\"`; "
          f"rounds: {args.rounds}, in turns; medians")
    print(f"# {machine()}")
    print("| bare torch + torchvision import s, spawn to imported (baseline) | `streamseg run` start-up s "
          "| difference s | target | met | bare import s, spawn to exit | rounds: imported / exit / start-up |")
    print("|---|---|---|---|---|---|---|")
    rounds = ", ".join(f"{x:.2f} / {y:.2f} / {z:.2f}" for x, y, z in zip(bare, bare_exit, startup))
    print(f"| {a:.2f} | {b:.2f} | {difference:+.2f} | <= {TARGET_S} | {'yes' if difference <= TARGET_S else 'no'} "
          f"| {c:.2f} | {rounds} |")
    print(f"Start-up: from the process's start until every worker is ready (the summary's figure). The bare "
          f"import is timed from outside, from spawn to the line it writes once imported; its interpreter then "
          f"takes {c - a:.2f} s (median) more to exit, which no start-up contains: against the time to exit, the "
          f"difference would read {b - c:+.2f} s. Per round, start-up minus bare import: "
          f"{runs([z - x for x, z in zip(bare, startup)], 2)}.")
    print(f"For context, the whole command (start-up, {args.frames} frames, shutdown), timed from outside: "
          f"{statistics.median(wall):.2f} s median ({runs(wall, 2)}); its summary's end to end: "
          f"{statistics.median(summary_wall):.2f} s.")

if __name__ == "__main__":
    main()
