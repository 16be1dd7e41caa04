"""The file pipeline: builds the stage graph from a :class:`Config`, runs it, and summarises it.

::

    decode ──► batch ──► infer ──► render ──► encode ──► annotated MP4
                           ├─────► mask writer ──► masks JSONL
                           └─────► publish ──► ZeroMQ PUB ──► subscribers
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .config import Config, load_config
from .errors import ConfigError, InputError, OutputError
from .models import model_info
from .supervisor import Supervisor
from .worker import WorkerSpec

log = logging.getLogger(__name__)

STAGE_ORDER = ("decode", "batch", "infer", "render", "encode", "masks", "publish")


@dataclass
class Summary:
    """What a run did. ``fps`` counts from the first frame decoded (model loading excluded)."""

    frames: int
    """Frames written to the outputs."""
    wall_s: float
    """Seconds from start to end, worker start-up and model loading included."""
    startup_s: float
    """Seconds until every worker was ready (model loaded)."""
    fps: float
    """Frames per second end to end, after start-up."""
    stages: dict[str, dict[str, Any]]
    """Per stage: ``busy_s`` (working), ``blocked_s`` (waiting on a full downstream queue), counters."""
    skipped: int = 0
    """Corrupt packets or frames the decoder skipped."""
    truncated: bool = False
    """Whether the input broke off before its announced end."""
    interrupted: bool = False
    """Whether the run was stopped by Ctrl-C / SIGTERM (outputs hold the frames done)."""
    warnings: list[str] = field(default_factory=list)
    """Warnings the stages reported (truncation, skipped packets, audio not copied)."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output kind -> path."""

    def bottleneck(self) -> str:
        """The stage that was busy longest."""
        return max(self.stages, key=lambda s: self.stages[s].get("busy_s", 0.0)) if self.stages else ""

    def table(self) -> str:
        """A human-readable report."""
        lines = [f"frames {self.frames}  wall {self.wall_s:.2f} s (start-up {self.startup_s:.2f} s)  "
                 f"{self.fps:.2f} fps end to end",
                 f"{'stage':<8} {'busy s':>8} {'busy %':>7} {'blocked s':>10}  counts"]
        run_s = max(1e-9, self.wall_s - self.startup_s)
        for name in sorted(self.stages, key=lambda s: STAGE_ORDER.index(s) if s in STAGE_ORDER else 99):
            st = self.stages[name]
            counts = " ".join(f"{k}={v}" for k, v in st.get("counters", {}).items())
            lines.append(f"{name:<8} {st.get('busy_s', 0):8.2f} {100 * st.get('busy_s', 0) / run_s:6.0f}% "
                         f"{st.get('blocked_s', 0):10.2f}  {counts}")
        lines.append(f"bottleneck: {self.bottleneck()}")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)


