"""The pipeline: builds the stage graph from a :class:`Config`, runs it, and summarises it.

::

    decode ─┐
    decode ─┼─► batch ──► infer ──► render ──► encode ──► annotated MP4s / stream URLs
    decode ─┘               ├─────► mask writer ──► masks JSONL per stream
                            └─────► publish ──► ZeroMQ PUB (a topic per stream) ──► subscribers

One decoder per source; the batcher mixes the streams' frames into the inference stage's batches,
and every stage after it keeps each stream's outputs apart.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from . import shm
from .config import Config, TransportConfig, load_config
from .errors import ConfigError, InputError, OutputError
from .models import model_info
from .security import server_from_config, transport_from_config
from .sources import is_live, source_kind
from .stages.encode import stream_format
from .supervisor import RemoteStages, RestartPolicy, Supervisor
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
    """Per stage: ``busy_s`` (in stage calls), ``blocked_s`` (waiting for room downstream), ``cpu_s``
    (CPU time of its processes, all threads), counters."""
    skipped: int = 0
    """Corrupt packets or frames the decoder skipped."""
    truncated: bool = False
    """Whether the input broke off before its announced end."""
    interrupted: bool = False
    """Whether the run was stopped by Ctrl-C / SIGTERM (outputs hold the frames done)."""
    warnings: list[str] = field(default_factory=list)
    """Warnings the stages reported (truncation, skipped packets, audio not copied)."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output kind -> path (several paths joined by ", " when there are several streams)."""
    dropped: int = 0
    """Frames of live streams dropped before inference because it was behind."""
    latency: dict[str, Any] = field(default_factory=dict)
    """Seconds from capture to publish (to the last output without publishing): ``p50_s``,
    ``p99_s``, ``max_s``, ``p99_first_half_s``, ``p99_second_half_s``, ``frames``."""
    latency_at: str = ""
    """The stage the latency was measured at."""
    lost: list[str] = field(default_factory=list)
    """Streams whose live source was lost and given up after the reconnection attempts."""
    restarts: dict[str, list[str]] = field(default_factory=dict)
    """Stage -> why each of its workers that failed was replaced (empty when none was)."""
    resent: int = 0
    """Messages sent again to a replaced worker (what the failed one had not finished)."""

    def bottleneck(self) -> str:
        """The stage that was busy longest."""
        return max(self.stages, key=lambda s: self.stages[s].get("busy_s", 0.0)) if self.stages else ""

    def table(self) -> str:
        """A human-readable report."""
        lines = [f"frames {self.frames}  wall {self.wall_s:.2f} s (start-up {self.startup_s:.2f} s)  "
                 f"{self.fps:.2f} fps end to end",
                 f"{'stage':<8} {'busy s':>8} {'busy %':>7} {'blocked s':>10} {'cpu s':>7}  counts"]
        run_s = max(1e-9, self.wall_s - self.startup_s)

        def order(stage: str) -> tuple[int, str]:
            kind = stage.split("-")[0]
            return (STAGE_ORDER.index(kind) if kind in STAGE_ORDER else 99, stage)

        for name in sorted(self.stages, key=order):
            st = self.stages[name]
            counts = " ".join(f"{k}={v}" for k, v in st.get("counters", {}).items())
            lines.append(f"{name:<8} {st.get('busy_s', 0):8.2f} {100 * st.get('busy_s', 0) / run_s:6.0f}% "
                         f"{st.get('blocked_s', 0):10.2f} {st.get('cpu_s', 0):7.2f}  {counts}")
        lines.append(f"bottleneck: {self.bottleneck()}")
        if self.latency.get("frames"):
            lat = self.latency
            lines.append(f"latency capture to {self.latency_at}: p50 {lat['p50_s'] * 1000:.0f} ms  "
                         f"p99 {lat['p99_s'] * 1000:.0f} ms  max {lat['max_s'] * 1000:.0f} ms")
        if self.dropped:
            by_stream = self.stages.get("batch", {}).get("dropped_by_stream", {})
            detail = f" ({', '.join(f'{k}: {v}' for k, v in by_stream.items())})" if len(by_stream) > 1 else ""
            lines.append(f"dropped {self.dropped} live frames before inference (inference was behind){detail}")
        for stage, causes in self.restarts.items():
            lines.append(f"restarted {stage} {len(causes)}x: {'; '.join(causes)}")
        if self.resent:
            lines.append(f"resent {self.resent} messages that replaced workers had not finished")
        for warning in self.warnings:
            lines.append(f"warning: {warning}")
        return "\n".join(lines)


