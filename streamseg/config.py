"""Typed pipeline configuration: defaults live here, YAML files hold what differs.

Loading order (last wins): the dataclass defaults below, then each ``--config`` YAML file (which
may name ``_base_: other.yaml``, resolved relative to itself, detectron2-style), then the CLI's
own flags, then ``--set section.key=value`` overrides. Unknown keys are errors that name the key.
A ``--config`` that is not a file may be a preset's name (``coco``, ``rtsp_to_publish``): the
YAML files of ``configs/`` and ``pipelines/`` travel in the package, in ``streamseg/presets/``
(:func:`presets`). The result is frozen. Each stage is given its own section (the table of
stages, :data:`streamseg.stages.STAGES`, names which): the dataclass itself crosses ``spawn`` to
the worker, and becomes JSON (:func:`section_from_dict` reads it back) for a worker on another
host. Every default of every key lives here, and only here: the CLI's help texts, the stages and
the runtime read them from these classes.

This module imports nothing from the rest of streamseg but its errors, so that anything may import it.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError

LIVE_POLICIES = ("budget", "latest", "drop_oldest", "drop_newest", "block")
"""The values of ``batch.live_policy`` (:mod:`streamseg.stages.batch` says what each does)."""
REMOTE_STAGES = ("infer", "render", "encode", "masks")
"""Stages ``transport.remote`` may name: each of their links has its other end on the supervisor's host."""


@dataclass(frozen=True)
class InputConfig:
    """Where frames come from."""

    path: str = ""
    """The source: a video file, a folder or glob of images, an ``rtsp://``, ``rtmp://`` or
    ``http(s)://`` URL (HLS included), or a camera ``/dev/videoN``. One of ``path`` or ``sources``."""
    sources: tuple[str, ...] = ()
    """Several sources in one run (any of the kinds above), sharing one inference stage."""
    stream_id: str = "0"
    """Name of the stream read from ``path`` in outputs (masks ``stream`` field, published topic)."""
    stream_ids: tuple[str, ...] = ()
    """Names of the ``sources``' streams, in order; empty: ``0``, ``1``, ``2``..."""
    live: str = "auto"
    """``auto``: network streams and cameras are live, files and images are not; ``true``/``false`` force it.
    Live streams may drop frames before inference (``batch.live_policy``) and are reconnected when lost."""
    loop: bool = False
    """Start a file (or image folder) again when it ends, with timestamps that keep increasing."""
    max_frames: int = 0
    """End each stream after this many frames, counted as decoded (on a live source, frames dropped
    before inference count too); 0: no limit."""
    duration_s: float = 0.0
    """End each stream after this many seconds of its own time (its timestamps, from its first frame:
    on a live source, wall-clock time), as ``ffmpeg -t``; 0: no limit."""
    fps: float = 25.0
    """Frame rate given to a folder or glob of images."""
    rtsp_transport: str = "tcp"
    """RTSP over ``tcp`` (the default: no packet loss, passes NAT) or ``udp``."""
    open_timeout_s: float = 10.0
    """Longest wait for a source to open; a dead URL fails after this."""
    read_timeout_s: float = 10.0
    """Longest wait for data from an open source before it counts as lost."""
    options: dict[str, str] = field(default_factory=dict)
    """Extra FFmpeg demuxer options, e.g. ``{video_size: 1280x720, input_format: mjpeg}`` for a camera."""
    reconnect_attempts: int = 10
    """Reconnection attempts in a row before a lost live source is given up (its stream ends); 0: never give up."""
    reconnect_initial_s: float = 0.5
    """Wait before the first reconnection attempt; it doubles after each failed one."""
    reconnect_max_s: float = 10.0
    """Longest wait between two reconnection attempts."""
    decode_threads: int = 0
    """FFmpeg decoder threads; 0 lets FFmpeg choose (frame and slice threading, ``AUTO``)."""
    hwaccel: str = "none"
    """Hardware video decoding: ``cuda`` (NVDEC) or ``none``. Decoding falls back to the CPU, with a
    warning in the log, where the GPU cannot decode (no device, a codec NVDEC lacks)."""
    video_stream: int = -1
    """Which video stream of a file to read: 0 is its first (as ``ffmpeg -map 0:v:N`` counts them);
    -1: the one the file marks as default, else its first, never a cover picture (an attached still)."""
    autorotate: bool = True
    """Turn the pictures upright as the file's display matrix says (phone videos held upright), as
    players and ``ffmpeg`` show them; outputs are then at the turned size. ``false``: as stored. A
    live source is shown as stored (its size is fixed before its first frame)."""
    deinterlace: bool = False
    """Deinterlace frames marked interlaced (FFmpeg's ``bwdif``, one frame out per frame in), e.g.
    broadcast MPEG-2 or 1080i; progressive frames are left alone."""

    def streams(self) -> list[tuple[str, str]]:
        """``(stream id, source)`` of every source, in order."""
        if not self.sources:
            return [(self.stream_id, self.path)] if self.path else []
        ids = self.stream_ids or tuple(str(i) for i in range(len(self.sources)))
        return list(zip(ids, self.sources))


