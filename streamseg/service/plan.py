"""Planning a service: the stages that live as long as it does, and a decoder for each stream added.

A run's plan (:func:`streamseg.plan.build_specs`) fixes everything when it starts. A service's
stages after the decoders are started once, with no stream, and learn each stream from its
:class:`~streamseg.runtime.messages.StreamStart` (which names the stream's own video and masks
files); the batcher is told which decoders to read through the control channel
(:mod:`streamseg.runtime.control`), and every stage ends only when told that no stream will come.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from ..config import Config
from ..errors import ConfigError
from ..models import model_info
from ..plan import _Endpoints, _resolve_links, _segments, _spec, brokers, model_specs, publisher_specs, worker_names
from ..runtime.spec import WorkerSpec
from ..sources import is_live
from ..stages import STAGES


@dataclass
class ServicePlan:
    """The service's lasting workers, and how a decoder is made for a stream."""

    config: Config
    ipc_dir: str
    specs: list[WorkerSpec]
    """The stages that last (batch, infer, track, render, encode, masks, publish)."""
    events: str
    control: str
    batch: str = "batch"
    """The worker whose inputs are the decoders."""
    opened: int = 0
    """Decoders made so far (each gets an endpoint of its own)."""
    tracked: bool = True
    """Whether its streams are tracked (``track.enabled``, a model with masks): zones and lines count tracks."""
    views: list[str] = field(default_factory=list)
    """Where the render workers publish the live view (:func:`~streamseg.stages.render.view_topic`)."""
    common: dict = field(default_factory=dict)

    def decoder(self, stream_id: str, source: str, video: str = "", masks: str = "", loop: bool | None = None,
                analytics: str = "") -> WorkerSpec:
        """A decode worker for one stream, bound at an endpoint no earlier decoder used."""
        self.opened += 1
        section = self.config.input if loop is None else dataclasses.replace(self.config.input, loop=loop)
        live = is_live(source, section.live)
        endpoint = f"ipc://{os.path.join(self.ipc_dir, f'frames-{self.opened}')}"
        return WorkerSpec(f"decode-{stream_id}", "decode", section,
                          dict(source=source, stream_id=stream_id, live=live,
                               drop_when_full=self.config.batch.live_policy != "block", video=video, masks=masks,
                               analytics=analytics),
                          **{**self.common, "streams": 1}, outputs={STAGES["decode"].outputs[0]: endpoint})


def build_service(config: Config, ipc_dir: str) -> ServicePlan:
    """The lasting workers of a service (no decoder: streams are added later)."""
    if config.transport.remote or config.transport.endpoints != "ipc":
        raise ConfigError("streamseg serve runs every stage on this machine (transport.endpoints: ipc, "
                          "no transport.remote)")
    if config.analytics.zones or config.analytics.lines:
        raise ConfigError("in a service each stream's zones and lines come with it: POST /streams with "
                          "\"analytics\": {\"zones\": [...], \"lines\": [...]}, not the config's analytics section")
    info = model_info(config.model.name).to_dict()
    events = f"ipc://{os.path.join(ipc_dir, 'events')}"
    control = f"ipc://{os.path.join(ipc_dir, 'control')}"
    common = dict(events=events, hwm_frames=config.transport.hwm_frames, streams=0,
                  max_msg_bytes=config.transport.max_msg_bytes, log_level=config.runtime.log_level,
                  nice=config.runtime.nice)
    lasting = {**common, "control": control}
    feeds = brokers(config)
    ports = ["render", "masks"] + (["publish"] if config.output.publish else []) + (["brokers"] if feeds else [])
    tracked = config.track.enabled != "false" and info["masks"]
    if config.track.enabled == "true" and not info["masks"]:
        raise ConfigError(f"track.enabled is true, but model {config.model.name} has no mask head")
    specs = [_spec("batch", "batch", config, {}, lasting, outputs={STAGES["batch"].outputs[0]: "batches"})]
    # a service is live: one batch waits at the model, the batcher holds the rest (see build_specs); its
    # track stage learns each stream from its StreamStart
    specs += model_specs(config, info, lasting, ports, True, 1, dict(streams=[], tracked=None) if tracked else None)
    encoders = worker_names("encode", config.encode.workers)
    port = STAGES["render"].outputs[0]
    render_ports = [port] if len(encoders) == 1 else [f"{port}-{j}" for j in range(len(encoders))]
    renderers = worker_names("render", config.render.workers)
    views = [f"ipc://{os.path.join(ipc_dir, f'view-{i}')}" for i in range(len(renderers))]
    specs += [_spec(name, "render", config, dict(model_info=info, spread=len(encoders),
                                                 view_fps=config.serve.view_fps), lasting,
                    inputs=("results-render",), outputs={p: f"rendered-{i}-{p}" for p in render_ports},
                    publish={"view": views[i]} if config.serve.view_fps else {}, publish_hwm=4,
                    parallel=len(renderers) > 1)
              for i, name in enumerate(renderers)]
    specs += [_spec(name, "encode", config, _segments(config), lasting,
                    inputs=tuple(f"rendered-{i}-{render_ports[j]}" for i in range(len(renderers))),
                    ordered=len(renderers) > 1)
              for j, name in enumerate(encoders)]
    specs.append(_spec("masks", "masks", config, dict(path="", model_info=info, **_segments(config)), lasting,
                       inputs=("results-masks",)))
    specs += publisher_specs(config, info, lasting, feeds)
    specs = _resolve_links(specs, _Endpoints(config.transport, ipc_dir))
    return ServicePlan(config, ipc_dir, specs, events, control, common=common, tracked=bool(tracked),
                       views=views if config.serve.view_fps else [])
