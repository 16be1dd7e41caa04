"""What a worker process is given (:class:`WorkerSpec`), the signals it answers, and the spec's JSON
form for a worker on another host. Plain data: the supervisor, the planner and ``streamseg worker``
share it without importing the worker runtime."""

from __future__ import annotations

import dataclasses
import json
import signal
from dataclasses import dataclass, field
from typing import Any

from ..config import OutputConfig, RuntimeConfig, TransportConfig, section_from_dict
from ..errors import ConfigError, StreamsegError
from ..stages import STAGES

START_SIGNAL = signal.SIGUSR2
"""Tells a source that the whole pipeline is ready: it may start producing."""
DRAIN_SIGNAL = signal.SIGUSR1
"""Asks a source to end its streams cleanly, so that everything downstream drains."""
JOB_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
"""Signals meant for the whole job: the supervisor handles them and stops the workers in order;
it starts each worker with them blocked until the worker has left the job's process group."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to run its stage. Plain data: it crosses the spawn boundary."""

    name: str
    """Stage name used in logs, errors and the summary (``decode``, ``infer``...); also the
    worker's name on its input links, so a restarted worker takes over from the one it replaces."""
    stage: str
    """The stage's kind: a name in :data:`streamseg.stages.STAGES` (``decode``, ``render``...)."""
    config: Any
    """The config section the stage takes (a frozen dataclass, e.g. :class:`~streamseg.config.InputConfig`);
    None for a stage without one."""
    params: dict[str, Any]
    """The plan's facts for the stage's constructor, after its section (JSON values only)."""
    events: str
    """Supervisor's event endpoint."""
    inputs: tuple[str, ...] = ()
    """Upstream endpoints to connect a data-in link to, one each; empty for a source."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output port name -> endpoint to bind its data-out link at."""
    publish: dict[str, str] = field(default_factory=dict)
    """Publish port name -> endpoint to bind a PUB at (for subscribers outside the pipeline)."""
    publish_hwm: int = OutputConfig.publish_hwm
    """High-water mark of each publish socket, in messages per subscriber."""
    publish_curve: dict[str, str] | None = None
    """CURVE server settings of the publish sockets (:class:`~streamseg.security.CurveServer` fields)."""
    streams: int = 1
    """Streams to see end before the worker is done."""
    hwm_frames: int = TransportConfig.hwm_frames
    """Credit of each data-in link: messages that may wait for this worker, per upstream port."""
    max_msg_bytes: int = TransportConfig.max_msg_bytes
    """ZMQ_MAXMSGSIZE of the data-in sockets."""
    progress: bool = False
    """Whether this worker reports frame progress (the last sink does)."""
    log_level: str = RuntimeConfig.log_level
    """Log level inside the worker."""
    attempt: int = 0
    """0 for the first process of this stage; n for its n-th replacement after a failure."""
    heartbeat_s: float = 0.5
    """Seconds between two heartbeats to the supervisor."""
    previous: dict[str, Any] = field(default_factory=dict)
    """For a replacement: why the process before it failed (``cause``), and the last ``checkpoint``
    event that process reported."""
    instance: str = ""
    """Names this process of the stage in its events, so that the word of one it replaced is ignored."""
    curve: dict[str, Any] | None = None
    """CURVE settings of its tcp sockets (:class:`~streamseg.security.TransportCurve` fields); None: off."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set in the worker, unless already set, before its stage is imported
    (thread pools read them)."""
    nice: int = 0
    """Niceness added to the worker's priority (the supervisor sets it as the process starts): the
    stages around the model yield to it. Not applied to a worker on another host."""
    shm_prefix: str = ""
    """Names this worker's shared-memory slots (``sseg-RUN-INSTANCE``); empty: no shared memory."""
    parallel: bool = False
    """One of several workers that read the same input port: a frame a dead sibling had may come
    after later ones, so frames are not dropped as repeats here (where the outputs join, they are)."""
    control: str = ""
    """The supervisor's control endpoint (a service, whose streams come and go): the worker learns
    there which upstream endpoints to read (:mod:`streamseg.runtime.control`) and when no more
    streams will come. Empty: a run whose streams are fixed when it starts."""
    ordered: bool = False
    """Its inputs come from parallel workers of one stage: each stream's order is restored
    (:mod:`streamseg.runtime.reorder`) before the stage sees a message."""


def spec_to_json(spec: WorkerSpec) -> bytes:
    """The spec as a worker on another host receives it."""
    return json.dumps(dataclasses.asdict(spec)).encode()


def spec_from_json(raw: bytes) -> WorkerSpec:
    """A WorkerSpec from the supervisor's answer, its config section rebuilt and checked; a wrong or
    foreign answer is a ConfigError."""
    try:
        data = json.loads(raw)
        fields = {f.name for f in dataclasses.fields(WorkerSpec)}
        if not isinstance(data, dict) or set(data) - fields:
            raise ValueError(f"unknown fields {sorted(set(data) - fields) if isinstance(data, dict) else data!r}")
        kind = STAGES.get(data.get("stage"))  # type: ignore[arg-type]
        if kind is None:
            raise ValueError(f"unknown stage {data.get('stage')!r}")
        if kind.section is not None:
            data["config"] = section_from_dict(kind.section, data.get("config") or {})
        data["inputs"] = tuple(data.get("inputs", ()))
        return WorkerSpec(**data)
    except (ValueError, TypeError, StreamsegError) as exc:
        raise ConfigError(f"the supervisor sent a spec this worker cannot read: {exc}") from None
