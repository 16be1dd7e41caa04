"""Brokers: the published records (``docs/publishing.md``, the same JSON as the ZeroMQ publisher's)
into MQTT (paho-mqtt, a topic per stream) and Redis Streams (redis-py, ``XADD`` with a ``MAXLEN``).

A broker is fed from a thread of its own, through a bounded buffer: the pipeline never waits for
it. A broker that goes away is reconnected with exponential backoff while records wait; beyond
``output.broker_buffer`` records the oldest are dropped, counted (``dropped_mqtt`` and
``dropped_redis`` in the summary, the metric ``streamseg_records_dropped_total``) and reported.
At the end of the run a broker gets ``BROKER_FLUSH_S`` to take what is still buffered.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Any, Iterable
from urllib.parse import urlsplit

from ..runtime.stage import Emit, Published
from .publish import PublishStage

log = logging.getLogger(__name__)

BACKOFF_S = (0.2, 5.0)
"""First and longest wait between two attempts to reach a broker that is away."""
BROKER_FLUSH_S = 5.0
"""How long a broker gets, at the end of the run, to take what is still buffered."""
BATCH = 200
"""Records sent to a broker at once."""


class Sink:
    """One broker: a bounded buffer of ``(stream, JSON record)`` and the thread that sends it on."""

    kind = ""

    def __init__(self, capacity: int) -> None:
        self.buffer: deque[tuple[int, str, bytes]] = deque()
        """``(number, stream, record)``, the oldest first."""
        self.number = 0
        self.capacity = capacity
        self.dropped = 0
        self.sent = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.closing = False
        self.deadline = float("inf")
        self.connected = False
        self.thread = threading.Thread(target=self._run, name=f"broker-{self.kind}", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, stream: str, record: bytes) -> int:
        """Queue one record; returns how many old ones were dropped to make room (0 or 1)."""
        with self.lock:
            self.number += 1
            self.buffer.append((self.number, stream, record))
            dropped = 0
            if len(self.buffer) > self.capacity:
                self.buffer.popleft()
                self.dropped += 1
                dropped = 1
        self.wake.set()
        return dropped

    def _run(self) -> None:
        delay = BACKOFF_S[0]
        while True:
            with self.lock:
                numbered = [self.buffer[i] for i in range(min(BATCH, len(self.buffer)))]
            batch = [(stream, record) for _, stream, record in numbered]
            if not batch:
                if self.closing:
                    return
                self.wake.wait(0.1)
                self.wake.clear()
                continue
            try:
                if not self.connected:
                    self._connect()
                    self.connected = True
                    log.info("%s: connected", self.kind)
                    delay = BACKOFF_S[0]
                done = self._send(batch)
            except Exception as exc:  # noqa: BLE001 - any client error: the broker is away, try again later
                if self.connected:
                    log.warning("%s: lost the broker (%s); reconnecting, records wait (at most %d)", self.kind,
                                type(exc).__name__, self.capacity)
                self.connected = False
                self._disconnect()
                if self.closing and time.monotonic() > self.deadline:
                    return
                if self.stopping.is_set():
                    time.sleep(0.1)  # the run's end: a few quick tries within BROKER_FLUSH_S
                else:
                    self.stopping.wait(delay)  # a wait that the end of the run cuts short
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            with self.lock:  # what went: those of the batch still here (put() may have dropped some meanwhile)
                last = numbered[done - 1][0] if done else 0
                while self.buffer and self.buffer[0][0] <= last:
                    self.buffer.popleft()
                self.sent += done

    def close(self) -> int:
        """Send what is buffered (for at most :data:`BROKER_FLUSH_S`), then disconnect; returns the
        records left unsent."""
        self.deadline = time.monotonic() + BROKER_FLUSH_S
        self.closing = True
        self.wake.set()
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(BROKER_FLUSH_S + 1.0)
        self._disconnect()
        with self.lock:
            return len(self.buffer)

    def _connect(self) -> None:
        raise NotImplementedError

    def _send(self, batch: list[tuple[str, bytes]]) -> int:
        """Send the batch's records in order; how many went (raises when the broker is away)."""
        raise NotImplementedError

    def _disconnect(self) -> None:
        pass


