"""What the supervisor knows of each worker, and the decisions it takes from that alone.

:class:`WorkerState` is one stage's worker as the supervisor sees it (its process, heartbeats,
events); :func:`diagnose` finds the first failed worker and why (:class:`Failure`), and
:meth:`RestartPolicy.decide` says whether a new process replaces it. These are pure: they read
states and the clock they are given, so tests drive them with made-up states. The supervisor
(:mod:`streamseg.supervisor`) does what they decide.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any, Iterable

from .config import RuntimeConfig
from .errors import exit_code_for
from .runtime.spec import WorkerSpec

DONE_EXIT_S = 30.0
"""How long a worker that said ``done`` may take to exit (its last acknowledgements going out)
before it is killed."""
EXIT_EVENT_GRACE_S = 1.0
"""How long a worker that exited is given for its last event to arrive before its exit counts
as a failure without an explanation."""
SUMMED = ("busy_s", "blocked_s", "cpu_s", "received", "sent", "rejected")


@dataclass(frozen=True)
class RestartPolicy:
    """When the supervisor replaces a worker: the ``runtime`` config keys of the same names
    (:class:`~streamseg.config.RuntimeConfig` documents them and holds their defaults)."""

    max_restarts: int
    heartbeat_timeout_s: float
    stage_timeout_s: float
    remote_wait_s: float

    @classmethod
    def of(cls, runtime: RuntimeConfig) -> RestartPolicy:
        """The policy a :class:`~streamseg.config.RuntimeConfig` sets."""
        return cls(runtime.max_restarts, runtime.heartbeat_timeout_s, runtime.stage_timeout_s, runtime.remote_wait_s)

    def decide(self, failure: Failure, restarts: int) -> tuple[bool, str]:
        """(whether to replace the failed worker, the cause to report) after ``restarts`` earlier ones."""
        if failure.restartable and restarts < self.max_restarts:
            return True, failure.cause
        if failure.restartable and self.max_restarts:
            return False, f"{failure.cause} (after {restarts} restarts)"
        return False, failure.cause


@dataclass
class WorkerState:
    """What the supervisor knows of one stage's worker (the current process, and those it replaced)."""

    spec: WorkerSpec
    process: Any
    remote: bool = False
    """Runs on another host: no process here, only its heartbeats and events."""
    holder: bytes | None = None
    """The remote worker running it now (its address on the join socket); None: waiting for one."""
    host: str = ""
    instance: str = ""
    vacant_since: float = 0.0
    pending: WorkerSpec | None = None
    """The spec a joining remote worker gets."""
    ready: bool = False
    done: bool = False
    started: bool = False
    """Whether the start signal was sent (sources)."""
    stats: dict[str, Any] = field(default_factory=dict)
    error: tuple[str, str, bool] | None = None
    """(error type, message, restartable) of a reported error."""
    exit_seen: float | None = None
    """When the supervisor first saw the process gone without its final event."""
    last_beat: float | None = None
    """When its last heartbeat arrived (monotonic); None before the first."""
    busy_s: float = 0.0
    """How long its current stage call had run at the last heartbeat."""
    spawned_at: float = 0.0
    done_at: float | None = None
    restarts: list[str] = field(default_factory=list)
    """Why each earlier process was replaced."""
    past: list[dict[str, Any]] = field(default_factory=list)
    """The last stats of each replaced process."""
    checkpoint: dict[str, Any] = field(default_factory=dict)
    """The last ``checkpoint`` event of the stage, handed to a replacement."""

    def alive(self) -> bool:
        if self.remote:
            return self.holder is not None and not self.done
        return self.process is not None and self.process.is_alive()

    def merged_stats(self) -> dict[str, Any]:
        """Stats over every process of the stage: times and work counters add up; counters the stage
        names ``totals`` (what its outputs hold) are the last process's."""
        merged = dict(self.stats)
        totals = set(self.stats.get("totals", ()))
        counters = dict(self.stats.get("counters", {}))
        for past in self.past:
            for key in SUMMED:
                merged[key] = round(merged.get(key, 0) + past.get(key, 0), 4)
            for key, value in past.get("counters", {}).items():
                if key not in totals and isinstance(value, (int, float)):
                    counters[key] = counters.get(key, 0) + value
        if self.restarts:
            counters["restarts"] = len(self.restarts)
        merged["counters"] = counters
        merged["restarts"] = list(self.restarts)
        return merged

    def health(self, now: float) -> dict[str, Any]:
        """Whether it is healthy now, and the reason when not (a service's ``/healthz``)."""
        if not self.alive():
            reason = "not running" + (f" (last restart: {self.restarts[-1]})" if self.restarts else "")
        elif not self.ready:
            reason = "starting" if not self.restarts else f"restarting after: {self.restarts[-1]}"
        elif self.last_beat is not None and now - self.last_beat > 2 * self.spec.heartbeat_s + 1.0:
            reason = f"no heartbeat for {now - self.last_beat:.1f} s"
        else:
            reason = ""
        return {"healthy": not reason, "reason": reason, "restarts": len(self.restarts),
                "pid": self.process.pid if self.process is not None else None}


