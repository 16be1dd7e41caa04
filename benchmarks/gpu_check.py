"""The GPU check: the mission's own model (torchvision's Mask R-CNN R50-FPN, CUDA RoIAlign) timed on a lent GPU.

One call of at most about 8 minutes (``--budget-s``), each step in its own process with its own
time limit, so a step that hangs or crashes costs only its own row. The model runs with
random-init weights written here (speed does not depend on their values; the class scores are
spread out so that which instances pass is stable) and 20 instances a frame (``--set
model.detections_per_img=20``, score threshold 0), so mask pasting and drawing cost what they
would on a busy scene. The steps:

1. the CUDA tests (RoIAlign on CUDA against the CPU, the GPU paste against torchvision's, fp16
   against fp32 mask by mask, NVDEC and its fallback) and the mask and predictor tests;
2. the weights: R50-FPN and R50-FPN v2, random-init, written to a temporary folder;
3. the model alone on the first 48 decoded frames of the clips step 4 runs: 1280x720 fp16 at batch
   1, 4 and 8; fp32 against fp16 and
   channels-last off against on at batch 8; 1920x1080 fp16 batch 8; v2 at 1280x720 fp16 batch 8;
   peak GPU memory of each;
4. ``streamseg run`` (batch 8, fp16, annotated video and masks written) against the model alone on
   the same frames at 1280x720 and 1920x1080 (rate after start-up; target >= 0.9);
5. NVDEC (``input.hwaccel: cuda``) against software decoding at 1920x1080;
6. ``streamseg run`` against the single-process loop people write (``single_loop.py``'s naive
   loop: torchvision's full-frame masks, OpenCV drawing, fp16 autocast as the pipeline) at 1280x720,
   whole processes timed from outside (target >= 2x), the masks compared.

A summary in RESULTS.md's form ends the output (and ``$OUT/summary.md``). ``--dry-run`` runs every
step here on the CPU with 2 tiny frames and says which figures need CUDA and were not measured.

    python benchmarks/gpu_check.py [--dry-run] [--budget-s 470] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Timed, machine, run_summary, streamseg_run, timed

R50, V2 = "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"
INSTANCES = 20
"""Instances a frame: a busy scene."""
MODEL_ROWS = ((R50, "1280x720", True, 1, True), (R50, "1280x720", True, 4, True), (R50, "1280x720", True, 8, True),
              (R50, "1280x720", False, 8, True), (R50, "1280x720", True, 8, False), (R50, "1920x1080", True, 8, True),
              (V2, "1280x720", True, 8, True))
"""(model, size, fp16, batch, channels-last) of each model-alone row."""
TINY = {"1280x720": "128x72", "1920x1080": "192x108"}
"""The dry run's frame sizes."""
BATCH = 8
"""The pipeline's batch in this check (``--max-batch``)."""
TESTS = ("tests/test_cuda.py", "tests/test_masks.py", "tests/test_predictor.py")


