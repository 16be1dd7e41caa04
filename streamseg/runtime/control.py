"""The supervisor's word to its workers in a service (``streamseg serve``), whose streams come and go.

In a run the plan fixes every link when it starts. In a service a decoder is started for each stream
added, and ended when it is removed, so the batcher's inputs change while it runs; and no worker
can know by counting streams when it is done. The supervisor binds a PUB socket; every worker of a
service subscribes to its own name and is told, again every :data:`REPEAT_S` and at once on a change,
the whole of what it should be doing (:class:`Orders`): which upstream endpoints to read, and whether
no more streams will come (``closing``). A worker that joins late or misses one message hears the
next: the orders are a state, not a series of commands.

Wire: a two-part message, the worker's name then ``{"v": 1, "inputs": [endpoint, ...], "closing":
bool}`` as UTF-8 JSON.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import zmq

log = logging.getLogger(__name__)

VERSION = 1
REPEAT_S = 0.5
"""How often the supervisor repeats every worker's orders."""
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Orders:
    """What one worker of a service should be doing."""

    inputs: tuple[str, ...] = ()
    """The upstream endpoints it reads (a stage's fixed inputs, or the decoders of the streams now)."""
    closing: bool = False
    """No stream will come any more: the worker ends once every stream it has has ended."""

    def encode(self, name: str) -> list[bytes]:
        return [name.encode(), json.dumps({"v": VERSION, "inputs": list(self.inputs),
                                           "closing": self.closing}).encode()]

    @classmethod
    def decode(cls, parts: list[bytes]) -> Orders | None:
        """The orders in a control message; None for one this version cannot read (logged)."""
        try:
            if len(parts) != 2 or len(parts[1]) > MAX_BYTES:
                raise ValueError(f"{len(parts)} parts")
            body = json.loads(parts[1])
            inputs = body["inputs"]
            if body.get("v") != VERSION or not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
                raise ValueError(str(body)[:80])
            return cls(tuple(inputs), bool(body.get("closing")))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("ignored a control message that cannot be read: %s", exc)
            return None


class Listener:
    """A worker's end: a SUB socket subscribed to the worker's own orders."""

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str) -> None:
        self.sock = ctx.socket(zmq.SUB)  # control: the supervisor's orders to this worker
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100)
        self.sock.setsockopt(zmq.SUBSCRIBE, name.encode())
        self.name = name.encode()
        self.sock.connect(endpoint)

    def latest(self) -> Orders | None:
        """The newest orders waiting, or None when none came since the last call."""
        newest = None
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return newest
            if parts and parts[0] == self.name:  # a prefix match could be another worker's (decode-1, decode-10)
                newest = Orders.decode(parts) or newest

    def close(self) -> None:
        self.sock.close()


class Publisher:
    """The supervisor's end: binds the PUB and says each worker's orders (now and then again)."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.PUB)  # control: orders to the workers of a service
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 1000)
        self.sock.bind(endpoint)
        self.orders: dict[str, Orders] = {}
        self.last_sent = 0.0

    def set(self, name: str, orders: Orders) -> None:
        """Give ``name`` these orders (sent now if they changed)."""
        if self.orders.get(name) != orders:
            self.orders[name] = orders
            self._send(name, orders)

    def forget(self, name: str) -> None:
        self.orders.pop(name, None)

    def repeat(self, now: float) -> None:
        """Say every worker's orders again when :data:`REPEAT_S` has passed."""
        if now - self.last_sent >= REPEAT_S:
            self.last_sent = now
            for name, orders in self.orders.items():
                self._send(name, orders)

    def _send(self, name: str, orders: Orders) -> None:
        try:
            self.sock.send_multipart(orders.encode(name), zmq.NOBLOCK)
        except zmq.Again:
            pass  # said again within REPEAT_S

    def close(self) -> None:
        self.sock.close()