class _Progress:
    """A tqdm bar on a terminal (frames, fps, ETA); silent otherwise."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.total: int | None = None
        self.done: dict[str, int] = {}
        """Frames each worker of the progress stage has written."""

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
            self.done[str(event.get("stage"))] = int(event.get("frames", 0))
            self.bar.update(max(0, sum(self.done.values()) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_output_path(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"{what} folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{what} folder is not writable: {parent}")


def stream_output(template: str, stream_id: str, several: bool) -> str:
    """The output of one stream: ``{stream}`` in ``template`` becomes the stream id; with several
    streams and no ``{stream}``, ``-ID`` goes before the extension (``out.mp4`` -> ``out-cam1.mp4``)."""
    if "{stream}" in template:
        return template.replace("{stream}", stream_id)
    if not several:
        return template
    root, ext = os.path.splitext(template)
    if "://" in template and "/" in ext:  # a URL without an extension: rtsp://host/live -> live-cam1
        root, ext = template, ""
    return f"{root}-{stream_id}{ext}"


def stream_outputs(config: Config, template: str | None) -> dict[str, str]:
    """Stream id -> its output, for every source (empty without ``template``)."""
    streams = config.input.streams()
    return {sid: stream_output(template, sid, len(streams) > 1) for sid, _ in streams} if template else {}


def source_stage_names(config: Config) -> list[str]:
    """Names of the decode workers: ``decode``, or ``decode-ID`` per stream with several sources."""
    streams = config.input.streams()
    return ["decode"] if len(streams) == 1 else [f"decode-{sid}" for sid, _ in streams]


class _Endpoints:
    """Where each link binds and connects: ipc:// files in one folder, or tcp:// ports.

    With tcp, the side on this host binds (at ``transport.bind_host``) and a stage on another host
    connects to it at ``advertise_host``: links between two remote stages are not possible.
    """

    WILDCARDS = ("0.0.0.0", "*", "::", "")

    def __init__(self, transport: TransportConfig, ipc_dir: str) -> None:
        self.transport = transport
        self.ipc_dir = ipc_dir
        self.next_port = transport.base_port
        host = transport.bind_host
        self.local = "127.0.0.1" if host in self.WILDCARDS else host
        self.advertised = transport.advertise_host or (socket.gethostname() if host in self.WILDCARDS else host)

    def port(self) -> int:
        """The next of the consecutive ports from ``base_port``, or a port free now."""
        if self.next_port:
            self.next_port += 1
            return self.next_port - 1
        with socket.socket() as probe:
            probe.bind((self.local, 0))
            return int(probe.getsockname()[1])

    def bind(self, port: int) -> str:
        return f"tcp://{self.transport.bind_host or '0.0.0.0'}:{port}"

    def link(self, name: str, sender: str, receiver: str) -> tuple[str, str]:
        """(the sender's endpoint, the receiver's) of the link ``name``."""
        remote = set(self.transport.remote)
        if self.transport.endpoints == "ipc":
            address = f"ipc://{os.path.join(self.ipc_dir, name)}"
            return address, address
        port = self.port()
        if sender in remote and receiver in remote:
            raise ConfigError(f"{sender} and {receiver} cannot both run on other hosts (transport.remote): "
                              "one end of each link must be on the supervisor's host")
        if sender in remote:
            return f">tcp://{self.advertised}:{port}", f"@{self.bind(port)}"
        return f"@{self.bind(port)}", f">tcp://{self.advertised if receiver in remote else self.local}:{port}"


def _resolve_links(specs: list[WorkerSpec], endpoints: _Endpoints) -> list[WorkerSpec]:
    """Replace the link names in the specs' inputs and outputs by real endpoints."""
    senders = {link: spec.name for spec in specs for link in spec.outputs.values()}
    receivers: dict[str, list[str]] = {}
    for spec in specs:
        for link in spec.inputs:
            receivers.setdefault(link, []).append(spec.name)
    remote = set(endpoints.transport.remote)
    # a link read by several workers: one of them on another host makes them all connect to the
    # advertised address
    ends = {link: endpoints.link(link, senders[link], max(receivers[link], key=lambda name: name in remote))
            for link in senders}
    return [dataclasses.replace(spec, outputs={port: ends[link][0] for port, link in spec.outputs.items()},
                                inputs=tuple(ends[link][1] for link in spec.inputs)) for spec in specs]


