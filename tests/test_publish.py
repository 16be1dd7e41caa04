"""Publishing detections over real ZeroMQ PUB/SUB to subscribers outside the pipeline."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import zmq

from conftest import TEST_MODEL, Collector, assert_clean_error, free_endpoint, make_clip, read_jsonl
from streamseg.client import Subscriber
from streamseg.masks import decode_rle

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "schemas" / "detections-v1.schema.json").read_text())


def test_a_subscriber_gets_one_valid_message_per_frame(cli, clip: Path, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    collector = Collector(endpoint)
    collector.start()
    result = cli.run("run", str(clip), "--masks", "m.jsonl", "--publish", endpoint, *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    collector.join(30)
    assert not collector.is_alive()
    messages = collector.messages
    for message in messages:
        jsonschema.validate(message, SCHEMA)
    kinds = [m["type"] for m in messages]
    assert kinds == ["stream_start"] + ["frame"] * 48 + ["end_of_stream"]
    frames = [m for m in messages if m["type"] == "frame"]
    assert [m["frame"] for m in frames] == list(range(48))
    # the same content as the masks file, mask for mask
    for published, written in zip(frames, read_jsonl(tmp_path / "m.jsonl")):
        assert published["instances"] == written["instances"] and published["pts"] == written["pts"]
        for inst in published["instances"]:
            assert decode_rle(inst["mask"]).shape == (242, 322)
    assert messages[-1]["reason"] == "end" and messages[-1]["frames"] == 48
    assert messages[0]["categories"][0] == "__background__" and messages[0]["width"] == 322


def test_python_client_yields_frames_with_numpy_masks(cli, clip: Path) -> None:
    endpoint = free_endpoint()
    frames = []

    def read() -> None:
        with Subscriber(endpoint, topic="0", timeout_s=60) as sub:
            frames.extend(sub)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    result = cli.run("run", str(clip), "--publish", endpoint, *TEST_MODEL)
    assert result.returncode == 0, result.stderr
    reader.join(30)
    assert [f.frame for f in frames] == list(range(48))
    inst = next(i for f in frames for i in f.instances)
    assert inst.mask.dtype == bool and inst.mask.shape == (242, 322)
    assert inst.box.shape == (4,) and inst.keypoints.shape == (5, 3) and inst.class_name


def test_subscribe_cli_saves_json_lines(cli, clip: Path, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    subscriber = cli.start("subscribe", endpoint, "--topic", "0", "-o", "sub.jsonl", "--timeout", "60")
    try:
        time.sleep(0.5)
        result = cli.run("run", str(clip), "--publish", endpoint, *TEST_MODEL)
        assert result.returncode == 0, result.stderr
        _, stderr = subscriber.communicate(timeout=30)
    finally:
        subscriber.kill()
    assert subscriber.returncode == 0, stderr
    assert "48 frames received" in stderr
    assert len([m for m in read_jsonl(tmp_path / "sub.jsonl") if m["type"] == "frame"]) == 48


def test_late_and_stalled_subscribers(cli, tmp_path: Path) -> None:
    clip = make_clip(tmp_path / "long.mp4", frames=200)
    endpoint = free_endpoint()
    # a subscriber that never reads, with the smallest queue: it must not hold the pipeline back
    ctx = zmq.Context()
    stalled = ctx.socket(zmq.SUB)
    stalled.setsockopt(zmq.RCVHWM, 1)
    stalled.setsockopt(zmq.LINGER, 0)
    stalled.setsockopt(zmq.SUBSCRIBE, b"")
    stalled.connect(endpoint)
    try:
        # a small publisher queue, so the stalled subscriber's fills up early in the run
        proc = cli.start("run", str(clip), "--masks", "m.jsonl", "--publish", endpoint, *TEST_MODEL,
                         "--set", "output.publish_hwm=5")
        deadline = time.monotonic() + 60
        while (not (tmp_path / "m.jsonl").exists() or (tmp_path / "m.jsonl").read_text().count("\n") < 40):
            assert time.monotonic() < deadline and proc.poll() is None, "no progress"
            time.sleep(0.05)
        late = Collector(endpoint)  # joins mid-run
        late.start()
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        late.join(30)
    finally:
        stalled.close()
        ctx.term()
    frames = [m["frame"] for m in late.messages if m["type"] == "frame"]
    assert frames and frames[0] > 0 and frames[-1] == 199
    assert frames == list(range(frames[0], 200))  # from when it joined, nothing missing after
    assert late.messages[-1]["type"] == "end_of_stream"
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 200


def test_publish_endpoint_in_use_is_a_clear_error(cli, clip: Path) -> None:
    ctx = zmq.Context()
    holder = ctx.socket(zmq.PUB)
    holder.setsockopt(zmq.LINGER, 0)
    port = holder.bind_to_random_port("tcp://127.0.0.1")
    try:
        result = cli.run("run", str(clip), "--publish", f"tcp://127.0.0.1:{port}", *TEST_MODEL, timeout=60)
    finally:
        holder.close()
        ctx.term()
    assert_clean_error(result, "publish:", "Address already in use")
    assert result.returncode == 5
    assert cli.leftovers() == []


def test_client_ignores_foreign_messages() -> None:
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    endpoint = f"tcp://127.0.0.1:{pub.bind_to_random_port('tcp://127.0.0.1')}"
    sub = Subscriber(endpoint, timeout_s=0.5, until_end=False)
    try:
        time.sleep(0.3)
        pub.send_multipart([b"0", b"not json"])
        pub.send_multipart([b"0", json.dumps({"schema": "other", "version": 1}).encode()])
        good = {"schema": "streamseg.detections", "version": 1, "type": "frame", "stream": "0", "frame": 0,
                "pts": 0, "time": 0.0, "width": 4, "height": 4, "instances": []}
        pub.send_multipart([b"0", json.dumps(good).encode()])
        got = list(sub.messages())
    finally:
        sub.close()
        pub.close()
        ctx.term()
    assert got == [good] and sub.rejected == 2
    assert np.asarray(got[0]["instances"]).size == 0


def test_curve_lets_in_only_subscribers_with_an_allowed_key(cli, clip: Path, tmp_path: Path) -> None:
    keys, allowed = tmp_path / "keys", tmp_path / "allowed"
    for name in ("server", "alice", "mallory"):
        assert cli.run("keys", str(keys), "--name", name).returncode == 0
    allowed.mkdir()
    (allowed / "alice.key").write_bytes((keys / "alice.key").read_bytes())
    assert oct((keys / "alice.key_secret").stat().st_mode & 0o777) == "0o600"
    assert cli.run("keys", str(keys), "--name", "alice").returncode == 2  # never overwrites a key
    endpoint = free_endpoint()
    collectors = {
        "alice": Collector(endpoint, timeout_s=45, curve=(keys / "alice.key_secret", keys / "server.key")),
        "mallory": Collector(endpoint, timeout_s=45, curve=(keys / "mallory.key_secret", keys / "server.key")),
        "plain": Collector(endpoint, timeout_s=45),
    }
    for collector in collectors.values():
        collector.start()
    result = cli.run("run", str(clip), "--masks", "m.jsonl", "--publish", endpoint, *TEST_MODEL,
                     "--set", f"output.publish_curve_secret={keys / 'server.key_secret'}",
                     "--set", f"output.publish_curve_clients={allowed}")
    assert result.returncode == 0, result.stderr
    for collector in collectors.values():
        collector.join(60)
    assert len(collectors["alice"].of_type("frame")) == 48
    assert collectors["mallory"].messages == [] and collectors["plain"].messages == []
