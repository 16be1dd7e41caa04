"""The worker runtime: runs one stage in its own process and owns its sockets and signals.

Sockets of a worker (upstream binds, downstream connects):

- ``events`` PUSH, connects to the supervisor's PULL: JSON events (ready, progress, stats, error, done);
- one ``data-in`` PULL, connecting to each upstream worker's output endpoint;
- one ``data-out`` PUSH per output port, bound at the endpoint the supervisor chose;
- one ``publish`` PUB per publish port, bound for outside subscribers. It never blocks: ZeroMQ
  drops what a subscriber too slow to keep its queue under the high-water mark would have got.

Every data socket has an explicit high-water mark (``transport.hwm_frames``): a full downstream
queue blocks the sender, which is the file-mode backpressure. Sends and receives wait in short
polls so that SIGTERM and the death of the supervisor are noticed within a fraction of a second.

Signals: each worker runs in its own process group, so signals sent to the job's group (Ctrl-C,
``timeout``) reach only the supervisor; SIGINT is ignored besides. A source opens its input at
once (so a bad one fails fast) but produces nothing until SIGUSR2, which the supervisor sends
when every worker is ready: no frame is sent before the stage that reads it is there. SIGUSR1
(the supervisor's graceful stop) asks a source to end its streams cleanly, so that everything
downstream drains.
SIGTERM stops any worker at once; its stage's ``close()`` still leaves its output usable.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import zmq

from . import codec
from .errors import MessageError, OutputError, StreamsegError
from .messages import Batch, EndOfStream, StreamStart
from .stage import ALL_PORTS, Emit, Source, Stage

log = logging.getLogger(__name__)

POLL_MS = 100
START_SIGNAL = signal.SIGUSR2
"""Tells a source that the whole pipeline is ready: it may start producing."""
DRAIN_SIGNAL = signal.SIGUSR1
"""Asks a source to end its streams cleanly, so that everything downstream drains."""
JOB_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})
"""Signals meant for the whole job: the supervisor handles them and stops the workers in order;
it starts each worker with them blocked until the worker has left the job's process group."""
PROGRESS_EVERY_S = 0.1
REJECTS_LOGGED = 5


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to run its stage. Plain data: it crosses the spawn boundary."""

    name: str
    """Stage name used in logs, errors and the summary (``decode``, ``infer``...)."""
    stage: str
    """``module:Class`` of the stage."""
    params: dict[str, Any]
    """Keyword arguments of the stage's constructor (JSON-like values only)."""
    events: str
    """Supervisor's event endpoint."""
    inputs: tuple[str, ...] = ()
    """Upstream endpoints to connect the data-in PULL to; empty for a source."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Output port name -> endpoint to bind a data-out PUSH at."""
    publish: dict[str, str] = field(default_factory=dict)
    """Publish port name -> endpoint to bind a PUB at (for subscribers outside the pipeline)."""
    publish_hwm: int = 1000
    """High-water mark of each publish socket, in messages per subscriber."""
    publish_curve: dict[str, str] | None = None
    """CURVE server settings of the publish sockets (:class:`~streamseg.security.CurveServer` fields)."""
    streams: int = 1
    """End-of-stream messages to see before the worker is done."""
    hwm_frames: int = 8
    """High-water mark of every data socket, in messages."""
    max_msg_bytes: int = 512 * 1024 * 1024
    """ZMQ_MAXMSGSIZE of the data-in socket."""
    progress: bool = False
    """Whether this worker reports frame progress (the last sink does)."""
    log_level: str = "WARNING"
    """Log level inside the worker."""


class _Stopped(Exception):
    """Raised inside the runtime when SIGTERM or the supervisor's death ends the worker early."""