@dataclass(frozen=True)
class BatchConfig:
    """How frames are grouped for inference."""

    max_batch: int = 4
    """Most frames per inference batch."""
    max_wait_ms: float = 50.0
    """Longest a partial batch waits for more frames before it is sent anyway (file streams)."""
    live_policy: str = "budget"
    """What live streams do while inference is behind: ``budget`` (hold what arrives; drop a frame only
    when the model could no longer be done with it in time for ``live_max_wait_ms``, never a stream's
    newest), ``latest`` (keep only the newest frame), ``drop_oldest`` / ``drop_newest`` (hold
    ``live_queue`` frames, dropping the oldest / the arrivals), or ``block`` (drop nothing; latency
    grows). Files always block."""
    live_queue: int = 4
    """Frames held per live stream under ``drop_oldest`` and ``drop_newest`` (``budget`` holds up to 64
    frames or 256 MiB of them: its limit is the time)."""
    live_max_wait_ms: float = 500.0
    """The ``budget`` policy's latency budget, capture to outputs (the model is planned to be done by nine
    tenths of it, the rest is for the stages after it; an encoder's own delay is not counted). Half a
    second is more than the clumps in which frames of a network feed arrive and a batch's time in a
    CPU model (so nothing is dropped while inference keeps up on average), and less than a person
    watching an alert calls late."""


@dataclass(frozen=True)
class ModelConfig:
    """Which Mask R-CNN runs, where, and how its outputs are thresholded."""

    name: str = "streamseg-small"
    """Registry name (``streamseg models`` lists them); the default is the shipped small model."""
    weights: str | None = None
    """Local weights file (a state_dict or torchvision checkpoint); None: the registry's default."""
    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    score_thresh: float = 0.5
    """Instances scoring below this are dropped inside the model (before mask pasting)."""
    mask_thresh: float = 0.5
    """Per-pixel probability at or above which a pixel belongs to the mask."""
    fp16: bool = True
    """Use fp16 autocast on CUDA (ignored on the CPU)."""
    torch_threads: int = 0
    """CPU threads for torch in the inference worker; 0: all cores but one, which the other stages
    run on (a model on the CPU gains little from its last core, and loses much when it shares it)."""
    seed: int = 0
    """Seed for models built without weights (the random-init test model)."""
    max_fps: float = 0.0
    """Run inference at most this many frames a second (to share a GPU, or to try live behaviour): a batch
    of n frames takes at least n / max_fps seconds, as a slower model would; 0: no limit."""
    detections_per_img: int = 0
    """At most this many instances a frame, the highest scoring; 0: the model's own limit (100 for
    torchvision's COCO models, 50 for streamseg-small)."""
    channels_last: bool = True
    """Lay the images and the model's weights out channels-last, which oneDNN and cuDNN convolve fastest
    (the same outputs); false: torch's default layout."""
    input: str = ""
    """The largest frame the model sees at its own size, ``WxH`` (long side by short side, e.g.
    ``640x360``): a larger frame is scaled down to fit, a smaller one is not enlarged (torchvision's
    COCO models enlarge it to the short side). Empty: the model's own (the weights' record;
    streamseg-small: ``320x240``). A larger input finds more of the small objects in large frames
    and costs time (2.3 times for 4 times the pixels, benchmarks/RESULTS.md)."""

    def worker_threads(self, cores: int) -> int:
        """The torch threads of an inference worker on ``cores`` cores: ``torch_threads``, 0 resolved."""
        return self.torch_threads or max(1, cores - 1)


