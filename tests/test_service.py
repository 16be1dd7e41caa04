"""``streamseg serve``: streams added and removed while the model runs, through its real HTTP API.

The bookkeeping that makes it possible (a worker whose streams come and go, the supervisor's orders
on the control channel, a request's checks) is tested on its own first; then a real service, with
real worker processes, is driven over HTTP with a real client (urllib).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import zmq
from conftest import (
    CLI,
    TEST_MODEL,
    Collector,
    free_endpoint,
    free_port,
    make_clip,
    read_jsonl,
    read_video,
    worker_pid,
)
from prometheus_client.parser import text_string_to_metric_families

from streamseg.config import load_config
from streamseg.runtime import metrics
from streamseg.runtime.admission import Admission
from streamseg.runtime.control import Listener, Orders, Publisher
from streamseg.runtime.messages import EndOfStream, Frame, StreamStart
from streamseg.service.streams import RequestError, check_request


def _start(sid: str) -> StreamStart:
    return StreamStart(sid, 4, 4, Fraction(30), Fraction(1, 30), 0, "x.mp4", False)


def _frame(sid: str, index: int) -> Frame:
    return Frame(sid, index, index, Fraction(1, 30), np.zeros((4, 4, 3), np.uint8))


def test_a_service_s_worker_ends_when_told_no_stream_will_come_and_an_ended_id_may_come_again() -> None:
    admission = Admission(None)
    assert admission.open_streams([])  # no stream yet, but more may come
    assert admission.admit(_start("a")) is not None
    assert admission.admit(_frame("a", 0)) is not None
    assert admission.admit(EndOfStream("a", 1)) is not None
    assert admission.admit(EndOfStream("a", 1)) is None  # a repeat
    assert admission.open_streams([])
    assert admission.admit(dataclasses.replace(_start("a"), started=1.0)) is not None  # the id again: a new stream
    assert admission.admit(_frame("a", 0)) is not None
    admission.closing = True
    assert admission.open_streams([])  # "a" is still open
    admission.admit(EndOfStream("a", 1))
    assert not admission.open_streams([])


def test_orders_reach_their_worker_only_and_the_newest_wins(tmp_path: Path) -> None:
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/control"
    publisher = Publisher(ctx, endpoint)
    one, ten = Listener(ctx, endpoint, "decode-1"), Listener(ctx, endpoint, "decode-10")
    try:
        deadline = time.monotonic() + 10
        got = None
        while got is None and time.monotonic() < deadline:  # a subscriber joins a moment after it connects
            publisher.set("decode-1", Orders(("ipc://a",), False))
            publisher.forget("decode-1")
            time.sleep(0.05)
            got = one.latest()
        assert got == Orders(("ipc://a",), False)
        publisher.set("decode-10", Orders(("ipc://ten",), False))  # "decode-1" is a prefix of its name
        publisher.set("decode-1", Orders(("ipc://a", "ipc://b"), False))
        publisher.set("decode-1", Orders(("ipc://b",), True))
        deadline = time.monotonic() + 10
        while (ten_got := ten.latest()) is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ten_got == Orders(("ipc://ten",), False)  # it came before decode-1's last: those are here too
        assert one.latest() == Orders(("ipc://b",), True)  # the newest of its own, not decode-10's
    finally:
        one.close()
        ten.close()
        publisher.close()
        ctx.term()


def test_a_dead_worker_s_counters_move_into_the_archive_and_every_scrape_reads_the_same_totals(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service starts a decoder per stream for months: each one's files would stay in the folder.
    Its counters and histograms go into one archive file per kind when it is marked dead."""
    monkeypatch.setenv(metrics.ENV, str(tmp_path))
    worker = ("from streamseg.runtime.metrics import meter; m = meter(); "
              "m.add('frames', 5, stage='decode-a', stream='a'); m.add('latency_seconds', 0.3, stage='masks', "
              "stream='a'); m.add('queue_messages', 2, worker='decode-a', port='frames')")
    pids = []
    for _ in range(3):  # three decoders of stream a, one after another
        child = subprocess.run([sys.executable, "-c", worker + "; import os; print(os.getpid())"], env=os.environ,
                               capture_output=True, text=True, check=True)
        pids.append(int(child.stdout))
    before = _families(metrics.exposition()[0].decode())
    metrics.mark_dead(SimpleNamespace(pid=pids[0], exitcode=None))  # not seen to exit: its files stay
    assert len(list(tmp_path.glob(f"*_{pids[0]}.db"))) == 3
    for pid in pids:
        metrics.mark_dead(SimpleNamespace(pid=pid, exitcode=0))
    after = _families(metrics.exposition()[0].decode())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_archive.db", "histogram_archive.db"]
    frames = ("streamseg_frames_total", (("stage", "decode-a"), ("stream", "a")))
    assert before[frames] == after[frames] == 15
    count = ("streamseg_latency_seconds_count", (("stage", "masks"), ("stream", "a")))
    bucket = ("streamseg_latency_seconds_bucket", (("le", "0.5"), ("stage", "masks"), ("stream", "a")))
    assert before[count] == after[count] == before[bucket] == after[bucket] == 3
    assert any(name == "streamseg_queue_messages" for name, _ in before)  # a live gauge, gone with its process
    assert not any(name == "streamseg_queue_messages" for name, _ in after)