class MqttSink(Sink):
    """``mqtt://HOST[:PORT]/PREFIX``: each record to topic ``PREFIX/STREAM`` at QoS ``qos``."""

    kind = "mqtt"

    def __init__(self, url: str, qos: int, capacity: int) -> None:
        super().__init__(capacity)
        parts = urlsplit(url)
        self.host, self.port = parts.hostname, parts.port or 1883
        self.prefix = parts.path.strip("/") or "streamseg"
        self.user, self.password = parts.username, parts.password
        self.qos = qos
        self.client: Any = None

    def _connect(self) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if self.user:
            client.username_pw_set(self.user, self.password)
        client.max_inflight_messages_set(BATCH)
        client.connect(self.host, self.port, keepalive=10)
        client.loop_start()
        self.client = client

    def _send(self, batch: list[tuple[str, bytes]]) -> int:
        infos = [self.client.publish(f"{self.prefix}/{stream}", record, qos=self.qos) for stream, record in batch]
        deadline = time.monotonic() + 10.0
        for info in infos:  # each acknowledged (QoS 1, 2) or written to the socket (QoS 0)
            info.wait_for_publish(max(0.01, deadline - time.monotonic()))
            if not info.is_published():
                raise OSError(f"not acknowledged (rc {info.rc})")
        return len(batch)

    def _disconnect(self) -> None:
        if self.client is not None:
            try:
                self.client.loop_stop()
                self.client.disconnect()
            except Exception:  # noqa: BLE001 - already gone
                pass
            self.client = None


class RedisSink(Sink):
    """``redis://HOST[:PORT][/DB]``: each record ``XADD``-ed as field ``record`` to the stream named by
    ``key`` (``{stream}`` is the stream id), kept to about ``maxlen`` entries."""

    kind = "redis"

    def __init__(self, url: str, key: str, maxlen: int, capacity: int) -> None:
        super().__init__(capacity)
        self.url, self.key, self.maxlen = url, key, maxlen
        self.client: Any = None

    def _connect(self) -> None:
        import redis

        client = redis.Redis.from_url(self.url, socket_timeout=5.0, socket_connect_timeout=5.0)
        client.ping()
        self.client = client

    def _send(self, batch: list[tuple[str, bytes]]) -> int:
        pipe = self.client.pipeline(transaction=False)
        for stream, record in batch:
            pipe.xadd(self.key.replace("{stream}", stream), {"record": record}, maxlen=self.maxlen, approximate=True)
        pipe.execute()
        return len(batch)

    def _disconnect(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - already gone
                pass
            self.client = None


class BrokerStage(PublishStage):
    """The publisher's records, into the brokers of the ``output`` section (``mqtt``, ``redis``)."""

    def __init__(self, model_info: dict[str, Any], mqtt: str | None, mqtt_qos: int, redis: str | None,
                 redis_key: str, redis_maxlen: int, buffer: int) -> None:
        """The keys of the ``output`` section of the same names (``buffer``: ``broker_buffer``)."""
        super().__init__(model_info)
        self.sinks: list[Sink] = []
        if mqtt:
            self.sinks.append(MqttSink(mqtt, mqtt_qos, buffer))
        if redis:
            self.sinks.append(RedisSink(redis, redis_key, redis_maxlen, buffer))
        self.reported = 0.0

    def setup(self) -> None:
        for sink in self.sinks:
            sink.start()

    def _out(self, emits: Iterable[Emit]) -> Iterable[Emit]:
        for _, message in emits:
            assert isinstance(message, Published)
            stream, record = message.parts[0].decode(), message.parts[1]
            for sink in self.sinks:
                if sink.put(stream, record):
                    self.count(f"dropped_{sink.kind}")
                    self.measure("records_dropped", broker=sink.kind)
        now = time.monotonic()
        if now - self.reported > 10.0 and any(s.dropped for s in self.sinks):
            self.reported = now
            self.notify("warning", message="; ".join(f"{s.kind}: {s.dropped} records dropped so far (the broker "
                                                     f"is away and its buffer of {s.capacity} is full)"
                                                     for s in self.sinks if s.dropped))
        return ()

    def process(self, message: Any) -> Iterable[Emit]:
        return self._out(super().process(message))

    def flush(self, eos: Any) -> Iterable[Emit]:
        return self._out(super().flush(eos))

    def report(self) -> dict[str, Any]:
        return {**super().report(), "brokers": {s.kind: {"sent": s.sent, "dropped": s.dropped,
                                                         "buffered": len(s.buffer)} for s in self.sinks}}

    def close(self) -> None:
        for sink in self.sinks:
            left = sink.close()
            if left:
                self.count(f"dropped_{sink.kind}", left)
                log.warning("%s: %d records could not be sent before the end", sink.kind, left)

