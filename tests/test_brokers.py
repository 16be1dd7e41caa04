"""Records into MQTT and Redis Streams, against Debian's real ``mosquitto`` and ``redis-server``,
started here; one of each is killed and started again in the middle of a run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CLI, TEST_MODEL, free_port, make_clip, read_jsonl

MOSQUITTO, REDIS = shutil.which("mosquitto") or "/usr/sbin/mosquitto", shutil.which("redis-server")


class Server:
    """A broker process on ``127.0.0.1:port``, which can be killed and started again on that port."""

    def __init__(self, argv: list[str], port: int) -> None:
        self.argv, self.port = argv, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, f"{self.argv[0]} did not start"
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@pytest.fixture
def brokers() -> Any:
    if not (Path(MOSQUITTO).exists() and REDIS):
        if os.environ.get("STREAMSEG_REQUIRE_BROKERS") == "1":
            pytest.fail("mosquitto and redis-server are required here (.ci/run installs them)")
        pytest.skip("mosquitto and redis-server are not installed (.ci/run installs them)")
    mqtt_port, redis_port = free_port(), free_port()
    servers = {"mqtt": Server([MOSQUITTO, "-p", str(mqtt_port)], mqtt_port),
               "redis": Server([REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], redis_port)}
    yield servers
    for server in servers.values():
        server.kill()


class Subscriber:
    """An MQTT client subscribed to ``prefix/#`` (again after every reconnection), keeping every payload."""

    def __init__(self, port: int, prefix: str) -> None:
        import paho.mqtt.client as mqtt

        self.records: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda client, data, flags, rc, props: client.subscribe(f"{prefix}/#", qos=1)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        deadline = time.monotonic() + 10
        while not self.client.is_connected():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # subscribed

    def _message(self, client: Any, data: Any, message: Any) -> None:
        with self.lock:
            self.records.append(json.loads(message.payload))

    def frames(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r for r in self.records if r["type"] == "frame"]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _redis_frames(port: int) -> list[dict[str, Any]]:
    import redis

    entries = redis.Redis(port=port).xrange("streamseg:0")
    return [r for r in (json.loads(fields[b"record"]) for _, fields in entries) if r["type"] == "frame"]


def _same(records: list[dict[str, Any]], masks: list[dict[str, Any]]) -> None:
    """The published records are the masks file's: frame by frame, instance by instance."""
    assert [r["frame"] for r in records] == [m["frame"] for m in masks]
    for record, mask in zip(records, masks):
        assert record["instances"] == mask["instances"]


@pytest.mark.slow
def test_every_record_reaches_mqtt_and_redis_as_in_the_masks_file(cli: CLI, tmp_path: Path, brokers: Any) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=40)
    subscriber = Subscriber(brokers["mqtt"].port, "cams")
    try:
        result = cli.run("run", str(clip), "--masks", "m.jsonl", *TEST_MODEL,
                         "--set", f"output.mqtt=mqtt://127.0.0.1:{brokers['mqtt'].port}/cams",
                         "--set", f"output.redis=redis://127.0.0.1:{brokers['redis'].port}/0")
        assert result.returncode == 0, result.stderr
        masks = read_jsonl(tmp_path / "m.jsonl")
        deadline = time.monotonic() + 10
        while len(subscriber.frames()) < len(masks) and time.monotonic() < deadline:
            time.sleep(0.1)
        _same(subscriber.frames(), masks)
        _same(_redis_frames(brokers["redis"].port), masks)
        kinds = [r["type"] for r in subscriber.records]
        assert kinds[0] == "stream_start" and kinds[-1] == "end_of_stream" and "track_start" in kinds
        assert f"sent to mqtt://127.0.0.1:{brokers['mqtt'].port}/cams" in result.stderr
    finally:
        subscriber.close()


@pytest.mark.slow
def test_a_broker_that_goes_away_and_comes_back_neither_stalls_nor_ends_the_run(cli: CLI, tmp_path: Path,
                                                                               brokers: Any) -> None:
    clip = make_clip(tmp_path / "clip.mp4", frames=30)
    subscriber = Subscriber(brokers["mqtt"].port, "cams")
    try:
        run = cli.start("run", str(clip), "--masks", "m.jsonl", *TEST_MODEL, "--loop", "--live", "true",
                        "--duration", "14", "--set", f"output.mqtt=mqtt://127.0.0.1:{brokers['mqtt'].port}/cams",
                        "--set", f"output.redis=redis://127.0.0.1:{brokers['redis'].port}/0",
                        "--set", "output.broker_buffer=5")
        deadline = time.monotonic() + 60
        while len(subscriber.frames()) < 30:  # running, and reaching the broker
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1]
            time.sleep(0.1)
        for server in brokers.values():
            server.kill()
        before = max(r["frame"] for r in subscriber.frames())
        written = len(read_jsonl(tmp_path / "m.jsonl"))
        deadline = time.monotonic() + 60
        while len(read_jsonl(tmp_path / "m.jsonl")) < written + 30:  # the run goes on: beyond the buffer of 5
            assert run.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        restarted = read_jsonl(tmp_path / "m.jsonl")[-1]["frame"]
        for server in brokers.values():
            server.start()
        _, stderr = run.communicate(timeout=90)
        assert run.returncode == 0, stderr
        masks = read_jsonl(tmp_path / "m.jsonl")
        last = masks[-1]["frame"]
        # the records after the restart arrived: frames from after it, to near the run's end (a buffer of 5
        # also drops in the burst of track ends at the end, the oldest first: the last frames' may go)
        deadline = time.monotonic() + 15
        while max(r["frame"] for r in subscriber.frames()) < last - 30 and time.monotonic() < deadline:
            time.sleep(0.1)
        after = [r["frame"] for r in subscriber.frames() if r["frame"] > restarted]
        assert after and after[-1] >= last - 30, stderr
        stored = [r["frame"] for r in _redis_frames(brokers["redis"].port)]  # the new Redis: from its start
        assert stored and stored[-1] >= last - 30 and stored == sorted(stored) and stored[0] > before
        assert "records dropped" in stderr  # said while the brokers were away
        # the run did not wait for them: it wrote masks on while they were away
        assert any(before < m["frame"] <= restarted for m in masks)
    finally:
        subscriber.close()
