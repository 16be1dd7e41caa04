"""The supervisor: starts the stage workers, watches them, and stops them; no failure becomes a hang.

It binds one ``events`` PULL socket that every worker reports to (ready, progress, warning,
error, stats, done), and watches every process's exit. The run ends when every worker has said
``done`` and exited. The sources start producing (SIGUSR2) only once every worker is ready, so
that nothing is sent before its reader is listening, however long a model takes to load.
Failure policy:

- a worker that reports an error, exits without finishing, or dies (SIGKILL, segfault) fails the
  run: the others get SIGTERM (each finishes its outputs as far as it can), then SIGKILL after
  ``kill_timeout_s``, and :class:`StageError` names the stage and the cause;
- SIGINT or SIGTERM asks the sources to end their streams, so every stage drains and flushes and
  the outputs are complete for the frames read; a second SIGINT (Ctrl-C pressed again), or
  ``stop_timeout_s`` passing, aborts as above. Repeated SIGTERMs do not escalate: tools such as
  ``timeout`` deliver one to the process and again to its group.
"""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from .errors import Interrupted, StageError, exit_code_for
from .worker import DRAIN_SIGNAL, JOB_SIGNALS, START_SIGNAL, WorkerSpec, worker_main

log = logging.getLogger(__name__)

EXIT_EVENT_GRACE_S = 1.0
"""How long a worker that exited is given for its last event to arrive before its exit counts
as a failure without an explanation."""


@dataclass
class WorkerState:
    """What the supervisor knows of one worker."""

    spec: WorkerSpec
    process: Any
    ready: bool = False
    done: bool = False
    stats: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str] | None = None
    exit_seen: float | None = None
    """When the supervisor first saw the process gone without its final event."""


class Supervisor:
    """Runs a set of workers to completion. ``on_event(event_dict)`` sees every worker event."""

    def __init__(self, specs: list[WorkerSpec], events_endpoint: str, sources: set[str],
                 stop_timeout_s: float = 20.0, kill_timeout_s: float = 3.0, start_timeout_s: float = 120.0,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.specs = specs
        self.endpoint = events_endpoint
        self.sources = sources
        self.stop_timeout_s = stop_timeout_s
        self.kill_timeout_s = kill_timeout_s
        self.start_timeout_s = start_timeout_s
        self.on_event = on_event or (lambda event: None)
        self.workers: dict[str, WorkerState] = {}
        self.warnings: list[str] = []
        self.stop_requested = False
        self.interrupts = 0
        self.started_at = 0.0

    # --- signals ------------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop_requested = True
        if signum == signal.SIGINT:
            self.interrupts += 1

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
        events = ctx.socket(zmq.PULL)  # events: JSON reports from every worker
        events.setsockopt(zmq.LINGER, 0)
        events.bind(self.endpoint)
        previous = self._install_signals()
        spawn = mp.get_context("spawn")
        self.started_at = time.monotonic()
        try:
            for spec in self.specs:
                process = spawn.Process(target=worker_main, args=(spec,), name=f"streamseg-{spec.name}", daemon=True)
                # a child starts with these blocked (the mask survives exec) and unblocks them once it
                # has left the job's process group: a Ctrl-C during start-up then reaches only us
                old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, JOB_SIGNALS)
                try:
                    process.start()
                finally:
                    signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                self.workers[spec.name] = WorkerState(spec, process)
            self._watch(events)
        finally:
            self._kill_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            events.close()
            ctx.term()
        return {name: w.stats for name, w in self.workers.items()}

    def _watch(self, events: zmq.Socket) -> None:
        stop_deadline: float | None = None
        started = False
        while True:
            while events.poll(50 if stop_deadline is None else 20, zmq.POLLIN):
                self._handle(json.loads(events.recv()))
            failure = self._failure()
            if failure is not None:
                self._abort(*failure)
            if not started and all(w.ready for w in self.workers.values()):
                started = True  # every stage is listening: the sources may start
                for name in self.sources:
                    self._signal(self.workers[name], START_SIGNAL)
            if all(w.done and not w.process.is_alive() for w in self.workers.values()):
                if self.stop_requested:
                    self.on_event({"event": "interrupted"})
                return
            if self.stop_requested and stop_deadline is None:
                if not all(self.workers[name].ready for name in self.sources):
                    # SIGUSR1 would kill a source that has not installed its handler yet
                    self._abort("supervisor", "interrupted before the pipeline started", 130)
                log.warning("stopping: the sources end their streams; outputs are being finished")
                stop_deadline = time.monotonic() + self.stop_timeout_s
                for name in self.sources:
                    self._signal(self.workers[name], DRAIN_SIGNAL)
            if self.interrupts > 1:
                self._abort("supervisor", "interrupted a second time; outputs may be incomplete", 130)
            if stop_deadline is not None and time.monotonic() > stop_deadline:
                self._abort("supervisor", f"the pipeline did not drain within {self.stop_timeout_s:g} s of the stop", 130)

    def _handle(self, event: dict[str, Any]) -> None:
        worker = self.workers.get(event.get("stage", ""))
        kind = event.get("event")
        if worker is not None:
            if kind == "ready":
                worker.ready = True
            elif kind in ("done", "stats"):
                worker.done = worker.done or kind == "done"
                worker.stats = {k: v for k, v in event.items() if k not in ("event", "stage", "pid")}
            elif kind == "error" and worker.error is None:
                worker.error = (event.get("error_type", "Exception"), event.get("message", ""))
        if kind == "warning":
            self.warnings.append(f"{event.get('stage')}: {event.get('message')}")
        self.on_event(event)

    def _failure(self) -> tuple[str, str, int] | None:
        """(stage, cause, exit code) of the first worker that failed, if any."""
        now = time.monotonic()
        for name, w in self.workers.items():
            if w.error is not None:
                return name, w.error[1], exit_code_for(w.error[0])
            code = w.process.exitcode
            if code is None:
                if not w.ready and now - self.started_at > self.start_timeout_s:
                    return name, f"did not start within {self.start_timeout_s:g} s", 1
                continue
            if code == 0 and w.done:
                continue
            if code >= 0:  # it exited by itself: its last event (done or error) may still be on its way
                if w.exit_seen is None:
                    w.exit_seen = now
                if now - w.exit_seen < EXIT_EVENT_GRACE_S:
                    continue
            if code < 0:
                try:
                    why = f"worker process died ({signal.Signals(-code).name})"
                except ValueError:
                    why = f"worker process died (signal {-code})"
            elif code == 0:
                why = "worker process exited before finishing"
            else:
                why = f"worker process exited with code {code}"
            return name, why, 1
        return None

    def _abort(self, stage: str, cause: str, exit_code: int) -> None:
        log.debug("aborting: %s: %s", stage, cause)
        self._kill_all()
        if exit_code == 130:
            raise Interrupted(f"{stage}: {cause}")
        raise StageError(stage, cause, exit_code)

    @staticmethod
    def _signal(worker: WorkerState, sig: int) -> None:
        if worker.process.pid is not None and worker.process.is_alive():
            try:
                os.kill(worker.process.pid, sig)
            except ProcessLookupError:
                pass

    def _kill_all(self) -> None:
        """SIGTERM every live worker, SIGKILL those still alive after ``kill_timeout_s``; reap all.

        Workers that have not reported ready yet get SIGKILL at once: they have written nothing."""
        alive = [w for w in self.workers.values() if w.process.is_alive()]
        for w in alive:
            if w.ready:
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