class Check:
    """Runs the steps against one deadline and keeps what each measured."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.deadline = time.monotonic() + args.budget_s
        self.device = "cpu" if args.dry_run else "cuda"
        self.frames = 2 if args.dry_run else args.frames
        self.rows: dict[str, list[tuple[str, ...]]] = {}
        self.notes: list[str] = []
        self.model_fps: dict[tuple[str, str, bool, int, bool], float] = {}

    def time_left(self, cap: float) -> float:
        return min(cap, self.deadline - time.monotonic() - 10)

    def step(self, name: str, command: list[str], cap: float) -> Timed | None:
        """Run one step's process within its limit, timed from outside; None (and a note) where there was
        no time left for it; a note too where it failed or met its limit (its ``returncode`` says)."""
        limit = self.time_left(cap)
        if limit < 15:
            self.notes.append(f"{name}: not run, the check's {self.args.budget_s:.0f} s were spent")
            return None
        print(f"## {name} (at most {limit:.0f} s)", file=sys.stderr, flush=True)
        result = timed(["timeout", str(int(limit)), *command], check=False)
        self._save(name, result.stdout, result.stderr)
        print(f"   {result.wall_s:.1f} s, exit {result.returncode}", file=sys.stderr, flush=True)
        if result.returncode == 124:  # timeout(1)'s own
            self.notes.append(f"{name}: stopped at its limit of {limit:.0f} s (log: {name}.txt)")
        elif result.returncode != 0:
            self.notes.append(f"{name}: exit {result.returncode}: {result.stderr.strip().splitlines()[-1:]} "
                              f"(log: {name}.txt)")
        return result

    def _save(self, name: str, stdout: str, stderr: str) -> None:
        (self.args.out / f"{name}.txt").write_text(f"{stdout}\n--- stderr ---\n{stderr}")

    def size(self, size: str) -> str:
        return TINY[size] if self.args.dry_run else size


def write_weights(folder: Path) -> None:
    """Random-init R50-FPN and v2 state_dicts, with class scores and mask logits spread out (as
    ``tiny-random`` does): which instances pass, and which pixels, then do not hang on rounding, and
    the loop's masks can be compared with the pipeline's."""
    import torch
    import torchvision

    for name in (R50, V2):
        torch.manual_seed(0)
        model = getattr(torchvision.models.detection, name)(weights=None, weights_backbone=None, num_classes=91)
        torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=4.0)
        torch.nn.init.normal_(model.roi_heads.mask_predictor.mask_fcn_logits.weight, std=2.0)
        torch.save(model.state_dict(), folder / f"{name}.pt")
        print(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters", flush=True)


def model_alone(args: argparse.Namespace) -> None:
    """The model-alone rows, one JSON line each, in one process (one CUDA start-up)."""
    import torch
    from common import decoded_frames

    from streamseg.config import ModelConfig
    from streamseg.models.predictor import Predictor

    device = "cuda" if torch.cuda.is_available() and not args.dry_run else "cpu"
    clips = {size: decoded_frames(args.clips / f"clip-{size}.mp4")[:args.frames] for size in TINY}
    for name, size, fp16, batch, channels_last in MODEL_ROWS:
        frames = clips[size]
        height, width = frames[0].shape[:2]
        predictor = Predictor(ModelConfig(name=name, weights=str(args.weights / f"{name}.pt"), device=device,
                                          score_thresh=0.0, fp16=fp16, channels_last=channels_last,
                                          detections_per_img=INSTANCES))
        if args.dry_run:  # R50's transform enlarges every frame to 800 pixels high: seconds a frame on a CPU
            predictor.model.transform.min_size, predictor.model.transform.max_size = (height,), width
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        predictor(frames[:batch])  # warm-up (cuDNN picks its kernels)
        start = time.perf_counter()
        instances = 0
        for i in range(0, len(frames), batch):
            instances += sum(len(d) for d in predictor(frames[i:i + batch]))
        fps = len(frames) / (time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
        print(json.dumps({"model": name, "size": size, "fp16": fp16 and device == "cuda", "batch": batch,
                          "channels_last": channels_last, "fps": round(fps, 2), "peak_mib": peak,
                          "instances_per_frame": round(instances / len(frames), 1), "device": device}), flush=True)
        del predictor
        if device == "cuda":
            torch.cuda.empty_cache()


def run_check(args: argparse.Namespace) -> int:
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        check = Check(args, Path(tmp))
        collect = ["--collect-only"] if args.dry_run else []  # the suite runs them here; the dry run lists them
        tests = check.step("tests", [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *collect,
                                     *TESTS], 150)
        if tests is not None:
            last = (tests.stdout.strip().splitlines() or ["no output"])[-1]
            check.rows["tests"] = [(" ".join(TESTS), last)]
            if args.dry_run:
                check.notes.append("tests: listed, not run (the test suite runs them here; the CUDA ones skip "
                                   "without a GPU)")
        weights = check.work / "weights"
        weights.mkdir()
        made = check.step("weights", [sys.executable, str(Path(__file__).resolve()), "weights", str(weights)], 90)
        if made is None or made.returncode:
            return finish(check, 1)
        write_clips(check)
        model_step(check, weights)
        pipeline_steps(check, weights)
    return finish(check, 0 if tests is not None and tests.returncode == 0 else 1)


def model_step(check: Check, weights: Path) -> None:
    command = [sys.executable, str(Path(__file__).resolve()), "model", str(weights), "--clips", str(check.work),
               "--frames", str(check.frames)]
    proc = check.step("model-alone", command + (["--dry-run"] if check.args.dry_run else []), 150)
    if proc is None:  # a step that failed part way still printed its rows so far
        return
    rows = check.rows.setdefault("model", [])
    for line in proc.stdout.splitlines():
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        check.model_fps[(r["model"], r["size"], r["fp16"], r["batch"], r["channels_last"])] = r["fps"]
        peak = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "needs CUDA"
        rows.append((r["model"], check.size(r["size"]), "fp16" if r["fp16"] else "fp32", str(r["batch"]),
                     "on" if r["channels_last"] else "off", f"{r['fps']:.1f}", peak, f"{r['instances_per_frame']}"))
    if check.args.dry_run:
        check.notes.append("model alone: fp16 needs CUDA (the CPU ran fp32 in the fp16 rows); peak GPU memory "
                           "needs CUDA; R50 ran at the tiny frames' own size, not its 800 pixels")


def write_clips(check: Check) -> None:
    """The clips every timed step reads (the model alone their decoded frames): 10 s at 24 fps, of
    the synthetic scenes, at x264's default quality (as heavy to decode as a camera's stream)."""
    from streamseg.tools.synth import write_video

    for size in TINY:
        width, height = (int(v) for v in check.size(size).split("x"))
        write_video(check.work / f"clip-{size}.mp4", None, seed=7, frames=check.frames if check.args.dry_run else 240,
                    width=width, height=height, crf=23)


def pipeline_steps(check: Check, weights: Path) -> None:
    clips = {size: check.work / f"clip-{size}.mp4" for size in TINY}
    model = ["--model", R50, "--weights", str(weights / f"{R50}.pt"), "--score-thresh", "0"]
    base = [*model, "--max-batch", str(BATCH), "--device", check.device,
            "--set", f"model.detections_per_img={INSTANCES}"]

    def run(name: str, size: str, *extra: str) -> dict[str, float] | None:
        out = check.work / name
        result = check.step(name, streamseg_run(str(clips[size]), "-o", f"{out}.mp4", "--masks", f"{out}.jsonl",
                                                *base, *extra), 90)
        if result is None or result.returncode:
            return None
        return {**run_summary(result.stderr), "process_s": result.wall_s}

    rows = check.rows.setdefault("pipeline", [])
    if check.args.dry_run:
        check.notes.append("comparisons: in the dry run the pipeline's R50 enlarges each frame to 800 pixels high, "
                           "the model-alone rows do not, and start-up dominates 2 frames: no ratio means anything")

    def met(ok: bool) -> str:
        return "(dry run)" if check.args.dry_run else "yes" if ok else "no"

    runs: dict[str, dict[str, float] | None] = {}
    for size in ("1280x720", "1920x1080"):
        runs[size] = summary = run(f"run-{size}", size)
        alone = check.model_fps.get((R50, size, not check.args.dry_run, BATCH, True))
        if summary and alone:
            ratio = summary["fps"] / alone
            rows.append((f"`streamseg run` against the model alone, {check.size(size)}", f"{summary['fps']:.1f} fps "
                         f"after start-up / {alone:.1f}", f"{ratio:.2f}", ">= 0.9", met(ratio >= 0.9)))
    loop = check.work / "loop"
    loop_args = [sys.executable, str(REPO / "benchmarks" / "single_loop.py"), "loop", "--mode", "naive",
                 str(clips["1280x720"]), "-o", f"{loop}.mp4", "--masks", f"{loop}.jsonl", *model,
                 "--detections-per-img", str(INSTANCES)]
    result = check.step("loop-1280x720", loop_args, 120)
    if result is not None and result.returncode == 0 and runs["1280x720"]:
        from single_loop import compare

        speedup = result.wall_s / runs["1280x720"]["process_s"]
        same = compare(loop.with_suffix(".jsonl"), check.work / "run-1280x720.jsonl")
        rows.append((f"`streamseg run` against the naive loop, {check.size('1280x720')}, whole processes",
                     f"{runs['1280x720']['process_s']:.1f} s / {result.wall_s:.1f} s", f"{speedup:.2f}", ">= 2.0",
                     met(speedup >= 2.0)))
        # fp16 on both sides, but batch 1 against 8 and torchvision's paste in fp16 against streamseg's in fp32:
        # masks may differ at their outlines, so on a GPU the figures are reported, not judged
        verdict = ("same" if same.same else "NOT the same") if check.args.dry_run else "(fp16: reported)"
        rows.append(("masks, naive loop against `streamseg run`", f"{same.matched}/{same.instances} matched, min IoU "
                     f"{same.min_iou:.3f}", verdict, "the same (fp32)", ""))
    nvdec = run("nvdec-1920x1080", "1920x1080", "--set", "input.hwaccel=cuda")
    if nvdec and runs["1920x1080"]:
        software = runs["1920x1080"]["fps"]
        rows.append((f"NVDEC against software decoding, {check.size('1920x1080')}",
                     f"{nvdec['fps']:.1f} / {software:.1f} fps after start-up", f"{nvdec['fps'] / software:.2f}",
                     "", ""))
        if check.args.dry_run:
            check.notes.append("NVDEC needs CUDA: the dry run's decoder fell back to the CPU")


def finish(check: Check, status: int) -> int:
    dry = " (dry run, CPU, 2 tiny frames: no figure here is a GPU figure)" if check.args.dry_run else ""
    lines = [f"# GPU check{dry}", f"# {machine()}", ""]
    if "tests" in check.rows:
        lines += ["| tests | result |", "|---|---|", *(f"| {' | '.join(r)} |" for r in check.rows["tests"]), ""]
    if check.rows.get("model"):
        lines += [f"Model alone, {INSTANCES} instances a frame (score threshold 0), the clips' decoded frames, "
                  "in-process:", "",
                  "| model | size | precision | batch | channels-last | fps | peak GPU MiB | instances a frame |",
                  "|---|---|---|---|---|---|---|---|", *(f"| {' | '.join(r)} |" for r in check.rows["model"]), ""]
    if check.rows.get("pipeline"):
        lines += ["| comparison | figures | ratio | target | met |", "|---|---|---|---|---|",
                  *(f"| {' | '.join(r)} |" for r in check.rows["pipeline"]), ""]
    lines += [f"- {note}" for note in check.notes]
    text = "\n".join(lines) + "\n"
    (check.args.out / "summary.md").write_text(text)
    print(text)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    weights = sub.add_parser("weights", help="(a step) write the random-init weights")
    weights.add_argument("folder", type=Path)
    model = sub.add_parser("model", help="(a step) the model-alone rows")
    model.add_argument("weights", type=Path)
    model.add_argument("--clips", type=Path, required=True, help="folder of clip-WxH.mp4 (the pipeline's clips)")
    model.add_argument("--frames", type=int, default=48)
    model.add_argument("--dry-run", action="store_true")
    parser.add_argument("--dry-run", action="store_true", help="here, on the CPU, 2 tiny frames a step")
    parser.add_argument("--budget-s", type=float, default=470.0, help="the whole check's time (default 470)")
    parser.add_argument("--frames", type=int, default=48, help="frames a model-alone row (default 48)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu-check")),
                        help="folder for the logs and summary.md (default $OUT, else ./gpu-check)")
    args = parser.parse_args()
    if args.command == "weights":
        write_weights(args.folder)
    elif args.command == "model":
        model_alone(args)
    else:
        sys.exit(run_check(args))


if __name__ == "__main__":
    main()