def _families(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text read with prometheus_client's own parser: (sample name, sorted labels) -> value."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


AREAS = {"source": "{dir}/clip.mp4", "masks": "{dir}/m.jsonl"}
"""A request that would be good but for its analytics."""


@pytest.mark.parametrize("body, status, needle", [
    ([1], 400, "JSON object"),
    ({"source": "x", "colour": "red"}, 400, "unknown fields: colour"),
    ({"id": "a"}, 400, "source is required"),
    ({"source": 5}, 400, "source must be a string"),
    ({"source": "{dir}/clip.mp4", "id": "a b"}, 400, "bad stream id"),
    ({"source": "{dir}/clip.mp4", "id": "taken"}, 409, "exists already"),
    ({"source": "/etc/hostname"}, 403, "outside the folders"),
    ({"source": "{dir}/../clip.mp4"}, 403, "outside the folders"),
    ({"source": "file:///etc/hostname"}, 403, "scheme"),
    ({"source": "{dir}/missing.mp4"}, 422, "input not found"),
    ({"source": "{dir}/clip.mp4", "output": "/tmp/x.mp4"}, 403, "outside the folders this service may write"),
    ({"source": "{dir}/clip.mp4", "output": "{dir}/no/x.mp4"}, 422, "folder does not exist"),
    ({"source": "{dir}/clip.mp4", "masks": "{dir}/used.jsonl"}, 409, "in use"),
    ({"source": "{dir}/clip.mp4", "masks": "{dir}/x", "output": "{dir}/x"}, 400, "the same file"),
    ({"source": "{dir}/clip.mp4", "masks": "{dir}"}, 403, "not a regular file"),
    ({"source": "{dir}/clip\u0000.mp4"}, 400, "control character"),
    ({"source": "{dir}/clip.mp4", "masks": ""}, 400, "nothing to write"),
    ({"source": "{dir}/clip.mp4", "analytics": []}, 400, "analytics must be a JSON object"),
    ({**AREAS, "analytics": {"zones": [{"name": "z", "points": [[0, 0], [9, 0], [0, 9], [9, 9]]}]}}, 422,
     r"analytics.zones\[0\] \(z\): the polygon crosses itself"),
    ({**AREAS, "analytics": {"lines": [{"name": "l", "points": [[5, 5], [5, 5]]}]}}, 422,
     r"analytics.lines\[0\] \(l\): the line has zero length"),
    ({**AREAS, "analytics": {"lines": [{"name": "l", "points": [[0, 0], [5, 5]], "stream": "x"}]}}, 422,
     "name no stream"),
    ({**AREAS, "analytics": {"zone": []}}, 422, "unknown config key 'analytics.zone'"),
    ({**AREAS, "analytics": {"anchor": "top"}}, 422, "analytics.anchor must be bottom or center"),
])
def test_a_request_that_breaks_a_rule_is_refused_with_what_is_wrong(tmp_path: Path, body: Any, status: int,
                                                                    needle: str) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    config = load_config(overrides=[{"serve": {"allow_dirs": [str(tmp_path)]}}])
    if isinstance(body, dict):
        body = {k: v.replace("{dir}", str(tmp_path)) if isinstance(v, str) else v for k, v in body.items()}
    with pytest.raises(RequestError, match=needle) as caught:
        check_request(body, config, {"taken"}, {os.path.realpath(tmp_path / "used.jsonl")}, 1)
    assert caught.value.status == status


def test_a_good_request_takes_its_defaults_from_the_config(tmp_path: Path) -> None:
    (tmp_path / "clip.mp4").write_bytes(b"")
    config = load_config(overrides=[{"serve": {"allow_dirs": [str(tmp_path)]},
                                     "output": {"video": str(tmp_path / "{stream}.mp4")}}])
    request = check_request({"source": str(tmp_path / "clip.mp4")}, config, set(), set(), 7)
    assert (request.id, request.video, request.masks) == ("stream-7", str(tmp_path / "stream-7.mp4"), "")
    url = check_request({"source": "rtsp://user:secret@cam/live", "id": "cam"}, config, set(), set(), 1)
    assert url.source == "rtsp://user:secret@cam/live"  # kept to connect; never shown (Stream.public)


# --- a real service -----------------------------------------------------------------------------

class Service:
    """A running ``streamseg serve`` and a client for its API."""

    def __init__(self, cli: CLI, *args: str) -> None:
        self.proc = cli.start("serve", *TEST_MODEL, "--http", "127.0.0.1:0", *args)
        self.headers: dict[str, str] = {}
        """Sent with every request (a token)."""
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        deadline = time.monotonic() + 120
        while not any("serving at" in line for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"the service did not start: {''.join(self.lines)[-2000:]}")
            time.sleep(0.05)
        line = next(line for line in self.lines if "serving at" in line)
        self.url = line.split("serving at ")[1].split()[0].rstrip("/")

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 90) -> tuple[int, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={**sent, **self.headers, **(headers or {})})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while self.call("GET", "/readyz")[0] != 200:
            assert time.monotonic() < deadline, "the service never became ready"
            time.sleep(0.2)

    def frames(self, sid: str) -> int:
        return self.call("GET", f"/streams/{sid}")[1]["frames"]

    def wait_frames(self, sid: str, more_than: int, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while (n := self.frames(sid)) <= more_than:
            assert time.monotonic() < deadline, f"stream {sid} is stuck at {n} frames"
            time.sleep(0.2)
        return n

    def wait_state(self, sid: str, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (stream := self.call("GET", f"/streams/{sid}")[1]).get("state") != state:
            assert time.monotonic() < deadline, f"stream {sid}: {stream}"
            time.sleep(0.2)
        return stream

    def stop(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail("the service did not stop on SIGTERM")
        self.reader.join(5)
        return code

    @property
    def log(self) -> str:
        return "".join(self.lines)


def _assert_complete(video: Path, masks: Path) -> int:
    """The stream's video plays, and holds the same frames as its masks file, each once, in order."""
    records = read_jsonl(masks)
    assert [r["frame"] for r in records] == list(range(len(records)))
    assert read_video(video)["frames"] == len(records) > 0
    return len(records)


@pytest.fixture
def serve(cli: CLI, tmp_path: Path) -> Any:
    """Starts services (a clip of 30 frames in ``tmp_path``, their allowed folder) and kills what is left."""
    make_clip(tmp_path / "clip.mp4", frames=30)
    started: list[Service] = []

    def start(*args: str, ready: bool = True) -> Service:
        service = Service(cli, "--allow-dir", str(tmp_path), *args)
        started.append(service)
        if ready:
            service.wait_ready()
        return service

    yield start
    for service in started:  # a test that failed half-way: stopped as a user would, so nothing is left behind
        if service.proc.poll() is None:
            service.proc.send_signal(signal.SIGTERM)
            try:
                service.proc.wait(60)
            except subprocess.TimeoutExpired:
                service.proc.kill()


@pytest.mark.slow
def test_streams_added_and_removed_while_the_model_runs(serve: Any, cli: CLI, tmp_path: Path) -> None:
    service = serve()
    assert service.call("GET", "/streams") == (200, [])
    infer_pid = worker_pid(cli.tag, "infer")
    status, a = service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "id": "a", "loop": True,
                                                  "output": str(tmp_path / "a.mp4"),
                                                  "masks": str(tmp_path / "a.jsonl")})
    assert status == 201 and a["state"] == "running" and a["id"] == "a"
    status, b = service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "loop": True,
                                                  "masks": str(tmp_path / "b.jsonl")})
    assert status == 201 and b["id"] == "stream-1"  # the first id made up
    service.wait_frames("a", 40)  # past the clip's end: it loops
    status, removed = service.call("DELETE", "/streams/a")
    assert status == 200 and removed["state"] == "removed"
    _assert_complete(tmp_path / "a.mp4", tmp_path / "a.jsonl")  # finished and closed when DELETE answers
    assert [s["id"] for s in service.call("GET", "/streams")[1]] == ["stream-1"]
    service.wait_frames("stream-1", service.frames("stream-1") + 20)  # the other stream goes on
    # the same id again: a new stream with new outputs
    status, again = service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "id": "a",
                                                      "output": str(tmp_path / "a2.mp4"),
                                                      "masks": str(tmp_path / "a2.jsonl")})
    assert status == 201
    service.wait_state("a", "ended")  # a file without loop ends by itself
    assert _assert_complete(tmp_path / "a2.mp4", tmp_path / "a2.jsonl") == 30
    assert service.call("DELETE", "/streams/a")[0] == 200
    health = service.call("GET", "/healthz")
    assert health[0] == 200 and health[1]["stages"]["infer"]["restarts"] == 0
    assert worker_pid(cli.tag, "infer") == infer_pid  # the model was never restarted
    assert service.stop() == 0
    records = read_jsonl(tmp_path / "b.jsonl")  # the stream that stayed: every frame, once, in order
    assert [r["frame"] for r in records] == list(range(len(records))) and len(records) > 60
    assert cli.leftovers() == []