@dataclass(frozen=True)
class TrackConfig:
    """How instances are followed from frame to frame (:mod:`streamseg.tracking`, the ``track`` stage):
    ByteTrack's two-stage association, by mask IoU. Each instance written out gets a ``track_id``,
    unique in the run and never shared between streams."""

    enabled: str = "auto"
    """``auto``: track the streams of video files, cameras and network streams, not image folders
    (their pictures need not follow each other); ``true``: image folders too; ``false``: no tracking,
    no ``track_id``. Tracking needs a model with a mask head."""
    low_score: float = 0.1
    """Detections from here up to ``model.score_thresh`` are not written out, but the tracker's second
    stage matches them to tracks seen in the frame before, so an object whose score dips keeps its id
    (with tracking on, the model keeps its detections down to here)."""
    match_iou: float = 0.1
    """Least mask IoU between a track's mask, moved to where its motion puts it, and a detection at or
    above ``model.score_thresh`` for the two to be the same object (low: an object entering the frame
    or coming out from behind another grows several times over from one frame to the next)."""
    low_match_iou: float = 0.5
    """The same for the low-score detections (stricter: they are more often wrong)."""
    max_age_s: float = 1.0
    """A track not seen for longer than this ends; until then a detection that matches it takes its id
    back (an object hidden for a moment)."""
    motion: bool = True
    """Move each track's last mask by its velocity (from its last two sightings) before matching."""
    detections_file: str | None = None
    """Diagnostic: write every detection the tracker is given (the low-score ones too, without ids) to
    this masks JSON Lines file (``{stream}`` as in ``--masks``), to compare trackers on the same
    detections (benchmarks/tracking.py); a replaced tracker worker may repeat lines."""
    checkpoint_frames: int = 10
    """Every this many frames of a stream the tracker reports its state to the supervisor, and holds
    the frames since (they are not acknowledged): a tracker worker that dies is replaced, takes that
    state back and is sent those frames again, so its ids are those of a run that never failed."""


@dataclass(frozen=True)
class ZoneConfig:
    """A polygon zone of the ``analytics`` section."""

    name: str = ""
    points: tuple[tuple[float, float], ...] = ()
    """Its corners, ``[x, y]`` in the source's pixels, in order around it: at least 3, inside the frame,
    edges not crossing each other."""
    stream: str = ""
    """The stream it watches; empty: every stream."""


@dataclass(frozen=True)
class LineConfig:
    """A counting line of the ``analytics`` section."""

    name: str = ""
    points: tuple[tuple[float, float], ...] = ()
    """Its two ends, ``[x, y]`` in the source's pixels. Looking from the first to the second as the
    picture shows it, a crossing to the left-hand side is ``in``, to the right-hand side ``out``."""
    stream: str = ""
    """The stream it watches; empty: every stream."""


@dataclass(frozen=True)
class AnalyticsConfig:
    """Zones and lines over the tracks (:mod:`streamseg.tracking.analytics`; needs tracking on): who is
    inside each zone and for how long, who crossed each line which way, per class. In the run summary,
    in published ``counts`` messages and on the video."""

    zones: tuple[ZoneConfig, ...] = ()
    lines: tuple[LineConfig, ...] = ()
    anchor: str = "bottom"
    """The point of an instance that is in a zone or crosses a line: ``bottom``, its box's bottom
    centre (where it stands), or ``center``."""
    counts_every_s: float = 1.0
    """A stream's ``counts`` message is published every this many seconds of its time (and at its end)."""


@dataclass(frozen=True)
class RenderConfig:
    """How detections are drawn onto the annotated video."""

    mask_alpha: float = 0.45
    """Opacity of the mask fill, 0 (none) to 1 (opaque)."""
    contour_px: int = 2
    """Mask contour thickness in pixels; 0 for none."""
    boxes: bool = True
    """Draw bounding boxes."""
    labels: bool = True
    """Draw the class name and score above each box (and the track id, ``#12``, where tracked)."""
    trail_frames: int = 0
    """Draw each track's path over its last this many frames (its box's centre); 0: no trails. Needs
    ``render.workers: 1`` (one renderer sees every frame of a stream); a replaced renderer starts its
    trails afresh."""
    keypoints: bool = True
    """Draw keypoints and skeleton lines where the model gives them."""
    keypoint_thresh: float = 0.0
    """Keypoints whose score is below this are not drawn."""
    workers: int = 1
    """Render worker processes; frames go to whichever is free and reach the encoder in order. Raise it
    when render is the bottleneck in the run summary."""


