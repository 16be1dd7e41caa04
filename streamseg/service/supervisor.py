"""The service's supervisor: the run's supervisor, with decoders started and ended while it runs.

It keeps the lasting stages as :class:`~streamseg.supervisor.Supervisor` does (replaced when they
fail, the service failing when they fail for good), and besides them one decoder per stream:

- **add**: a decoder is started for the stream; once it has opened its source and said ready, the
  batcher is told to read it (:mod:`streamseg.runtime.control`) and it is told to start. A source
  that cannot be opened fails the request and leaves nothing behind;
- **remove**: the decoder is asked to end its stream (SIGUSR1): every stage finishes that stream's
  outputs, and the decoder exits when all of it is done downstream; the request is answered then;
- **end**: a file that ends, or a live source lost for good, ends its stream the same way;
- **failure**: a decoder that crashes is replaced as in a run; one that fails for good ends only its
  own stream (the batcher ends it downstream when told to let go of its input, and says when that
  end is done: its removal is answered then, :class:`~streamseg.service.streams.Releases`);
- **stop** (SIGTERM, SIGINT): every stream is ended, then the lasting stages are told that no more
  will come, and each finishes and exits.

The HTTP API runs in another thread: it puts requests on :attr:`ServiceSupervisor.requests` and
waits for their answer; what it reads is taken under :attr:`ServiceSupervisor.lock`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import queue
import threading
import time
from typing import Any, Callable

import zmq

from ..config import Config
from ..health import RestartPolicy, WorkerState
from ..runtime.control import Orders, Publisher
from ..runtime.spec import DRAIN_SIGNAL, START_SIGNAL
from ..sources import safe_url
from ..supervisor import Supervisor
from .plan import ServicePlan
from .streams import Releases, RequestError, Stream, check_request, write_state

log = logging.getLogger(__name__)

Answer = tuple[int, Any]
"""An HTTP status and the JSON body of the answer."""


class ServiceSupervisor(Supervisor):
    """Runs a service until it is stopped. ``requests`` takes ``(kind, argument, future)``: ``add``
    with a request body, ``remove`` with a stream id; the future gets an :data:`Answer`."""

    def __init__(self, plan: ServicePlan, on_event: Callable[[dict[str, Any]], None] | None = None, shm_run: str = ""
                 ) -> None:
        rt = plan.config.runtime
        super().__init__(plan.specs, plan.events, set(), rt.stop_timeout_s, rt.kill_timeout_s, rt.start_timeout_s,
                         on_event, RestartPolicy.of(rt), None, shm_run)
        self.plan = plan
        self.config: Config = plan.config
        self.lasting = [spec.name for spec in plan.specs]
        self.streams: dict[str, Stream] = {}
        self.lock = threading.RLock()
        """Held while the supervisor's thread changes what the API reads."""
        self.requests: queue.Queue[tuple[str, Any, concurrent.futures.Future[Answer]]] = queue.Queue()
        self.adding: dict[str, tuple[concurrent.futures.Future[Answer] | None, float]] = {}
        self.removing: dict[str, list[concurrent.futures.Future[Answer]]] = {}
        self.releases = Releases()
        self.closing = self.started_all = False
        self.numbers = 0
        self.control: Publisher | None = None
        self.initial: list[dict[str, Any]] = []
        """Request bodies of the streams the service starts with (its state file's, the command line's)."""

    # --- asked from the API's thread -----------------------------------------------------------
    def ask(self, kind: str, argument: Any) -> concurrent.futures.Future[Answer]:
        future: concurrent.futures.Future[Answer] = concurrent.futures.Future()
        self.requests.put((kind, argument, future))
        return future

    def listing(self) -> list[dict[str, Any]]:
        with self.lock:
            return [self._public(s) for s in self.streams.values()]

    def stream(self, sid: str) -> dict[str, Any] | None:
        with self.lock:
            stream = self.streams.get(sid)
            return None if stream is None else self._public(stream)

    def health(self) -> dict[str, Any]:
        """Every lasting stage and every stream, healthy or not and why."""
        now = time.monotonic()
        with self.lock:
            stages = {name: self.workers[name].health(now) if name in self.workers else
                      {"healthy": False, "reason": "not started yet", "restarts": 0, "pid": None}
                      for name in self.lasting}
            streams = {sid: {"healthy": s.state == "running" and not s.detail.startswith(("lost", "reconnecting")),
                             "state": s.state, "reason": s.detail} for sid, s in self.streams.items()}
        healthy = all(s["healthy"] for s in stages.values()) and all(s["healthy"] for s in streams.values())
        return {"healthy": healthy, "closing": self.closing, "stages": stages, "streams": streams}

    def ready(self) -> bool:
        with self.lock:
            return not self.closing and all(n in self.workers and self.workers[n].ready and self.workers[n].alive()
                                            for n in self.lasting)

    def _public(self, stream: Stream) -> dict[str, Any]:
        worker = self.workers.get(stream.worker)
        if worker is not None:
            stream.frames = int(worker.merged_stats().get("counters", {}).get("frames", stream.frames))
            stream.restarts = len(worker.restarts)
        return stream.public()

    # --- the loop ------------------------------------------------------------------------------
    def _watch(self, events: zmq.Socket) -> None:
        self.control = Publisher(events.context, self.plan.control)
        try:
            with self.lock:
                self._orders()
                for body in self.initial:
                    try:
                        self._add(body, None, trusted=True)
                    except RequestError as exc:
                        log.error("cannot add stream %s: %s", body.get("id") or safe_url(str(body.get("source"))), exc)
            self._serve(events)
        finally:
            self.control.close()
            for futures in [*self.removing.values(), *([f] for f, _ in self.adding.values() if f)]:
                for future in futures:
                    if not future.done():
                        future.set_result((503, {"error": "the service stopped"}))

    def _serve(self, events: zmq.Socket) -> None:
        stop_deadline: float | None = None
        while True:
            self._read_events(events, 20)  # each event is handled under the lock (_handle)
            self.remove_due_slots()
            with self.lock:
                self._take_requests()
                failure = self._failure()
                if failure is not None:
                    self._recover(failure)
                now = time.monotonic()
                self._start_ready(now)
                self._reap()
                self._settled(self.releases.overdue(now))
                if self.stop_requested and stop_deadline is None:
                    log.warning("stopping: every stream ends and its outputs are finished")
                    stop_deadline = now + self.stop_timeout_s
                    for name in self._decoders():
                        stream = self._stream_of(name)
                        if stream is not None and stream.state == "running":
                            stream.state = "stopping"
                        self._end(name)
                if stop_deadline is not None and not self._decoders() and not self.closing:
                    self.closing = True  # no stream is left, and none will come: the stages may end
                    self._orders()
                if self.closing and all(self.workers[n].done and not self.workers[n].alive() for n in self.lasting):
                    return
            assert self.control is not None
            self.control.repeat(now)
            if self.interrupts > 1:
                self._abort("supervisor", "interrupted a second time; outputs may be incomplete", 130)
            if stop_deadline is not None and now > stop_deadline:
                self._abort("supervisor", f"the service did not stop within {self.stop_timeout_s:g} s", 130)

    def _decoders(self) -> list[str]:
        return [name for name in self.workers if name not in self.lasting]

    def _orders(self) -> None:
        """Tell every lasting stage what it reads (the batcher: the decoders now) and whether to end."""
        assert self.control is not None
        batch = self.workers[self.plan.batch]
        inputs = tuple(self.workers[name].spec.outputs["frames"] for name in self._decoders())
        batch.spec = dataclasses.replace(batch.spec, inputs=inputs)  # what a replacement connects to
        for name in self.lasting:
            self.control.set(name, Orders(self.workers[name].spec.inputs, self.closing))

    def _take_requests(self) -> None:
        while True:
            try:
                kind, argument, future = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                if kind == "add":
                    self._add(argument, future)
                elif kind == "remove":
                    self._remove(argument, future)
            except RequestError as exc:
                future.set_result((exc.status, {"error": str(exc)}))
            except Exception as exc:  # noqa: BLE001 - a request must not take the service down
                log.exception("a request to %s failed", kind)
                if not future.done():
                    future.set_result((500, {"error": f"internal error: {type(exc).__name__}: {exc}"}))

    def _add(self, body: Any, future: concurrent.futures.Future[Answer] | None, trusted: bool = False) -> None:
        if self.closing or self.stop_requested:
            raise RequestError(503, "the service is stopping")
        number = self.numbers + 1
        while f"stream-{number}" in self.streams:
            number += 1
        request = check_request(body, self.config, set(self.streams), self._files(), number, trusted,
                                self.plan.tracked)
        active = sum(s.state in ("starting", "running", "stopping") for s in self.streams.values())
        if active >= self.config.serve.max_streams:
            raise RequestError(429, f"the service has {active} streams, its most (serve.max_streams)")
        self.numbers = number if request.id == f"stream-{number}" else self.numbers
        spec = self.plan.decoder(request.id, request.source, request.video, request.masks, request.loop,
                                 request.analytics)
        stream = self.streams[request.id] = Stream(request, spec.name)
        self.workers[spec.name] = WorkerState(spec, None)
        try:
            self._spawn(self.workers[spec.name])
        except Exception:
            del self.streams[request.id], self.workers[spec.name]
            raise
        self.adding[request.id] = (future, time.monotonic() + self.config.serve.add_timeout_s)
        self._orders()
        log.info("stream %s: adding %s", request.id, stream.public()["source"])

    def _files(self) -> set[str]:
        """Real paths no new output may take: every stream's source and outputs, the state and token files."""
        serve = self.config.serve
        paths = [p for s in self.streams.values() for p in (s.request.source, s.request.video, s.request.masks)]
        return {os.path.realpath(p) for p in [*paths, serve.state, serve.token_file] if p and "://" not in p}

    def _remove(self, sid: str, future: concurrent.futures.Future[Answer]) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            raise RequestError(404, f"no stream {sid!r}")
        if stream.state in ("ended", "failed"):
            self.removing.setdefault(sid, []).append(future)
            self._finish_removal(stream)  # at once, unless its outputs are still being finished
            return
        self.removing.setdefault(sid, []).append(future)
        if stream.state == "starting":  # its decoder has not started: it goes at once (_end)
            self._answer_add(sid, (409, {"error": f"stream {sid!r} was removed before its source opened"}))
        if stream.state != "stopping":
            stream.state = "stopping"
            self._end(stream.worker)
            self._save()

    def _end(self, name: str) -> None:
        """Ask a decoder to end its stream (one not started yet has nothing to end: it goes at once)."""
        worker = self.workers[name]
        if worker.started:
            self._signal(worker, DRAIN_SIGNAL)
            return
        stream = self._stream_of(name)
        self._drop(name)  # the batcher ends downstream what the stream had opened
        if stream is None:
            return
        if stream.state == "starting":
            del self.streams[stream.request.id]
            self._answer_add(stream.request.id, (503, {"error": "the service is stopping"}))
        else:  # a replacement decoder that had not started yet
            self._finish_removal(stream)

    def _start_ready(self, now: float) -> None:
        """Start the decoders that are ready (once every lasting stage is); time out those that are not."""
        self.started_all = self.started_all or all(self.workers[n].ready for n in self.lasting)
        for name in self._decoders():
            worker, stream = self.workers[name], self._stream_of(name)
            if stream is None:
                continue
            if worker.ready and not worker.started and self.started_all:
                worker.started = True
                self._signal(worker, START_SIGNAL)
                if stream.state == "stopping" or self.stop_requested:  # a replacement of one being ended
                    self._signal(worker, DRAIN_SIGNAL)
                if stream.state == "starting":
                    stream.state = "running"
                    self._answer_add(stream.request.id, (201, self._public(stream)))
                    self._save()
            elif stream.state == "starting" and now > self.adding.get(stream.request.id, (None, float("inf")))[1]:
                self._drop(name)
                del self.streams[stream.request.id]
                self._answer_add(stream.request.id, (504, {"error": f"the source did not open within "
                                                                    f"{self.config.serve.add_timeout_s:g} s"}))

    def _reap(self) -> None:
        """Decoders whose stream ended, all of it done downstream, and that exited."""
        for name in self._decoders():
            worker = self.workers[name]
            if not (worker.done and worker.process.exitcode is not None):
                continue
            stream = self._stream_of(name)
            self._drop(name)
            if stream is None:
                continue
            if stream.state == "stopping":
                self._finish_removal(stream)
            else:
                stream.state = "ended"
                log.warning("stream %s ended%s", stream.request.id, f": {stream.detail}" if stream.detail else "")
            self._save()

    def _finish_removal(self, stream: Stream) -> None:
        """Answer the stream's removal, once the batcher has ended downstream what its decoder had sent."""
        if self.releases.waits_for(stream):
            return
        sid = stream.request.id
        if self.streams.get(sid) is stream:
            del self.streams[sid]
        stream.state = "removed"
        for future in self.removing.pop(sid, []):
            future.set_result((200, stream.public()))
        log.info("stream %s: removed, its outputs finished", sid)

    def _recover(self, failure: Any) -> None:
        """A lasting stage's failure as in a run; a decoder's is its stream's alone."""
        if failure.stage in self.lasting:
            super()._recover(failure)
            if failure.stage == self.plan.batch:  # a new batcher has none of the old one's streams
                self._settled(self.releases.overdue())
            return
        worker = self.workers[failure.stage]
        stream = self._stream_of(failure.stage)
        replace, why = self.policy.decide(failure, len(worker.restarts))
        if replace and worker.started:
            super()._recover(failure)
            return
        self._drop(failure.stage)
        if stream is None:
            return
        sid = stream.request.id
        if stream.state == "starting":
            del self.streams[sid]
            self._answer_add(sid, (422, {"error": f"cannot add stream {sid!r}: {why}"}))
            return
        log.warning("stream %s failed: %s", sid, why)
        if stream.state == "stopping":
            self._finish_removal(stream)
        else:
            stream.state, stream.detail = "failed", why
        self._save()

    def _drop(self, name: str) -> None:
        """Let a decoder go: killed if it still runs, its shared memory removed, the batcher told."""
        stream = self._stream_of(name)
        if stream is not None:
            self._public(stream)  # its last figures
        worker = self.workers.pop(name)
        if stream is not None and (worker.started or worker.restarts) and not worker.done:
            # a process of this decoder ran (only one that started is replaced): the batcher ends its stream
            self.releases.expect(worker.spec.outputs["frames"], stream, time.monotonic())
        self.end_process(worker)  # (a decoder that finished removed its slots itself)
        self._orders()

    def _handle(self, event: dict[str, Any]) -> None:
        with self.lock:
            super()._handle(event)
            del self.warnings[:-100]  # a service runs for months: the newest only
            kind, worker = event.get("event"), self.workers.get(str(event.get("stage")))
            if worker is None or event.get("instance") != worker.instance:
                return  # a late word from a process that was replaced, or let go of
            stream = self._stream_of(worker.spec.name)
            if kind == "warning" and stream is not None:  # why its source ended early, or what it repaired
                stream.detail = str(event.get("message", ""))
            if kind in ("let_go", "ended_downstream") and worker.spec.name == self.plan.batch:
                self._settled(self.releases.heard(event))
            if kind == "status" and stream is not None:
                detail = event.get("detail") or ""
                stream.detail = str(event.get("state")) + (f": {detail}" if detail else "")

    def _settled(self, streams: list[Stream]) -> None:
        for stream in streams:
            if stream.request.id in self.removing:
                self._finish_removal(stream)

    def _stream_of(self, worker: str) -> Stream | None:
        return next((s for s in self.streams.values() if s.worker == worker), None)

    def _answer_add(self, sid: str, answer: Answer) -> None:
        future, _ = self.adding.pop(sid, (None, 0.0))
        if future is not None and not future.done():
            future.set_result(answer)
        elif answer[0] >= 400:
            log.error("stream %s: %s", sid, answer[1].get("error"))

    def _save(self) -> None:
        """Note a change in the streams: the state file, and the streams-up gauge."""
        self.meter.add("streams_up", sum(s.state == "running" for s in self.streams.values()))
        path = self.config.serve.state
        if not path or self.stop_requested:  # a stopping service keeps its list for the next start
            return
        keep = [s.request for s in self.streams.values() if s.state in ("starting", "running")]
        try:
            write_state(path, keep)
        except OSError as exc:
            log.error("cannot write the state file %s: %s", path, exc)
