"""Masks: pasting Mask R-CNN's low-resolution masks into frames, and COCO compressed RLE, in batches.

Mask R-CNN predicts each instance's mask as an ``M x M`` grid of probabilities inside its box;
:func:`paste_masks` scales all of them to their boxes in the frame and thresholds them at once,
working only on each instance's region (as :class:`~streamseg.runtime.messages.MaskRegions`), never on
``N`` full frames. It computes what torchvision's ``paste_masks_in_image`` computes (the same
box expansion, integer boxes and bilinear weights, rounded as its CPU kernel rounds them), so
the thresholded masks are the same. :func:`rle_counts` turns regions into COCO compressed RLE
strings for every instance together, without a loop over pixels or masks in Python.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from .config import ModelConfig
from .runtime.messages import MaskRegions

CHUNK_PIXELS = 1 << 20
"""Instances are pasted in groups of similar size, each at most about this many padded pixels."""
PADDING_WASTE = 1.5
"""And a group's padded size is at most this many times its members' real size."""


def encode_rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """COCO compressed RLE (``{"size": [H, W], "counts": str}``) of each ``bool[N, H, W]`` mask.

    All N masks go to pycocotools in one call; ``pycocotools.mask.decode`` gives the bitmaps back.
    """
    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.transpose(1, 2, 0), dtype=np.uint8)
    rles = mask_utils.encode(fortran)
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


def decode_rle(rle: dict[str, Any]) -> np.ndarray:
    """The ``bool[H, W]`` bitmap of one COCO RLE (compressed, as a str or bytes)."""
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode() if isinstance(counts, str) else counts}
                             ).astype(bool)


def _chunks(regions: np.ndarray) -> list[np.ndarray]:
    """Instance indices grouped by size (largest first) for padded work: a group grows while its
    members padded to their largest height and width stay within :data:`PADDING_WASTE` of their
    real size, and :data:`CHUNK_PIXELS` pixels."""
    areas = regions[:, 2] * regions[:, 3]
    order = np.argsort(-areas, kind="stable")
    groups: list[np.ndarray] = []
    start = 0
    while start < len(order):
        end = start + 1
        height, width, real = regions[order[start], 3], regions[order[start], 2], areas[order[start]]
        while end < len(order):
            member = order[end]
            h, w = max(height, regions[member, 3]), max(width, regions[member, 2])
            padded = (end - start + 1) * h * w
            if padded > CHUNK_PIXELS or padded > PADDING_WASTE * (real + areas[member]) + 4096:
                break
            height, width, real = h, w, real + areas[member]
            end += 1
        groups.append(order[start:end])
        start = end
    return groups


def _pack_index(rows: np.ndarray, row_len: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Flat indices into a padded group ``[n, R, L]`` of its members' ``rows x row_len`` top-left
    blocks, row by row, member after member."""
    member = np.repeat(np.arange(len(rows)), rows)
    row = np.arange(len(member)) - np.repeat(np.cumsum(rows) - rows, rows)
    row_start = (member * shape[0] + row) * shape[1]
    length = row_len[member]
    return np.repeat(row_start - (np.cumsum(length) - length), length) + np.arange(int(length.sum()))


def _changes(regions: MaskRegions) -> tuple[np.ndarray, np.ndarray]:
    """(instance, position in the frame's column-major order) of every place a mask changes value,
    sorted by instance, then position; straight from the column-major bits, without a canvas."""
    x, y, w, h = regions.regions.T
    bits = regions.bits
    n = len(regions)
    col_len = np.repeat(h, w)
    col_owner = np.repeat(np.arange(n), w)
    col_index = np.arange(len(col_len)) - np.repeat(np.cumsum(w) - w, w)
    col_start = np.cumsum(col_len) - col_len
    used = col_len > 0
    col_len, col_owner, col_index, col_start = col_len[used], col_owner[used], col_index[used], col_start[used]
    first = np.zeros(len(bits) + 1, bool)
    first[col_start] = True
    within = np.flatnonzero(bits[1:] != bits[:-1]) + 1  # a change from the pixel above, inside a column
    within = within[~first[within]]
    tops = col_start[bits[col_start]] if len(bits) else col_start  # on at the top of a column
    bottoms = (col_start + col_len)[bits[col_start + col_len - 1]] if len(bits) else col_start  # on at its bottom
    at = np.concatenate([within, tops, bottoms])
    column = np.searchsorted(col_start, at, side="right") - 1
    column[len(within) + len(tops):] = np.searchsorted(col_start, bottoms - 1, side="right") - 1
    owner = col_owner[column]
    pos = (x[owner] + col_index[column]) * regions.height + y[owner] + (at - col_start[column])
    order = np.lexsort((pos, owner))
    owner, pos = owner[order], pos[order]
    # a mask that fills a column to the bottom and the next from the top does not change between
    # them, and one that reaches the frame's last pixel ends there
    keep = pos < regions.height * regions.width
    same = np.flatnonzero((pos[1:] == pos[:-1]) & (owner[1:] == owner[:-1]))
    keep[same] = keep[same + 1] = False
    return owner[keep], pos[keep]


