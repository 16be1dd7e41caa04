"""Hostile peers on a stage's sockets: thousands of random and mutated messages at running workers."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from conftest import read_jsonl

from streamseg.config import InputConfig
from streamseg.models import model_info
from streamseg.runtime import codec
from streamseg.runtime.messages import (
    Detections,
    EndOfStream,
    FrameResult,
    MaskRegions,
    StreamStart,
)
from streamseg.runtime.process import worker_main
from streamseg.runtime.spec import START_SIGNAL, WorkerSpec

TB = Fraction(1, 30)
H, W = 24, 32


def _result(i: int, stream: str = "s") -> FrameResult:
    masks = np.zeros((1, H, W), bool)
    masks[0, 2:10, 3:12] = True
    det = Detections(np.array([[3, 2, 12, 10]], np.float32), np.array([0.9], np.float32),
                     np.array([1], np.int64), MaskRegions.from_full(masks), np.zeros((1, 5, 3), np.float32))
    return FrameResult(stream, i, i, TB, W, H, det)


def _malformed(rng: random.Random, good: list[bytes]) -> list[bytes]:
    """One malformed message (codec parts): random bytes, a mutated good one, or a well-formed lie."""
    kind = rng.randrange(10)
    header = json.loads(good[0])
    if kind == 0:
        return [rng.randbytes(rng.randrange(0, 300))]
    if kind == 1:  # one flipped byte in the header, arrays kept
        raw = bytearray(good[0])
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        try:
            if codec.decode([bytes(raw), *good[1:]]) is not None:
                raw[:1] = b"]"  # still valid after the flip: break it for sure
        except Exception:  # noqa: BLE001 - malformed, as wanted
            pass
        return [bytes(raw), *good[1:]]
    if kind == 2:  # an array shorter than announced
        return [good[0], good[1][:-1], *good[2:]]
    if kind == 3:  # a huge shape announced over a few bytes (must not allocate)
        header["arrays"][0][1] = [1 << 40, 1 << 20]
    elif kind == 4:
        header["arrays"][0][0] = "object"
    elif kind == 5:
        header["msg"]["@"] = "os.system"
    elif kind == 6:
        header["msg"]["evil"] = 1
    elif kind == 7:  # a result of a stream that never started
        header["msg"]["stream_id"] = "intruder"
    elif kind == 8:  # deep nesting
        return [b"[" * 100_000 + b"]" * 100_000, *good[1:]]
    else:  # a score out of range inside a valid structure (parts: header, boxes, scores, ...)
        return [good[0], good[1], np.array([7.0], np.float32).tobytes(), *good[3:]]
    return [json.dumps(header).encode(), *good[1:]]


def codec_bytes(message: object) -> list[bytes]:
    return [bytes(p) for p in codec.encode(message)]


class _Upstream:
    """A sender that ignores the rules: binds where the worker connects, and sends what it likes."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.ROUTER)
        # a ROUTER drops what it cannot queue: no limit here, or a worker slowed down by a loaded machine
        # would "lose" messages that were never sent (the count of rejected ones below is exact)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 20_000)  # a worker that died stops reading: fail, never hang
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind(endpoint)
        self.peer = b""
        self.seq = 0
        self.done: set[int] = set()

    def wait_for_hello(self) -> None:
        assert self.sock.poll(60_000), "the worker did not say hello"
        self.peer, kind, _ = self.sock.recv_multipart()
        assert kind == b"H"

    def send(self, parts: list[bytes]) -> int:
        self.seq += 1
        self.sock.send_multipart([self.peer, b"M", self.seq.to_bytes(8, "little"), *parts])
        return self.seq

    def send_raw(self, frames: list[bytes]) -> None:
        self.sock.send_multipart([self.peer, *frames])

    def collect(self) -> None:
        while self.sock.poll(0):
            _, kind, body = self.sock.recv_multipart()
            if kind == b"D":
                self.done.update(json.loads(body))


def _spawn(spec: WorkerSpec) -> Any:
    worker = mp.get_context("spawn").Process(target=worker_main, args=(spec,), daemon=True)
    worker.start()
    return worker


