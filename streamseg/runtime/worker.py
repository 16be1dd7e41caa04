"""The worker runtime: runs one stage in its own process and owns its sockets, signals and heartbeat.

Sockets of a worker (upstream binds, downstream connects):

- ``events`` PUSH, connects to the supervisor's PULL: JSON events (ready, progress, stats, error, done);
- ``heartbeat`` PUSH from a thread of its own, to the same PULL: a beat every ``heartbeat_s``, with
  how long the current stage call has run, so a stopped or hung worker is noticed;
- one ``data-in`` DEALER per upstream port (:class:`~streamseg.runtime.link.Inbox`), named after the worker;
- one ``data-out`` ROUTER per output port (:class:`~streamseg.runtime.link.Outbox`), bound at the endpoint
  the supervisor chose;
- one ``publish`` PUB per publish port, bound for outside subscribers. It never blocks: ZeroMQ
  drops what a subscriber too slow to keep its queue under the high-water mark would have got.

Delivery on the data path is at-least-once (:mod:`streamseg.runtime.link`): an input is acknowledged as
done only when what came of it is done downstream (or written, in a sink), so the supervisor can
replace a dead worker and its upstream sends the unfinished messages again. Repeats that this
causes are dropped here, by stream position, before the stage sees them; a stage that is
restarted is told so (``Stage.restarted``) and resumes its outputs instead of starting them anew.

Backpressure is by credit: a worker takes a new input only when all it produced has been sent,
and a port sends only as many messages as its receivers have room for (``transport.hwm_frames``).

The process around it (entry point, signals, process name) is :mod:`streamseg.runtime.process`.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from typing import Any, Callable, Iterable

import zmq

from ..errors import MessageError, OutputError, StreamsegError
from ..stages import STAGES
from . import codec, heap
from .admission import Admission
from .control import Listener
from .ledger import Ledger
from .link import END, Inbox, Key, Outbox, endpoint_role, message_keys
from .messages import Batch, EndOfStream, Frame, FrameResult, StreamStart
from .metrics import METRICS, meter
from .reorder import Reorder
from .shm import Mappings, SharedPool
from .spec import WorkerSpec
from .stage import ALL_PORTS, Emit, Source, Stage

log = logging.getLogger(__name__)

POLL_MS = 100
PROGRESS_EVERY_S = 0.1
REJECTS_LOGGED = 5
RESUME_WAIT_S = 10.0
"""How long a restarted source waits to hear from its receivers where to resume."""
LOSSY_WAIT_S = 0.2
"""How long a frame that may be dropped (a live source's) waits for room at the next stage first: a
burst from the network can fill its credit before that stage is scheduled to take the frames; a
stage that is really behind stays full for longer, and then the frame is dropped."""


class _Stopped(Exception):
    """Raised inside the runtime when SIGTERM or the supervisor's death ends the worker early."""


class _Heartbeat(threading.Thread):
    """Beats to the supervisor from its own thread and socket; a stopped or wedged process stops beating."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.runtime = runtime
        self.stop = threading.Event()

    def run(self) -> None:
        spec = self.runtime.spec
        sock = self.runtime.ctx.socket(zmq.PUSH)  # heartbeat: to the supervisor's event PULL
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 10)
        self.runtime.secure(sock, spec.events, False)
        sock.connect(spec.events)
        try:
            while not self.stop.wait(spec.heartbeat_s):
                runtime = self.runtime
                since = runtime.busy_since
                beat = {"event": "heartbeat", "stage": spec.name, "pid": os.getpid(), "instance": spec.instance,
                        "busy_s": round(time.monotonic() - since, 3) if since else 0.0,
                        "stats": runtime.work_stats()}
                try:
                    sock.send(json.dumps(beat).encode(), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        finally:
            sock.close()


class Runtime:
    """Runs the stage a :class:`WorkerSpec` names in this process: opens its sockets, drives it through
    its lifecycle (the source loop or the stage loop), and reports to the supervisor.
    ``alive()`` says why the worker must stop early (None: go on); by default, the supervisor gone."""

    def __init__(self, spec: WorkerSpec, alive: Callable[[], str | None] | None = None) -> None:
        self.spec = spec
        parent = os.getppid()
        self.alive = alive or (lambda: None if os.getppid() == parent else "the supervisor is gone")
        """None while the worker should go on; otherwise why it must stop."""
        self.terminate = False
        self.go = False
        self.ctx = zmq.Context()
        self.authenticators: list[Any] = []
        self.events = self.ctx.socket(zmq.PUSH)  # events: to the supervisor's PULL
        self.events.setsockopt(zmq.LINGER, 2000)
        self.events.setsockopt(zmq.SNDHWM, 10000)
        self.secure(self.events, spec.events, False)
        self.events.connect(spec.events)
        self.inboxes: list[Inbox] = []
        self.outboxes: dict[str, Outbox] = {}
        self.pool = SharedPool(spec.shm_prefix) if spec.shm_prefix else None
        """Where this worker's large outputs lie for ipc receivers (None: sent as bytes)."""
        self.mappings = Mappings()
        self.pub_out: dict[str, zmq.Socket] = {}
        self.stage: Stage | None = None
        self.ledger = Ledger(self._held)
        self.reorder: Reorder[tuple[Inbox, int]] | None = Reorder() if spec.ordered else None
        self.admission = Admission(None if spec.control else spec.streams, spec.parallel, spec.ordered)
        self.listener: Listener | None = None
        """A service's worker: where the supervisor says which inputs to read and when to end."""
        self.opened: dict[Inbox, set[str]] = {}
        """The streams each input has opened and not yet ended."""
        self.lost: set[str] = set()
        """Streams this worker ended because their input went away, until their end is done downstream."""
        self.meter = meter()
        self._queues_measured = 0.0
        self.watching: dict[str, set[bytes]] = {}
        """Publish port -> the topics someone subscribes to there now."""
        self.busy_s = 0.0
        self.blocked_s = 0.0
        self.patient = True
        """Whether a lossy message may wait for room (:meth:`_room_soon`); not after one waited in vain."""
        self.busy_since = 0.0
        """When the current stage call began (monotonic); 0 between calls."""
        self.received = 0
        self.sent = 0
        self.rejected = 0
        self.closed = False
        self.aborted = False
        self._last_progress = 0.0
        self._next_inbox = 0
        self._pollers: dict[bool, zmq.Poller] = {}

    # --- metrics ------------------------------------------------------------------------------------
    def measure(self, key: str, value: float = 1.0, **labels: str) -> None:
        """Add to a metric; its ``stage`` label is this stage's kind (parallel workers' add up)."""
        if not self.meter.active:
            return
        if "stage" in METRICS[key][1]:
            labels["stage"] = self.spec.stage
        self.meter.add(key, value, **labels)

    def watched(self, port: str, topic: bytes) -> bool:
        """Whether a subscriber of publish port ``port`` gets ``topic`` (a subscription to a prefix of it)."""
        return any(topic.startswith(t) for t in self.watching.get(port, ()))

    def measure_frames(self, message: Any) -> None:
        if not self.meter.active:
            return  # a message's hot path: nothing to look at without metrics
        if isinstance(message, (Frame, FrameResult)):
            self.measure("frames", stream=message.stream_id)
        elif isinstance(message, Batch):
            for frame in message.frames:
                self.measure("frames", stream=frame.stream_id)

    def measure_queues(self) -> None:
        """What waits on each output port, at most twice a second."""
        now = time.monotonic()
        if not self.meter.active or now - self._queues_measured < 0.5:
            return
        self._queues_measured = now
        for port, outbox in self.outboxes.items():
            waiting = outbox.backlog + sum(len(p.inflight) for p in outbox.peers.values())
            self.meter.add("queue_messages", waiting, worker=self.spec.name, port=port)

    # --- events to the supervisor -------------------------------------------------------------
    def event(self, event: str, **data: Any) -> None:
        data.update(event=event, stage=self.spec.name, pid=os.getpid(), instance=self.spec.instance)
        try:
            self.events.send(json.dumps(data, default=str).encode(), zmq.NOBLOCK)
        except zmq.ZMQError:
            log.warning("%s: could not report %s to the supervisor", self.spec.name, event)

    def work_stats(self) -> dict[str, Any]:
        """Counters and times, cheap enough for every heartbeat (no percentiles)."""
        counters = dict(self.stage.counters) if self.stage else {}
        resent = sum(o.resent for o in self.outboxes.values())
        if resent:
            counters["resent"] = resent
        return {"busy_s": round(self.busy_s, 4), "blocked_s": round(self.blocked_s, 4),
                "cpu_s": round(time.process_time(), 3),
                "received": self.received, "sent": self.sent,
                "rejected": self.rejected, "counters": counters,
                "totals": list(self.stage.totals) if self.stage else []}

    def stats(self) -> dict[str, Any]:
        return {**self.work_stats(), **(self.stage.report() if self.stage else {})}

    # --- sockets ------------------------------------------------------------------------------
    def secure(self, sock: zmq.Socket, address: str, binds: bool) -> None:
        """CURVE on a tcp socket when the transport has keys (ipc:// stays on this machine)."""
        if self.spec.curve and address.lstrip("@>").startswith("tcp://"):
            from ..security import TransportCurve

            TransportCurve(**self.spec.curve).apply(self.ctx, sock, binds, self.authenticators)

    def open_sockets(self) -> None:
        spec = self.spec
        for port, endpoint in spec.outputs.items():
            local = endpoint_role(endpoint, True)[0].startswith("ipc://")
            self.outboxes[port] = Outbox(self.ctx, endpoint, port, self.ledger.sent, self._finished,
                                         self.reject, self.secure, self.pool if local else None,
                                         functools.partial(self._acknowledged, port))
        for port, endpoint in spec.publish.items():
            # publish: detections (or the live view) for subscribers outside the pipeline; an XPUB
            # sends as a PUB does, and says which topics someone is subscribed to
            sock = self.ctx.socket(zmq.XPUB)
            self.watching[port] = set()
            sock.setsockopt(zmq.SNDHWM, spec.publish_hwm)
            sock.setsockopt(zmq.LINGER, 1000)
            self.pub_out[port] = sock
            if spec.publish_curve:
                from ..security import CurveServer

                self.authenticators.append(CurveServer(**spec.publish_curve).apply(self.ctx, sock))
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise OutputError(f"cannot publish at {endpoint}: {exc.strerror}") from None
        for endpoint in spec.inputs:
            self._add_input(endpoint)
        if spec.control:
            self.listener = Listener(self.ctx, spec.control, spec.name)

    def _add_input(self, endpoint: str) -> None:
        spec = self.spec
        self.inboxes.append(Inbox(self.ctx, endpoint, spec.name, spec.hwm_frames, spec.max_msg_bytes,
                                  self._hello_state, self.secure))
        self._pollers.clear()

    def obey(self) -> None:
        """A service's worker: read the supervisor's newest orders; connect to the inputs they name,
        let go of those they no longer name (a stream still open there ends: its decoder failed for
        good), and note whether more streams will come."""
        orders = self.listener.latest() if self.listener is not None else None
        if orders is None:
            return
        self.admission.closing = orders.closing
        for endpoint in orders.inputs:
            if endpoint not in {inbox.endpoint for inbox in self.inboxes}:
                self._add_input(endpoint)
        for inbox in [i for i in self.inboxes if i.endpoint not in orders.inputs]:
            self.inboxes.remove(inbox)
            self._pollers.clear()
            ended = sorted(self.opened.pop(inbox, ()))
            for stream in ended:
                self._end_lost(stream)
            inbox.close(linger=0)
            # the supervisor answers a removal once these streams' ends are done downstream
            self.event("let_go", input=inbox.endpoint, streams=[s for s in ended if s in self.lost])

    def _end_lost(self, stream: str) -> None:
        """End ``stream`` here and downstream: its input went away before its end came."""
        assert self.stage is not None
        state = self.admission.streams.get(stream)
        eos = EndOfStream(stream, state.last_index + 1 if state else 0, "lost", detail="its source failed")
        if self.admission.admit(eos) is None:
            return
        log.warning("%s: stream %s ended: its source failed", self.spec.name, stream)
        held = self._held()
        self._flush(self.stage, eos)
        self.ledger.release(held)
        self.lost.add(stream)

    def _finished(self, keys: tuple[Key, ...]) -> None:
        """Outputs at ``keys`` are done downstream; the end of a stream ended here is reported once
        every port has it done (each of its stages has finished that stream's outputs)."""
        self.ledger.finished(keys)
        for stream, position in keys:
            if position == END and stream in self.lost and (stream, END) not in self.ledger.outstanding:
                self.lost.discard(stream)
                self.event("ended_downstream", stream=stream)

    def _flush(self, stage: Stage, eos: EndOfStream) -> None:
        """End a stream in the stage and pass its end on; what the stage let go of goes back to the system."""
        self.send(self.timed(lambda: stage.flush(eos)))
        self.send([(ALL_PORTS, stage.passes_on(eos))] if self.outboxes else [])
        heap.trim()

    def _hello_state(self) -> dict[str, Any]:
        return self.admission.hello()

    def _held(self) -> frozenset:
        return self.stage.holds() if self.stage is not None else frozenset()

    def check_alive(self) -> None:
        if self.terminate:
            raise _Stopped("terminated")
        why = self.alive()
        if why:
            raise _Stopped(why)

    def service(self) -> None:
        """Hellos and acknowledgements in both directions; streams that upstream says are over; a
        service's orders."""
        self.obey()
        self.measure_queues()
        self.mappings.sweep()
        for port, sock in self.pub_out.items():
            while True:
                try:
                    event = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if event[:1] == b"\x01":
                    self.watching[port].add(event[1:])
                elif event[:1] == b"\x00":
                    self.watching[port].discard(event[1:])
        for outbox in self.outboxes.values():
            outbox.service()
        for inbox in self.inboxes:
            inbox.service()
            for stream in inbox.ended:
                self.admission.ended_upstream(inbox, stream)
            inbox.ended = []

    def _poller(self, with_input: bool) -> zmq.Poller:
        """Polls link control traffic, and the data-in sockets too ``with_input`` (made once each)."""
        poller = self._pollers.get(with_input)
        if poller is None:
            poller = self._pollers[with_input] = zmq.Poller()
            for outbox in self.outboxes.values():
                poller.register(outbox.sock, zmq.POLLIN)
            for inbox in self.inboxes:
                poller.register(inbox.monitor, zmq.POLLIN)
                if with_input:
                    poller.register(inbox.sock, zmq.POLLIN)
            if self.listener is not None:
                poller.register(self.listener.sock, zmq.POLLIN)
        return poller

    def wait(self, ms: int, with_input: bool = False) -> None:
        """Wait up to ``ms`` for link traffic (and input), then service the links."""
        self._poller(with_input).poll(ms)
        self.service()

    def backlog(self) -> bool:
        return any(o.backlog for o in self.outboxes.values())

    def drain_backlog(self) -> None:
        """Wait until every output waiting for credit has gone out (file-mode backpressure)."""
        if not self.backlog():
            return
        start = time.perf_counter()
        while self.backlog():
            self.check_alive()
            self.wait(POLL_MS)
        self.blocked_s += time.perf_counter() - start

    # --- sending ------------------------------------------------------------------------------
    def send(self, emits: Iterable[Emit]) -> None:
        """Queue each emit on its ports (sent as credit allows); publish ports send at once or drop."""
        for port, message in emits:
            if port in self.pub_out:
                try:
                    self.pub_out[port].send_multipart(message.parts, flags=zmq.NOBLOCK)
                    self.sent += 1
                except zmq.Again:
                    pass  # PUB drops for slow subscribers rather than stall the pipeline
                continue
            for name in self._ports(port, message):
                self.outboxes[name].put(message)
                self.sent += 1

    def progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.spec.progress and (force or now - self._last_progress >= PROGRESS_EVERY_S):
            self._last_progress = now
            self.event("progress", frames=self.stage.counters.get("frames", 0) if self.stage else 0)

    def timed(self, call: Callable[[], Iterable[Emit] | None]) -> list[Emit]:
        """Run one stage call, account its time as busy, and send what it returns."""
        start = time.perf_counter()
        self.busy_since = time.monotonic()
        try:
            out = list(call() or ())
        finally:
            self.busy_since = 0.0
            self.busy_s += time.perf_counter() - start
        return out

    def call(self, call: Callable[[], Iterable[Emit] | None]) -> None:
        """A stage call that is not tied to one input (deadline, room): send its output, release what it let go."""
        held = self._held()
        self.send(self.timed(call))
        self.ledger.release(held)

    # --- the loops ----------------------------------------------------------------------------
    def run_source(self, stage: Source) -> None:
        while not self.go and not stage.stop_requested:  # the supervisor's start signal
            self.check_alive()
            self.wait(20)
        if stage.restarted:
            stage.resume(self._resume_points())
        iterator = iter(stage.produce())
        while True:
            self.check_alive()
            self.service()
            start, waited = time.perf_counter(), stage.waited_s
            self.busy_since = time.monotonic()
            try:
                emit = next(iterator)
            except StopIteration:
                break
            finally:
                self.busy_since = 0.0
                self.busy_s += max(0.0, time.perf_counter() - start - (stage.waited_s - waited))
            if emit is None:
                continue
            port, message = emit
            if stage.lossy(message) and not self._room_soon(self._ports(port, message)):
                stage.dropped(message)
            else:
                self.send([emit])
                self.measure_frames(message)
                self.drain_backlog()
            self.progress()
        self.finish_outputs()

    def _room_soon(self, ports: Iterable[str]) -> bool:
        """Whether every port has room for one more message within :data:`LOSSY_WAIT_S` (a burst of
        frames from the network can fill the next stage's credit before it is scheduled to take them)."""
        ports = list(ports)
        start = time.monotonic()
        try:
            while not all(self.outboxes[p].room() for p in ports):
                if not self.patient or time.monotonic() >= start + LOSSY_WAIT_S:
                    self.patient = False  # the next stage is behind, not late: drop at once until it has room
                    return False
                self.wait(5)
            self.patient = True
            return True
        finally:
            self.blocked_s += time.monotonic() - start

    def _ports(self, port: str, message: Any) -> Iterable[str]:
        """The data ports an emit goes to: :data:`ALL_PORTS` means those carrying its stream."""
        if port != ALL_PORTS:
            return (port,)
        stream_id = getattr(message, "stream_id", None)
        only = self.stage.stream_ports(stream_id) if self.stage is not None and stream_id is not None else None
        return self.outboxes if only is None else only

    def _resume_points(self) -> dict[str, tuple[int, int]]:
        """Where the receivers of a restarted source are: ``stream -> (index, pts)`` of their newest frame."""
        deadline = time.monotonic() + RESUME_WAIT_S
        while not all(o.heard() for o in self.outboxes.values()) and time.monotonic() < deadline:
            self.check_alive()
            self.wait(20)
        points: dict[str, tuple[int, int]] = {}
        for outbox in self.outboxes.values():
            for stream, (index, pts) in outbox.resume_points().items():
                if stream not in points or index > points[stream][0]:
                    points[stream] = (index, pts)
        return points

    def _acknowledged(self, port: str, message: Any, done: bool) -> None:
        if self.stage is not None:
            self.stage.acknowledged(port, message, done)

    def run_stage(self, stage: Stage) -> None:
        while self.admission.open_streams(self.inboxes):
            self.check_alive()
            self.service()
            self.drain_backlog()
            timeout = stage.timeout_s()
            waiting = stage.waiting_port()
            if waiting is not None and self.outboxes[waiting].room():
                self.call(stage.on_room)
                continue
            item = self._take()
            if item is None:
                if timeout is not None and timeout <= 0:
                    self.call(stage.on_timeout)
                    continue
                wait_ms = POLL_MS if timeout is None else max(1, min(POLL_MS, int(timeout * 1000) + 1))
                self.wait(wait_ms, with_input=True)
                continue
            inbox, seq, parts = item
            self.handle(stage, inbox, seq, parts)
            self.progress()
        self.finish_outputs()

    def _take(self) -> tuple[Inbox, int, list[Any]] | None:
        """The next input, taking the inputs in turn."""
        count = len(self.inboxes)
        for i in range(count):
            inbox = self.inboxes[(self._next_inbox + i) % count]
            try:
                got = inbox.receive()
            except MessageError as exc:
                self.received += 1
                self.reject(exc)
                return None
            if got is not None:
                self._next_inbox = (self._next_inbox + i + 1) % count
                return inbox, got[0], got[1]
        return None

    def handle(self, stage: Stage, inbox: Inbox, seq: int, parts: list[Any]) -> None:
        """Decode, check and pass one input to the stage (in its stream's order, when the inputs
        come from parallel workers); acknowledge it when it is done."""
        self.received += 1
        # taken off the queue: the sender may queue the next one while this one is worked on
        inbox.taken(seq)
        inbox.flush()
        try:
            original = codec.decode(parts, self.mappings)
            ready = self.reorder.push(original, (inbox, seq)) if self.reorder else [(original, (inbox, seq))]
            self.admission.end_seen(inbox, original)
            if isinstance(original, StreamStart):
                self.opened.setdefault(inbox, set()).add(original.stream_id)
            elif isinstance(original, EndOfStream):
                self.opened.get(inbox, set()).discard(original.stream_id)
        except MessageError as exc:
            self.reject(exc)
            inbox.done(seq)  # nothing will ever come of it
            return
        for message, (source, number) in ready:
            self.give(stage, source, number, message)

    def give(self, stage: Stage, inbox: Inbox, seq: int, original: Any) -> None:
        """Pass one decoded input to the stage unless it is a repeat or does not fit its stream."""
        try:
            message = self.admission.admit(original)
        except MessageError as exc:
            self.reject(exc)
            inbox.done(seq)
            return
        keys = message_keys(original)
        if message is not None:
            held = self._held()
            if isinstance(message, EndOfStream):
                self._flush(stage, message)
            else:
                self.send(self.timed(lambda: stage.process(message)))
                self.measure_frames(message)
            self.ledger.release(held)
        # a repeat is done when the first copy is: it waits on the same stream positions
        self.ledger.settle(inbox, seq, keys)

    def finish_outputs(self) -> None:
        """Wait until the receivers are done with everything sent (a restarted one may need it again)."""
        start = time.perf_counter()
        while not all(o.idle for o in self.outboxes.values()):
            self.check_alive()
            self.wait(POLL_MS)
        self.blocked_s += time.perf_counter() - start

    def reject(self, exc: MessageError) -> None:
        """Count a message that is malformed or does not fit (a stage raised MessageError); log a few."""
        self.rejected += 1
        self.measure("messages_rejected")
        if self.rejected <= REJECTS_LOGGED or self.rejected % 1000 == 0:
            more = " (further ones are counted, and logged once per 1000)" if self.rejected == REJECTS_LOGGED else ""
            log.warning("%s: rejected a malformed message (%d so far): %s%s", self.spec.name, self.rejected, exc, more)

    def run(self) -> int:
        spec = self.spec
        heartbeat = _Heartbeat(self)
        heartbeat.start()
        try:
            self.stage = stage = STAGES[spec.stage].build(spec.config, spec.params)
            stage.restarted = spec.attempt > 0
            stage.previous = dict(spec.previous)
            stage.bind_events(self.event)
            stage.bind_meter(self.measure)
            stage.watched = self.watched
            self.open_sockets()
            if self.outboxes and all(o.pool is not None for o in self.outboxes.values()):
                stage.allocate = self.outboxes[next(iter(self.outboxes))].pool.empty  # outputs built in place
            start = time.perf_counter()
            stage.setup()
            self.event("ready", setup_s=round(time.perf_counter() - start, 3), attempt=spec.attempt)
            if isinstance(stage, Source):
                self.run_source(stage)
            else:
                self.run_stage(stage)
            self.progress(force=True)
            self.closed = True
            stage.close()
            for inbox in self.inboxes:
                inbox.flush()
            self.event("done", **self.stats())
            return 0
        except _Stopped as exc:
            log.info("%s: stopping: %s", spec.name, exc)
            self.close_stage()
            return 3
        except StreamsegError as exc:
            self.event("error", error_type=type(exc).__name__, message=str(exc),
                       restartable=exc.restartable)
            self.close_stage()
            return 1
        except Exception as exc:  # noqa: BLE001 - any stage bug becomes a reported stage error
            log.info("%s: unexpected error", spec.name, exc_info=True)  # the traceback with -v
            self.event("error", error_type=type(exc).__name__,
                       message=f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
            self.close_stage()
            return 1
        finally:
            heartbeat.stop.set()
            heartbeat.join(2.0)
            clean = self.closed and not self.aborted
            for outbox in self.outboxes.values():
                outbox.close(linger=None if clean else 0)
            for sock in self.pub_out.values():
                sock.close()
            for inbox in self.inboxes:
                inbox.close(linger=None if clean else 0)
            if self.listener is not None:
                self.listener.close()
            for auth in self.authenticators:
                auth.stop()
            self.events.close()
            self.ctx.term()
            self.mappings.close()
            if self.pool is not None:
                self.pool.close()

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
