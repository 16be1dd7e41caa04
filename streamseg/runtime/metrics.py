"""Prometheus metrics of a run or a service, from every worker process (prometheus-client's
multiprocess mode).

The supervisor sets :data:`ENV` to a fresh folder before any worker starts; each process then writes
its figures into files of its own there, and the one that serves ``/metrics`` reads them all
(:func:`exposition`). When a worker exits, the supervisor marks it dead
(:func:`mark_dead`): its gauges go, its counters and histograms move into one archive file per
kind (a counter never goes down, also across a worker's restart). Without :data:`ENV` nothing is
measured: :class:`Meter` does nothing.

Names follow Prometheus's conventions (``_total`` counters, base units) and are listed in
:data:`METRICS`, with their labels, and in the README.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)

ENV = "PROMETHEUS_MULTIPROC_DIR"

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)

METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    # key: (kind, labels, help); the metric is streamseg_<key>
    "frames": ("counter", ("stage", "stream"), "Frames each stage handled: decode sent on, batch batched, infer "
               "inferred, track tracked, render drew, encode and masks wrote, publish published."),
    "frames_dropped": ("counter", ("stage", "stream", "reason"), "Frames dropped before inference: a live "
                       "source's frame with no room at the batcher (no_room), or by batch.live_policy."),
    "messages_rejected": ("counter", ("stage",), "Malformed messages a stage refused."),
    "records_dropped": ("counter", ("stage", "broker"), "Records a broker (mqtt, redis) did not get: it was away "
                        "and its buffer (output.broker_buffer) was full."),
    "reconnects": ("counter", ("stream",), "Times a live source was reconnected after a loss."),
    "restarts": ("counter", ("stage",), "Times a worker was replaced after it failed."),
    "latency_seconds": ("histogram", ("stage", "stream"), "Seconds from a frame's capture until it was written "
                        "or published, per sink."),
    "batch_frames": ("histogram", (), "Frames in each batch the model ran."),
    "queue_messages": ("gauge", ("worker", "port"), "Messages sent on a worker's output port and not yet done, or "
                       "waiting for room there."),
    "streams_up": ("gauge", (), "Streams running now."),
    "gpu_memory_bytes": ("gauge", ("device",), "GPU memory the model's tensors hold (CUDA only)."),
}
"""Every metric: its kind, labels and help."""


def enabled() -> bool:
    return bool(os.environ.get(ENV))


class Meter:
    """A process's metrics; this one measures nothing (no :data:`ENV`)."""

    active = False
    """Whether it measures: callers skip the work of building what it would only drop."""

    def add(self, key: str, value: float = 1.0, **labels: str) -> None:
        """Add ``value`` to counter ``key``, observe it into histogram ``key``, or set gauge ``key``."""


class PrometheusMeter(Meter):
    """Writes into this process's files in the :data:`ENV` folder; a metric is made when first used
    (a process shows only what it measures: no gauge at 0 for what it does not do)."""

    active = True

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def _make(self, key: str) -> Any:
        from prometheus_client import Counter, Gauge, Histogram

        kind, labels, text = METRICS[key]
        name = f"streamseg_{key}"
        if kind == "counter":
            return Counter(name, text, labels, registry=None)
        if kind == "histogram":
            buckets = BATCH_BUCKETS if key == "batch_frames" else LATENCY_BUCKETS
            return Histogram(name, text, labels, buckets=buckets, registry=None)
        return Gauge(name, text, labels, registry=None, multiprocess_mode="livesum")

    def add(self, key: str, value: float = 1.0, **labels: str) -> None:
        metric = self.metrics.get(key)
        if metric is None:
            metric = self.metrics[key] = self._make(key)
        child = metric.labels(**labels) if labels else metric
        kind = METRICS[key][0]
        if kind == "counter":
            child.inc(value)
        elif kind == "histogram":
            child.observe(value)
        else:
            child.set(value)


def meter() -> Meter:
    """This process's meter: a real one when the run exposes metrics."""
    return PrometheusMeter() if enabled() else Meter()


ARCHIVED = ("counter", "histogram")
"""The kinds whose figures outlive their process: a dead worker's are kept in the folder's
``KIND_archive.db`` (:func:`mark_dead`)."""

_moving = threading.Lock()
"""Held while a dead worker's figures move into the archive, and while the folder is read: a
scrape sees them in one place or the other, never twice or not at all."""


def mark_dead(process: Any) -> None:
    """A worker ``process`` exited: its live gauges no longer count, and its counters and histograms
    join the archive, so that a service that starts decoders for months reads a folder of its
    live processes' files and one archive per kind, not a file per process it ever had. (One
    still running, or a failure to move its figures, leaves its files where they are.)"""
    if not enabled() or process.pid is None or process.exitcode is None:
        return
    from prometheus_client import multiprocess
    from prometheus_client.mmap_dict import MmapedDict

    pid = process.pid
    multiprocess.mark_process_dead(pid)
    folder = os.environ[ENV]
    with _moving:
        for kind in ARCHIVED:
            dead = os.path.join(folder, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            try:
                archive = MmapedDict(os.path.join(folder, f"{kind}_archive.db"))
                try:
                    moved = list(MmapedDict.read_all_values_from_file(dead))
                    for key, *_ in moved:  # room for every key first: a failure here adds nothing
                        archive.read_value(key)
                    for key, value, timestamp, _ in moved:
                        archive.write_value(key, archive.read_value(key)[0] + value, timestamp)
                finally:
                    archive.close()
                os.remove(dead)
            except (OSError, ValueError) as exc:  # (a full disk): its file stays, and is read as before
                log.warning("cannot move the metrics of process %d into the archive: %s", pid, exc)


class _Folder:
    """A collector of every process's files in the :data:`ENV` folder, read under :data:`_moving`."""

    def __init__(self) -> None:
        from prometheus_client.multiprocess import MultiProcessCollector

        self.files = MultiProcessCollector(None)

    def collect(self) -> list[Any]:
        with _moving:
            return list(self.files.collect())


def _registry() -> Any:
    """A registry that reads every process's files in the :data:`ENV` folder."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(_Folder())
    return registry


def exposition() -> tuple[bytes, str]:
    """Every process's metrics in Prometheus's text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return generate_latest(_registry()), CONTENT_TYPE_LATEST


def exporter(port: int, host: str = "127.0.0.1") -> Callable[[], None]:
    """Serve :func:`exposition` at ``http://HOST:PORT/metrics`` from a thread (a run's
    ``runtime.metrics_port``, a remote worker's ``--metrics``); returns what stops it. An address
    that cannot be bound is a ConfigError."""
    from prometheus_client import start_http_server

    from ..errors import ConfigError

    try:
        server, _ = start_http_server(port, addr=host, registry=_registry())
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics at {host}:{port}: {exc.strerror or exc}") from None

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