@dataclass(frozen=True)
class Plan:
    """The workers of a run and how they are joined."""

    specs: list[WorkerSpec]
    events: str
    """The supervisor's events endpoint (for its own workers)."""
    progress_stage: str
    """The stage whose frame count is the run's progress (the last sink)."""
    remote: RemoteStages | None
    """Where workers on other hosts join and report, when ``transport.remote`` names stages."""


def worker_names(stage: str, count: int) -> list[str]:
    """Names of a stage's parallel workers: the stage's own name for one, ``stage-I`` for several."""
    return [stage] if count == 1 else [f"{stage}-{i}" for i in range(count)]


def _video_specs(config: Config, info: dict[str, Any], common: dict[str, Any], progress: bool) -> list[WorkerSpec]:
    """The render workers (any of them takes the next frame) and the encode workers (each writes the
    videos of some of the streams; it restores their order when several render workers feed it)."""
    r, e = config.render, config.encode
    paths = stream_outputs(config, config.output.video)
    encoders = worker_names("encode", min(e.workers, len(paths)))
    shares = {sid: i % len(encoders) for i, sid in enumerate(paths)}
    ports = ["frames"] if len(encoders) == 1 else [f"frames-{j}" for j in range(len(encoders))]
    renderers = worker_names("render", r.workers)
    specs = [WorkerSpec(name, "streamseg.stages.render:RenderStage",
                        dict(model_info=info, mask_alpha=r.mask_alpha, contour_px=r.contour_px, boxes=r.boxes,
                             labels=r.labels, keypoints=r.keypoints, keypoint_thresh=r.keypoint_thresh,
                             routes={sid: ports[j] for sid, j in shares.items()} if len(encoders) > 1 else {}),
                        inputs=("results-render",), outputs={port: f"rendered-{i}-{port}" for port in ports},
                        parallel=len(renderers) > 1, **common)
             for i, name in enumerate(renderers)]
    for j, name in enumerate(encoders):
        mine = {sid: path for sid, path in paths.items() if shares[sid] == j}
        specs.append(WorkerSpec(name, "streamseg.stages.encode:EncodeStage",
                                dict(paths=mine, codec=e.codec, crf=e.crf, preset=e.preset, threads=e.threads,
                                     audio=e.audio),
                                inputs=tuple(f"rendered-{i}-{ports[j]}" for i in range(len(renderers))),
                                progress=progress, ordered=len(renderers) > 1, **dict(common, streams=len(mine))))
    return specs