@pytest.mark.slow
def test_bad_requests_are_refused_and_change_nothing(serve: Any, tmp_path: Path) -> None:
    service = serve("--set", "serve.max_body_bytes=2048")
    body = {"source": str(tmp_path / "clip.mp4"), "id": "keep", "loop": True, "masks": str(tmp_path / "k.jsonl")}
    assert service.call("POST", "/streams", body)[0] == 201
    listing = [s["id"] for s in service.call("GET", "/streams")[1]]
    dead = free_port()
    refused = [
        (service.call("POST", "/streams", raw=b"{not json"), 400, "not JSON"),
        (service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "fps": 5}), 400, "unknown fields"),
        (service.call("POST", "/streams", body), 409, "exists already"),
        (service.call("POST", "/streams", {"source": f"rtsp://admin:secret@127.0.0.1:{dead}/live",
                                           "masks": str(tmp_path / "u.jsonl")}), 422, "cannot add stream"),
        (service.call("POST", "/streams", {"source": "/etc/hostname"}), 403, "outside the folders"),
        (service.call("POST", "/streams", raw=b'{"source": "' + b"x" * 4096 + b'"}'), 413, "larger than"),
        (service.call("DELETE", "/streams/nope"), 404, "no stream"),
        (service.call("POST", "/streams", body | {"id": "form"}, headers={"Content-Type": "text/plain"}), 415,
         "application/json"),  # what a page elsewhere could send without asking
        (service.call("GET", "/streams", headers={"Host": "attacker.example:80"}), 403, "not this machine"),
        (service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "masks": str(tmp_path / "clip.mp4")}),
         409, "in use"),  # over a stream's own source
        (service.call("POST", "/streams", {"source": "/dev/video0", "masks": str(tmp_path / "v.jsonl")}), 403,
         "cameras are not allowed"),
        (service.call("GET", "/nothing/here"), 404, "Not Found"),
    ]
    for (status, answer), want, needle in refused:
        assert status == want and needle in answer["error"], (status, answer)
    assert "secret" not in json.dumps([answer for (_, answer), _, _ in refused])
    assert [s["id"] for s in service.call("GET", "/streams")[1]] == listing
    assert service.call("GET", "/healthz")[0] == 200
    first = _scrape(service)
    service.wait_frames("keep", service.frames("keep") + 10)
    second = _scrape(service)
    for stage in ("decode", "batch", "infer", "track", "masks"):  # counters that go up between two scrapes
        assert second[("streamseg_frames_total", (("stage", stage), ("stream", "keep")))] > \
            first.get(("streamseg_frames_total", (("stage", stage), ("stream", "keep"))), 0)
    assert second[("streamseg_streams_up", ())] == 1
    assert second[("streamseg_latency_seconds_count", (("stage", "masks"), ("stream", "keep")))] > 0
    assert second[("streamseg_batch_frames_count", ())] > 0
    assert any(name == "streamseg_queue_messages" for name, _ in second)
    spec = service.call("GET", "/openapi.json")[1]
    assert spec["openapi"].startswith("3.") and {"/streams", "/streams/{id}", "/healthz"} <= set(spec["paths"])
    assert service.stop() == 0
    assert "secret" not in service.log


