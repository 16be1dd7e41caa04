"""The ledger: when a worker's inputs are done, so that its link acknowledges them upstream.

Delivery on the links is at-least-once (:mod:`streamseg.runtime.link`): a sender keeps a message
until its receiver says it is done. The ledger is how a worker knows: an input is done once
nothing that came of it is still in flight downstream (by stream position) and its stage no longer
holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Collection

from .link import Inbox, Key


@dataclass
class _Record:
    """An input message that is not done yet: where to acknowledge it, and what it waits for."""

    inbox: Inbox
    seq: int
    waits: set[Key]


class Ledger:
    """Which inputs are done: an input is done when nothing that came of it is still in flight
    downstream (by stream position) and the stage no longer holds it.

    This is what makes delivery survive a dead worker anywhere: a stage acknowledges its input as
    done only once its own outputs are done, so whatever a dead worker had is still kept upstream.
    """

    def __init__(self, held: Callable[[], Collection[Key]]) -> None:
        self.held = held
        """The stage's held positions now (frames a batcher or an encoder has not finished)."""
        self.outstanding: dict[Key, int] = {}
        self.waiting: dict[Key, list[_Record]] = {}

    def sent(self, keys: tuple[Key, ...]) -> None:
        for key in keys:
            self.outstanding[key] = self.outstanding.get(key, 0) + 1

    def finished(self, keys: tuple[Key, ...]) -> None:
        """Outputs at ``keys`` are done downstream: acknowledge the inputs that waited only for them."""
        for key in keys:
            left = self.outstanding.get(key, 0) - 1
            if left > 0:
                self.outstanding[key] = left
            else:
                self.outstanding.pop(key, None)
        self.release(keys)

    def settle(self, inbox: Inbox, seq: int, keys: tuple[Key, ...]) -> None:
        """An input has been handled: acknowledge it now, or once what it waits for is done."""
        held = self.held()
        waits = {k for k in keys if k in self.outstanding or k in held}
        if not waits:
            inbox.done(seq)
            return
        record = _Record(inbox, seq, waits)
        for key in waits:
            self.waiting.setdefault(key, []).append(record)

    def release(self, keys: Collection[Key]) -> None:
        """Look again at inputs waiting on ``keys`` (sent on, or no longer held)."""
        if not self.waiting:
            return
        held = None
        for key in keys:
            records = self.waiting.get(key)
            if not records or key in self.outstanding:
                continue
            held = self.held() if held is None else held
            if key in held:
                continue
            del self.waiting[key]
            for record in records:
                record.waits.discard(key)
                if not record.waits:
                    record.inbox.done(record.seq)
