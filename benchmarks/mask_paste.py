"""Mask pasting: N low-resolution masks into a 1280x720 frame, streamseg's batch against torchvision's loop.

Mask R-CNN's mask head gives each instance a 28x28 grid of probabilities in its box. The
baseline is torchvision's ``paste_masks_in_image`` (one full-frame canvas per mask, a Python loop
over masks), thresholded at 0.5, as ``model(images)`` returns them; streamseg's
:func:`~streamseg.masks.paste_masks` pastes all of them together, on each instance's region only.
Boxes are random, inside the frame, 20 to 300 pixels a side; the masks are checked to be the
same, pixel for pixel. The time of each is the median of ``--repeat`` calls. ``--device cuda``
times both on the GPU (synchronised; the result copied back to the host, as the pipeline needs it).

    python benchmarks/mask_paste.py [--size 1280x720] [--counts 1,10,50,100] [--repeat 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from common import decoded_frames  # noqa: F401 (puts the repository on the path)
from torchvision.models.detection.roi_heads import paste_masks_in_image

from streamseg.masks import paste_masks, rle_counts


def timed(call, repeat: int, device: torch.device) -> float:
    def once() -> None:
        call()
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    once()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--counts", default="1,10,50,100")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--device", default="cpu", help="cpu, cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    rows = []
    for n in (int(v) for v in args.counts.split(",")):
        x1, y1 = rng.uniform(0, width - 2, n), rng.uniform(0, height - 2, n)
        w, h = rng.uniform(20, 300, n), rng.uniform(20, 300, n)
        boxes = torch.tensor(np.stack([x1, y1, np.minimum(x1 + w, width), np.minimum(y1 + h, height)], 1),
                             dtype=torch.float32, device=device)
        probs = torch.sigmoid(torch.randn(n, 1, 28, 28, device=device) * 4)
        want = (paste_masks_in_image(probs, boxes, (height, width))[:, 0] >= 0.5).cpu().numpy()
        got = paste_masks(probs, boxes, height, width, 0.5)
        same = bool(np.array_equal(got.full(), want))
        theirs = timed(lambda: (paste_masks_in_image(probs, boxes, (height, width))[:, 0] >= 0.5).cpu(), args.repeat,
                       device)
        ours = timed(lambda: paste_masks(probs, boxes, height, width, 0.5), args.repeat, device)
        rle = timed(lambda: rle_counts(got), args.repeat, torch.device("cpu"))
        rows.append((n, theirs, ours, rle, same))
    print(f"# mask pasting, {width}x{height}, 28x28 masks, boxes 20-300 px, median of {args.repeat} calls, "
          f"{args.device}")
    print(f"# {platform.machine()} {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| N | torchvision paste + threshold ms (baseline) | streamseg paste ms | speed-up | identical masks "
          "| streamseg RLE of all N ms |")
    print("|---|---|---|---|---|---|")
    for n, theirs, ours, rle, same in rows:
        print(f"| {n} | {theirs:.2f} | {ours:.2f} | {theirs / ours:.1f}x | {'yes' if same else 'NO'} | {rle:.2f} |")


if __name__ == "__main__":
    main()
