"""Stages on other hosts: a worker there asks the supervisor for a stage to run, and runs it.

::

    other host:  streamseg worker tcp://SUPERVISOR:5550 [--stage infer] [--curve-key K --curve-server-key S]
                 [--metrics HOST:PORT]

The supervisor (``transport.remote`` names the stages that run elsewhere) binds a ROUTER at
``transport.join_port``; a worker's DEALER sends ``JOIN`` with the stages it will take, and gets
``SPEC`` (the :class:`~streamseg.runtime.spec.WorkerSpec` as JSON: plain data, never pickle) for a stage
nobody runs, or ``WAIT``. While it runs the stage the supervisor sends ``PING`` every second; a
worker that hears none for ``heartbeat_timeout_s`` takes the supervisor for gone and stops, and
one told ``STOP`` (the run ended, or it was taken for dead and replaced) stops too. The worker's
heartbeats and events go to the supervisor's events socket over tcp, so a host that vanishes is
noticed within ``runtime.heartbeat_timeout_s``; the stage then waits for another worker to join,
and its upstream sends the newcomer whatever the vanished one had not finished.

Messages (ZeroMQ multipart, first part the kind, second a UTF-8 JSON body):
``JOIN {"v": 2, "stages": [...], "host": name}``, ``SPEC {spec}``, ``WAIT {"why": text}``,
``PING {}``, ``STOP {"why": text}``.

Metrics: a stage on another host writes none into the supervisor's folder; with ``--metrics`` the
worker serves its own at ``http://HOST:PORT/metrics`` (the same names and labels), for Prometheus
to scrape beside the service's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import zmq

from .errors import ConfigError, StreamsegError
from .runtime import metrics
from .runtime.process import run_spec
from .runtime.spec import spec_from_json
from .security import TransportCurve

log = logging.getLogger(__name__)

JOIN, SPEC, WAIT, PING, STOP = b"JOIN", b"SPEC", b"WAIT", b"PING", b"STOP"
PROTOCOL = 2
"""2: a SPEC names its stage by its name in the table of stages and carries its config section."""
PING_EVERY_S = 1.0
@dataclass(frozen=True)
class RemoteStages:
    """Stages that run on other hosts (``streamseg worker``), and where those workers join."""

    stages: frozenset[str]
    join: str
    """The supervisor's join endpoint (bound here)."""
    events_bind: str
    """Where the supervisor's events socket also binds, for workers on other hosts."""
    events: str
    """The same, as workers on other hosts reach it."""
    curve: dict[str, Any] | None = None
    """The transport's CURVE settings on this host (:class:`~streamseg.security.TransportCurve`)."""
    join_advertised: str = ""
    """The join endpoint as workers on other hosts reach it (``transport.advertise_host``, else this
    host's name where it binds to every interface), for the hint that says how to start one."""



