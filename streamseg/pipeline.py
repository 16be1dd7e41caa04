"""Running the pipeline: checks a :class:`~streamseg.config.Config`, plans its workers
(:mod:`streamseg.plan`), runs them under the :class:`~streamseg.supervisor.Supervisor`, and returns
the run's :class:`~streamseg.summary.Summary`. :func:`run` is the one-call Python API.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from typing import Any, Callable

from .config import Config, load_config
from .errors import ConfigError, InputError, OutputError
from .models import model_info
from .plan import Plan, build_specs, source_stage_names, stream_output, stream_outputs
from .runtime import metrics, shm
from .sources import source_kind, stream_format
from .summary import Progress, Summary, summarise
from .supervisor import RestartPolicy, Supervisor

log = logging.getLogger(__name__)


def _check_output_path(path: str, what: str) -> None:
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise OutputError(f"{what} folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{what} folder is not writable: {parent}")


def check(config: Config) -> None:
    """The cheap checks, before any worker starts: sources that cannot exist, output folders that
    cannot be written, an unknown model. The decoder probes each source itself, in its own process,
    so that a crash inside FFmpeg cannot take this one down."""
    streams = config.input.streams()
    if not streams:
        raise ConfigError("no input: give a video file, an image folder, a URL or a camera")
    for _, url in streams:
        if source_kind(url) == "file" and not os.path.exists(url):
            raise InputError(f"input not found: {url}")
    for template, what in ((config.output.video, "output video"), (config.output.masks, "masks")):
        for path in stream_outputs(config, template).values():
            if what == "masks" or stream_format(path) is None:
                _check_output_path(path, what)
    model_info(config.model.name)  # an unknown model name fails here, not in a worker


def run_config(config: Config, on_event: Callable[[dict[str, Any]], None] | None = None,
               started: float | None = None) -> Summary:
    """Run the pipeline described by ``config`` and return its :class:`Summary`.

    ``started``: when the command began (``time.monotonic()``), for the summary's end-to-end times;
    None: now. Raises :class:`~streamseg.errors.StreamsegError` subclasses for bad input, config,
    model or output, and :class:`~streamseg.errors.StageError` when a stage fails.
    """
    times = {"start": time.monotonic() if started is None else started}
    check(config)
    ipc_dir = config.transport.ipc_dir or tempfile.mkdtemp(prefix="streamseg-")
    os.makedirs(ipc_dir, exist_ok=True)
    progress = Progress(not config.runtime.quiet and sys.stderr.isatty())
    stop_metrics = None
    ready: set[str] = set()
    inputs: dict[str, dict[str, Any]] = {}

    def handle(event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "input":
            inputs.setdefault(str(event.get("stream_id")), {}).update(event)
        elif kind == "ready":
            ready.add(event.get("stage", ""))
            if len(ready) == len(plan.specs):
                times.setdefault("ready", time.monotonic())
        elif kind == "interrupted":
            times["interrupted"] = time.monotonic()
        progress(event)
        if on_event is not None:
            on_event(event)

    try:
        if config.runtime.metrics_port:  # every worker writes its metrics here; the exporter reads them all
            os.environ[metrics.ENV] = tempfile.mkdtemp(prefix="metrics-", dir=ipc_dir)
            stop_metrics = metrics.exporter(config.runtime.metrics_port)
        plan = build_specs(config, ipc_dir)
        rt = config.runtime
        supervisor = Supervisor(plan.specs, plan.events, set(source_stage_names(config)), rt.stop_timeout_s,
                                rt.kill_timeout_s, rt.start_timeout_s, handle,
                                RestartPolicy.of(rt), plan.remote,
                                uuid.uuid4().hex[:12] if config.transport.shared_memory and shm.available() else "")
        try:
            stats = supervisor.run()
        finally:
            progress.close()
        times["end"] = time.monotonic()
    finally:
        if stop_metrics is not None:
            stop_metrics()
        if config.runtime.metrics_port:
            os.environ.pop(metrics.ENV, None)
        if not config.transport.ipc_dir:
            shutil.rmtree(ipc_dir, ignore_errors=True)
    summary = summarise(config, stats, plan.progress_stage, times, list(supervisor.warnings), inputs)
    if summary.interrupted:
        log.warning("interrupted: outputs hold the %d frames done", summary.frames)
    return summary


def run(input: str | list[str], output: str | None = None, masks: str | None = None, *,
        config_files: tuple[str, ...] = (), overrides: dict[str, Any] | None = None,
        sets: tuple[str, ...] = (), **options: Any) -> Summary:
    """Run the pipeline on a source (or a list of sources), from Python; returns the :class:`Summary`.

    ``options`` are ``section__key=value`` shortcuts (``model__name="tiny-random"``,
    ``batch__max_batch=1``) applied after ``config_files`` and ``overrides``, before ``sets``.
    Example::

        summary = streamseg.run("in.mp4", "annotated.mp4", masks="masks.jsonl", model__score_thresh=0.7)
    """
    started = time.monotonic()
    source = {"path": input} if isinstance(input, str) else {"sources": list(input)}
    base: dict[str, Any] = {"input": source, "output": {"video": output, "masks": masks},
                            "runtime": {"quiet": True}}
    shortcuts: dict[str, Any] = {}
    for key, value in options.items():
        section, sep, name = key.partition("__")
        if not sep:
            raise ConfigError(f"option {key!r} must be written section__key (e.g. model__name)")
        shortcuts.setdefault(section, {})[name] = value
    layers = [base, dict(overrides or {}), shortcuts]
    config = load_config(config_files, layers, sets)
    return run_config(config, started=started)


__all__ = ["Plan", "Summary", "build_specs", "check", "run", "run_config", "stream_output"]
