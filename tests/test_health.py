"""The supervisor's failure and recovery decisions (:mod:`streamseg.health`) over made-up worker states.

These functions only read a process's ``exitcode`` (and ``is_alive()``), so a tiny stand-in
process is enough here; the real faults (SIGKILL, SIGSTOP, SIGSEGV of running workers) are in
tests/test_reliability.py, test_failures.py and test_remote.py.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

import pytest

from streamseg.config import RuntimeConfig
from streamseg.health import (
    DONE_EXIT_S,
    EXIT_EVENT_GRACE_S,
    Failure,
    RestartPolicy,
    WorkerState,
    diagnose,
    overdue,
)
from streamseg.runtime.spec import WorkerSpec

POLICY = RestartPolicy(max_restarts=3, heartbeat_timeout_s=5.0, stage_timeout_s=300.0, remote_wait_s=120.0)
START_S = 120.0
T0 = 1000.0
"""The made-up clock's time when each worker was spawned."""


@dataclass
class FakeProcess:
    """What the decisions read of a multiprocessing.Process: its exit code (None while it runs)."""

    exitcode: int | None = None
    killed: bool = False

    def is_alive(self) -> bool:
        return self.exitcode is None

    def kill(self) -> None:
        self.killed = True


def _worker(name: str = "infer", exitcode: int | None = None, **fields: object) -> WorkerState:
    spec = WorkerSpec(name, name.partition("-")[0], None, {}, events="ipc://events")
    state = WorkerState(spec, None if fields.get("remote") else FakeProcess(exitcode), spawned_at=T0)
    for key, value in fields.items():
        setattr(state, key, value)
    return state


def _diagnose(*workers: WorkerState, now: float, policy: RestartPolicy = POLICY) -> Failure | None:
    return diagnose(workers, policy, START_S, now)


def test_nothing_to_diagnose() -> None:
    assert _diagnose(now=T0) is None  # no workers at all
    running = _worker(last_beat=T0 + 10, busy_s=1.0)
    finished = _worker("masks", exitcode=0, done=True, last_beat=T0)
    done_not_exited = _worker("encode", done=True, last_beat=T0)  # saying done, its last acks going out
    assert _diagnose(running, finished, done_not_exited, now=T0 + 12) is None


def test_a_reported_error_fails_with_its_exit_code_and_restartability() -> None:
    bad_input = _worker("decode", error=("InputError", "cannot read x.mp4 as video", False), last_beat=T0)
    assert _diagnose(bad_input, now=T0 + 1) == Failure("decode", "cannot read x.mp4 as video", 3, False)
    cuda = _worker(error=("DeviceError", "CUDA error: out of memory", True), last_beat=T0)
    assert _diagnose(cuda, now=T0 + 1) == Failure("infer", "CUDA error: out of memory", 1, True)
    bug = _worker("render", error=("ZeroDivisionError", "ZeroDivisionError: division by zero", False))
    assert _diagnose(bug, now=T0 + 1) == Failure("render", "ZeroDivisionError: division by zero", 1, False)
    # the error counts before what the process did afterwards (it exits with code 1 after reporting)
    reported_then_exited = _worker("encode", exitcode=1, error=("OutputError", "cannot write o.mp4", False))
    assert _diagnose(reported_then_exited, now=T0 + 1) == Failure("encode", "cannot write o.mp4", 5, False)


@pytest.mark.parametrize("code, cause", [(-signal.SIGKILL, "worker process died (SIGKILL)"),
                                         (-signal.SIGSEGV, "worker process died (SIGSEGV)"),
                                         (-200, "worker process died (signal 200)")])
def test_death_by_a_signal_is_a_restartable_failure_at_once(code: int, cause: str) -> None:
    dead = _worker(exitcode=code, last_beat=T0)
    assert _diagnose(dead, now=T0 + 0.01) == Failure("infer", cause, 1, True)


@pytest.mark.parametrize("code, cause", [(0, "worker process exited before finishing"),
                                         (2, "worker process exited with code 2")])
def test_an_exit_without_finishing_fails_only_after_the_grace_for_its_last_event(code: int, cause: str) -> None:
    gone = _worker(exitcode=code, last_beat=T0)
    seen = T0 + 3
    assert _diagnose(gone, now=seen) is None  # its done or error event may still be on its way
    assert gone.exit_seen == seen
    assert _diagnose(gone, now=seen + EXIT_EVENT_GRACE_S * 0.9) is None
    assert gone.exit_seen == seen  # first seen stays first seen
    assert _diagnose(gone, now=seen + EXIT_EVENT_GRACE_S) == Failure("infer", cause, 1, True)
    # its done event arrived within the grace: not a failure
    late_done = _worker(exitcode=0, last_beat=T0)
    assert _diagnose(late_done, now=seen) is None
    late_done.done = True
    assert _diagnose(late_done, now=seen + 2 * EXIT_EVENT_GRACE_S) is None


def test_a_worker_that_does_not_start_in_time_fails_the_run() -> None:
    loading = _worker()  # no heartbeat yet: still importing, or loading its model
    assert _diagnose(loading, now=T0 + START_S) is None
    failure = _diagnose(loading, now=T0 + START_S + 0.1)
    assert failure == Failure("infer", "did not start within 120 s", 1, False)
    beating = _worker(last_beat=T0 + START_S)  # it started: the start timeout is over for it
    assert _diagnose(beating, now=T0 + START_S + 1) is None


