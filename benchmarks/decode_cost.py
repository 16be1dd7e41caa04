"""Decode cost per frame of this code's decoder against an earlier revision's, on the same H.264 clip.

Each side is a fresh process that imports its own ``streamseg`` (the baseline from ``git archive
REV``) and runs its ``DecodeStage`` over the clip, as the decode worker does: frames out as RGB
arrays. Rounds alternate the two sides (this machine's speed drifts between hours), and each side
reports CPU seconds per frame (all of its threads: FFmpeg decodes on several) and wall time. The
two must give the same frames: count, timestamps and a digest of the pixels.

    python benchmarks/decode_cost.py [--baseline REV] [--rounds 5] [--frames 900]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from common import REPO, machine, make_clip

PROBE = r"""
import hashlib, json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from streamseg.config import InputConfig
from streamseg.runtime.messages import Frame
from streamseg.stages.decode import DecodeStage
stage = DecodeStage(InputConfig(), sys.argv[2], "0")
stage.bind_events(lambda event, **data: None)
digest, pts = hashlib.sha256(), []
before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
stage.setup()
for item in stage.produce():
    if item is not None and isinstance(item[1], Frame):
        pts.append(item[1].pts)
        digest.update(item[1].image[::37, ::37].tobytes())
stage.close()
wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
print(json.dumps({"frames": len(pts), "pts": pts, "digest": digest.hexdigest(), "cpu_s": cpu, "wall_s": wall}))
"""


def side(code: Path, clip: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(code), str(clip)], capture_output=True, text=True,
                         check=True, cwd=code)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default="db2011a", help="git revision to compare with (default: "
                        "db2011a, the decoder before issue 13)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--frames", type=int, default=900, help="clip length at 640x360, 30 fps")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="decode-cost-") as tmp:
        base = Path(tmp) / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "archive", args.baseline, "streamseg"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        (Path(tmp) / "b.tar").write_bytes(archive)
        with tarfile.open(Path(tmp) / "b.tar") as tar:
            tar.extractall(base, filter="data")
        clip = Path(tmp) / "clip.mp4"
        make_clip(clip, args.frames, 640, 360)
        results: dict[str, list[dict]] = {"baseline": [], "this": []}
        for r in range(args.rounds):
            for name, code in (("baseline", base), ("this", REPO)) if r % 2 == 0 else (("this", REPO),
                                                                                      ("baseline", base)):
                results[name].append(side(code, clip))
        a, b = results["baseline"][0], results["this"][0]
        same = a["frames"] == b["frames"] and a["pts"] == b["pts"] and a["digest"] == b["digest"]
        print(f"# decode cost, {machine()}; H.264 640x360, {args.frames} frames, {args.rounds} rounds alternating")
        print(f"same frames (count, pts, pixel digest): {same}")
        print("| decoder | CPU ms/frame (median) | rounds | wall s (median) |")
        print("|---|---|---|---|")
        medians = {}
        for name, runs in results.items():
            per_frame = [1000 * run["cpu_s"] / run["frames"] for run in runs]
            medians[name] = statistics.median(per_frame)
            rounds = ", ".join(f"{x:.2f}" for x in per_frame)
            print(f"| {name} ({args.baseline if name == 'baseline' else 'HEAD'}) | {medians[name]:.2f} | {rounds} | "
                  f"{statistics.median(run['wall_s'] for run in runs):.2f} |")
        print(f"this / baseline: {medians['this'] / medians['baseline']:.3f} (target <= 1.10)")
        if not same:
            sys.exit("the two decoders gave different frames")


if __name__ == "__main__":
    main()