class _Progress:
    """A tqdm bar on a terminal (frames, fps, ETA); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.total: int | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        if not self.enabled:
            return
        kind = event.get("event")
        if kind == "stream":
            self.total = event.get("frames") or None
            if self.bar is not None:
                self.bar.total = self.total
        elif kind == "progress":
            if self.bar is None:
                from tqdm import tqdm

                self.bar = tqdm(total=self.total, unit="frame", desc="streamseg", dynamic_ncols=True,
                                file=sys.stderr, smoothing=0.1)
            self.bar.update(max(0, int(event.get("frames", 0)) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_output_path(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"{what} folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{what} folder is not writable: {parent}")


def build_specs(config: Config, ipc_dir: str) -> tuple[list[WorkerSpec], str, str]:
    """Worker specs for the file pipeline; returns (specs, events endpoint, progress stage)."""
    out = config.output
    if not out.video and not out.masks and not out.publish:
        raise ConfigError("nothing to write: give an annotated video (-o FILE), masks (--masks FILE) "
                          "and/or a publish endpoint (--publish)")
    info = model_info(config.model.name).to_dict()

    def endpoint(name: str) -> str:
        return f"ipc://{os.path.join(ipc_dir, name)}"

    events = endpoint("events")
    common = dict(events=events, hwm_frames=config.transport.hwm_frames,
                  max_msg_bytes=config.transport.max_msg_bytes, log_level=config.runtime.log_level)
    ports = tuple(p for p, on in (("render", out.video), ("masks", out.masks), ("publish", out.publish)) if on)
    progress_stage = "encode" if out.video else "masks" if out.masks else "publish"
    specs = [
        WorkerSpec("decode", "streamseg.stages.decode:DecodeStage",
                   dict(path=config.input.path, stream_id=config.input.stream_id,
                        threads=config.input.decode_threads),
                   outputs={"frames": endpoint("frames")}, **common),
        WorkerSpec("batch", "streamseg.stages.batch:BatchStage",
                   dict(max_batch=config.batch.max_batch, max_wait_ms=config.batch.max_wait_ms),
                   inputs=(endpoint("frames"),), outputs={"batches": endpoint("batches")}, **common),
        WorkerSpec("infer", "streamseg.stages.infer:InferStage",
                   dict(model=dict(vars(config.model)), ports=ports),
                   inputs=(endpoint("batches"),), outputs={p: endpoint(f"results-{p}") for p in ports}, **common),
    ]
    if out.video:
        r = config.render
        specs.append(WorkerSpec("render", "streamseg.stages.render:RenderStage",
                                dict(model_info=info, mask_alpha=r.mask_alpha, contour_px=r.contour_px,
                                     boxes=r.boxes, labels=r.labels, keypoints=r.keypoints,
                                     keypoint_thresh=r.keypoint_thresh),
                                inputs=(endpoint("results-render"),), outputs={"frames": endpoint("rendered")},
                                **common))
        e = config.encode
        specs.append(WorkerSpec("encode", "streamseg.stages.encode:EncodeStage",
                                dict(path=out.video, codec=e.codec, crf=e.crf, preset=e.preset,
                                     threads=e.threads, audio=e.audio),
                                inputs=(endpoint("rendered"),), progress=progress_stage == "encode", **common))
    if out.masks:
        specs.append(WorkerSpec("masks", "streamseg.stages.maskwriter:MaskWriterStage",
                                dict(path=out.masks, model_info=info),
                                inputs=(endpoint("results-masks"),), progress=progress_stage == "masks", **common))
    if out.publish:
        specs.append(WorkerSpec("publish", "streamseg.stages.publish:PublishStage", dict(model_info=info),
                                inputs=(endpoint("results-publish"),), publish={"publish": out.publish},
                                publish_hwm=out.publish_hwm, progress=progress_stage == "publish", **common))
    return specs, events, progress_stage


def run_config(config: Config, on_event: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Run the file pipeline described by ``config`` and return its :class:`Summary`.

    Raises :class:`~streamseg.errors.StreamsegError` subclasses for bad input, config, model or
    output, and :class:`~streamseg.errors.StageError` when a stage fails.
    """
    if not config.input.path:
        raise ConfigError("no input: give a video file")
    # the cheap checks here, before any worker starts; the decoder probes the file itself, in its
    # own process, so that a crash inside FFmpeg cannot take this one down
    if not os.path.exists(config.input.path):
        raise InputError(f"input not found: {config.input.path}")
    for path, what in ((config.output.video, "output video"), (config.output.masks, "masks")):
        if path:
            _check_output_path(path, what)
    model_info(config.model.name)  # an unknown model name fails here, not in a worker
    ipc_dir = config.transport.ipc_dir or tempfile.mkdtemp(prefix="streamseg-")
    os.makedirs(ipc_dir, exist_ok=True)
    progress = _Progress(not config.runtime.quiet and sys.stderr.isatty())
    marks: dict[str, float] = {}
    ready: set[str] = set()

    def handle(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "ready":
            ready.add(event.get("stage", ""))
            if len(ready) == len(specs):
                marks.setdefault("ready", time.monotonic())
        elif kind == "interrupted":
            marks["interrupted"] = time.monotonic()
        progress(event)
        if on_event is not None:
            on_event(event)

    try:
        specs, events, progress_stage = build_specs(config, ipc_dir)
        supervisor = Supervisor(specs, events, {"decode"}, config.runtime.stop_timeout_s,
                                config.runtime.kill_timeout_s, config.runtime.start_timeout_s, handle)
        start = time.monotonic()
        try:
            stats = supervisor.run()
        finally:
            progress.close()
        end = time.monotonic()
    finally:
        if not config.transport.ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)
    decode = stats.get("decode", {}).get("counters", {})
    frames = int(stats.get(progress_stage, {}).get("counters", {}).get("frames", 0))
    startup = marks.get("ready", start) - start
    run_s = max(1e-9, end - start - startup)
    outputs = {k: v for k, v in (("video", config.output.video), ("masks", config.output.masks),
                                 ("published", config.output.publish)) if v}
    summary = Summary(frames, end - start, startup, frames / run_s, stats, int(decode.get("skipped", 0)),
                      bool(decode.get("truncated")), "interrupted" in marks,
                      list(supervisor.warnings), outputs)
    if summary.interrupted:
        log.warning("interrupted: outputs hold the %d frames done", frames)
    return summary


def run(input: str, output: str | None = None, masks: str | None = None, *,
        config_files: tuple[str, ...] = (), overrides: dict[str, Any] | None = None,
        sets: tuple[str, ...] = (), **options: Any) -> Summary:
    """Run the pipeline on a video file, from Python; returns the :class:`Summary`.

    ``options`` are ``section__key=value`` shortcuts (``model__name="tiny-random"``,
    ``batch__max_batch=1``) applied after ``config_files`` and ``overrides``, before ``sets``.
    Example::

        summary = streamseg.run("in.mp4", "annotated.mp4", masks="masks.jsonl", model__score_thresh=0.7)
    """
    base: dict[str, Any] = {"input": {"path": input}, "output": {"video": output, "masks": masks},
                            "runtime": {"quiet": True}}
    shortcuts: dict[str, Any] = {}
    for key, value in options.items():
        section, sep, name = key.partition("__")
        if not sep:
            raise ConfigError(f"option {key!r} must be written section__key (e.g. model__name)")
        shortcuts.setdefault(section, {})[name] = value
    layers = [base, dict(overrides or {}), shortcuts]
    config = load_config(config_files, layers, sets)
    return run_config(config)


__all__ = ["Summary", "build_specs", "run", "run_config"]