class _Runtime:
    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.parent = os.getppid()
        self.terminate = False
        self.go = False
        self.ctx = zmq.Context()
        self.events = self.ctx.socket(zmq.PUSH)
        self.events.setsockopt(zmq.LINGER, 2000)
        self.events.setsockopt(zmq.SNDHWM, 10000)
        self.events.connect(spec.events)
        self.data_in: zmq.Socket | None = None
        self.authenticators: list[Any] = []
        self.data_out: dict[str, zmq.Socket] = {}
        self.pub_out: dict[str, zmq.Socket] = {}
        self.stage: Stage | None = None
        self.busy_s = 0.0
        self.blocked_s = 0.0
        self.received = 0
        self.sent = 0
        self.rejected = 0
        self.open_streams: set[str] = set()
        self.pollers: dict[str | None, zmq.Poller] = {}
        self.closed = False
        self.aborted = False
        self._last_progress = 0.0

    # --- events to the supervisor -------------------------------------------------------------
    def event(self, event: str, **data: Any) -> None:
        data.update(event=event, stage=self.spec.name, pid=os.getpid())
        try:
            self.events.send(json.dumps(data, default=str).encode(), zmq.NOBLOCK)
        except zmq.ZMQError:
            log.warning("%s: could not report %s to the supervisor", self.spec.name, event)

    def stats(self) -> dict[str, Any]:
        counters = dict(self.stage.counters) if self.stage else {}
        return {"busy_s": round(self.busy_s, 4), "blocked_s": round(self.blocked_s, 4),
                "received": self.received, "sent": self.sent, "rejected": self.rejected,
                "counters": counters, **(self.stage.report() if self.stage else {})}

    # --- sockets ------------------------------------------------------------------------------
    def open_sockets(self) -> None:
        for port, endpoint in self.spec.outputs.items():
            sock = self.ctx.socket(zmq.PUSH)  # data-out: to the downstream stage on this port
            sock.setsockopt(zmq.SNDHWM, self.spec.hwm_frames)
            # at the end, wait until every queued message has reached the peer, however slow it is
            # (a timed linger would drop the tail, end of stream included, behind a busy model); the
            # supervisor kills a worker whose peer died, and an aborted worker closes with linger 0
            sock.setsockopt(zmq.LINGER, -1)
            sock.bind(endpoint)
            self.data_out[port] = sock
        for port, endpoint in self.spec.publish.items():
            sock = self.ctx.socket(zmq.PUB)  # publish: detections for subscribers outside the pipeline
            sock.setsockopt(zmq.SNDHWM, self.spec.publish_hwm)
            sock.setsockopt(zmq.LINGER, 1000)
            self.pub_out[port] = sock
            if self.spec.publish_curve:
                from .security import CurveServer

                self.authenticators.append(CurveServer(**self.spec.publish_curve).apply(self.ctx, sock))
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise OutputError(f"cannot publish at {endpoint}: {exc.strerror}") from None
        if self.spec.inputs:
            sock = self.ctx.socket(zmq.PULL)  # data-in: from every upstream worker
            sock.setsockopt(zmq.RCVHWM, self.spec.hwm_frames)
            sock.setsockopt(zmq.MAXMSGSIZE, self.spec.max_msg_bytes)
            sock.setsockopt(zmq.LINGER, 0)
            for endpoint in self.spec.inputs:
                sock.connect(endpoint)
            self.data_in = sock

    def check_alive(self) -> None:
        if self.terminate:
            raise _Stopped("terminated")
        if os.getppid() != self.parent:
            raise _Stopped("the supervisor is gone")

    def send(self, emits: Iterable[Emit], lossy: bool = False) -> bool:
        """Send each emit; with ``lossy``, only if there is room now. False: something was not sent."""
        sent_all = True
        for port, message in emits:
            if port in self.pub_out:
                try:
                    self.pub_out[port].send_multipart(message.parts, flags=zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    pass  # PUB drops for slow subscribers rather than stall the pipeline
                continue
            ports = self.data_out if port == ALL_PORTS else {port: self.data_out[port]}
            parts = codec.encode(message)
            for sock in ports.values():
                sent_all = self._send_parts(sock, parts, lossy) and sent_all
        return sent_all

    def _send_parts(self, sock: zmq.Socket, parts: list[Any], lossy: bool = False) -> bool:
        if lossy:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return False
            self.sent += 1
            return True
        start = time.perf_counter()
        while True:
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                break
            except zmq.Again:
                self.check_alive()
                sock.poll(POLL_MS, zmq.POLLOUT)
        self.sent += 1
        self.blocked_s += time.perf_counter() - start
        return True

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.spec.progress and (force or now - self._last_progress >= PROGRESS_EVERY_S):
            self._last_progress = now
            self.event("progress", frames=self.stage.counters.get("frames", 0) if self.stage else 0)

    def timed(self, call: Callable[[], Iterable[Emit] | None]) -> list[Emit]:
        """Run one stage call and account its time as busy."""
        start = time.perf_counter()
        out = list(call() or ())
        self.busy_s += time.perf_counter() - start
        return out

    # --- the loops ----------------------------------------------------------------------------
    def run_source(self, stage: Source) -> None:
        while not self.go and not stage.stop_requested:  # the supervisor's start signal
            self.check_alive()
            time.sleep(0.02)
        iterator = iter(stage.produce())
        while True:
            self.check_alive()
            start = time.perf_counter()
            try:
                emit = next(iterator)
            except StopIteration:
                break
            finally:
                self.busy_s += time.perf_counter() - start
            if emit is None:
                continue
            if stage.lossy(emit[1]):
                if not self.send([emit], lossy=True):
                    stage.dropped(emit[1])
            else:
                self.send([emit])
            self.progress()

    def run_stage(self, stage: Stage) -> None:
        assert self.data_in is not None
        ended = 0
        while ended < self.spec.streams:
            self.check_alive()
            timeout = stage.timeout_s()
            wait_ms = POLL_MS if timeout is None else max(0, min(POLL_MS, int(timeout * 1000)))
            waiting = stage.waiting_port()
            ready = dict(self._poller(waiting).poll(wait_ms))
            if waiting is not None and ready.get(self.data_out[waiting], 0) & zmq.POLLOUT:
                self.send(self.timed(stage.on_room))
            if not ready.get(self.data_in, 0) & zmq.POLLIN:
                if timeout is not None and timeout <= wait_ms / 1000:
                    self.send(self.timed(stage.on_timeout))
                continue
            parts = self.data_in.recv_multipart(copy=False)
            self.received += 1
            try:
                message = codec.decode(parts)
                if isinstance(message, EndOfStream):
                    if message.stream_id not in self.open_streams:
                        raise MessageError(f"end of stream {message.stream_id!r}, which is not open")
                    self.open_streams.discard(message.stream_id)
                    self.send(self.timed(lambda: stage.flush(message)))
                    self.send([(ALL_PORTS, message)] if self.data_out else [])
                    ended += 1
                else:
                    if isinstance(message, StreamStart):
                        self.open_streams.add(message.stream_id)
                    else:
                        self._check_open(message)
                    self.send(self.timed(lambda: stage.process(message)))
            except MessageError as exc:
                self.reject(exc)
                continue
            self.progress()

    def _poller(self, waiting: str | None) -> zmq.Poller:
        """A poller for input, and for room on the ``waiting`` port too (made once per port)."""
        poller = self.pollers.get(waiting)
        if poller is None:
            poller = self.pollers[waiting] = zmq.Poller()
            poller.register(self.data_in, zmq.POLLIN)
            if waiting is not None:
                poller.register(self.data_out[waiting], zmq.POLLOUT)
        return poller

    def _check_open(self, message: Any) -> None:
        """Frames and results belong to a stream that has started and not ended."""
        if not isinstance(message, Batch) and not hasattr(message, "stream_id"):
            raise MessageError(f"a bare {type(message).__name__} is not a message of the data path")
        ids = {f.stream_id for f in message.frames} if isinstance(message, Batch) else {message.stream_id}
        unknown = ids - self.open_streams
        if unknown:
            raise MessageError(f"{type(message).__name__} of stream {sorted(unknown)[0]!r}, which is not open")

    def reject(self, exc: MessageError) -> None:
        """Count a message that is malformed or does not fit (a stage raised MessageError); log a few."""
        self.rejected += 1
        if self.rejected <= REJECTS_LOGGED or self.rejected % 1000 == 0:
            more = " (further ones are counted, and logged once per 1000)" if self.rejected == REJECTS_LOGGED else ""
            log.warning("%s: rejected a malformed message (%d so far): %s%s", self.spec.name, self.rejected, exc, more)

    def run(self) -> int:
        spec = self.spec
        try:
            module, _, cls_name = spec.stage.partition(":")
            cls = getattr(importlib.import_module(module), cls_name)
            self.stage = stage = cls(**spec.params)
            stage.bind_events(self.event)
            self.open_sockets()
            start = time.perf_counter()
            stage.setup()
            self.event("ready", setup_s=round(time.perf_counter() - start, 3))
            if isinstance(stage, Source):
                self.run_source(stage)
            else:
                self.run_stage(stage)
            self.progress(force=True)
            self.closed = True
            stage.close()
            self.event("done", **self.stats())
            return 0
        except _Stopped as exc:
            log.info("%s: stopping: %s", spec.name, exc)
            self.close_stage()
            return 3
        except StreamsegError as exc:
            self.event("error", error_type=type(exc).__name__, message=str(exc))
            self.close_stage()
            return 1
        except Exception as exc:  # noqa: BLE001 - any stage bug becomes a reported stage error
            log.info("%s: unexpected error", spec.name, exc_info=True)  # the traceback with -v
            self.event("error", error_type=type(exc).__name__,
                       message=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            self.close_stage()
            return 1
        finally:
            for sock in self.data_out.values():
                sock.close(linger=None if self.closed and not self.aborted else 0)
            for sock in self.pub_out.values():
                sock.close()
            if self.data_in is not None:
                self.data_in.close()
            for auth in self.authenticators:
                auth.stop()
            self.events.close()
            self.ctx.term()

    def close_stage(self) -> None:
        self.aborted = True
        if self.stage is None or self.closed:
            return
        self.closed = True
        try:
            self.stage.close()
        except Exception:  # noqa: BLE001 - close during abort must not mask the first error
            log.exception("%s: error while closing", self.spec.name)
        self.event("stats", **self.stats())


def _set_process_name(name: str) -> None:
    """Show the stage in ps/top (Linux ``comm``, at most 15 characters); harmless elsewhere."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process (started with the ``spawn`` method)."""
    # signals meant for the whole job (Ctrl-C on a terminal, `timeout`, `kill -- -PGID`) reach the
    # supervisor only, which stops the workers in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgrp()
    _set_process_name(f"sseg-{spec.name}")
    logging.basicConfig(level=spec.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {spec.name}[%(process)d] %(levelname)s %(message)s")
    runtime = _Runtime(spec)

    def on_term(signum: int, frame: object) -> None:
        runtime.terminate = True

    def on_drain(signum: int, frame: object) -> None:
        if isinstance(runtime.stage, Source):
            runtime.stage.request_stop()  # a source ends its streams; everything downstream drains

    def on_start(signum: int, frame: object) -> None:
        runtime.go = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(DRAIN_SIGNAL, on_drain)
    signal.signal(START_SIGNAL, on_start)
    # the supervisor started us with SIGINT and SIGTERM blocked, so that none could arrive before
    # the lines above; a pending SIGINT is now dropped (ignored), a pending SIGTERM handled
    signal.pthread_sigmask(signal.SIG_UNBLOCK, JOB_SIGNALS)
    code = runtime.run()
    sys.exit(code)