def test_heartbeat_silence_is_noticed_after_the_timeout_and_not_before() -> None:
    stopped = _worker(last_beat=T0 + 10)
    assert _diagnose(stopped, now=T0 + 10 + POLICY.heartbeat_timeout_s) is None
    failure = _diagnose(stopped, now=T0 + 10 + POLICY.heartbeat_timeout_s + 0.3)
    assert failure == Failure("infer", "stopped responding (no heartbeat for 5.3 s)", 1, True)
    short = RestartPolicy(3, heartbeat_timeout_s=2.0, stage_timeout_s=0, remote_wait_s=1)
    assert _diagnose(stopped, now=T0 + 12.5, policy=short).cause == "stopped responding (no heartbeat for 2.5 s)"


def test_a_stage_call_that_runs_too_long_counts_as_hung() -> None:
    busy = _worker(last_beat=T0 + 400, busy_s=POLICY.stage_timeout_s)
    assert _diagnose(busy, now=T0 + 401) is None
    busy.busy_s = POLICY.stage_timeout_s + 1
    assert _diagnose(busy, now=T0 + 401) == Failure("infer", "hung in one stage call for 301 s", 1, True)
    unlimited = RestartPolicy(3, 5.0, stage_timeout_s=0.0, remote_wait_s=120.0)
    busy.busy_s = 10_000
    assert _diagnose(busy, now=T0 + 401, policy=unlimited) is None


def test_the_first_failed_worker_in_order_is_named() -> None:
    ok = _worker("decode", last_beat=T0 + 1)
    silent = _worker("infer", last_beat=T0)
    dead = _worker("render", exitcode=-signal.SIGKILL, last_beat=T0 + 1)
    assert _diagnose(ok, silent, dead, now=T0 + 6).stage == "infer"
    assert _diagnose(ok, dead, silent, now=T0 + 6).stage == "render"


def test_a_remote_stage_waits_for_a_worker_to_join_then_fails() -> None:
    vacant = _worker(remote=True, vacant_since=T0)
    assert not vacant.alive()
    assert _diagnose(vacant, now=T0 + POLICY.remote_wait_s) is None
    failure = _diagnose(vacant, now=T0 + POLICY.remote_wait_s + 1)
    assert failure is not None and failure.stage == "infer" and not failure.restartable
    assert failure.cause.startswith("no worker joined to run it within 120 s")
    assert "streamseg worker tcp://" in failure.cause


def test_a_remote_worker_that_joined_is_watched_by_its_heartbeats() -> None:
    joined = _worker(remote=True, holder=b"w1", host="gpu-box", spawned_at=T0, vacant_since=T0 - 500)
    assert joined.alive()
    assert _diagnose(joined, now=T0 + START_S) is None
    failure = _diagnose(joined, now=T0 + START_S + 1)
    assert failure == Failure("infer", "the worker on gpu-box did not start within 120 s", 1, True)
    joined.last_beat = T0 + 50
    assert _diagnose(joined, now=T0 + 55) is None
    failure = _diagnose(joined, now=T0 + 57)
    assert failure == Failure("infer", "the worker on gpu-box stopped responding (no heartbeat for 7.0 s)", 1, True)
    joined.done = True
    assert not joined.alive() and _diagnose(joined, now=T0 + 10_000) is None


def test_decide_replaces_while_restarts_are_left() -> None:
    crash = Failure("infer", "worker process died (SIGKILL)")
    assert POLICY.decide(crash, 0) == (True, "worker process died (SIGKILL)")
    assert POLICY.decide(crash, 2) == (True, "worker process died (SIGKILL)")
    assert POLICY.decide(crash, 3) == (False, "worker process died (SIGKILL) (after 3 restarts)")
    never = RestartPolicy(0, 5.0, 300.0, 120.0)
    assert never.decide(crash, 0) == (False, "worker process died (SIGKILL)")
    bad_input = Failure("decode", "cannot read x.mp4 as video", 3, restartable=False)
    assert POLICY.decide(bad_input, 0) == (False, "cannot read x.mp4 as video")


def test_the_policy_is_the_runtime_section() -> None:
    runtime = RuntimeConfig(max_restarts=1, heartbeat_timeout_s=2.0, stage_timeout_s=0.0, remote_wait_s=9.0)
    assert RestartPolicy.of(runtime) == RestartPolicy(1, 2.0, 0.0, 9.0)
    default = RestartPolicy.of(RuntimeConfig())
    assert default.max_restarts == RuntimeConfig.max_restarts and default.heartbeat_timeout_s == 5.0


def test_overdue_lists_workers_that_finished_but_do_not_exit() -> None:
    lingering = _worker("encode", done=True, done_at=T0)
    exited = _worker("masks", exitcode=0, done=True, done_at=T0)
    working = _worker("infer")
    remote = _worker("render", remote=True, holder=b"w", done=True, done_at=T0)
    workers = [lingering, exited, working, remote]
    assert overdue(workers, T0 + DONE_EXIT_S) == []
    assert overdue(workers, T0 + DONE_EXIT_S + 0.1) == [lingering]
    assert overdue([], T0) == []


def test_merged_stats_add_up_the_processes_of_a_stage() -> None:
    worker = _worker("masks")
    worker.past = [{"busy_s": 1.5, "received": 10, "counters": {"frames": 30, "lines_cut": 1}}]
    worker.restarts = ["worker process died (SIGKILL)"]
    worker.stats = {"busy_s": 0.5, "received": 4, "totals": ["frames"], "counters": {"frames": 48}}
    merged = worker.merged_stats()
    assert merged["busy_s"] == 2.0 and merged["received"] == 14 and merged["cpu_s"] == 0
    # frames is a total (what the file holds): the last process's; other counters add up
    assert merged["counters"] == {"frames": 48, "lines_cut": 1, "restarts": 1}
    assert merged["restarts"] == ["worker process died (SIGKILL)"]
    fresh = _worker("batch").merged_stats()  # the empty case: no stats, no restarts
    assert fresh == {"counters": {}, "restarts": []}