@dataclass(frozen=True)
class EncodeConfig:
    """The annotated video encoder (H.264 in MP4, yuv420p)."""

    codec: str = "libx264"
    """FFmpeg encoder name."""
    crf: int = 20
    """Constant rate factor: lower is better quality and bigger files."""
    preset: str = "veryfast"
    """x264 speed/size preset."""
    threads: int = 0
    """Encoder threads; 0 lets FFmpeg choose."""
    audio: bool = True
    """Copy the input's audio into the annotated video (remuxed; AAC when MP4 cannot hold it)."""
    workers: int = 1
    """Encode worker processes, for several sources: each writes the outputs of some of the streams
    (one stream's video is always one worker's; ``threads`` speeds that up)."""


@dataclass(frozen=True)
class OutputConfig:
    """What the run writes."""

    video: str | None = None
    """Annotated MP4 path, or an ``rtsp://`` / ``rtmp://`` URL to push the annotated stream to;
    None: no video. With several sources, ``{stream}`` in it is replaced by the stream id (without
    it, ``-ID`` is added before the extension)."""
    masks: str | None = None
    """Per-frame masks JSON Lines path (``{stream}`` as for ``video``); None: no masks file."""
    publish: str | None = None
    """ZeroMQ PUB endpoint to publish detections at (``tcp://127.0.0.1:5556``); None: no publishing."""
    publish_hwm: int = 1000
    """Messages queued per subscriber before a slow one misses messages (the pipeline never waits)."""
    publish_curve_secret: str | None = None
    """CURVE: the publisher's ``NAME.key_secret`` (``streamseg keys``); with ``publish_curve_clients``,
    only subscribers holding an allowed key connect, and all traffic is encrypted."""
    publish_curve_clients: str | None = None
    """CURVE: folder of the subscribers' public ``*.key`` files that may connect."""
    mqtt: str | None = None
    """MQTT broker to publish every record to (the published JSON, ``docs/publishing.md``):
    ``mqtt://[USER:PASSWORD@]HOST[:PORT]/PREFIX``, topic ``PREFIX/STREAM``; None: none."""
    mqtt_qos: int = 1
    """QoS of the MQTT messages (0, 1 or 2)."""
    redis: str | None = None
    """Redis to add every record to, as Redis Streams entries (field ``record``):
    ``redis://[:PASSWORD@]HOST[:PORT][/DB]``; None: none."""
    redis_key: str = "streamseg:{stream}"
    """The Redis stream of each stream's records (``{stream}``: the stream id)."""
    redis_maxlen: int = 100000
    """Each Redis stream is kept to about this many entries (``XADD MAXLEN ~``)."""
    segment_s: float = 0.0
    """Record in segments: every this many seconds of a stream, its annotated video and its masks
    file are finished and new ones begin, named by the segment's start (UTC: ``cam1.mp4`` ->
    ``cam1-20261205T140000Z.mp4``); 0: one file per stream. Stream URLs are not cut."""
    broker_buffer: int = 10000
    """Records kept per broker while it is away (reconnected with backoff); beyond, the oldest are
    dropped and counted. The pipeline never waits for a broker."""


@dataclass(frozen=True)
class TransportConfig:
    """ZeroMQ sockets between the stage workers."""

    hwm_frames: int = 4
    """Credit of every link between stages, in messages: at most this many wait at each hop (with a
    live source, one batch waits at the model). Few is faster: fewer frames in flight stay in cache."""
    max_msg_bytes: int = 512 * 1024 * 1024
    """Largest message a stage accepts (ZMQ_MAXMSGSIZE); bigger ones drop the sending peer."""
    ipc_dir: str | None = None
    """Folder for ipc:// socket files; None: a fresh temporary folder per run."""
    shared_memory: bool = True
    """Frames cross ipc links in shared memory (``/dev/shm``), one copy each, with only their names
    on the socket; off: as bytes in the messages. tcp links always carry bytes."""
    endpoints: str = "ipc"
    """How the stages reach each other: ``ipc`` (this machine only) or ``tcp`` (needed for stages on
    other hosts; the same stage code runs either way)."""
    bind_host: str = "127.0.0.1"
    """Where tcp endpoints bind: loopback (the default) reaches this machine only; ``0.0.0.0`` or an
    interface's address lets other hosts in (give them CURVE keys then: ``curve_secret``)."""
    advertise_host: str | None = None
    """The address workers on other hosts connect to; None: ``bind_host``, or this host's name when
    ``bind_host`` is ``0.0.0.0``."""
    base_port: int = 0
    """First of the consecutive tcp ports the links and events use; 0: any free ports."""
    join_port: int = 5550
    """Where workers on other hosts ask for a stage: ``streamseg worker tcp://HOST:PORT``."""
    remote: tuple[str, ...] = ()
    """Stages that workers on other hosts run (any of infer, render, encode, masks; ``render-0``,
    ``render-1``... with several render workers; needs ``endpoints: tcp``). The run waits for them to join, and for a new one when one vanishes."""
    curve_secret: str | None = None
    """CURVE on every tcp socket of the pipeline: this host's ``NAME.key_secret`` (``streamseg keys``).
    Workers on other hosts need its public ``NAME.key`` (``streamseg worker --curve-server-key``)."""
    curve_clients: str | None = None
    """CURVE: folder of the public ``*.key`` files of the workers on other hosts that may join."""


