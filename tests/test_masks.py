"""Mask pasting and RLE in batches: the same masks as torchvision's paste, the same RLE as pycocotools."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from streamseg.masks import encode_rle, paste_and_encode, paste_masks, rle_counts
from streamseg.runtime.messages import MaskRegions


def _boxes(rng: np.random.Generator, n: int, height: int, width: int, largest: int) -> torch.Tensor:
    """Boxes inside the frame, as Mask R-CNN gives them (clipped), some touching its edges."""
    x1, y1 = rng.uniform(0, width - 2, n), rng.uniform(0, height - 2, n)
    w, h = rng.uniform(1, largest, n), rng.uniform(1, largest, n)
    boxes = np.stack([x1, y1, np.minimum(x1 + w, width), np.minimum(y1 + h, height)], 1)
    boxes[: n // 4, 2:] = (width, height)  # some reach the bottom right corner
    boxes[n // 4: n // 3, :2] = 0
    return torch.tensor(boxes, dtype=torch.float32)


@pytest.mark.parametrize("n, height, width, largest", [(1, 720, 1280, 700), (40, 720, 1280, 300),
                                                       (60, 242, 322, 120), (5, 31, 17, 40)])
def test_pasted_masks_are_torchvisions(n: int, height: int, width: int, largest: int) -> None:
    rng = np.random.default_rng(n)
    for _ in range(3):
        boxes = _boxes(rng, n, height, width, largest)
        probs = torch.sigmoid(torch.randn(n, 1, 28, 28) * 4)
        want = (paste_masks_in_image(probs, boxes, (height, width))[:, 0] >= 0.5).numpy()
        regions, rles = paste_and_encode(probs, boxes, height, width, 0.5)
        assert np.array_equal(regions.full(), want)
        assert np.array_equal(paste_masks(probs, boxes, height, width, 0.5).bits, regions.bits)
        assert list(rles) == [r["counts"] for r in encode_rle(want)]


def test_a_different_threshold_changes_the_masks_as_it_should() -> None:
    probs = torch.sigmoid(torch.randn(8, 1, 28, 28) * 4)
    boxes = _boxes(np.random.default_rng(0), 8, 100, 120, 60)
    for threshold in (0.3, 0.8):
        want = (paste_masks_in_image(probs, boxes, (100, 120))[:, 0] >= threshold).numpy()
        assert np.array_equal(paste_masks(probs, boxes, 100, 120, threshold).full(), want)


def test_rle_of_regions_is_pycocotools_rle() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((6, 40, 30)) > 0.5
    masks[0] = False  # empty
    masks[1] = True  # the whole frame
    masks[2, :, 10:20] = True  # full columns: runs go on from one column to the next
    masks[3, -1, -1] = True  # the last pixel alone
    regions = MaskRegions.from_full(masks)
    assert list(rle_counts(regions)) == [r["counts"] for r in encode_rle(masks)]
    assert rle_counts(MaskRegions.empty(4, 4)) == ()


def test_regions_hold_only_the_instances_area() -> None:
    probs = torch.ones(2, 1, 28, 28)
    boxes = torch.tensor([[10.0, 20.0, 40.0, 30.0], [0.0, 0.0, 5.0, 5.0]])
    regions = paste_masks(probs, boxes, 720, 1280)
    assert regions.bits.nbytes < 2000  # against 2 x 720 x 1280 for full masks
    x, y, bits = regions.region(0)
    assert (x, y) == (8, 19) and bits.shape == (12, 34)  # the box, grown by the paste's one-cell border
    assert bits[:, 1:-1].all() and not bits[:, [0, -1]].any()  # where that border weighs most: off
