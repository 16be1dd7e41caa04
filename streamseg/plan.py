"""Planning a run: which workers it has, which config section each takes, and how they are joined.

::

    decode ─┐
    decode ─┼─► batch ──► infer ──► render ──► encode ──► annotated MP4s / stream URLs
    decode ─┘               ├─────► mask writer ──► masks JSONL per stream
                            └─────► publish ──► ZeroMQ PUB (a topic per stream) ──► subscribers

One decoder per source; the batcher mixes the streams' frames into the inference stage's batches,
and every stage after it keeps each stream's outputs apart. :func:`build_specs` turns a
:class:`~streamseg.config.Config` into :class:`~streamseg.runtime.spec.WorkerSpec` s, one per worker,
from the table of stages (:data:`~streamseg.stages.STAGES`); nothing is started here.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from .config import Config, TransportConfig
from .errors import ConfigError
from .models import model_info
from .remote import RemoteStages
from .runtime.spec import WorkerSpec
from .security import server_from_config, transport_from_config
from .sources import is_live, source_kind
from .stages import STAGES
from .tracking.analytics import check_analytics


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


def tracked_streams(config: Config, masks: bool) -> list[str]:
    """The streams the ``track`` stage follows (``track.enabled``: ``auto``, every stream but image
    folders; a model without masks, none); empty: the run has no track stage."""
    enabled = config.track.enabled
    if enabled == "true" and not masks:
        raise ConfigError(f"track.enabled is true, but model {config.model.name} has no mask head: tracking "
                          "follows masks (set track.enabled: false, or auto)")
    if enabled == "false" or not masks:
        return []
    return [sid for sid, url in config.input.streams() if enabled == "true" or source_kind(url) != "images"]


def _areas(config: Config) -> dict[str, Any]:
    """The ``analytics`` section as the track and render stages take it (``analytics=``, its JSON form),
    or nothing when it has no zone and no line."""
    return {"analytics": dataclasses.asdict(config.analytics)} if config.analytics.zones or config.analytics.lines \
        else {}


def brokers(config: Config) -> dict[str, Any]:
    """The broker stage's parameters (the ``output`` section's ``mqtt`` and ``redis``), or nothing
    when the run feeds no broker."""
    out = config.output
    if not out.mqtt and not out.redis:
        return {}
    return dict(model_info=model_info(config.model.name).to_dict(), mqtt=out.mqtt, mqtt_qos=out.mqtt_qos,
                redis=out.redis, redis_key=out.redis_key, redis_maxlen=out.redis_maxlen, buffer=out.broker_buffer)


def _segments(config: Config) -> dict[str, float]:
    """The encoder's and mask writer's ``segment_s`` parameter, when the run records in segments."""
    return {"segment_s": config.output.segment_s} if config.output.segment_s else {}


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


def model_specs(config: Config, info: dict[str, Any], common: dict[str, Any], ports: list[str], images: bool,
                hwm_frames: int, track: dict[str, Any] | None) -> list[WorkerSpec]:
    """The inference worker, and the track stage after it when ``track`` gives its streams (its other
    parameters): the writers' ``ports`` are fed by the track stage then, else by inference; ``images``:
    the frames' pictures go on (to be drawn). The model's input holds ``hwm_frames`` batches."""
    infer_ports = ["track"] if track is not None else ports
    # the model runs at normal priority, and its idle OpenMP threads sleep instead of spinning, so
    # that the cores it leaves free go to the other stages
    specs = [_spec("infer", "infer", config,
                   dict(ports=infer_ports, image_ports=["track" if track is not None else "render"] if images else [],
                        keep_from=config.track.low_score if track is not None else None),
                   common, inputs=("batches",), outputs={p: f"results-{p}" for p in infer_ports},
                   hwm_frames=hwm_frames, nice=0, env={"OMP_WAIT_POLICY": "PASSIVE"})]
    if track is not None:
        specs.append(_spec("track", "track", config, dict(high_score=config.model.score_thresh, model_info=info,
                                                          ports=ports, **track),
                           common, inputs=("results-track",), outputs={p: f"results-{p}" for p in ports}))
    return specs


def publisher_specs(config: Config, info: dict[str, Any], common: dict[str, Any], feeds: dict[str, Any],
                    progress_stage: str = "") -> list[WorkerSpec]:
    """The ZeroMQ publisher and the broker stage (``feeds``: :func:`brokers`), those the outputs ask for."""
    out, specs = config.output, []
    if out.publish:
        specs.append(_spec("publish", "publish", config, dict(model_info=info), common, inputs=("results-publish",),
                           publish={"publish": out.publish}, publish_hwm=out.publish_hwm,
                           publish_curve=server_from_config(out.publish_curve_secret, out.publish_curve_clients),
                           progress=progress_stage == "publish"))
    if feeds:
        specs.append(_spec("brokers", "brokers", config, feeds, common, inputs=("results-brokers",),
                           progress=progress_stage == "brokers"))
    return specs


def worker_names(stage: str, count: int) -> list[str]:
    """Names of a stage's parallel workers: the stage's own name for one, ``stage-I`` for several."""
    return [stage] if count == 1 else [f"{stage}-{i}" for i in range(count)]


def _spec(name: str, stage: str, config: Config, params: dict[str, Any], common: dict[str, Any],
          **fields: Any) -> WorkerSpec:
    """A worker of stage kind ``stage`` (:data:`~streamseg.stages.STAGES`), given its config section."""
    section = STAGES[stage].section
    return WorkerSpec(name, stage, getattr(config, section) if section else None, params, **{**common, **fields})


def _video_specs(config: Config, info: dict[str, Any], common: dict[str, Any], progress: bool) -> list[WorkerSpec]:
    """The render workers (any of them takes the next frame) and the encode workers (each writes the
    videos of some of the streams; it restores their order when several render workers feed it)."""
    paths = stream_outputs(config, config.output.video)
    encoders = worker_names("encode", min(config.encode.workers, len(paths)))
    shares = {sid: i % len(encoders) for i, sid in enumerate(paths)}
    port = STAGES["render"].outputs[0]
    ports = [port] if len(encoders) == 1 else [f"{port}-{j}" for j in range(len(encoders))]
    renderers = worker_names("render", config.render.workers)
    routes = {sid: ports[j] for sid, j in shares.items()} if len(encoders) > 1 else {}
    specs = [_spec(name, "render", config, dict(model_info=info, routes=routes, **_areas(config)), common,
                   inputs=("results-render",), outputs={port: f"rendered-{i}-{port}" for port in ports},
                   parallel=len(renderers) > 1)
             for i, name in enumerate(renderers)]
    for j, name in enumerate(encoders):
        mine = {sid: path for sid, path in paths.items() if shares[sid] == j}
        specs.append(_spec(name, "encode", config, dict(paths=mine, **_segments(config)), common,
                           inputs=tuple(f"rendered-{i}-{ports[j]}" for i in range(len(renderers))),
                           progress=progress, ordered=len(renderers) > 1, streams=len(mine)))
    return specs


def build_specs(config: Config, ipc_dir: str) -> Plan:
    """The worker specs of the pipeline, with their endpoints. Links are named here (``frames-0``,
    ``batches``, ``results-masks``...) and given endpoints once both their ends are known."""
    out = config.output
    feeds = brokers(config)
    if not out.video and not out.masks and not out.publish and not feeds:
        raise ConfigError("nothing to write: give an annotated video (-o FILE), masks (--masks FILE), "
                          "a publish endpoint (--publish) and/or a broker (output.mqtt, output.redis)")
    info = model_info(config.model.name).to_dict()
    streams = config.input.streams()
    live = [is_live(url, config.input.live) for _, url in streams]
    events = f"ipc://{os.path.join(ipc_dir, 'events')}"
    common = dict(events=events, hwm_frames=config.transport.hwm_frames, streams=len(streams),
                  max_msg_bytes=config.transport.max_msg_bytes, log_level=config.runtime.log_level,
                  nice=config.runtime.nice)
    # the model's input counts batches: as many frames as elsewhere wait there (at least one batch);
    # with a live stream only one batch, and the batcher holds the rest and drops what the model
    # cannot keep up with, so latency stays bounded
    batches = -(-config.transport.hwm_frames // config.batch.max_batch)
    wanted = {"render": out.video, "masks": out.masks, "publish": out.publish, "brokers": feeds}
    ports = [port for port in STAGES["track"].outputs if wanted[port]]
    tracked = tracked_streams(config, info["masks"])
    check_analytics(config.analytics, [sid for sid, _ in streams])
    if _areas(config) and not tracked:
        raise ConfigError("analytics zones and lines count tracks: this run tracks no stream (track.enabled, "
                          "an image folder, or a model without masks)")
    progress_stage = "encode" if out.video else "masks" if out.masks else "publish" if out.publish else "brokers"
    decoders = [_spec(name, "decode", config,
                      dict(source=url, stream_id=sid, live=is_live_stream,
                           drop_when_full=config.batch.live_policy != "block"),
                      common, outputs={STAGES["decode"].outputs[0]: f"frames-{i}"}, streams=1)
                for i, (name, (sid, url), is_live_stream) in enumerate(zip(source_stage_names(config), streams, live))]
    specs = [
        *decoders,
        _spec("batch", "batch", config, {}, common,
              inputs=tuple(d.outputs[STAGES["decode"].outputs[0]] for d in decoders),
              outputs={STAGES["batch"].outputs[0]: "batches"}),
    ]
    given = stream_outputs(config, config.track.detections_file)
    specs += model_specs(config, info, common, ports, bool(out.video), 1 if any(live) else batches,
                         dict(streams=[sid for sid, _ in streams], tracked=tracked,
                              **({"given": given} if given else {}), **_areas(config)) if tracked else None)
    if out.video:
        specs += _video_specs(config, info, common, progress_stage == "encode")
    if out.masks:
        specs.append(_spec("masks", "masks", config, dict(path="", paths=stream_outputs(config, out.masks),
                                                          model_info=info, **_segments(config)),
                           common, inputs=("results-masks",), progress=progress_stage == "masks"))
    specs += publisher_specs(config, info, common, feeds, progress_stage)
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
                              endpoints.bind(port), f"tcp://{endpoints.advertised}:{port}", curve,
                              f"tcp://{endpoints.advertised}:{config.transport.join_port}")
    return Plan(_resolve_links(specs, endpoints), events, progress_stage, remote)