@dataclass(frozen=True)
class RuntimeConfig:
    """The supervisor and its workers."""

    stop_timeout_s: float = 20.0
    """After Ctrl-C, how long the pipeline may take to drain and finish its outputs."""
    kill_timeout_s: float = 3.0
    """After a failure, how long workers get to exit on SIGTERM before SIGKILL."""
    start_timeout_s: float = 120.0
    """How long a worker may take to start (load its model) before the run fails."""
    max_restarts: int = 3
    """A worker that dies, hangs or hits a CUDA error is replaced by a new process up to this many
    times per stage (its unfinished frames are sent to the new one); 0: the first failure ends the run."""
    heartbeat_timeout_s: float = 5.0
    """A worker that sends no heartbeat for this long (stopped, or wedged) is replaced."""
    stage_timeout_s: float = 300.0
    """A single stage call (a batch through the model) that runs longer than this counts as hung; 0: no limit."""
    remote_wait_s: float = 120.0
    """How long a stage run on another host (``transport.remote``) waits for a worker to join,
    at the start or after its worker vanished, before the run fails."""
    quiet: bool = False
    """No progress bar and no summary table."""
    log_level: str = "WARNING"
    """Log level of the supervisor and every worker."""
    metrics_port: int = 0
    """Serve the run's Prometheus metrics at ``http://127.0.0.1:PORT/metrics`` (``streamseg serve``
    has them at its own ``/metrics``); 0: none."""
    nice: int = 19
    """Niceness of every worker but the model's: on a machine whose cores the model keeps busy, the
    other stages run in the gaps it leaves instead of slowing it down (0: all equal)."""


@dataclass(frozen=True)
class ServeConfig:
    """``streamseg serve``: a long-running service whose streams are added and removed over HTTP."""

    http: str = "127.0.0.1:8080"
    """``HOST:PORT`` of the HTTP API, the metrics and the live view. Beyond loopback it needs ``token_file``."""
    token_file: str | None = None
    """File holding the bearer token every request must carry (``Authorization: Bearer TOKEN``, or
    ``?token=`` for the pages); required when ``http`` binds beyond loopback."""
    allow_dirs: tuple[str, ...] = ()
    """Folders that file sources and output files of streams added over the API may lie in (an
    output must be a regular file: a new one, or one it overwrites); none: no file source and no
    output file may be added over the API."""
    allow_cameras: bool = False
    """Whether streams added over the API may read cameras (``/dev/videoN``)."""
    allow_schemes: tuple[str, ...] = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt")
    """URL schemes a source added over the API may have."""
    state: str | None = None
    """JSON file the stream list is kept in: a service started again with it adds them back."""
    max_streams: int = 64
    """Most streams at once; one more is refused (429)."""
    add_timeout_s: float = 30.0
    """How long adding a stream waits for its source to open before the request fails (504)."""
    max_body_bytes: int = 65536
    """Largest request body the API reads (413 beyond)."""
    view_fps: float = 10.0
    """The live view (``/streams/ID/view``): at most this many frames a second of a stream, drawn and
    sent only while someone watches it; 0: no live view."""


