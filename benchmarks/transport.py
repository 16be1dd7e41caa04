"""Transport: 1920x1080 RGB frames from one process to another, in GB/s.

Five ways, measured in the same run:

- a plain in-process memory copy of the same bytes (``numpy.copyto``, into as many buffers in turn
  as a link has frames in flight): the physical limit;
- ``multiprocessing.Queue``: what Python offers out of the box (pickle through a pipe);
- streamseg's link over ipc://: a sender :class:`~streamseg.runtime.link.Outbox` copies each frame once
  into shared memory and sends its name; the receiver's :class:`~streamseg.runtime.link.Inbox` maps it
  and decodes the message, acknowledging it so that the slot is reused (with a run's credit,
  ``transport.hwm_frames``);
- the same, with the frame built in its slot to begin with (``Stage.allocate``, as the renderer
  draws): what the transport itself costs, without the one copy. Only one byte of each frame is
  written, so this row is a message rate (frames a second, shown as frame bytes a second to sit
  in the table), not bytes moved: it can exceed the memory copy;
- the same link over tcp:// (bytes on the wire, for stages on other hosts), for reference.

Every frame holds new pixels (a counter written into it), so no copy can be skipped. A transfer
ends when the receiver has every frame as an array it can read.

    python benchmarks/transport.py [--frames 300] [--size 1920x1080]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import tempfile
import time
from fractions import Fraction

import numpy as np
import zmq
from common import free_port

from streamseg.config import TransportConfig
from streamseg.runtime import codec
from streamseg.runtime.link import Inbox, Outbox
from streamseg.runtime.messages import EndOfStream, Frame, StreamStart
from streamseg.runtime.shm import Mappings, SharedPool

TB = Fraction(1, 30)


def _queue_receiver(queue: mp.Queue, done: mp.Queue, count: int) -> None:
    checksum = 0
    for _ in range(count):
        frame = queue.get()
        checksum += int(frame[0, 0, 0])
    done.put(checksum)


def queue_rate(frames: int, shape: tuple[int, int, int]) -> float:
    ctx = mp.get_context("spawn")
    queue, done = ctx.Queue(maxsize=8), ctx.Queue()
    receiver = ctx.Process(target=_queue_receiver, args=(queue, done, frames))
    receiver.start()
    image = np.zeros(shape, np.uint8)
    queue.put(image)  # the receiver is up once it took the first
    start = time.perf_counter()
    for i in range(1, frames):
        image[0, 0, 0] = i % 256
        queue.put(image)
    done.get()
    elapsed = time.perf_counter() - start
    receiver.join()
    return (frames - 1) * image.nbytes / elapsed / 1e9


def _link_receiver(endpoint: str) -> None:
    ctx = zmq.Context()
    mappings = Mappings()
    inbox = Inbox(ctx, endpoint, "receiver", TransportConfig().hwm_frames, 1 << 30, lambda: {"open": [], "last": {}})
    checksum, ended = 0, False
    while not ended:
        inbox.service()
        item = inbox.receive()
        if item is None:
            inbox.sock.poll(10)
            continue
        seq, parts = item
        message = codec.decode(parts, mappings)
        if isinstance(message, Frame):
            checksum += int(message.image[0, 0, 0])
        ended = isinstance(message, EndOfStream)
        inbox.taken(seq)
        inbox.done(seq)
        inbox.flush()
    inbox.close(linger=1000)
    mappings.close()
    ctx.term()


def link_rate(frames: int, shape: tuple[int, int, int], endpoint: str, shared: bool, in_place: bool = False) -> float:
    ctx = zmq.Context()
    pool = SharedPool(f"sseg-{os.getpid():x}-{int(time.time()):x}") if shared else None
    outbox = Outbox(ctx, endpoint, "frames", pool=pool)
    receiver = mp.get_context("spawn").Process(target=_link_receiver, args=(endpoint,))
    receiver.start()
    image = np.zeros(shape, np.uint8)
    outbox.put(StreamStart("s", shape[1], shape[0], Fraction(30), TB, frames, "bench", False))
    while not outbox.heard():
        outbox.sock.poll(10)
        outbox.service()
    start = time.perf_counter()
    for i in range(frames):
        if in_place:
            assert pool is not None
            image = pool.empty(shape, np.uint8)  # a stage draws its output here
        image[0, 0, 0] = i % 256
        outbox.put(Frame("s", i, i, TB, image))
        while outbox.backlog:
            outbox.sock.poll(10)
            outbox.service()
    outbox.put(EndOfStream("s", frames))
    while not outbox.idle:
        outbox.sock.poll(10)
        outbox.service()
    elapsed = time.perf_counter() - start
    receiver.join()
    outbox.close(linger=0)
    if pool is not None:
        pool.close()
    ctx.term()
    return frames * image.nbytes / elapsed / 1e9


COPY_RING = 8
"""Targets the memory copy writes to in turn: as many frames as are in flight on a link at once
(its credit, and the frames being sent and read), so that it moves the bytes through memory as
the transport must, instead of copying one frame into the same cache-resident buffer again."""


def copy_rate(frames: int, shape: tuple[int, int, int]) -> float:
    source = np.zeros(shape, np.uint8)
    targets = [np.ones(shape, np.uint8) for _ in range(COPY_RING)]  # pages touched before timing
    start = time.perf_counter()
    for i in range(frames):
        source[0, 0, 0] = i % 256
        np.copyto(targets[i % COPY_RING], source)
    return frames * source.nbytes / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", default="1920x1080")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    shape = (height, width, 3)
    results: dict[str, list[float]] = {"copy": [], "queue": [], "ipc": [], "place": [], "tcp": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            results["copy"].append(copy_rate(args.frames, shape))
            results["queue"].append(queue_rate(args.frames, shape))
            results["ipc"].append(link_rate(args.frames, shape, f"ipc://{tmp}/link{r}", shared=True))
            results["place"].append(link_rate(args.frames, shape, f"ipc://{tmp}/place{r}", shared=True, in_place=True))
            results["tcp"].append(link_rate(args.frames // 3, shape, f"tcp://127.0.0.1:{free_port()}", shared=False))
    best = {k: max(v) for k, v in results.items()}
    print(f"# transport, {width}x{height} RGB frames ({np.prod(shape) / 1e6:.1f} MB), {args.frames} frames a run, "
          f"best of {args.rounds} runs")
    print(f"# {platform.machine()} {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}")
    print("| way | GB/s | ratio to multiprocessing.Queue | share of the memory copy | runs |")
    print("|---|---|---|---|---|")
    names = {"copy": "memory copy in one process (the limit)", "queue": "multiprocessing.Queue (baseline)",
             "ipc": "streamseg link, ipc:// + shared memory (one copy in)",
             "place": "streamseg link, frame built in shared memory (no copy; a message rate: one byte written a "
                      "frame, GB/s = frames/s x frame size)",
             "tcp": "streamseg link, tcp:// (bytes; other hosts)"}
    for key in ("copy", "queue", "ipc", "place", "tcp"):
        runs = ", ".join(f"{v:.2f}" for v in results[key])
        print(f"| {names[key]} | {best[key]:.2f} | {best[key] / best['queue']:.1f} | "
              f"{100 * best[key] / best['copy']:.0f}% | {runs} |")
    frame_bytes = int(np.prod(shape))
    print(f"The no-copy row is a message rate, not bytes moved: its sender writes one byte of each frame (the frame "
          f"is built in its shared-memory slot, as the renderer draws), so its {best['place']:.2f} GB/s are "
          f"{best['place'] * 1e9 / frame_bytes:.0f} frames/s of {frame_bytes / 1e6:.1f} MB each, what the transport "
          f"costs a frame beside the one copy; it can exceed the memory copy, which moves every byte.")


if __name__ == "__main__":
    main()
