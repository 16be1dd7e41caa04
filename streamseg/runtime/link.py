"""Links between stages: at-least-once delivery with acknowledgements and credit-based flow control.

A link joins the output port of one stage (the sender) to the workers that read it (receivers)::

    sender: ROUTER, binds the port's endpoint   <──   receivers: one DEALER each, connected, named

The sender keeps every message it sent until the receiver says it is *done* with it, so when a
receiver dies or hangs and the supervisor starts a new one under the same name, what was in flight
to the old one is sent again, in order. Flow control is by credit: a receiver grants as many
messages as it will queue (``credit``), and a message it takes for processing gives one back, so
at most ``credit`` messages wait at each hop and a slow stage holds the ones before it back.

Protocol, version 1. Every ZeroMQ message on a link starts with a one-byte kind; JSON is UTF-8.

receiver -> sender
  ``H`` HELLO, on every (re)connection: ``{"v": 1, "credit": n, "fresh": bool, "open": [stream ids],
        "last": {stream: [index, pts]}}``. ``fresh``: a new receiver process; what the sender had in
        flight to a receiver of that name is lost with the old one and is sent again. ``last``: the
        newest frame received per stream, where a restarted source resumes after.
  ``C`` TAKEN, ``[seq, ...]``: taken from the queue (one credit back each).
  ``D`` DONE, ``[seq, ...]``: finished for good: written, or passed on and finished downstream
        (implies TAKEN). Until then the sender keeps the message.

sender -> receiver
  ``W`` WELCOME, the answer to a fresh HELLO: ``{"ended": [stream ids]}``, the streams whose end the
        link has delivered and seen done (a new receiver must not wait for them).
  ``M`` MESSAGE: an 8-byte little-endian sequence number, then the :mod:`streamseg.runtime.codec` parts.

A receiver may see a message twice (the sender restarted, or re-sent what a dead peer had taken);
the worker runtime drops repeats by stream position (:func:`message_keys`).

Endpoints: the sender binds and the receivers connect, unless the endpoint says otherwise in
CZMQ's notation, ``@tcp://...`` (bind) or ``>tcp://...`` (connect): a stage on another host
connects all of its sockets to the supervisor's host, whichever way its data flows.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from ..errors import MessageError
from . import codec, shm
from .messages import Batch, EndOfStream, Frame, FrameResult, StreamStart, StreamStatus

log = logging.getLogger(__name__)

PROTOCOL = 1
HELLO, TAKEN, DONE, WELCOME, MESSAGE = b"H", b"C", b"D", b"W", b"M"
SOCKET_HWM = 100_000
"""ZeroMQ's own queue limits on link sockets: far above any credit, so credit alone bounds the queues."""
RECONNECT_MS = 100
"""How soon a receiver tries again to reach a sender that went away (a restarted stage)."""
MAX_CONTROL_BYTES = 1 << 20
ACK_LINGER_MS = 5000

Key = tuple[str, int]
"""A message's position in its stream: ``(stream id, frame index)``; :data:`START`, :data:`STATUS`
and :data:`END` stand for the stream's start, status changes and end."""
START, STATUS, END = -1, -2, 1 << 62
BROADCAST = (StreamStart, StreamStatus, EndOfStream)
"""What every receiver of a port gets (frames go to one)."""


def message_keys(message: Any) -> tuple[Key, ...]:
    """The stream positions a message stands for (several for a :class:`Batch`)."""
    if isinstance(message, (Frame, FrameResult)):
        return ((message.stream_id, message.index),)
    if isinstance(message, Batch):
        return tuple((f.stream_id, f.index) for f in message.frames)
    if isinstance(message, StreamStart):
        return ((message.stream_id, START),)
    if isinstance(message, EndOfStream):
        return ((message.stream_id, END),)
    if isinstance(message, StreamStatus):
        return ((message.stream_id, STATUS),)
    return ()


