"""Stages on other hosts: workers that join over tcp://, vanish, are replaced; CURVE keeps strangers out.

The "other host" is another process reached over tcp:// on loopback, started with
``streamseg worker`` exactly as on a second machine.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import zmq
from conftest import (
    REPEATABLE,
    TEST_MODEL,
    assert_same_outputs,
    decoded,
    digest,
    free_endpoint,
    free_port,
    masks_lines,
    read_jsonl,
    wait_for,
)


class _Lines(threading.Thread):
    """Reads a process's stderr as it comes, with the time each line arrived."""

    def __init__(self, stream: Any) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.lines: list[tuple[float, str]] = []

    def run(self) -> None:
        for line in self.stream:
            self.lines.append((time.monotonic(), line))

    def first(self, pattern: str) -> tuple[float, re.Match[str]] | None:
        for at, line in list(self.lines):
            found = re.search(pattern, line)
            if found:
                return at, found
        return None

    def text(self) -> str:
        return "".join(line for _, line in self.lines)


def _worker(cli, join: str, *args: str) -> subprocess.Popen[str]:
    """``streamseg worker`` in a folder of its own, as on another machine."""
    other = cli.cwd / "other-host"
    other.mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-m", "streamseg", "worker", join, *args], cwd=other, env=cli.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)


def _remote_run(cli, clip: Path, stage: str, join_port: int, *extra: str) -> tuple[subprocess.Popen[str], _Lines]:
    run = cli.start("run", str(clip), "-o", "out.mp4", "--masks", "m.jsonl", *TEST_MODEL, *REPEATABLE,
                    "--set", "transport.endpoints=tcp", "--set", f"transport.remote=[{stage}]",
                    "--set", f"transport.join_port={join_port}", *extra)
    lines = _Lines(run.stderr)
    lines.start()
    return run, lines


def test_a_stage_on_another_host_that_vanishes_is_noticed_in_seconds_and_a_new_worker_takes_over(
        cli, fault_clip: Path, undisturbed: dict[str, Any]) -> None:
    port = free_port()
    join = f"tcp://127.0.0.1:{port}"
    run, lines = _remote_run(cli, fault_clip, "infer", port, "--set", "runtime.heartbeat_timeout_s=2")
    first = second = None
    metrics_port = free_port()
    try:
        first = _worker(cli, join, "--metrics", f"127.0.0.1:{metrics_port}")
        wait_for(lambda: masks_lines(cli.cwd / "m.jsonl") >= 40 or run.poll() is not None, 120, "frames")
        assert run.poll() is None, lines.text()
        # a stage on another host serves its own metrics, with the names and labels of the service's
        inferred = _scraped(metrics_port, "streamseg_frames_total", stage="infer")
        assert inferred >= 40 and _scraped(metrics_port, "streamseg_batch_frames_count") >= 1
        first.send_signal(signal.SIGKILL)  # the host vanishes, without a word
        wait_for(lambda: lines.first("infer: the worker on .* stopped responding") is not None, 30, "the loss noticed")
        second = _worker(cli, join)
        run.wait(180)
        lines.join(10)
        second.wait(30)  # it leaves once the run is over
    finally:
        for proc in (run, first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
    assert run.returncode == 0, lines.text()
    # noticed by its silence once the 2 s allowed had passed (how soon: benchmarks/fault_detection.py)
    silent = re.search(r"infer: the worker on .* stopped responding \(no heartbeat for ([0-9.]+) s\)", lines.text())
    assert silent and float(silent.group(1)) >= 2.0, lines.text()
    assert second.returncode == 0, second.stderr.read()
    assert_same_outputs(cli.cwd, undisturbed)
    assert "restarted infer 1x: the worker on" in lines.text()
    assert cli.leftovers() == []


def _scraped(port: int, name: str, **labels: str) -> float:
    """The sum of the samples ``name`` with ``labels`` at a worker's metrics endpoint, parsed by prometheus_client."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == name and labels.items() <= sample.labels.items())


def _keys(folder: Path, name: str) -> tuple[Path, Path]:
    from streamseg.security import make_keys

    public, secret = make_keys(str(folder), name)
    return Path(public), Path(secret)


def test_with_curve_only_a_worker_with_an_allowed_key_joins_and_a_stranger_gets_nothing(
        cli, fault_clip: Path, undisturbed: dict[str, Any], tmp_path: Path) -> None:
    server_public, server_secret = _keys(tmp_path / "keys", "server")
    allowed = tmp_path / "allowed"
    worker_public, worker_secret = _keys(allowed, "worker")
    _, stranger_secret = _keys(tmp_path / "stranger", "stranger")
    port, base = free_port(), free_port()
    join = f"tcp://127.0.0.1:{port}"
    run, lines = _remote_run(cli, fault_clip, "masks", port, "--set", f"transport.base_port={base}",
                             "--set", f"transport.curve_secret={server_secret}",
                             "--set", f"transport.curve_clients={allowed}")
    ctx = zmq.Context()
    try:
        stranger = _worker(cli, join, "--curve-key", str(stranger_secret), "--curve-server-key", str(server_public),
                           "--wait", "4")
        _, stranger_err = stranger.communicate(timeout=60)
        assert stranger.returncode == 2 and "no stage from the supervisor" in stranger_err
        # a peer without keys at the links themselves: it says hello as the model would, and waits
        intruders = []
        for offset in range(4):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, b"infer")
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(f"tcp://127.0.0.1:{base + offset}")
            sock.send_multipart([b"H", json.dumps({"v": 1, "credit": 100, "fresh": True}).encode()])
            intruders.append(sock)
        good = _worker(cli, join, "--curve-key", str(worker_secret), "--curve-server-key", str(server_public))
        run.wait(180)
        lines.join(10)
        assert good.wait(30) == 0, good.stderr.read()
        assert not any(sock.poll(0) for sock in intruders), "a peer without a key received something"
    finally:
        for proc in (run,):
            if proc.poll() is None:
                proc.kill()
        ctx.destroy(linger=0)
    assert run.returncode == 0, lines.text()
    # the mask writer ran "over there": its file is on that host, relative to the worker's folder
    assert read_jsonl(cli.cwd / "other-host" / "m.jsonl") == undisturbed["masks"]
    assert digest(decoded(cli.cwd / "out.mp4")) == digest(undisturbed["video"])


def test_a_worker_of_another_join_protocol_is_told_why_and_given_nothing() -> None:
    from streamseg.remote import PROTOCOL, STOP, JoinServer

    ctx = zmq.Context()
    endpoint = free_endpoint()
    server = JoinServer(ctx, endpoint, None, [])
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(endpoint)
    try:
        worker.send_multipart([b"JOIN", json.dumps({"v": PROTOCOL - 1, "stages": []}).encode()])
        requests: list = []
        deadline = time.monotonic() + 10
        while not worker.poll(50) and time.monotonic() < deadline:
            requests += server.requests()
        assert requests == []  # not a join request this run hands stages to
        kind, body = worker.recv_multipart()
        assert kind == STOP and f"join protocol {PROTOCOL - 1}" in json.loads(body)["why"]
    finally:
        worker.close()
        server.close()
        ctx.term()