def build_specs(config: Config, ipc_dir: str) -> Plan:
    """The worker specs of the pipeline, with their endpoints."""
    out = config.output
    if not out.video and not out.masks and not out.publish:
        raise ConfigError("nothing to write: give an annotated video (-o FILE), masks (--masks FILE) "
                          "and/or a publish endpoint (--publish)")
    info = model_info(config.model.name).to_dict()
    inp = config.input
    streams = inp.streams()
    live = [is_live(url, inp.live) for _, url in streams]

    def endpoint(name: str) -> str:
        return name  # a link's name, made an endpoint once both its ends are known

    events = f"ipc://{os.path.join(ipc_dir, 'events')}"
    common = dict(events=events, hwm_frames=config.transport.hwm_frames, streams=len(streams),
                  max_msg_bytes=config.transport.max_msg_bytes, log_level=config.runtime.log_level,
                  nice=config.runtime.nice)
    # the model's input counts batches: as many frames as elsewhere wait there (at least one batch);
    # with a live stream only one batch, and the batcher holds the rest and drops what the model
    # cannot keep up with, so latency stays bounded
    batches = -(-config.transport.hwm_frames // config.batch.max_batch)
    # the model runs at normal priority, and its idle OpenMP threads sleep instead of spinning, so
    # that the cores it leaves free go to the other stages
    near_model = dict(common, hwm_frames=1 if any(live) else batches, nice=0, env={"OMP_WAIT_POLICY": "PASSIVE"})
    ports = tuple(p for p, on in (("render", out.video), ("masks", out.masks), ("publish", out.publish)) if on)
    progress_stage = "encode" if out.video else "masks" if out.masks else "publish"
    decoders = [
        WorkerSpec(name, "streamseg.stages.decode:DecodeStage",
                   dict(path=url, stream_id=sid, threads=inp.decode_threads, live=is_live_stream,
                        loop=inp.loop, max_frames=inp.max_frames, fps=inp.fps, rtsp_transport=inp.rtsp_transport,
                        open_timeout_s=inp.open_timeout_s, read_timeout_s=inp.read_timeout_s, hwaccel=inp.hwaccel,
                        options=dict(inp.options), reconnect_attempts=inp.reconnect_attempts,
                        reconnect_initial_s=inp.reconnect_initial_s, reconnect_max_s=inp.reconnect_max_s,
                        drop_when_full=config.batch.live_policy != "block"),
                   outputs={"frames": endpoint(f"frames-{i}")}, **dict(common, streams=1))
        for i, (name, (sid, url), is_live_stream) in enumerate(zip(source_stage_names(config), streams, live))]
    specs = [
        *decoders,
        WorkerSpec("batch", "streamseg.stages.batch:BatchStage",
                   dict(max_batch=config.batch.max_batch, max_wait_ms=config.batch.max_wait_ms,
                        live_policy=config.batch.live_policy, live_queue=config.batch.live_queue),
                   inputs=tuple(d.outputs["frames"] for d in decoders), outputs={"batches": endpoint("batches")},
                   **common),
        WorkerSpec("infer", "streamseg.stages.infer:InferStage",
                   dict(model=dict(vars(config.model)), ports=ports),
                   inputs=(endpoint("batches"),), outputs={p: endpoint(f"results-{p}") for p in ports},
                   **near_model),
    ]
    if out.video:
        specs += _video_specs(config, info, common, progress_stage == "encode")
    if out.masks:
        specs.append(WorkerSpec("masks", "streamseg.stages.maskwriter:MaskWriterStage",
                                dict(path="", paths=stream_outputs(config, out.masks), model_info=info),
                                inputs=(endpoint("results-masks"),), progress=progress_stage == "masks", **common))
    if out.publish:
        specs.append(WorkerSpec("publish", "streamseg.stages.publish:PublishStage", dict(model_info=info),
                                inputs=(endpoint("results-publish"),), publish={"publish": out.publish},
                                publish_hwm=out.publish_hwm,
                                publish_curve=server_from_config(out.publish_curve_secret, out.publish_curve_clients),
                                progress=progress_stage == "publish", **common))
    missing = set(config.transport.remote) - {spec.name for spec in specs}
    if missing:
        raise ConfigError(f"transport.remote names {', '.join(sorted(missing))}, which this run does not have")
    curve = transport_from_config(config.transport.curve_secret, config.transport.curve_clients)
    if curve and config.transport.endpoints == "ipc":
        raise ConfigError("transport CURVE keys are for tcp endpoints (transport.endpoints: tcp)")
    specs = [dataclasses.replace(spec, curve=curve) for spec in specs]
    endpoints = _Endpoints(config.transport, ipc_dir)
    remote = None
    if config.transport.remote:
        port = endpoints.port()
        remote = RemoteStages(frozenset(config.transport.remote), endpoints.bind(config.transport.join_port),
                              endpoints.bind(port), f"tcp://{endpoints.advertised}:{port}", curve)
    return Plan(_resolve_links(specs, endpoints), events, progress_stage, remote)


def run_config(config: Config, on_event: Callable[[dict[str, Any]], None] | None = None) -> Summary:
    """Run the pipeline described by ``config`` and return its :class:`Summary`.

    Raises :class:`~streamseg.errors.StreamsegError` subclasses for bad input, config, model or
    output, and :class:`~streamseg.errors.StageError` when a stage fails.
    """
    streams = config.input.streams()
    if not streams:
        raise ConfigError("no input: give a video file, an image folder, a URL or a camera")
    # the cheap checks here, before any worker starts; the decoder probes the source itself, in its
    # own process, so that a crash inside FFmpeg cannot take this one down
    for _, url in streams:
        if source_kind(url) == "file" and not os.path.exists(url):
            raise InputError(f"input not found: {url}")
    for template, what in ((config.output.video, "output video"), (config.output.masks, "masks")):
        for path in stream_outputs(config, template).values():
            if what == "masks" or stream_format(path) is None:
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
        plan = build_specs(config, ipc_dir)
        specs, progress_stage = plan.specs, plan.progress_stage
        rt = config.runtime
        supervisor = Supervisor(specs, plan.events, set(source_stage_names(config)), rt.stop_timeout_s,
                                rt.kill_timeout_s, rt.start_timeout_s, handle,
                                RestartPolicy.of(rt), plan.remote,
                                uuid.uuid4().hex[:12] if config.transport.shared_memory and shm.available() else "")
        start = time.monotonic()
        try:
            stats = supervisor.run()
        finally:
            progress.close()
        end = time.monotonic()
    finally:
        if not config.transport.ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)
    decoders = [stats.get(name, {}).get("counters", {}) for name in source_stage_names(config)]
    sinks = [name for name in stats if name.partition("-")[0] == progress_stage]
    frames = sum(int(stats[name].get("counters", {}).get("frames", 0)) for name in sinks)
    startup = marks.get("ready", start) - start
    run_s = max(1e-9, end - start - startup)
    outputs = {k: ", ".join(dict.fromkeys(stream_outputs(config, v).values()))
               for k, v in (("video", config.output.video), ("masks", config.output.masks)) if v}
    if config.output.publish:
        outputs["published"] = config.output.publish
    latency_at = "publish" if "publish" in stats else min(sinks, default=progress_stage)
    dropped = sum(int(c.get("dropped", 0)) for c in decoders)
    dropped += int(stats.get("batch", {}).get("counters", {}).get("dropped", 0))
    summary = Summary(frames, end - start, startup, frames / run_s, stats,
                      sum(int(c.get("skipped", 0)) for c in decoders), any(c.get("truncated") for c in decoders),
                      "interrupted" in marks, list(supervisor.warnings), outputs, dropped,
                      dict(stats.get(latency_at, {}).get("latency", {})), latency_at,
                      [sid for (sid, _), c in zip(streams, decoders) if c.get("gave_up")],
                      {name: st["restarts"] for name, st in stats.items() if st.get("restarts")},
                      sum(int(st.get("counters", {}).get("resent", 0)) for st in stats.values()))
    if summary.interrupted:
        log.warning("interrupted: outputs hold the %d frames done", frames)
    return summary


def run(input: str | list[str], output: str | None = None, masks: str | None = None, *,
        config_files: tuple[str, ...] = (), overrides: dict[str, Any] | None = None,
        sets: tuple[str, ...] = (), **options: Any) -> Summary:
    """Run the pipeline on a source (or a list of sources), from Python; returns the :class:`Summary`.

    ``options`` are ``section__key=value`` shortcuts (``model__name="tiny-random"``,
    ``batch__max_batch=1``) applied after ``config_files`` and ``overrides``, before ``sets``.
    Example::

        summary = streamseg.run("in.mp4", "annotated.mp4", masks="masks.jsonl", model__score_thresh=0.7)
    """
    source = {"path": input} if isinstance(input, str) else {"sources": list(input)}
    base: dict[str, Any] = {"input": source, "output": {"video": output, "masks": masks},
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


__all__ = ["Plan", "Summary", "build_specs", "run", "run_config", "stream_output"]
