"""The wire format: round trips, zero-copy receive over a real socket, and rejection of bad input."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
import zmq

from streamseg.errors import MessageError
from streamseg.runtime import codec
from streamseg.runtime.messages import (
    Batch,
    Detections,
    EndOfStream,
    Frame,
    FrameResult,
    MaskRegions,
    StreamStart,
)

TB = Fraction(1, 30000)


def _frame(index: int = 0, h: int = 6, w: int = 8) -> Frame:
    image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
    return Frame("cam", index, index * 1001, TB, image)


def _result(n: int = 2, h: int = 6, w: int = 8, keypoints: bool = True) -> FrameResult:
    rng = np.random.default_rng(0)
    det = Detections(rng.random((n, 4), dtype=np.float32), rng.random(n, dtype=np.float32),
                     np.arange(1, n + 1, dtype=np.int64), MaskRegions.from_full(rng.random((n, h, w)) > 0.5),
                     rng.random((n, 5, 3), dtype=np.float32) if keypoints else None, ("a", "b")[:n])
    return FrameResult("cam", 3, 3003, TB, w, h, det, _frame(3, h, w).image)


MESSAGES = [
    StreamStart("cam", 8, 6, Fraction(30000, 1001), TB, 48, "clip.mp4", True),
    _frame(),
    Batch((_frame(0), _frame(1))),
    _result(),
    _result(keypoints=False),
    FrameResult("cam", 0, 0, TB, 8, 6, Detections.empty(6, 8)),  # a frame with no detections
    EndOfStream("cam", 48, "truncated", 2, "input ended early"),
]


def _equal(a: object, b: object) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, tuple):
        return isinstance(b, tuple) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    parts = [bytes(p) for p in codec.encode(message)]
    assert _equal(codec.decode(parts), message)


def test_round_trip_over_a_real_socket_without_copies() -> None:
    ctx = zmq.Context()
    push, pull = ctx.socket(zmq.PUSH), ctx.socket(zmq.PULL)
    try:
        for s in (push, pull):
            s.setsockopt(zmq.LINGER, 0)
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        push.connect(f"tcp://127.0.0.1:{port}")
        big = Frame("cam", 0, 0, TB, np.random.default_rng(1).integers(0, 255, (1080, 1920, 3), dtype=np.uint8))
        push.send_multipart(codec.encode(big), copy=False)
        assert pull.poll(5000), "nothing arrived"
        decoded = codec.decode(pull.recv_multipart(copy=False))
        assert _equal(decoded, big)
        assert not decoded.image.flags.owndata  # a view on the received buffer, not a copy
    finally:
        push.close()
        pull.close()
        ctx.term()


def _header(parts: list[bytes]) -> dict:
    return json.loads(parts[0])


@pytest.mark.parametrize("mutate, why", [
    (lambda p: [b"not json"] + p[1:], "not JSON"),
    (lambda p: [json.dumps({**_header(p), "v": 99}).encode()] + p[1:], "version"),
    (lambda p: p[:1], "arrays"),
    (lambda p: p + [b"extra"], "arrays"),
    (lambda p: [p[0], p[1][:-1]], "bytes"),
    (lambda p: [json.dumps({**_header(p), "arrays": [["object", [6, 8, 3]]]}).encode(), p[1]], "bad spec"),
    (lambda p: [json.dumps({**_header(p), "msg": {**_header(p)["msg"], "@": "Evil"}}).encode(), p[1]], "unknown"),
    (lambda p: [json.dumps({**_header(p), "msg": {**_header(p)["msg"], "index": "3"}}).encode(), p[1]], "index"),
    (lambda p: [json.dumps({**_header(p), "msg": {**_header(p)["msg"], "extra": 1}}).encode(), p[1]], "unknown fields"),
    (lambda p: [json.dumps({**_header(p), "arrays": [["uint8", [6, 24]]]}).encode(), p[1]], "dimensions"),
    (lambda p: [json.dumps({**_header(p), "msg": {**_header(p)["msg"], "image": {"#": 5}}}).encode(), p[1]], "reference"),
    (lambda p: [json.dumps({**_header(p), "msg": 7}).encode(), p[1]], "typed object"),
    (lambda p: [], "empty"),
])
def test_malformed_messages_are_rejected(mutate: object, why: str) -> None:
    parts = [bytes(p) for p in codec.encode(_frame())]
    with pytest.raises(MessageError, match=why):
        codec.decode(mutate(parts))  # type: ignore[operator]


def test_inconsistent_detections_are_rejected() -> None:
    parts = [bytes(p) for p in codec.encode(_result(n=2))]
    header = _header(parts)
    header["arrays"][1] = ["float32", [3]]  # scores: 3 instances where boxes say 2
    parts[2] = np.zeros(3, np.float32).tobytes()
    with pytest.raises(MessageError, match="instance count"):
        codec.decode([json.dumps(header).encode()] + parts[1:])


def test_mask_regions_that_reach_outside_the_frame_or_disagree_with_their_bits_are_rejected() -> None:
    good = MaskRegions.from_full(np.ones((1, 6, 8), bool))
    assert good.regions.tolist() == [[0, 0, 8, 6]] and good.full().all()
    with pytest.raises(MessageError, match="outside the frame"):
        MaskRegions(good.bits, np.array([[1, 0, 8, 6]], np.int64), 6, 8)
    with pytest.raises(MessageError, match="sizes"):
        MaskRegions(good.bits[:-1], good.regions, 6, 8)