def _until_done(events: zmq.Socket, upstream: _Upstream | None = None) -> dict[str, Any]:
    """The worker's final event (reading what ``upstream`` is sent meanwhile, as a sender must)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if upstream is not None:
            upstream.collect()
        if events.poll(50):
            event = json.loads(events.recv())
            if event["event"] in ("done", "error"):
                return event
    raise AssertionError("the worker neither finished nor failed")


def test_a_stage_survives_a_fuzzed_socket_and_still_processes_good_messages(tmp_path: Path) -> None:
    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    events.bind(f"ipc://{tmp_path}/events")
    peers = [_Upstream(ctx, f"ipc://{tmp_path}/{name}") for name in "ab"]  # one fuzzes, one sends too much
    spec = WorkerSpec("masks", "masks", None,
                      dict(path=str(tmp_path / "m.jsonl"), model_info=model_info("tiny-random").to_dict()),
                      events=f"ipc://{tmp_path}/events", inputs=tuple(f"ipc://{tmp_path}/{n}" for n in "ab"),
                      max_msg_bytes=1 << 20)
    worker = _spawn(spec)
    try:
        for peer in peers:
            peer.wait_for_hello()
        os.kill(worker.pid, START_SIGNAL)  # not a source: the start signal must be harmless
        rng = random.Random(0)
        fuzz, good_frames, good_seqs = 0, 0, []
        upstream = peers[0]
        good_seqs.append(upstream.send(codec_bytes(StreamStart("s", W, H, Fraction(30), TB, 0, "x", False))))
        template = codec_bytes(_result(0))
        for i in range(3000):
            if i % 300 == 0:  # a good frame now and then, in order
                good_seqs.append(upstream.send(codec_bytes(_result(good_frames))))
                good_frames += 1
            if i % 10 == 9:  # not even a link message: a bad kind, a short sequence number, one part
                upstream.send_raw(rng.choice([[b"X", b"12345678", b"{}"], [b"M", b"123"], [b"M"]]))
            else:
                upstream.send(_malformed(rng, template))
            fuzz += 1
            upstream.collect()
        peers[1].send([b"x" * (2 << 20)])  # over ZMQ_MAXMSGSIZE: the worker drops that connection
        upstream.send(codec_bytes(EndOfStream("intruder", 0)))  # an end for a stream that is not open
        fuzz += 1
        good_seqs.append(upstream.send(codec_bytes(_result(good_frames))))
        good_frames += 1
        good_seqs.append(upstream.send(codec_bytes(EndOfStream("s", good_frames))))
        done = _until_done(events, upstream)
        deadline = time.monotonic() + 10
        assert done["event"] == "done", done
        assert done["rejected"] == fuzz
        assert done["counters"]["frames"] == good_frames
        records = read_jsonl(tmp_path / "m.jsonl")
        assert [r["frame"] for r in records] == list(range(good_frames))
        assert all(len(r["instances"]) == 1 for r in records)
        while worker.is_alive() and time.monotonic() < deadline:
            upstream.collect()
            worker.join(0.05)
        assert worker.exitcode == 0
        upstream.collect()
        assert set(good_seqs) <= upstream.done  # every good message was acknowledged as done
        assert len(upstream.done) >= 2700  # and so were the rejected ones (bad link frames have no number)
    finally:
        if worker.is_alive():
            worker.kill()
        for sock in (*(p.sock for p in peers), events):
            sock.close()
        ctx.term()


def test_a_sender_survives_hostile_control_messages_and_its_receiver_gets_everything(tmp_path: Path,
                                                                                    clip: Path) -> None:
    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    events.bind(f"ipc://{tmp_path}/events")
    endpoint = f"ipc://{tmp_path}/frames"
    spec = WorkerSpec("decode", "decode", InputConfig(), dict(source=str(clip), stream_id="0"),
                      events=f"ipc://{tmp_path}/events", outputs={"frames": endpoint})
    worker = _spawn(spec)
    receiver = ctx.socket(zmq.DEALER)  # plays the batcher, by the rules
    receiver.setsockopt(zmq.IDENTITY, b"batch")
    receiver.setsockopt(zmq.LINGER, 0)
    hostile = ctx.socket(zmq.DEALER)
    hostile.setsockopt(zmq.LINGER, 0)
    hostile.setsockopt(zmq.SNDTIMEO, 20_000)
    try:
        receiver.connect(endpoint)
        hostile.connect(endpoint)
        receiver.send_multipart([b"H", json.dumps({"v": 1, "credit": 4, "fresh": True}).encode()])
        rng = random.Random(1)
        garbage = [lambda: [rng.randbytes(rng.randrange(1, 50))],
                   lambda: [b"H", b"not json"], lambda: [b"H", b'{"v": 99, "credit": 5}'],
                   lambda: [b"H", json.dumps([1, 2]).encode()], lambda: [b"D", b'["a", "b"]'],
                   lambda: [b"C", b"[" * 50_000], lambda: [b"Q", b"[]"], lambda: [b"D", b"[1]", b"extra"]]
        for _ in range(2000):
            hostile.send_multipart(rng.choice(garbage)())
        hostile.send_multipart([b"D", json.dumps(list(range(100))).encode()])  # acks for what it never got
        ready = json.loads(events.recv())
        assert ready["event"] == "ready"
        os.kill(worker.pid, START_SIGNAL)
        frames, deadline = [], time.monotonic() + 60
        while time.monotonic() < deadline:
            if not receiver.poll(1000):
                continue
            kind, seq, *parts = receiver.recv_multipart()
            if kind == b"W":
                continue  # the welcome after our hello
            assert kind == b"M"
            message = codec.decode(parts)
            receiver.send_multipart([b"D", json.dumps([int.from_bytes(seq, "little")]).encode()])
            frames.append(message)
            if isinstance(message, EndOfStream):
                break
        assert [type(m).__name__ for m in frames[:2]] == ["StreamStart", "Frame"]
        assert [m.index for m in frames[1:-1]] == list(range(48)) and frames[-1].frames == 48
        done = _until_done(events)
        assert done["event"] == "done" and done["rejected"] >= 1500, done
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
        for sock in (receiver, hostile, events):
            sock.close()
        ctx.term()
