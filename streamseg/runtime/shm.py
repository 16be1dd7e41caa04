"""Shared memory for the arrays that cross ipc:// links: one copy per frame, ZeroMQ carries only a name.

A worker that sends a large array (a frame) on an ipc link copies it once into a *slot* of its
:class:`SharedPool`, a file in ``/dev/shm`` named ``sseg-RUN-INSTANCE-N``, and the message carries
the slot's name instead of the bytes; the receiver maps the file (:class:`Mappings`, once per
slot) and reads the array in place. An array that already lies in a mapped slot (a frame the
batcher passes on to the model, then to the renderer) is passed on by name, without any copy.

A slot is reused once every link it was sent on has seen its message done, and the link protocol
acknowledges a message as done only when everything made of it downstream is done, so no stage
still reads a slot when it is written again. A worker removes its slots when it exits; the
supervisor removes those of a worker that died, and every one of the run at its end. Over tcp://
(another host) arrays travel as bytes, as before.
"""

from __future__ import annotations

import bisect
import logging
import mmap
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import MessageError

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
MIN_BYTES = 1 << 16
"""Arrays smaller than this travel inline: a slot would cost more than the copy it saves."""
SLOT_ALIGN = 1 << 16
NAME = re.compile(r"^sseg-[0-9a-f]{1,32}-[0-9a-f]{1,32}-[0-9]{1,12}$")
MAX_MAPPINGS = 512
"""Segments a receiver keeps mapped (least recently used dropped; views already made stay valid)."""
SWEEP_S = 2.0
"""How often a worker looks for mapped slots of workers that ended (:meth:`Mappings.sweep`)."""
SWEEP_GRACE_S = 30.0
"""How long a worker keeps a slot mapped after its name is gone (messages in flight may name it)."""


def available() -> bool:
    """Whether this system has POSIX shared memory where we look for it (Linux)."""
    return os.path.isdir(SHM_DIR) and os.access(SHM_DIR, os.W_OK)