SocketSetup = Callable[[zmq.Socket, str, bool], None]
"""Called with (socket, address, binds) before the socket binds or connects (CURVE keys)."""


def endpoint_role(endpoint: str, binds: bool) -> tuple[str, bool]:
    """``(address, binds)`` of an endpoint: ``@addr`` binds, ``>addr`` connects, a bare one takes ``binds``."""
    if endpoint[:1] in ("@", ">"):
        return endpoint[1:], endpoint[0] == "@"
    return endpoint, binds


def _attach(sock: zmq.Socket, endpoint: str, binds: bool, setup: SocketSetup) -> str:
    address, binds = endpoint_role(endpoint, binds)
    setup(sock, address, binds)
    if binds:
        sock.bind(address)
    else:
        sock.connect(address)
    return address


def _json(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


def _control(part: Any, what: str) -> Any:
    """A control message's JSON body; MessageError when it is not one."""
    raw = part.bytes if hasattr(part, "bytes") else bytes(part)
    if len(raw) > MAX_CONTROL_BYTES:
        raise MessageError(f"{what} of {len(raw)} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MessageError(f"{what} is not JSON: {exc}") from None


def _seqs(body: Any, what: str) -> list[int]:
    if not isinstance(body, list) or not all(type(s) is int for s in body):
        raise MessageError(f"{what} must be a list of sequence numbers")
    return body


@dataclass
class _Entry:
    """One message the sender keeps until it is done."""

    seq: int
    parts: list[Any]
    keys: tuple[Key, ...]
    message: Any
    to: bytes | None = None
    """Only for this receiver (a replayed stream start); None: any."""
    taken: bool = False
    own: list[str] = field(default_factory=list)
    """Shared-memory slots of ours that it names."""
    foreign: list[str] = field(default_factory=list)
    """Shared-memory slots of other workers that it names."""


@dataclass
class _Peer:
    """A receiver as the sender sees it."""

    credit: int = 0
    inflight: dict[int, _Entry] = field(default_factory=dict)
    """Sent and not done, in sequence order."""
    last: dict[str, list[int]] = field(default_factory=dict)
    """The newest frame it had of each stream when it last said hello."""


class Outbox:
    """The sending end of one output port: keeps each message until its receiver is done with it.

    ``on_sent(keys)`` and ``on_done(keys)`` tell the worker runtime which stream positions are in
    flight downstream, so that it can acknowledge its own inputs only when what came of them is done.
    ``on_ack(message, done)`` tells the stage when a receiver took a message (``done`` False; again if
    it went again, to a restarted receiver) and when it was done with it and all that came of it (True).
    With a ``pool`` (ipc links), large arrays travel in shared memory; a slot of ours is in use
    until the message that names it is done.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, port: str,
                 on_sent: Callable[[tuple[Key, ...]], None] = lambda keys: None,
                 on_done: Callable[[tuple[Key, ...]], None] = lambda keys: None,
                 on_reject: Callable[[MessageError], None] | None = None,
                 setup_socket: SocketSetup = lambda sock, address, binds: None,
                 pool: shm.SharedPool | None = None,
                 on_ack: Callable[[Any, bool], None] = lambda message, done: None) -> None:
        self.port = port
        self.on_ack = on_ack
        self.pool = pool
        self.on_reject = on_reject or (lambda exc: log.warning("%s: rejected a control message: %s", port, exc))
        self.endpoint = endpoint
        self.on_sent = on_sent
        self.on_done = on_done
        self.sock = ctx.socket(zmq.ROUTER)  # data-out: to the workers that read this port
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a vanished receiver is an error, not a silent drop
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted receiver takes over its name at once
        self.sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        self.sock.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, MAX_CONTROL_BYTES)  # receivers only send small control messages
        self.sock.setsockopt(zmq.LINGER, 1000)
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)  # when it connects (a stage on another host)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        _attach(self.sock, endpoint, True, setup_socket)
        self.peers: dict[bytes, _Peer] = {}
        self.queue: deque[_Entry] = deque()
        """Messages waiting for credit, in order."""
        self.seq = 0
        self.starts: dict[str, _Entry] = {}
        """The StreamStart of each open stream, replayed to a receiver that joins later."""
        self.ends: dict[str, _Entry] = {}
        """The EndOfStream of each stream whose end is not done yet, likewise replayed."""
        self.ended: list[str] = []
        """Streams whose end of stream is done on this link."""
        self.resent = 0

    # --- sending ----------------------------------------------------------------------------------
    def put(self, message: Any) -> None:
        """Send ``message`` when a receiver has credit; keep it until done.

        A stream's start, status and end go to every receiver (several workers may read the port,
        and each must know which streams are open and when they end); frames go to one."""
        if isinstance(message, BROADCAST) and self.peers:
            entries = [self._entry(message, to=name) for name in self.peers]
        else:
            entries = [self._entry(message)]  # whoever comes first; the others get it when they say hello
        if isinstance(message, StreamStart):
            self.starts.setdefault(message.stream_id, entries[0])
        if isinstance(message, EndOfStream):
            self.ends.setdefault(message.stream_id, entries[0])
        self.queue.extend(entries)
        self.dispatch()

    def _entry(self, message: Any, to: bytes | None = None) -> _Entry:
        self.seq += 1
        entry = _Entry(self.seq, [], message_keys(message), message, to)
        self._encode(entry)
        self.on_sent(entry.keys)
        return entry

    def _encode(self, entry: _Entry) -> None:
        encoded = codec.encode_shared(entry.message, self.pool)
        entry.parts, entry.own, entry.foreign = encoded.parts, encoded.own, encoded.foreign
        if self.pool is not None:
            self.pool.use(entry.own)

    def room(self) -> bool:
        """Whether a message put now would go out at once."""
        return not self.queue and any(p.credit > 0 for p in self.peers.values())

    @property
    def backlog(self) -> int:
        """Messages waiting for credit."""
        return len(self.queue)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing in flight: every receiver is done with everything."""
        return not self.queue and not any(p.inflight for p in self.peers.values())

    def dispatch(self) -> None:
        """Send what credit allows, strictly in order."""
        while self.queue:
            entry = self.queue[0]
            name = entry.to if entry.to is not None else self._choose()
            peer = self.peers.get(name) if name is not None else None
            if peer is None or peer.credit <= 0:
                return
            self.queue.popleft()
            peer.credit -= 1
            peer.inflight[entry.seq] = entry
            entry.taken = False
            try:
                self.sock.send_multipart([name, MESSAGE, entry.seq.to_bytes(8, "little"), *entry.parts],
                                         flags=zmq.NOBLOCK, copy=False)
            except zmq.ZMQError as exc:
                # gone (or its queue full): the message stays in flight and goes again to its successor
                log.info("%s: receiver %s unreachable: %s", self.port, name.decode(errors="replace"), exc.strerror)

    def _choose(self) -> bytes | None:
        """The receiver with the most credit (several workers may read one port)."""
        best = max(self.peers.items(), key=lambda item: item[1].credit, default=None)
        return best[0] if best is not None and best[1].credit > 0 else None

    # --- control messages from receivers ------------------------------------------------------------
    def service(self) -> None:
        """Read every pending control message (hello, taken, done), then send what credit allows."""
        while True:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            acks: list[tuple[Any, bool]] = []
            try:
                self._control(frames, acks)
            except MessageError as exc:
                self.on_reject(exc)
            for message, done in acks:  # after the acknowledgement is whole: the stage's errors are its own
                self.on_ack(message, done)
        self.dispatch()

    def _control(self, frames: list[Any], acks: list[tuple[Any, bool]]) -> None:
        if len(frames) != 3:
            raise MessageError(f"control message of {len(frames)} parts")
        name, kind, body = frames[0].bytes, frames[1].bytes, frames[2]
        if kind == HELLO:
            self._hello(name, _control(body, "hello"))
            return
        peer = self.peers.get(name)
        if kind not in (TAKEN, DONE):
            raise MessageError(f"unknown control kind {kind[:8]!r}")
        seqs = _seqs(_control(body, "acknowledgement"), "acknowledgement")
        if peer is None:
            return  # acknowledgements meant for an earlier sender process
        for seq in seqs:
            entry = peer.inflight.get(seq)
            if entry is None:
                continue  # from before a restart of this sender
            if not entry.taken:
                entry.taken = True
                peer.credit += 1
                acks.append((entry.message, False))
            if kind == DONE:
                del peer.inflight[seq]
                self._done(entry)
                acks.append((entry.message, True))

    def _done(self, entry: _Entry) -> None:
        if self.pool is not None:
            self.pool.release(entry.own)
        self.on_done(entry.keys)
        if isinstance(entry.message, EndOfStream):
            stream = entry.message.stream_id
            if not any(e is not entry and isinstance(e.message, EndOfStream) and e.message.stream_id == stream
                       for peer in self.peers.values() for e in peer.inflight.values()):
                self.starts.pop(stream, None)
                self.ends.pop(stream, None)
                if stream not in self.ended:
                    self.ended.append(stream)

    def _hello(self, name: bytes, hello: Any) -> None:
        if not isinstance(hello, dict) or hello.get("v") != PROTOCOL or type(hello.get("credit")) is not int:
            raise MessageError(f"bad hello {str(hello)[:80]}")
        peer = self.peers.setdefault(name, _Peer())
        peer.credit = max(0, hello["credit"])
        last = hello.get("last")
        peer.last = dict(last) if isinstance(last, dict) else {}
        if not hello.get("fresh"):
            return  # a receiver that lived on while this sender restarted: nothing of ours is lost
        lost = sorted(peer.inflight.values(), key=lambda e: e.seq)
        peer.inflight.clear()
        self.resent += len(lost)
        if lost:
            log.warning("%s: receiver %s restarted; sending its %d unfinished messages again",
                        self.port, name.decode(errors="replace"), len(lost))
        # a new receiver first learns the streams that are open (their starts), then gets what was
        # lost, then the ends on their way that it had no copy of
        known = set(hello.get("open") or ())

        def coming(kind: type) -> set[str]:
            """Streams whose ``kind`` message is on its way to this receiver (or to the first that has room)."""
            return {e.message.stream_id for e in [*lost, *self.queue]
                    if isinstance(e.message, kind) and e.to in (None, name)}

        has_start, has_end = coming(StreamStart), coming(EndOfStream)
        replay = [self._entry(e.message, to=name) for s, e in self.starts.items() if s not in known | has_start]
        ends = [self._entry(e.message, to=name) for s, e in self.ends.items() if s not in has_end]
        for entry in reversed(lost):
            if not isinstance(entry.message, BROADCAST):
                entry.to = None  # any receiver may take it over
            if not all(shm.exists(slot) for slot in entry.foreign):
                # a slot it names went with a worker that died: the arrays are still mapped here
                if self.pool is not None:
                    self.pool.release(entry.own)
                self._encode(entry)
            self.queue.appendleft(entry)
        self.queue.extendleft(reversed(replay))
        self.queue.extend(ends)
        try:
            self.sock.send_multipart([name, WELCOME, _json({"ended": self.ended})], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass
        self.dispatch()

    def resume_points(self) -> dict[str, list[int]]:
        """``stream -> [index, pts]`` of the newest frame the receivers had when they said hello."""
        out: dict[str, list[int]] = {}
        for peer in self.peers.values():
            for stream, point in peer.last.items():
                if (isinstance(point, list) and len(point) == 2 and all(type(v) is int for v in point)
                        and (stream not in out or point[0] > out[stream][0])):
                    out[stream] = point
        return out

    def heard(self) -> bool:
        """Whether any receiver has said hello."""
        return bool(self.peers)

    def close(self, linger: int | None = None) -> None:
        self.sock.close(linger=linger)


class Inbox:
    """The receiving end of one link: a named DEALER connected to an upstream port.

    ``state()`` gives what a hello carries (``open`` streams, ``last`` frames); the runtime reads
    messages with :meth:`receive` and acknowledges them with :meth:`taken` and :meth:`done`.
    """

    def __init__(self, ctx: zmq.Context, endpoint: str, name: str, credit: int, max_msg_bytes: int,
                 state: Callable[[], dict[str, Any]],
                 setup_socket: SocketSetup = lambda sock, address, binds: None) -> None:
        self.endpoint = endpoint
        self.credit = credit
        self.state = state
        self.sock = ctx.socket(zmq.DEALER)  # data-in: from one upstream port
        self.sock.setsockopt(zmq.IDENTITY, name.encode())
        self.sock.setsockopt(zmq.RCVHWM, SOCKET_HWM)
        self.sock.setsockopt(zmq.SNDHWM, SOCKET_HWM)
        self.sock.setsockopt(zmq.MAXMSGSIZE, max_msg_bytes)
        self.sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
        self.sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        # time for the last acknowledgements to reach the sender, which reads them while it waits for
        # them (a sender that exited needs them no more); an aborted worker closes with linger 0
        self.sock.setsockopt(zmq.LINGER, ACK_LINGER_MS)
        # every completed connection (also to a restarted sender) is answered with a hello
        self.monitor = self.sock.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED)
        _attach(self.sock, endpoint, False, setup_socket)
        self.fresh = True
        self.ended: list[str] = []
        """Streams the sender says are over (from its welcome)."""
        self._taken: list[int] = []
        self._done: list[int] = []
        self.untaken = 0

    def service(self) -> None:
        """Answer new connections with a hello; send pending acknowledgements."""
        while True:
            try:
                event = parse_monitor_message(self.monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._hello()
        self.flush()

    def _hello(self) -> None:
        state = self.state()
        hello = {"v": PROTOCOL, "credit": max(0, self.credit - self.untaken), "fresh": self.fresh,
                 "open": state.get("open", []), "last": state.get("last", {})}
        self.sock.send_multipart([HELLO, _json(hello)])
        self.fresh = False

    def receive(self) -> tuple[int, list[Any]] | None:
        """The next data message as ``(seq, codec parts)``, or None when none is waiting.

        A welcome is handled here; anything else malformed raises MessageError (the runtime counts it)."""
        try:
            frames = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        kind = frames[0].bytes if frames else b""
        if kind == WELCOME and len(frames) == 2:
            welcome = _control(frames[1], "welcome")
            ended = welcome.get("ended") if isinstance(welcome, dict) else None
            if not isinstance(ended, list) or not all(isinstance(s, str) for s in ended):
                raise MessageError("bad welcome")
            self.ended = ended
            return None
        if kind != MESSAGE or len(frames) < 3 or len(frames[1].bytes) != 8:
            raise MessageError(f"not a link message (kind {kind[:8]!r}, {len(frames)} parts)")
        self.untaken += 1
        return int.from_bytes(frames[1].bytes, "little"), frames[2:]

    def taken(self, seq: int) -> None:
        self.untaken = max(0, self.untaken - 1)
        self._taken.append(seq)

    def done(self, seq: int) -> None:
        self._done.append(seq)

    def flush(self) -> None:
        """Send the acknowledgements gathered since the last flush (done implies taken)."""
        if self._done:
            done = set(self._done)
            self._taken = [seq for seq in self._taken if seq not in done]
        for kind, seqs in ((DONE, self._done), (TAKEN, self._taken)):
            if seqs:
                self.sock.send_multipart([kind, _json(seqs)])
                seqs.clear()

    def close(self, linger: int | None = None) -> None:
        self.flush()
        self.monitor.close(linger=0)
        self.sock.close(linger=linger)