_GROUP_LIMITS = np.array([1 << (5 * k - 1) for k in range(1, 7)], np.int64)


def _compress(counts: np.ndarray, owner: np.ndarray, n: int) -> list[str]:
    """COCO's compressed RLE strings of run lengths ``counts`` belonging to masks ``owner`` (sorted).

    COCO's encoding (``rleToString`` in its maskApi.c): from the fourth run on, each run is
    written as its difference to the run two before; each number as 5-bit groups, least
    significant first, with a continuation bit, plus 48 to make a printable character. A number
    takes as many groups as it needs for its bits and a sign bit."""
    first = np.searchsorted(owner, np.arange(n))
    index = np.arange(len(counts)) - first[owner]
    values = counts.copy()
    later = np.flatnonzero(index > 2)
    values[later] -= counts[later - 2]
    magnitude = np.where(values < 0, ~values, values)
    groups = 1 + (magnitude[:, None] >= _GROUP_LIMITS).sum(1)
    value_of = np.repeat(np.arange(len(values)), groups)
    group = np.arange(int(groups.sum())) - np.repeat(np.cumsum(groups) - groups, groups)
    chars = (values[value_of] >> (5 * group)) & 0x1F
    chars |= np.where(group < groups[value_of] - 1, 0x20, 0)
    text = (chars + 48).astype(np.uint8).tobytes()
    ends = np.cumsum(np.bincount(owner, weights=groups, minlength=n).astype(np.int64))
    starts = np.concatenate([[0], ends[:-1]])
    return [text[a:b].decode("ascii") for a, b in zip(starts, ends)]


def rle_counts(regions: MaskRegions) -> tuple[str, ...]:
    """The COCO compressed RLE ``counts`` of every mask (their ``size`` is ``[height, width]``)."""
    n = len(regions)
    if n == 0:
        return ()
    owner, pos = _changes(regions)
    # runs: from the start (or the last change) to the next change, and from the last change to the end
    bounds_owner = np.concatenate([owner, np.arange(n)])
    bounds = np.concatenate([pos, np.full(n, regions.height * regions.width)])
    order = np.lexsort((bounds, bounds_owner))
    bounds_owner, bounds = bounds_owner[order], bounds[order]
    starts = np.concatenate([[0], bounds[:-1]])
    starts[np.searchsorted(bounds_owner, np.arange(n))] = 0
    return tuple(_compress((bounds - starts).astype(np.int64), bounds_owner, n))


def _fma(a: Any, b: Any, c: Any) -> Any:
    """``a * b + c`` with one rounding, as torch's upsampling kernel computes it (``addcmul`` is a
    fused multiply-add where the hardware has one, as the kernel is)."""
    import torch

    return torch.addcmul(c, a, b)


def _weights(out_index: Any, size: Any, grid: int, used: Any) -> tuple[Any, Any, Any, Any]:
    """Bilinear source indices and weights (align_corners=False) for output rows ``out_index`` of a
    ``grid``-sized input scaled to ``size`` rows, as torch's CPU upsampling kernel computes them;
    zero weights where not ``used``."""
    import torch

    scale = torch.tensor(float(grid), dtype=torch.float32, device=size.device) / size.float()
    src = _fma(scale[:, None], out_index.float() + 0.5, torch.tensor(-0.5, device=size.device)).clamp(min=0)
    lower = src.long().clamp(max=grid - 1)  # (past the end only where unused)
    upper = (lower + 1).clamp(max=grid - 1)
    high = src - lower.float()
    return lower, upper, (1 - high) * used, high * used