class _Registry:
    """Every segment mapped in this process, by address, so that an array can be traced to its slot."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.segments: dict[int, tuple[str, int]] = {}

    def add(self, address: int, name: str, size: int) -> None:
        if address not in self.segments:
            bisect.insort(self.starts, address)
        self.segments[address] = (name, size)

    def remove(self, address: int) -> None:
        if self.segments.pop(address, None) is not None:
            self.starts.pop(bisect.bisect_left(self.starts, address))

    def locate(self, array: np.ndarray) -> tuple[str, int] | None:
        """(segment name, byte offset) of a C-contiguous array that lies in a mapped segment."""
        if not self.starts or not array.flags.c_contiguous:
            return None
        address = array.__array_interface__["data"][0]
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        start = self.starts[i]
        name, size = self.segments[start]
        if address + array.nbytes > start + size:
            return None
        return name, address - start


REGISTRY = _Registry()


@dataclass
class _Slot:
    name: str
    size: int
    memory: mmap.mmap
    view: np.ndarray
    """``uint8[size]`` over the whole slot."""
    users: int = 0
    """Messages in flight that name it."""


@dataclass
class SharedPool:
    """The shared-memory slots one worker process sends arrays in."""

    prefix: str
    """``sseg-RUN-INSTANCE``: names the slots, so the supervisor can remove a dead worker's."""
    slots: dict[str, _Slot] = field(default_factory=dict)
    free: dict[int, list[str]] = field(default_factory=dict)
    """Slot size -> names of slots no message uses."""
    count: int = 0

    def put(self, array: np.ndarray) -> tuple[str, int]:
        """Copy ``array`` into a free slot (made when none fits); returns (slot name, offset 0)."""
        slot = self._take(array.nbytes)
        np.copyto(slot.view[:array.nbytes].view(array.dtype).reshape(array.shape), array)
        return slot.name, 0

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """A writable array in a fresh slot: a stage builds its output there, and it is sent by name."""
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        slot = self._take(nbytes)
        return slot.view[:nbytes].view(dtype).reshape(shape)

    def _take(self, nbytes: int) -> _Slot:
        size = max(SLOT_ALIGN, -(-nbytes // SLOT_ALIGN) * SLOT_ALIGN)
        names = self.free.get(size)
        if names:
            return self.slots[names.pop()]
        self.count += 1
        name = f"{self.prefix}-{self.count}"
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        view = np.frombuffer(memory, np.uint8)
        slot = self.slots[name] = _Slot(name, size, memory, view)
        REGISTRY.add(view.__array_interface__["data"][0], name, size)
        return slot

    def owns(self, name: str) -> bool:
        return name in self.slots

    def use(self, names: list[str]) -> None:
        """Messages naming these slots were sent."""
        for name in names:
            self.slots[name].users += 1

    def release(self, names: list[str]) -> None:
        """Messages naming these slots are done: a slot no message uses can be written again."""
        for name in names:
            slot = self.slots.get(name)
            if slot is None:
                continue
            slot.users -= 1
            if slot.users <= 0:
                slot.users = 0
                self.free.setdefault(slot.size, []).append(name)

    def close(self) -> None:
        """Remove every slot (views already made stay valid until dropped)."""
        for slot in self.slots.values():
            REGISTRY.remove(slot.view.__array_interface__["data"][0])
            try:
                os.unlink(os.path.join(SHM_DIR, slot.name))
            except FileNotFoundError:
                pass
        self.slots.clear()
        self.free.clear()


class Mappings:
    """Slots of other workers that this one reads, mapped on first use and kept while used."""

    def __init__(self) -> None:
        self.maps: OrderedDict[str, np.ndarray] = OrderedDict()
        self.swept = 0.0
        self.gone: dict[str, float] = {}
        """Mapped slots whose names are gone, and since when (monotonic)."""

    def view(self, name: str, offset: int, nbytes: int) -> memoryview:
        """``nbytes`` bytes at ``offset`` of the named slot; MessageError when there is no such slot."""
        if not isinstance(name, str) or not NAME.match(name):
            raise MessageError(f"bad shared-memory name {str(name)[:60]!r}")
        whole = self.maps.get(name)
        if whole is None:
            whole = self._map(name)
        else:
            self.maps.move_to_end(name)
        if type(offset) is not int or offset < 0 or offset + nbytes > whole.nbytes:
            raise MessageError(f"shared-memory reference past the end of {name}")
        return memoryview(whole[offset:offset + nbytes])

    def _map(self, name: str) -> np.ndarray:
        try:
            fd = os.open(os.path.join(SHM_DIR, name), os.O_RDONLY)
        except OSError as exc:
            raise MessageError(f"shared-memory slot {name} is not there ({exc.strerror})") from None
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                raise MessageError(f"shared-memory slot {name} is empty")
            memory = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        whole = np.frombuffer(memory, np.uint8)
        REGISTRY.add(whole.__array_interface__["data"][0], name, size)
        self.maps[name] = whole
        while len(self.maps) > MAX_MAPPINGS:
            _, dropped = self.maps.popitem(last=False)
            REGISTRY.remove(dropped.__array_interface__["data"][0])
        return whole

    def sweep(self, every_s: float = SWEEP_S, grace_s: float = SWEEP_GRACE_S) -> int:
        """Let go of the slots whose names have been gone for ``grace_s`` (their worker ended: a
        service's removed stream's decoder), looking at most once every ``every_s``; how many. A
        mapping holds a file descriptor and the slot's memory (Python's mmap keeps a copy of the
        descriptor) until it is let go; an array still in use keeps its own mapping alive until it
        is done. The grace: a message sent before its slot's worker died may still name it, and is
        read from the mapping kept here (the name cannot be opened again)."""
        now = time.monotonic()
        if now - self.swept < every_s:
            return 0
        self.swept = now
        for name in self.maps:
            if name not in self.gone and not exists(name):
                self.gone[name] = now
        due = [name for name, since in self.gone.items() if now - since >= grace_s]
        for name in due:
            del self.gone[name]
            whole = self.maps.pop(name, None)
            if whole is not None:
                REGISTRY.remove(whole.__array_interface__["data"][0])
        return len(due)

    def close(self) -> None:
        for whole in self.maps.values():
            REGISTRY.remove(whole.__array_interface__["data"][0])
        self.maps.clear()


def exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


def remove_all(prefix: str) -> int:
    """Remove the slots whose names start with ``prefix`` (a dead worker's, or a finished run's)."""
    removed = 0
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return 0
    for name in names:
        if name.startswith(prefix):
            try:
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
            except OSError:
                pass
    return removed