@pytest.mark.slow
def test_a_decoder_that_fails_for_good_ends_only_its_own_stream(serve: Any, cli: CLI, tmp_path: Path) -> None:
    service = serve("--set", "runtime.max_restarts=0")
    for sid in ("x", "y"):
        assert service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "id": sid, "loop": True,
                                                 "output": str(tmp_path / f"{sid}.mp4"),
                                                 "masks": str(tmp_path / f"{sid}.jsonl")})[0] == 201
    service.wait_frames("x", 10)
    os.kill(worker_pid(cli.tag, "decode-x"), signal.SIGKILL)
    x = service.wait_state("x", "failed")
    assert "died" in x["detail"]
    assert service.call("GET", "/healthz")[0] == 503  # x is not healthy, and says why
    # removed at once: DELETE answers when the batcher says its end of it is done downstream (not after
    # Releases.WAIT_S without a word), its outputs finished
    asked = time.monotonic()
    assert service.call("DELETE", "/streams/x")[0] == 200
    assert time.monotonic() - asked < 10 and "no word that its end is done downstream" not in service.log
    _assert_complete(tmp_path / "x.mp4", tmp_path / "x.jsonl")
    assert service.call("GET", "/healthz")[0] == 200
    service.wait_frames("y", service.frames("y") + 20)
    assert service.stop() == 0
    _assert_complete(tmp_path / "y.mp4", tmp_path / "y.jsonl")