@dataclass(frozen=True)
class Config:
    """The whole pipeline configuration."""

    input: InputConfig = field(default_factory=InputConfig)
    batch: BatchConfig = field(default_factory=BatchConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    analytics: AnalyticsConfig = field(default_factory=AnalyticsConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

    def to_dict(self) -> dict[str, Any]:
        """A plain nested dict (YAML- and JSON-ready)."""
        return dataclasses.asdict(self)


SECTIONS: dict[str, type] = {f.name: type(getattr(Config(), f.name)) for f in dataclasses.fields(Config)}
"""Config section name -> its class."""


def default(key: str) -> Any:
    """The default of ``section.key`` (for help texts: the value is written only in the classes above)."""
    section, _, name = key.partition(".")
    return getattr(SECTIONS[section](), name)


def section_from_dict(section: str, data: dict[str, Any]) -> Any:
    """A section rebuilt from its JSON form (``dataclasses.asdict``), types checked as for YAML."""
    return _merge(SECTIONS[section](), data, f"{section}.")


AUTO_TRUE_FALSE = frozenset({"input.live", "track.enabled"})
"""The keys that are ``auto``, ``true`` or ``false``: they take YAML's booleans too."""


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a field's type hint, converting the harmless cases (int -> float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"config key '{key}': {value!r} is not a {hint}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        inner = typing.get_args(hint)[0]
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        return {str(k): _coerce(v, str, f"{key}.{k}") for k, v in value.items()}
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is str and isinstance(value, bool) and key in AUTO_TRUE_FALSE:  # YAML reads `false` as a boolean
        return "true" if value else "false"
    if hint is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if hint in (int, float, str, bool):
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    if dataclasses.is_dataclass(hint):  # an item of a list of mappings (analytics.zones)
        return _merge(hint(), value, f"{key}.")
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str) -> Any:
    """A copy of dataclass ``obj`` with ``data`` merged in; unknown keys raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<top>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    changes = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = (f"did you mean {' or '.join(repr(prefix + c) for c in close)}?" if close else
                    f"known in this section: {', '.join(names)}")
            if len(hint) > 160:
                hint = f"{len(names)} keys in this section, listed in streamseg/config.py"
            raise ConfigError(f"unknown config key '{prefix}{key}' ({hint})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            changes[key] = _merge(current, value, f"{prefix}{key}.")
        else:
            changes[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return dataclasses.replace(obj, **changes)


PRESETS_DIR = Path(__file__).parent / "presets"
"""The packaged presets: ``configs/`` and ``pipelines/`` (the repository's top-level folders link here)."""
PRESET_FOLDERS = ("configs", "pipelines")
"""The folders of :data:`PRESETS_DIR`, in the order names are looked up."""


def _preset_files(root: Path = PRESETS_DIR) -> dict[str, list[Path]]:
    """Preset name (a file's name without ``.yaml``) -> the files of that name, configs first."""
    found: dict[str, list[Path]] = {}
    for folder in PRESET_FOLDERS:
        for file in sorted((root / folder).glob("*.yaml")):
            found.setdefault(file.stem, []).append(file)
    return found


def presets() -> dict[str, Path]:
    """The presets ``--config`` takes by name, name -> file: ``configs/`` first, then ``pipelines/``.

    A name both folders hold is left out (it must be given as a path); :func:`load_config` says so.
    """
    return {name: files[0] for name, files in _preset_files().items() if len(files) == 1}


def _config_path(file: str | os.PathLike[str], root: Path = PRESETS_DIR) -> Path:
    """The file a ``--config`` names: an existing file as given, else a bare name's packaged preset."""
    text = os.fspath(file)
    path = Path(text)
    if path.is_file():
        return path
    found = _preset_files(root)
    names = ", ".join(name for name, files in found.items() if len(files) == 1) or "none"
    if any(sep in text for sep in ("/", os.sep, os.altsep) if sep):
        hint = (f"the packaged preset of that name: --config {path.stem}" if len(found.get(path.stem, ())) == 1
                else f"presets: {names}")
        raise ConfigError(f"config file not found: {os.path.abspath(text)} ({hint})")
    name = text.removesuffix(".yaml")
    files = found.get(name, [])
    if len(files) > 1:
        raise ConfigError(f"preset name '{name}' is ambiguous: both {' and '.join(str(f) for f in files)}; "
                          f"give the file's path")
    if not files:
        raise ConfigError(f"config '{text}' is neither a file nor a preset name (presets: {names})")
    return files[0]


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[str, dict[str, Any]]]:
    """(file, mapping) of ``path`` and its ``_base_`` chain, base first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through _base_")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        included = f" (the _base_ of {seen[-1]})" if seen else ""
        raise ConfigError(f"config file not found: {path}{included}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top")
    base = data.pop("_base_", None)
    chain: list[tuple[str, dict[str, Any]]] = []
    if base is not None:
        chain = _read_yaml((path.parent / base), seen + (path,))
    return chain + [(_shown_path(path), data)]


def _shown_path(path: Path) -> str:
    """``path`` relative to the working folder when it is below it (shorter in an error line)."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``a.b=value`` into ``{"a": {"b": value}}``; the value is read as YAML (``1``, ``true``, ``null``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    parts = key.strip().split(".")
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def load_config(files: typing.Sequence[str | os.PathLike[str]] = (),
                overrides: typing.Sequence[dict[str, Any]] = (),
                sets: typing.Sequence[str] = ()) -> Config:
    """Build a validated :class:`Config` from YAML files or preset names (:func:`presets`), then dict
    overrides, then ``--set`` strings."""
    config = Config()
    layers: list[tuple[str, dict[str, Any]]] = []
    for file in files:
        layers.extend(_read_yaml(_config_path(file)))
    layers.extend(("", o) for o in overrides)
    layers.extend(("--set", parse_override(s)) for s in sets)
    for origin, layer in layers:
        try:
            config = _merge(config, layer, "")
        except ConfigError as exc:
            raise ConfigError(f"{origin}: {exc}" if origin else str(exc)) from None
    validate(config)
    return config


def validate(config: Config) -> None:
    """Range checks that types alone cannot express."""
    inp = config.input
    checks = [
        (not (inp.path and inp.sources), "give input.path or input.sources, not both"),
        (not inp.stream_ids or len(inp.stream_ids) == len(inp.sources),
         f"input.stream_ids names {len(inp.stream_ids)} streams but input.sources has {len(inp.sources)}"),
        (len({sid for sid, _ in inp.streams()}) == len(inp.streams()), "input.stream_ids must be different"),
        (all(sid and sid.isprintable() and " " not in sid for sid, _ in inp.streams()),
         "stream ids must be non-empty and without spaces"),
        (inp.live in ("auto", "true", "false"), f"input.live must be auto, true or false, got {inp.live!r}"),
        (inp.hwaccel in ("none", "cuda"), f"input.hwaccel must be none or cuda, got {inp.hwaccel!r}"),
        (inp.rtsp_transport in ("tcp", "udp"), f"input.rtsp_transport must be tcp or udp, got {inp.rtsp_transport!r}"),
        (inp.fps > 0, "input.fps must be positive"),
        (inp.max_frames >= 0, "input.max_frames must be >= 0 (0: no limit)"),
        (inp.duration_s >= 0, "input.duration_s must be >= 0 (0: no limit)"),
        (inp.video_stream >= -1, "input.video_stream must be >= 0 (a file's video streams from 0) or -1 (its default)"),
        (inp.open_timeout_s > 0 and inp.read_timeout_s > 0, "input timeouts must be positive"),
        (inp.reconnect_attempts >= 0, "input.reconnect_attempts must be >= 0 (0: never give up)"),
        (0 < inp.reconnect_initial_s <= inp.reconnect_max_s,
         "input.reconnect_initial_s must be positive and at most input.reconnect_max_s"),
        (config.batch.live_policy in LIVE_POLICIES,
         f"batch.live_policy must be one of {', '.join(LIVE_POLICIES)}, got {config.batch.live_policy!r}"),
        (config.batch.live_queue >= 1, "batch.live_queue must be at least 1"),
        (config.batch.live_max_wait_ms > 0, "batch.live_max_wait_ms must be positive"),
        (config.model.max_fps >= 0, "model.max_fps must be >= 0 (0: no limit)"),
        (not config.model.input or bool(re.fullmatch(r"[1-9][0-9]{1,4}x[1-9][0-9]{1,4}", config.model.input)),
         f"model.input must be WxH (e.g. 640x360) or empty, got {config.model.input!r}"),
        (config.model.detections_per_img >= 0, "model.detections_per_img must be >= 0 (0: the model's own limit)"),
        (config.batch.max_batch >= 1, "batch.max_batch must be at least 1"),
        (config.batch.max_wait_ms >= 0, "batch.max_wait_ms must be >= 0"),
        (0.0 <= config.model.score_thresh <= 1.0, "model.score_thresh must be within [0, 1]"),
        (0.0 < config.model.mask_thresh < 1.0, "model.mask_thresh must be within (0, 1)"),
        (config.track.enabled in ("auto", "true", "false"),
         f"track.enabled must be auto, true or false, got {config.track.enabled!r}"),
        (0.0 <= config.track.low_score <= 1.0, "track.low_score must be within [0, 1]"),
        (0.0 < config.track.match_iou <= 1.0 and 0.0 < config.track.low_match_iou <= 1.0,
         "track.match_iou and track.low_match_iou must be within (0, 1]"),
        (config.track.max_age_s >= 0, "track.max_age_s must be >= 0"),
        (config.track.checkpoint_frames >= 1, "track.checkpoint_frames must be at least 1"),
        (config.analytics.anchor in ("bottom", "center"),
         f"analytics.anchor must be bottom or center, got {config.analytics.anchor!r}"),
        (config.analytics.counts_every_s > 0, "analytics.counts_every_s must be positive"),
        (0.0 <= config.render.mask_alpha <= 1.0, "render.mask_alpha must be within [0, 1]"),
        (1 <= config.render.workers <= 64, "render.workers must be within [1, 64]"),
        (config.render.trail_frames >= 0, "render.trail_frames must be >= 0 (0: no trails)"),
        (not config.render.trail_frames or config.render.workers == 1,
         "render.trail_frames needs render.workers: 1 (a trail is drawn from every frame of its stream)"),
        (1 <= config.encode.workers <= 64, "encode.workers must be within [1, 64]"),
        (config.transport.hwm_frames >= 1, "transport.hwm_frames must be at least 1"),
        (config.runtime.max_restarts >= 0, "runtime.max_restarts must be >= 0"),
        (0 <= config.runtime.nice <= 19, "runtime.nice must be within [0, 19]"),
        (config.transport.endpoints in ("ipc", "tcp"), "transport.endpoints must be ipc or tcp"),
        (not config.transport.remote or config.transport.endpoints == "tcp",
         "stages on other hosts (transport.remote) need transport.endpoints: tcp"),
        (all(name.partition("-")[0] in REMOTE_STAGES for name in config.transport.remote),
         f"transport.remote may name {', '.join(REMOTE_STAGES)} (render-0, render-1... with several render "
         f"workers), got {', '.join(config.transport.remote)}"),
        (0 <= config.transport.base_port < 65000 and 0 < config.transport.join_port < 65536,
         "transport.base_port and transport.join_port must be tcp port numbers"),
        (config.runtime.heartbeat_timeout_s >= 1.0, "runtime.heartbeat_timeout_s must be at least 1 s"),
        (config.runtime.stage_timeout_s >= 0, "runtime.stage_timeout_s must be >= 0 (0: no limit)"),
        (0 <= config.encode.crf <= 51, "encode.crf must be within [0, 51]"),
        (config.runtime.log_level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
         "runtime.log_level must be DEBUG, INFO, WARNING or ERROR"),
        (config.serve.http.rpartition(":")[2].isdigit() and bool(config.serve.http.rpartition(":")[0]),
         f"serve.http must be HOST:PORT, got {config.serve.http!r}"),
        (0 <= config.runtime.metrics_port < 65536, "runtime.metrics_port must be a tcp port number (0: none)"),
        (config.output.mqtt_qos in (0, 1, 2), "output.mqtt_qos must be 0, 1 or 2"),
        (not config.output.mqtt or config.output.mqtt.startswith("mqtt://")
         and bool(urlsplit(config.output.mqtt).hostname), "output.mqtt must be mqtt://[USER:PASSWORD@]HOST[:PORT]/PREFIX"),
        (not config.output.redis or config.output.redis.startswith(("redis://", "rediss://")),
         "output.redis must be redis://[:PASSWORD@]HOST[:PORT][/DB]"),
        (config.output.segment_s == 0 or config.output.segment_s >= 1, "output.segment_s must be 0 or at least 1"),
        (config.output.redis_maxlen >= 1 and config.output.broker_buffer >= 1,
         "output.redis_maxlen and output.broker_buffer must be at least 1"),
        (config.serve.max_streams >= 1, "serve.max_streams must be at least 1"),
        (config.serve.add_timeout_s > 0, "serve.add_timeout_s must be positive"),
        (config.serve.max_body_bytes >= 1024, "serve.max_body_bytes must be at least 1024"),
        (0 <= config.serve.view_fps <= 60, "serve.view_fps must be within [0, 60] (0: no live view)"),
    ]
    device = config.model.device
    checks.append((device in ("auto", "cpu", "cuda") or device.startswith("cuda:"),
                   f"model.device must be auto, cpu, cuda or cuda:N, got {device!r}"))
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
