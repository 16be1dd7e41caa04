"""The supervisor: starts the stage workers, watches them, replaces failed ones, and stops them.

It binds one ``events`` PULL socket that every worker reports to (ready, progress, warning,
error, stats, done, and a heartbeat every ``heartbeat_s``), and watches every process's exit. The
run ends when every worker has said ``done`` and exited. The sources start producing (SIGUSR2)
only once every worker is ready, so that nothing is sent before its reader is listening, however
long a model takes to load.

Failure policy (:class:`RestartPolicy`, set by the ``runtime`` config keys):

- a worker that dies (SIGKILL, segfault), exits without finishing, stops beating (a stopped or
  wedged process: no heartbeat for ``heartbeat_timeout_s``), spends longer than
  ``stage_timeout_s`` in one stage call, or reports an error it marks restartable (a CUDA error)
  is killed and replaced by a new process of the same stage, up to ``max_restarts`` times per
  stage. Its upstream sends the new one everything the old one had not finished
  (:mod:`streamseg.runtime.link`), so a file run still gives every frame once, in order. Each restart is
  logged, reported as a ``restart`` event and counted in the summary;
- a worker that reports an error (bad input, missing model, unwritable output, a bug), or fails
  once more after its restarts, fails the run: the others get SIGTERM (each finishes its outputs
  as far as it can), then SIGKILL after ``kill_timeout_s``, and :class:`StageError` names the
  stage and the cause;
- SIGINT or SIGTERM asks the sources to end their streams, so every stage drains and flushes and
  the outputs are complete for the frames read; a second SIGINT (Ctrl-C pressed again), or
  ``stop_timeout_s`` passing, aborts as above. Repeated SIGTERMs do not escalate: tools such as
  ``timeout`` deliver one to the process and again to its group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from typing import Any, Callable

import zmq

from .errors import Interrupted, StageError
from .health import DONE_EXIT_S, Failure, RestartPolicy, WorkerState, diagnose, overdue
from .remote import SPEC, STOP, WAIT, JoinServer, RemoteStages
from .runtime import shm
from .runtime.metrics import mark_dead, meter
from .runtime.process import callers_main_hidden, worker_main
from .runtime.spec import (
    DRAIN_SIGNAL,
    JOB_SIGNALS,
    START_SIGNAL,
    WorkerSpec,
    spec_to_json,
)
from .security import TransportCurve

log = logging.getLogger(__name__)

SLOTS_KEPT_S = 20.0
"""How long a dead worker's shared-memory slots stay (:meth:`Supervisor.remove_slots_later`); the run's end
removes what is left."""
SAME_SIGNAL_S = 0.5
"""SIGINTs this close together are one interruption: ``timeout -s INT`` sends it to the command and
then to its process group, and a terminal's Ctrl-C reaches every process of the job; a person
pressing Ctrl-C again to abort takes longer."""

class Supervisor:
    """Runs a set of workers to completion. ``on_event(event_dict)`` sees every worker event."""

    def __init__(self, specs: list[WorkerSpec], events_endpoint: str, sources: set[str],
                 stop_timeout_s: float, kill_timeout_s: float, start_timeout_s: float,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 policy: RestartPolicy | None = None, remote: RemoteStages | None = None,
                 shm_run: str = "") -> None:
        """``stop_timeout_s``, ``kill_timeout_s``, ``start_timeout_s`` and ``policy``: the ``runtime``
        config keys of those names (:class:`~streamseg.config.RuntimeConfig`)."""
        self.specs = specs
        self.shm_run = shm_run
        """Names this run's shared memory (``sseg-RUN-...``); empty: the workers use none."""
        self.remote = remote
        self.join: JoinServer | None = None
        self.former: dict[str, bytes] = {}
        """Instance -> join address of remote workers that were replaced (told to stop if heard from)."""
        self.endpoint = events_endpoint
        self.sources = sources
        self.stop_timeout_s = stop_timeout_s
        self.kill_timeout_s = kill_timeout_s
        self.start_timeout_s = start_timeout_s
        if policy is None:
            from .config import RuntimeConfig

            policy = RestartPolicy.of(RuntimeConfig())
        self.policy = policy
        self.on_event = on_event or (lambda event: None)
        self.workers: dict[str, WorkerState] = {}
        self.warnings: list[str] = []
        self.events: zmq.Socket | None = None
        """Where workers report (while :meth:`run` runs)."""
        self.stop_requested = False
        self.draining = False
        self.interrupts = 0
        self.last_interrupt = -SAME_SIGNAL_S
        self.started_at = 0.0
        self.meter = meter()
        self.doomed: list[tuple[float, str]] = []
        """(when, prefix) of dead workers' shared-memory slots to remove (:meth:`remove_slots_later`)."""

    # --- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        now = time.monotonic()
        if signum == signal.SIGINT and now - self.last_interrupt > SAME_SIGNAL_S:
            self.interrupts += 1  # a second one only when a person presses again: see SAME_SIGNAL_S
            self.last_interrupt = now

    def _install_signals(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {sig: signal.signal(sig, self._on_signal) for sig in JOB_SIGNALS}

    # --- run ----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Start every worker and wait for the run to end; returns per-stage stats.

        Raises :class:`StageError` when a worker fails and :class:`Interrupted` when a stop request
        could not finish cleanly.
        """
        ctx = zmq.Context()
        events = ctx.socket(zmq.PULL)  # events: JSON reports and heartbeats from every worker
        events.setsockopt(zmq.LINGER, 0)
        events.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        auth: list[Any] = []
        previous = self._install_signals()
        self.started_at = time.monotonic()
        self.events = events
        try:
            events.bind(self.endpoint)
            if self.remote is not None:
                curve = TransportCurve(**self.remote.curve) if self.remote.curve else None
                if curve is not None:
                    curve.server(ctx, events, auth)
                events.bind(self.remote.events_bind)  # workers on other hosts report here
                self.join = JoinServer(ctx, self.remote.join, curve, auth)
            for spec in self.specs:
                self.workers[spec.name] = WorkerState(spec, None, remote=self.remote is not None
                                                      and spec.name in self.remote.stages)
                self._spawn(self.workers[spec.name])
            self._watch(events)
        finally:
            self._kill_all()
            if self.shm_run:
                shm.remove_all(f"sseg-{self.shm_run}-")  # what workers that died left behind
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            events.close()
            if self.join is not None:
                self.join.close()
            for authenticator in auth:
                authenticator.stop()
            ctx.term()
        return {name: w.merged_stats() for name, w in self.workers.items()}

    def _spawn(self, worker: WorkerState) -> None:
        """Start a (new) process of the stage; for a stage on another host, wait for a worker to join."""
        previous = {**worker.checkpoint, "cause": worker.restarts[-1]} if worker.restarts else {}
        worker.instance = uuid.uuid4().hex
        spec = dataclasses.replace(worker.spec, attempt=len(worker.restarts), previous=previous,
                                   instance=worker.instance, shm_prefix=self._shm_prefix(worker))
        worker.ready = worker.done = worker.started = False
        worker.error = None
        worker.exit_seen = worker.last_beat = worker.done_at = None
        worker.busy_s = 0.0
        worker.spawned_at = time.monotonic()
        if worker.remote:
            assert self.remote is not None
            worker.pending = dataclasses.replace(spec, events=self.remote.events, curve=None, shm_prefix="")
            worker.holder, worker.vacant_since = None, time.monotonic()
            log.warning("%s: waiting for a worker on another host to join (streamseg worker %s)", spec.name,
                        self.remote.join_advertised or self.remote.join)
            return
        process = mp.get_context("spawn").Process(target=worker_main, args=(spec,), name=f"streamseg-{spec.name}",
                                                  daemon=True)
        # a child starts with these blocked (the mask survives exec) and unblocks them once it
        # has left the job's process group: a Ctrl-C during start-up then reaches only us
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
        try:
            with callers_main_hidden():
                process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        worker.process = process
        if spec.nice:  # from here, as the child starts (its own imports come after): the model's go first
            try:
                os.setpriority(os.PRIO_PROCESS, process.pid, min(19, os.getpriority(os.PRIO_PROCESS, 0) + spec.nice))
            except OSError:
                pass  # it has exited already: its exit code tells

    def end_process(self, worker: WorkerState) -> None:
        """A local worker let go of: its process killed if it still runs (SIGKILL also ends a stopped
        one) and marked dead for the metrics; its shared-memory slots go later."""
        if worker.process is not None:
            if worker.process.is_alive():
                worker.process.kill()
            worker.process.join(5.0)
            mark_dead(worker.process)
        self.remove_slots_later(worker)

    def remove_slots_later(self, worker: WorkerState) -> None:
        """A dead worker's shared-memory slots go in :data:`SLOTS_KEPT_S`: a message it sent just before
        it died may still be on its way to a worker that has not mapped the slot yet."""
        if self.shm_run:
            self.doomed.append((time.monotonic() + SLOTS_KEPT_S, self._shm_prefix(worker) + "-"))

    def remove_due_slots(self) -> None:
        while self.doomed and self.doomed[0][0] <= time.monotonic():
            shm.remove_all(self.doomed.pop(0)[1])

    def _shm_prefix(self, worker: WorkerState) -> str:
        return f"sseg-{self.shm_run}-{worker.instance[:12]}" if self.shm_run and not worker.remote else ""

    def _watch(self, events: zmq.Socket) -> None:
        stop_deadline: float | None = None
        all_ready = False
        while True:
            self._read_events(events, 50 if stop_deadline is None else 20)
            self.remove_due_slots()
            if self.join is not None:
                self._serve_joins()
            failure = self._failure()
            if failure is not None:
                self._recover(failure)
            all_ready = all_ready or all(w.ready for w in self.workers.values())
            if all_ready:  # every stage is listening: the sources may start (a replaced one when it is ready)
                for name in self.sources:
                    source = self.workers[name]
                    if source.ready and not source.started:
                        source.started = True
                        self._signal(source, START_SIGNAL)
                        if self.draining:
                            self._signal(source, DRAIN_SIGNAL)
            if all(w.done and not w.alive() for w in self.workers.values()):
                if self.stop_requested:
                    self.on_event({"event": "interrupted"})
                return
            if self.stop_requested and stop_deadline is None:
                if not all(self.workers[name].ready for name in self.sources):
                    # SIGUSR1 would kill a source that has not installed its handler yet
                    self._abort("supervisor", "interrupted before the pipeline started", 130)
                log.warning("stopping: the sources end their streams; outputs are being finished")
                stop_deadline = time.monotonic() + self.stop_timeout_s
                self.draining = True
                for name in self.sources:
                    self._signal(self.workers[name], DRAIN_SIGNAL)
            if self.interrupts > 1:
                self._abort("supervisor", "interrupted a second time; outputs may be incomplete", 130)
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self._abort("supervisor", f"the pipeline did not drain within {self.stop_timeout_s:g} s of the stop",
                            130)

    def _serve_joins(self) -> None:
        """Give stages that wait for a worker on another host to the workers that ask; ping the rest."""
        assert self.join is not None
        for who, request in self.join.requests():
            wanted = request.get("stages") or None
            vacant = [w for w in self.workers.values() if w.remote and w.holder is None and not w.done
                      and (wanted is None or w.spec.name in wanted or w.spec.stage in wanted)]
            if not vacant:
                self.join.send(who, WAIT, {"why": "no stage of this run is waiting for a worker"})
                continue
            worker = vacant[0]
            worker.holder, worker.host = who, str(request.get("host", "?"))[:100]
            worker.spawned_at = time.monotonic()
            assert worker.pending is not None
            self.join.send(who, SPEC, spec_to_json(worker.pending))
            log.warning("%s: runs on %s now (pid %s there)", worker.spec.name, worker.host, request.get("pid"))
            self.on_event({"event": "joined", "stage": worker.spec.name, "host": worker.host})
        self.join.ping([w.holder for w in self.workers.values() if w.remote and w.holder is not None])

    def _handle(self, event: dict[str, Any]) -> None:
        worker = self.workers.get(event.get("stage", ""))
        if worker is not None and event.get("instance") != worker.instance:
            former = self.former.pop(str(event.get("instance")), None)
            if former is not None and self.join is not None:  # a replaced remote worker is still at it
                self.join.send(former, STOP, {"why": "another worker runs this stage now"})
            return  # a late word from a process that has been replaced
        kind = event.get("event")
        if kind == "heartbeat":
            if worker is not None:
                worker.last_beat = time.monotonic()
                worker.busy_s = float(event.get("busy_s") or 0.0)
                if not worker.done and isinstance(event.get("stats"), dict):
                    worker.stats = event["stats"]
            return
        if worker is not None:
            if kind == "ready":
                worker.ready = True
            elif kind in ("done", "stats"):
                if kind == "done" and not worker.done:
                    worker.done, worker.done_at = True, time.monotonic()
                worker.stats = {k: v for k, v in event.items() if k not in ("event", "stage", "pid")}
            elif kind == "checkpoint":
                worker.checkpoint = {k: v for k, v in event.items() if k not in ("event", "stage", "pid")}
            elif kind == "error" and worker.error is None:
                worker.error = (event.get("error_type", "Exception"), event.get("message", ""),
                                bool(event.get("restartable")))
        if kind == "warning":
            self.warnings.append(f"{event.get('stage')}: {event.get('message')}")
        self.on_event(event)

    def _failure(self) -> Failure | None:
        """The first failed worker, if any; a worker that finished but does not exit is killed."""
        now = time.monotonic()
        for w in overdue(self.workers.values(), now):
            log.warning("%s: finished but did not exit within %g s; killing it", w.spec.name, DONE_EXIT_S)
            w.process.kill()
        return diagnose(self.workers.values(), self.policy, self.start_timeout_s, now)

    def _recover(self, failure: Failure) -> None:
        """Replace the failed worker if the policy allows; otherwise fail the run."""
        stage, cause = failure.stage, failure.cause
        worker = self.workers[stage]
        replace, why = self.policy.decide(failure, len(worker.restarts))
        if not replace:
            self._abort(stage, why, failure.exit_code)
        if worker.remote:
            if worker.holder is not None and self.join is not None:
                self.former[worker.instance] = worker.holder
                self.join.send(worker.holder, STOP, {"why": cause})
        else:
            self.end_process(worker)
        worker.past.append(worker.stats)
        worker.stats = {}
        worker.restarts.append(cause)
        self.meter.add("restarts", stage=stage)
        attempt = len(worker.restarts)
        log.warning("%s: %s; starting a new one (restart %d of at most %d)", stage, cause, attempt,
                    self.policy.max_restarts)
        self._spawn(worker)
        self.on_event({"event": "restart", "stage": stage, "cause": cause, "attempt": attempt})

    def _read_events(self, events: zmq.Socket, wait_ms: int) -> None:
        """Handle every event the workers sent, until none came for ``wait_ms``."""
        while events.poll(wait_ms, zmq.POLLIN):
            try:
                event = json.loads(events.recv())
            except ValueError:
                continue
            if isinstance(event, dict):
                self._handle(event)

    def _abort(self, stage: str, cause: str, exit_code: int) -> None:
        log.debug("aborting: %s: %s", stage, cause)
        self._kill_all()
        if self.events is not None:
            self._read_events(self.events, 200)  # what they said while stopping
        for name, worker in self.workers.items():
            if name != stage and worker.error is not None:  # e.g. a second output that could not be written
                log.error("%s: %s", name, worker.error[1])
        if exit_code == 130:
            raise Interrupted(f"{stage}: {cause}")
        raise StageError(stage, cause, exit_code)

    @staticmethod
    def _signal(worker: WorkerState, sig: int) -> None:
        if not worker.remote and worker.process.pid is not None and worker.process.is_alive():
            try:
                os.kill(worker.process.pid, sig)
            except ProcessLookupError:
                pass

    def _kill_all(self) -> None:
        """SIGTERM every live worker, SIGKILL those still alive after ``kill_timeout_s``; reap all.

        Workers that have not reported ready yet get SIGKILL at once: they have written nothing."""
        for w in self.workers.values():
            if w.remote and w.holder is not None and not w.done and self.join is not None:
                self.join.send(w.holder, STOP, {"why": "the run is over"})
        alive = [w for w in self.workers.values() if not w.remote and w.process is not None and w.process.is_alive()]
        for w in alive:
            if w.ready:
                self._signal(w, signal.SIGCONT)  # a stopped worker could not act on SIGTERM
                self._signal(w, signal.SIGTERM)
            else:  # still starting (SIGTERM blocked until its handlers are in): nothing to finish yet
                w.process.kill()
        deadline = time.monotonic() + self.kill_timeout_s
        for w in alive:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in alive:
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2.0)
