"""A worker process: its entry point (started with ``spawn``), its signals and its name in ``ps``.

Signals: each worker runs in its own process group, so signals sent to the job's group (Ctrl-C,
``timeout``) reach only the supervisor; SIGINT is ignored besides. A source opens its input at
once (so a bad one fails fast) but produces nothing until SIGUSR2, which the supervisor sends
when every worker is ready: no frame is sent before the stage that reads it is there. SIGUSR1
(the supervisor's graceful stop) asks a source to end its streams cleanly, so that everything
downstream drains. SIGTERM stops any worker at once; its stage's ``close()`` still leaves its
output usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from typing import Callable, Iterator

from .spec import DRAIN_SIGNAL, JOB_SIGNALS, START_SIGNAL, WorkerSpec
from .stage import Source
from .worker import Runtime


def _set_process_name(name: str) -> None:
    """Show the stage in ps/top (Linux ``comm``, at most 15 characters); harmless elsewhere."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write(name[:15])
    except OSError:
        pass


def run_spec(spec: WorkerSpec, alive: Callable[[], str | None]) -> int:
    """Run a stage in this process for a supervisor elsewhere (``streamseg worker``); the exit code.

    ``alive()`` says why to stop (the supervisor is gone, or said stop), or None."""
    _set_process_name(f"sseg-{spec.name}")
    return Runtime(spec, alive).run()


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process (started with the ``spawn`` method)."""
    # signals meant for the whole job (Ctrl-C on a terminal, `timeout`, `kill -- -PGID`) reach the
    # supervisor only, which stops the workers in order
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.setpgrp()
    for key, value in spec.env.items():
        os.environ.setdefault(key, value)  # what the user set in the environment wins
    _set_process_name(f"sseg-{spec.name}")
    logging.basicConfig(level=spec.log_level.upper(), stream=sys.stderr,
                        format=f"%(asctime)s {spec.name}[%(process)d] %(levelname)s %(message)s")
    runtime = Runtime(spec)

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
    # every output is finished and every socket closed: leave without the interpreter's teardown,
    # which takes about a second once torch is loaded, and the run ends when its last worker exits
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said there, and the exit code still must be
    os._exit(code)


_MAIN_LOCK = threading.Lock()


@contextlib.contextmanager
def callers_main_hidden() -> Iterator[None]:
    """While a worker starts: ``spawn`` would run the caller's main module again in the new process
    (a script's top level, so ``streamseg.run`` in a script without ``if __name__ == "__main__":``
    would start a pipeline in every worker). A worker needs nothing of it: hide it from spawn."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    with _MAIN_LOCK:  # runs started at once in two threads: one hides and restores at a time
        saved = {name: main.__dict__[name] for name in ("__spec__", "__file__") if name in main.__dict__}
        try:
            main.__spec__ = None
            main.__dict__.pop("__file__", None)
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)