@pytest.mark.slow
def test_a_stream_s_own_zones_and_lines_are_counted_and_published(serve: Any, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    service = serve("--publish", endpoint)
    clip = str(tmp_path / "clip.mp4")  # 322x242
    far = {"zones": [{"name": "far", "points": [[0, 0], [900, 0], [900, 10]]}]}
    status, answer = service.call("POST", "/streams", {"source": clip, "id": "far", "masks": str(tmp_path / "f.jsonl"),
                                                       "analytics": far})
    assert status == 422 and "analytics.zones[0] (far) reaches outside stream far's 322x242 frame" in answer["error"]
    assert service.call("GET", "/streams")[1] == []  # said when its source opened: nothing left of it
    analytics = {"zones": [{"name": "top", "points": [[0, 0], [322, 0], [322, 121], [0, 121]]}],
                 "lines": [{"name": "across", "points": [[161, 0], [161, 242]]}], "counts_every_s": 0.5}
    collector = Collector(endpoint, topic="z")
    collector.start()
    time.sleep(0.5)  # subscribed before the stream starts
    status, answer = service.call("POST", "/streams", {"source": clip, "id": "z", "masks": str(tmp_path / "z.jsonl"),
                                                       "output": str(tmp_path / "z.mp4"), "analytics": analytics})
    assert status == 201 and answer["analytics"]["lines"] == [{"name": "across", "points": [[161.0, 0.0],
                                                                                            [161.0, 242.0]]}]
    collector.join(60)
    assert not collector.is_alive(), "no end of stream"
    counts = collector.of_type("counts")
    assert [m["frame"] for m in counts][:2] == [0, 15] and counts[-1]["time"] is None  # every 0.5 s, and its end
    assert set(counts[-1]["zones"]) == {"top"} and set(counts[-1]["lines"]) == {"across"}
    assert service.stop() == 0
    _assert_complete(tmp_path / "z.mp4", tmp_path / "z.jsonl")  # drawn with its zones and lines


@pytest.mark.slow
def test_a_stream_removed_while_its_source_opens_is_gone_at_once(serve: Any, tmp_path: Path) -> None:
    service = serve()
    answers: list[tuple[int, Any]] = []
    body = {"source": str(tmp_path / "clip.mp4"), "id": "soon", "masks": str(tmp_path / "soon.jsonl")}
    adding = threading.Thread(target=lambda: answers.append(service.call("POST", "/streams", body)))
    adding.start()
    while service.call("GET", "/streams")[1] == []:
        time.sleep(0.01)
    asked = time.monotonic()
    assert service.call("DELETE", "/streams/soon")[0] == 200  # while its decoder is still starting
    adding.join(30)
    assert time.monotonic() - asked < 5 and "no word that its end is done downstream" not in service.log
    assert answers[0][0] == 409 and "removed before its source opened" in answers[0][1]["error"]
    assert service.call("GET", "/streams")[1] == []
    assert service.stop() == 0


@pytest.mark.slow
def test_the_cameras_service_preset_records_a_stream_added_without_outputs(serve: Any, tmp_path: Path) -> None:
    (tmp_path / "recordings").mkdir()
    service = serve("--config", "cameras_service")  # the service's folder is tmp_path
    status, answer = service.call("POST", "/streams", {"source": str(tmp_path / "clip.mp4"), "id": "cam1",
                                                       "loop": True})
    assert status == 201 and answer["output"] == "recordings/cam1.mp4", answer
    service.wait_frames("cam1", 40)
    assert service.call("DELETE", "/streams/cam1")[0] == 200
    (video,), (masks,) = (tmp_path / "recordings").glob("cam1-*.mp4"), (tmp_path / "recordings").glob("cam1-*.jsonl")
    assert video.stem == masks.stem  # one segment so far, named by when the stream started
    _assert_complete(video, masks)
    assert service.stop() == 0


def _scrape(service: Service) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` read with prometheus_client's own parser: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(service.url + "/metrics", timeout=30) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("streamseg_")
        assert family.type != "counter" or all(s.name.endswith(("_total", "_created")) for s in family.samples)
    return _families(text)


@pytest.mark.slow
def test_sigterm_finishes_every_output_and_the_state_file_brings_the_streams_back(serve: Any, tmp_path: Path) -> None:
    state, token = tmp_path / "state.json", tmp_path / "token"
    token.write_text("t0ken-" + "x" * 20 + "\n")
    args = ("--state", str(state), "--token-file", str(token))
    auth = {"Authorization": "Bearer t0ken-" + "x" * 20}
    service = serve(*args, ready=False)
    assert service.call("GET", "/streams")[0] == 401
    assert service.call("GET", "/streams", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert service.call("GET", "/streams?token=t0ken-" + "x" * 20)[0] == 200
    service.headers = auth
    service.wait_ready()
    body = {"source": str(tmp_path / "clip.mp4"), "id": "cam", "loop": True, "output": str(tmp_path / "cam.mp4"),
            "masks": str(tmp_path / "cam.jsonl")}
    assert service.call("POST", "/streams", body)[0] == 201
    service.wait_frames("cam", 40)  # looped
    assert service.stop() == 0
    assert _assert_complete(tmp_path / "cam.mp4", tmp_path / "cam.jsonl") > 40
    assert [s["id"] for s in json.loads(state.read_text())["streams"]] == ["cam"]
    assert state.stat().st_mode & 0o077 == 0  # it may hold a URL's password
    service = serve(*args, ready=False)
    service.headers = auth
    service.wait_state("cam", "running")
    assert service.stop() == 0
    assert _assert_complete(tmp_path / "cam.mp4", tmp_path / "cam.jsonl") > 0  # written again, whole


def test_the_api_beyond_loopback_needs_a_token(cli: CLI) -> None:
    result = cli.run("serve", *TEST_MODEL, "--http", "0.0.0.0:0", timeout=60)
    assert result.returncode == 2 and "token" in result.stderr


@pytest.mark.slow
def test_a_run_serves_the_same_metrics_with_metrics_port(cli: CLI, tmp_path: Path) -> None:
    make_clip(tmp_path / "clip.mp4", frames=30)
    port = free_port()
    proc = cli.start("run", str(tmp_path / "clip.mp4"), "--masks", str(tmp_path / "m.jsonl"), "--loop",
                     "--duration", "60", "--metrics-port", str(port), *TEST_MODEL, "-q")
    try:
        key = ("streamseg_frames_total", (("stage", "masks"), ("stream", "0")))
        seen: list[float] = []
        deadline = time.monotonic() + 90
        while len(seen) < 2 or seen[-1] <= seen[0]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() else seen
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    text = response.read().decode()
            except OSError:
                time.sleep(0.2)  # not listening yet
                continue
            values = {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for family in text_string_to_metric_families(text) for s in family.samples}
            if key in values:
                seen.append(values[key])
            time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


@pytest.mark.slow
def test_the_streams_command_adds_lists_and_removes_over_the_api(serve: Any, cli: CLI, tmp_path: Path) -> None:
    service = serve()
    (tmp_path / "door.yaml").write_text("zones:\n  - {name: step, points: [[0, 200], [100, 200], [100, 240]]}\n")
    added = cli.run("streams", "--url", service.url, "add", str(tmp_path / "clip.mp4"), "--id", "door", "--loop",
                    "--masks", str(tmp_path / "door.jsonl"), "--analytics", str(tmp_path / "door.yaml"))
    assert added.returncode == 0 and json.loads(added.stdout)["state"] == "running", added.stderr
    assert json.loads(added.stdout)["analytics"]["zones"] == [{"name": "step", "points": [[0, 200], [100, 200],
                                                                                         [100, 240]]}]
    listed = cli.run("streams", "--url", service.url, "ls")
    assert listed.returncode == 0 and listed.stdout.split()[:2] == ["door", "running"]
    again = cli.run("streams", "--url", service.url, "add", str(tmp_path / "clip.mp4"), "--id", "door")
    assert again.returncode == 2 and "409" in again.stderr and "exists already" in again.stderr
    removed = cli.run("streams", "--url", service.url, "rm", "door")
    assert removed.returncode == 0 and json.loads(removed.stdout)["state"] == "removed"
    assert service.stop() == 0
    gone = cli.run("streams", "--url", service.url, "ls")
    assert gone.returncode == 1 and "cannot reach the service" in gone.stderr


def test_the_start_of_an_ended_stream_sent_again_is_a_repeat_and_a_new_stream_of_its_id_is_not() -> None:
    admission = Admission(None)
    first = dataclasses.replace(_start("a"), started=1000.0)
    assert admission.admit(first) is not None
    admission.admit(EndOfStream("a", 0))
    assert admission.admit(first) is None  # sent again after a restart upstream: not a new stream
    again = dataclasses.replace(first, started=2000.0)
    assert admission.admit(again) is not None  # the id added again