def paste_masks(masks: Any, boxes: Any, height: int, width: int, threshold: float = ModelConfig.mask_thresh,
                padding: int = 1) -> MaskRegions:
    """Paste ``masks`` (``Tensor[N, 1, M, M]`` probabilities) into their ``boxes`` (``Tensor[N, 4]``,
    ``[x1, y1, x2, y2]`` in the frame), keep pixels at or above ``threshold``; on the masks' device.

    What ``torchvision.models.detection.roi_heads.paste_masks_in_image`` followed by the threshold
    gives, but only over each instance's region, all instances together (in groups of similar size).
    """
    return _paste(masks, boxes, height, width, threshold, padding)


def paste_and_encode(masks: Any, boxes: Any, height: int, width: int, threshold: float = ModelConfig.mask_thresh,
                     padding: int = 1) -> tuple[MaskRegions, tuple[str, ...]]:
    """:func:`paste_masks`, and the COCO compressed RLE of each mask (:func:`rle_counts`)."""
    regions = _paste(masks, boxes, height, width, threshold, padding)
    return regions, rle_counts(regions)


def _paste(masks: Any, boxes: Any, height: int, width: int, threshold: float, padding: int) -> MaskRegions:
    import torch
    import torch.nn.functional as F
    from torchvision.models.detection.roi_heads import expand_boxes

    n = masks.shape[0]
    if n == 0:
        return MaskRegions.empty(height, width)
    device = masks.device
    grid = masks.shape[-1] + 2 * padding
    padded = F.pad(masks[:, 0], (padding,) * 4)
    box = expand_boxes(boxes, grid / masks.shape[-1]).to(torch.int64)
    x0, y0 = box[:, 0].clamp(min=0), box[:, 1].clamp(min=0)
    w = ((box[:, 2] + 1).clamp(max=width) - x0).clamp(min=0)
    h = ((box[:, 3] + 1).clamp(max=height) - y0).clamp(min=0)
    regions = torch.stack([x0, y0, w, h], 1).cpu().numpy().astype(np.int64)
    # region pixel (r, c) is pixel (y0 - box_y + r, x0 - box_x + c) of the mask scaled to its box;
    # the weights of the rows and columns past a region's size are zero, so its padding stays off
    rows = (y0 - box[:, 1])[:, None] + torch.arange(max(int(regions[:, 3].max()), 1), device=device)
    cols = (x0 - box[:, 0])[:, None] + torch.arange(max(int(regions[:, 2].max()), 1), device=device)
    top, bottom, weight_top, weight_bottom = _weights(rows, (box[:, 3] - box[:, 1] + 1).clamp(min=1), grid,
                                                      rows - rows[:, :1] < h[:, None])
    left, right, weight_left, weight_right = _weights(cols, (box[:, 2] - box[:, 0] + 1).clamp(min=1), grid,
                                                      cols - cols[:, :1] < w[:, None])
    areas = regions[:, 2] * regions[:, 3]
    offsets = np.concatenate([[0], np.cumsum(areas)])
    bits = np.zeros(int(offsets[-1]), bool)
    for members in _chunks(regions):
        rh, rw = int(regions[members, 3].max()), int(regions[members, 2].max())
        if rh == 0 or rw == 0:
            continue
        index = torch.from_numpy(members).to(device)
        # torch interpolates along a row first, then between the two rows
        source = padded[index]
        lft, rgt = left[index, :rw], right[index, :rw]
        a = source.gather(2, lft[:, None, :].expand(-1, grid, -1))
        b = source.gather(2, rgt[:, None, :].expand(-1, grid, -1))
        across = _fma(a, weight_left[index, None, :rw], b * weight_right[index, None, :rw])  # [n, grid, rw]
        member = torch.arange(len(members), device=device)[:, None]
        upper, lower = across[member, top[index, :rh]], across[member, bottom[index, :rh]]  # whole rows
        value = _fma(upper, weight_top[index, :rh, None], lower * weight_bottom[index, :rh, None])
        columns = (value >= threshold).transpose(1, 2).contiguous().cpu().numpy()  # [n, rw, rh]
        sizes = areas[members]
        dest = np.repeat(offsets[members] - (np.cumsum(sizes) - sizes), sizes) + np.arange(int(sizes.sum()))
        bits[dest] = columns.ravel()[_pack_index(regions[members, 2], regions[members, 3], (rw, rh))]
    return MaskRegions(bits, regions, height, width)