class JoinServer:
    """The supervisor's side: the ``join`` ROUTER that hands out stages to workers on other hosts."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: TransportCurve | None, auth: list[Any]) -> None:
        self.sock = ctx.socket(zmq.ROUTER)  # join: workers on other hosts ask here for a stage
        self.sock.setsockopt(zmq.LINGER, 500)
        self.sock.setsockopt(zmq.MAXMSGSIZE, 1 << 16)
        if curve is not None:
            curve.server(ctx, self.sock, auth)
        try:
            self.sock.bind(endpoint)
        except zmq.ZMQError as exc:
            raise ConfigError(f"cannot listen for workers at {endpoint}: {exc.strerror}") from None
        self.last_ping = 0.0

    def requests(self) -> list[tuple[bytes, dict[str, Any]]]:
        """Join requests waiting: (the worker's address on this socket, its request)."""
        out = []
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return out
            if len(frames) == 3 and frames[1] == JOIN:
                try:
                    request = json.loads(frames[2])
                except ValueError:
                    continue
                if isinstance(request, dict) and request.get("v") == PROTOCOL:
                    out.append((frames[0], request))
                    continue
                if isinstance(request, dict) and "v" in request:  # a worker of another streamseg version
                    self.send(frames[0], STOP, {"why": f"join protocol {request['v']!r}, this run speaks "
                                                      f"{PROTOCOL}: run the same streamseg version on both hosts"})
                    continue
            log.warning("ignored a malformed message on the join socket")

    def send(self, who: bytes, kind: bytes, body: bytes | dict[str, Any]) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        try:
            self.sock.send_multipart([who, kind, data], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # gone: its heartbeats stop, and the supervisor notices

    def ping(self, holders: list[bytes]) -> None:
        """Tell the workers that run stages that the supervisor is still there (once a second)."""
        if time.monotonic() - self.last_ping >= PING_EVERY_S:
            self.last_ping = time.monotonic()
            for who in holders:
                self.send(who, PING, {})

    def close(self) -> None:
        self.sock.close()


def serve(join: str, stages: tuple[str, ...] = (), curve: TransportCurve | None = None,
          wait_s: float = 60.0, metrics_at: tuple[str, int] | None = None) -> int:
    """Run one stage for the supervisor at ``join``; returns the worker's exit code.

    Asks for a stage every second until one is given or ``wait_s`` passes. ``metrics_at``: (host,
    port) to serve this worker's metrics at."""
    with _metrics(metrics_at):
        return _serve(join, stages, curve, wait_s)


@contextlib.contextmanager
def _metrics(at: tuple[str, int] | None):
    """This process's metrics written into a folder of its own and served at ``at`` while it runs."""
    if at is None:
        yield
        return
    folder = os.environ[metrics.ENV] = tempfile.mkdtemp(prefix="streamseg-metrics-")
    try:
        stop = metrics.exporter(at[1], at[0])
        try:
            yield
        finally:
            stop()
    finally:
        os.environ.pop(metrics.ENV, None)
        shutil.rmtree(folder, ignore_errors=True)


def _serve(join: str, stages: tuple[str, ...], curve: TransportCurve | None, wait_s: float) -> int:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)  # join: to the supervisor's join ROUTER
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.client(sock)
    sock.connect(join)
    stopped: list[str] = []

    def on_signal(signum: int, frame: object) -> None:
        stopped.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        request = {"v": PROTOCOL, "stages": list(stages), "host": socket.gethostname(), "pid": os.getpid()}
        deadline = time.monotonic() + wait_s
        spec = None
        while spec is None:
            if stopped:
                return 130
            if time.monotonic() > deadline:
                raise ConfigError(f"no stage from the supervisor at {join} within {wait_s:g} s (is a run with "
                                  "transport.remote waiting there, and is this worker's key allowed?)")
            try:  # no waiting here: until a handshake succeeds there is no one to send to
                sock.send_multipart([JOIN, json.dumps(request).encode()], flags=zmq.NOBLOCK)
            except zmq.Again:
                pass
            if sock.poll(1000):
                kind, body = sock.recv_multipart()[:2]
                if kind == SPEC:
                    spec = spec_from_json(body)
                elif kind == WAIT:
                    log.info("the supervisor says: %s", json.loads(body).get("why", ""))
                    time.sleep(1.0)
                elif kind == STOP:  # before a stage was given: this worker cannot serve that run
                    why = json.loads(body).get("why", "")
                    raise ConfigError(f"the supervisor at {join} refused this worker: {why}")
        if curve is not None:
            spec = dataclasses.replace(spec, curve=dataclasses.asdict(curve))
        log.warning("running stage %s for the supervisor at %s", spec.name, join)
        last_ping = time.monotonic()
        timeout_s = max(3.0, spec.heartbeat_s * 10)

        def alive() -> str | None:
            nonlocal last_ping
            if stopped:
                return f"{stopped[0]} received"
            while sock.poll(0):
                kind, body = sock.recv_multipart()[:2]
                if kind == STOP:
                    return f"the supervisor said stop: {json.loads(body).get('why', '')}"
                last_ping = time.monotonic()
            if time.monotonic() - last_ping > timeout_s:
                return f"the supervisor at {join} is gone (no word for {timeout_s:g} s)"
            return None

        return run_spec(spec, alive)
    except StreamsegError:
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        ctx.term()
