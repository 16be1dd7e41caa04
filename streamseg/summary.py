"""What a run did: the :class:`Summary` it returns (and prints), and the progress bar while it runs."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from .config import Config
from .plan import source_stage_names, stream_outputs
from .sources import describe_input, safe_url
from .stages import STAGES


@dataclass
class Summary:
    """What a run did. Times count from the command's start (``streamseg run``: the process's;
    :func:`streamseg.run`: the call's), so ``wall_s`` is end to end."""

    frames: int
    """Frames written to the outputs."""
    wall_s: float
    """Seconds end to end: from the command's start to the end of the run (imports, planning,
    worker start-up and model loading included)."""
    startup_s: float
    """Seconds from the command's start until every worker was ready (the model loaded)."""
    fps: float
    """Frames per second after start-up: ``frames / (wall_s - startup_s)``, the rate the pipeline
    keeps on a long input. :attr:`fps_end_to_end` counts start-up too."""
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
    inputs: dict[str, str] = field(default_factory=dict)
    """Stream id -> what its input was: container, codec, size stored and shown (rotation), constant
    or variable frame rate, which video stream."""
    analytics: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Stream id -> its ``analytics`` zones and lines at the end (``zones``: name -> occupancy, who is
    inside, entries, dwell; ``lines``: name -> crossings in and out, in all and per class)."""

    @property
    def fps_end_to_end(self) -> float:
        """Frames per second from the command's start to its end: ``frames / wall_s``."""
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def bottleneck(self) -> str:
        """The stage that was busy longest."""
        return max(self.stages, key=lambda s: self.stages[s].get("busy_s", 0.0)) if self.stages else ""

    def table(self) -> str:
        """A human-readable report."""
        lines = [f"frames {self.frames} in {self.wall_s:.2f} s end to end ({self.fps_end_to_end:.2f} fps); "
                 f"start-up {self.startup_s:.2f} s, then {self.fps:.2f} fps",
                 *(f"input {sid}: {text}" for sid, text in self.inputs.items()),
                 f"{'stage':<8} {'busy s':>8} {'busy %':>7} {'blocked s':>10} {'cpu s':>7}  counts"]
        run_s = max(1e-9, self.wall_s - self.startup_s)

        def order(stage: str) -> tuple[int, str]:
            kind = stage.split("-")[0]
            return (list(STAGES).index(kind) if kind in STAGES else 99, stage)

        for name in sorted(self.stages, key=order):
            st = self.stages[name]
            counts = " ".join(f"{k}={v}" for k, v in st.get("counters", {}).items())
            lines.append(f"{name:<8} {st.get('busy_s', 0):8.2f} {100 * st.get('busy_s', 0) / run_s:6.0f}% "
                         f"{st.get('blocked_s', 0):10.2f} {st.get('cpu_s', 0):7.2f}  {counts}")
        lines.append(f"bottleneck: {self.bottleneck()}")
        for sid, figures in self.analytics.items():
            for name, z in figures["zones"].items():
                lines.append(f"zone {name} (stream {sid}): {z['entered']} entered, {z['occupancy']} inside at the end, "
                             f"stayed {z['dwell_s']['mean']:.1f} s on average (longest {z['dwell_s']['max']:.1f} s)")
            for name, ln in figures["lines"].items():
                by_class = ", ".join(f"{k} {v}" for k, v in ln["in_by_class"].items())
                lines.append(f"line {name} (stream {sid}): {ln['in']} in, {ln['out']} out"
                             + (f" (in: {by_class})" if by_class else ""))
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


class Progress:
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


STAGE_OF_OUTPUT = {"video": "encode", "masks": "masks"}
"""The stage that writes each kind of output (a remote one writes it on its own host)."""


def summarise(config: Config, stats: dict[str, dict[str, Any]], progress_stage: str, times: dict[str, float],
              warnings: list[str], inputs: dict[str, dict[str, Any]] | None = None) -> Summary:
    """The :class:`Summary` of a finished run from its workers' final ``stats``. ``times`` (monotonic):
    ``start`` (the command's), ``ready`` (every worker ready; absent if none was), ``end``, and
    ``interrupted`` when Ctrl-C or SIGTERM stopped it. ``inputs``: stream id -> what its decoder
    said of its input (``input`` events, merged)."""
    streams = config.input.streams()
    decoders = [stats.get(name, {}).get("counters", {}) for name in source_stage_names(config)]
    sinks = [name for name in stats if name.partition("-")[0] == progress_stage]
    frames = sum(int(stats[name].get("counters", {}).get("frames", 0)) for name in sinks)
    start, end = times["start"], times["end"]
    startup = times.get("ready", end) - start
    remote = {name.partition("-")[0] for name in config.transport.remote}
    outputs = {k: ", ".join(dict.fromkeys(stream_outputs(config, v).values()))
               + (" (on the host of its streamseg worker)" if STAGE_OF_OUTPUT[k] in remote else "")
               + (f" (in {config.output.segment_s:g} s segments, NAME-START.EXT)" if config.output.segment_s else "")
               for k, v in (("video", config.output.video), ("masks", config.output.masks)) if v}
    if config.output.publish:
        outputs["published"] = config.output.publish
    for broker in ("mqtt", "redis"):
        if getattr(config.output, broker):
            outputs[broker] = safe_url(getattr(config.output, broker))
    latency_at = "publish" if "publish" in stats else min(sinks, default=progress_stage)
    dropped = sum(int(c.get("dropped", 0)) for c in decoders)
    dropped += int(stats.get("batch", {}).get("counters", {}).get("dropped", 0))
    return Summary(frames, end - start, startup, frames / max(1e-9, end - start - startup), stats,
                   sum(int(c.get("skipped", 0)) for c in decoders), any(c.get("truncated") for c in decoders),
                   "interrupted" in times, warnings, outputs, dropped,
                   dict(stats.get(latency_at, {}).get("latency", {})), latency_at,
                   [sid for (sid, _), c in zip(streams, decoders) if c.get("gave_up")],
                   {name: st["restarts"] for name, st in stats.items() if st.get("restarts")},
                   sum(int(st.get("counters", {}).get("resent", 0)) for st in stats.values()),
                   {sid: f"{info['source']}: {describe_input(info)}" for sid, info in
                    ((sid, (inputs or {}).get(sid, {})) for sid, _ in streams) if "container" in info},
                   dict(stats.get("track", {}).get("analytics", {})))