@dataclass(frozen=True)
class Failure:
    """A worker that failed: its stage, why, the run's exit code if it ends the run, and whether a
    new process may fix it (a crash or a hang may be; a bad input or a missing model is not)."""

    stage: str
    cause: str
    exit_code: int = 1
    restartable: bool = True


def overdue(workers: Iterable[WorkerState], now: float) -> list[WorkerState]:
    """Workers here that said ``done`` over :data:`DONE_EXIT_S` ago and are still running."""
    return [w for w in workers if not w.remote and w.done and w.process.exitcode is None
            and w.done_at is not None and now - w.done_at > DONE_EXIT_S]


def diagnose(workers: Iterable[WorkerState], policy: RestartPolicy, start_timeout_s: float,
             now: float) -> Failure | None:
    """The first worker that failed, in order: one that reported an error; died (a signal) or exited
    without finishing (after :data:`EXIT_EVENT_GRACE_S` for its last event); did not start within
    ``start_timeout_s``; stopped beating or hung in one call (``policy``); or, on another host,
    was not joined in time. It reads only what it is given, but notes in a state when its process
    was first seen gone (``exit_seen``), for the grace period."""
    for w in workers:
        name = w.spec.name
        if w.error is not None:
            return Failure(name, w.error[1], exit_code_for(w.error[0]), w.error[2])
        if w.remote:
            failure = _remote_failure(w, policy, start_timeout_s, now)
        else:
            failure = _local_failure(w, policy, start_timeout_s, now)
        if failure is not None:
            return Failure(name, *failure)
    return None


def _local_failure(w: WorkerState, policy: RestartPolicy, start_timeout_s: float,
                   now: float) -> tuple[str, int, bool] | None:
    code = w.process.exitcode
    if code is None:
        if w.done:
            return None
        if w.last_beat is None and now - w.spawned_at > start_timeout_s:
            return f"did not start within {start_timeout_s:g} s", 1, False
        return _silence(w, policy, now, "")
    if code == 0 and w.done:
        return None
    if code >= 0:  # it exited by itself: its last event (done or error) may still be on its way
        if w.exit_seen is None:
            w.exit_seen = now
        if now - w.exit_seen < EXIT_EVENT_GRACE_S:
            return None
    if code < 0:
        try:
            why = f"worker process died ({signal.Signals(-code).name})"
        except ValueError:
            why = f"worker process died (signal {-code})"
    elif code == 0:
        why = "worker process exited before finishing"
    else:
        why = f"worker process exited with code {code}"
    return why, 1, True


def _remote_failure(w: WorkerState, policy: RestartPolicy, start_timeout_s: float,
                    now: float) -> tuple[str, int, bool] | None:
    if w.done:
        return None
    if w.holder is None:
        if now - w.vacant_since > policy.remote_wait_s:
            return (f"no worker joined to run it within {policy.remote_wait_s:g} s (start one on another "
                    f"host: streamseg worker tcp://THIS-HOST:PORT)", 1, False)
        return None
    if w.last_beat is None and now - w.spawned_at > start_timeout_s:
        return f"the worker on {w.host} did not start within {start_timeout_s:g} s", 1, True
    return _silence(w, policy, now, f"the worker on {w.host} ")


def _silence(w: WorkerState, policy: RestartPolicy, now: float, who: str) -> tuple[str, int, bool] | None:
    """A started worker that stopped beating (stopped, wedged, or its host gone), or is stuck in one call."""
    if w.last_beat is None:
        return None
    if now - w.last_beat > policy.heartbeat_timeout_s:
        return f"{who}stopped responding (no heartbeat for {now - w.last_beat:.1f} s)", 1, True
    if policy.stage_timeout_s and w.busy_s > policy.stage_timeout_s:
        return f"{who}hung in one stage call for {w.busy_s:.0f} s", 1, True
    return None
