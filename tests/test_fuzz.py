"""Hostile input on a stage's socket: thousands of random and mutated messages at a running worker."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
from fractions import Fraction
from pathlib import Path

import numpy as np
import zmq

from conftest import read_jsonl
from streamseg import codec
from streamseg.messages import Detections, EndOfStream, FrameResult, StreamStart
from streamseg.models import model_info
from streamseg.worker import START_SIGNAL, WorkerSpec, worker_main

TB = Fraction(1, 30)
H, W = 24, 32


def _result(i: int, stream: str = "s") -> FrameResult:
    masks = np.zeros((1, H, W), bool)
    masks[0, 2:10, 3:12] = True
    det = Detections(np.array([[3, 2, 12, 10]], np.float32), np.array([0.9], np.float32),
                     np.array([1], np.int64), masks, np.zeros((1, 5, 3), np.float32))
    return FrameResult(stream, i, i, TB, W, H, det)


def _malformed(rng: random.Random, good: list[bytes]) -> list[bytes]:
    """One malformed message: random bytes, a mutated good one, or a well-formed lie."""
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


def test_a_stage_survives_a_fuzzed_socket_and_still_processes_good_messages(tmp_path: Path) -> None:
    ctx = zmq.Context()
    events = ctx.socket(zmq.PULL)
    events.bind(f"ipc://{tmp_path}/events")
    peers = []
    for name in ("a", "b"):  # upstream peers: one sends the fuzz, one an oversized message
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, 100)
        sock.setsockopt(zmq.SNDTIMEO, 20_000)  # a worker that died stops reading: fail, never hang
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(f"ipc://{tmp_path}/{name}")
        peers.append(sock)
    spec = WorkerSpec("masks", "streamseg.stages.maskwriter:MaskWriterStage",
                      dict(path=str(tmp_path / "m.jsonl"), model_info=model_info("tiny-random").to_dict()),
                      events=f"ipc://{tmp_path}/events", inputs=tuple(f"ipc://{tmp_path}/{n}" for n in "ab"),
                      max_msg_bytes=1 << 20)
    worker = mp.get_context("spawn").Process(target=worker_main, args=(spec,), daemon=True)
    worker.start()
    try:
        assert events.poll(60_000), "the worker did not start"
        assert json.loads(events.recv())["event"] == "ready"
        os.kill(worker.pid, START_SIGNAL)  # not a source: the start signal must be harmless

        rng = random.Random(0)
        fuzz, good_frames = 0, 0
        send = peers[0].send_multipart
        send(codec_bytes(StreamStart("s", W, H, Fraction(30), TB, 0, "x", False)))
        template = codec_bytes(_result(0))
        for i in range(3000):
            if i % 300 == 0:  # a good frame now and then, in order
                send(codec_bytes(_result(good_frames)))
                good_frames += 1
            send(_malformed(rng, template))
            fuzz += 1
        peers[1].send_multipart([b"x" * (2 << 20)])  # over ZMQ_MAXMSGSIZE: that peer is dropped
        send(codec_bytes(EndOfStream("intruder", 0)))  # an end for a stream that is not open
        fuzz += 1
        send(codec_bytes(_result(good_frames)))
        good_frames += 1
        send(codec_bytes(EndOfStream("s", good_frames)))
        done = None
        while events.poll(60_000):
            event = json.loads(events.recv())
            if event["event"] in ("done", "error"):
                done = event
                break
        assert done is not None and done["event"] == "done", done
        assert done["rejected"] == fuzz
        assert done["counters"]["frames"] == good_frames
        records = read_jsonl(tmp_path / "m.jsonl")
        assert [r["frame"] for r in records] == list(range(good_frames))
        assert all(len(r["instances"]) == 1 for r in records)
        worker.join(10)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
        for sock in (*peers, events):
            sock.close()
        ctx.term()
