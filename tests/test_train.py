"""Training: the ablation variants (RoIPool, softmax masks), weights that carry their architecture, and a
run that resumes from its checkpoint as if never stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from streamseg.models.registry import load_model
from streamseg.models.small import (
    MultiScaleRoIPool,
    SoftmaxMaskRoIHeads,
    multinomial_mask_targets,
    small_maskrcnn,
)
from streamseg.tools.synth import random_frame
from streamseg.tools.train import make_target

TINY = {"widths": (8, 16, 16, 24, 32), "fpn_channels": 16, "head_channels": 16, "min_size": 240, "max_size": 320}


def _features() -> tuple[OrderedDict[str, torch.Tensor], list[torch.Tensor]]:
    torch.manual_seed(0)
    features = OrderedDict((str(i), torch.randn(2, 4, 64 >> i, 80 >> i)) for i in range(4))
    boxes = [torch.tensor([[10.3, 20.7, 40.2, 50.9], [0.0, 0.0, 300.0, 250.0]]), torch.tensor([[5.5, 5.5, 30.1, 22.8]])]
    return features, boxes


def test_roi_pool_takes_align_s_level_and_pools_it_quantized() -> None:
    features, boxes = _features()
    shapes = [(256, 320)] * 2
    pooled = MultiScaleRoIPool(["0", "1", "2", "3"], 7, 2)(features, boxes, shapes)
    aligned = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)(features, boxes, shapes)
    assert pooled.shape == aligned.shape == (3, 4, 7, 7)
    # the small boxes map to the finest level (stride 4): there, it is torchvision's RoIPool itself
    rois = torch.tensor([[0, 10.3, 20.7, 40.2, 50.9], [1, 5.5, 5.5, 30.1, 22.8]])
    expected = roi_pool(features["0"], rois, (7, 7), 0.25)
    assert torch.equal(pooled[[0, 2]], expected)
    assert not torch.allclose(pooled, aligned)  # quantized max pooling is not bilinear sampling


def _frames(n: int) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    rng = np.random.default_rng(3)
    images, targets = [], []
    for _ in range(n):
        image, instances = random_frame(rng, 160, 120)
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append(make_target(instances))
    return images, targets


@pytest.mark.parametrize("variant", [{"mask_loss": "softmax"}, {"roi_pool": "pool"}, {"mask_size": 56}, {}])
def test_the_variants_train_and_their_mask_loss_falls(variant: dict[str, str]) -> None:
    torch.manual_seed(0)
    model = small_maskrcnn(5, 5, **TINY, **variant)
    images, targets = _frames(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = last = None
    for _ in range(50):
        losses = model(images, targets)
        last = losses["loss_mask"].item()
        first = last if first is None else first
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg", "loss_mask",
                           "loss_keypoint"}
    assert last < 0.7 * first
    model.eval()
    model.roi_heads.score_thresh = 0.0
    with torch.inference_mode():
        out = model(images[:1])[0]
    n = len(out["boxes"])
    assert n > 0 and out["masks"].shape == (n, 1, 120, 160) and out["keypoints"].shape == (n, 5, 3)
    assert 0.0 <= out["masks"].min() and out["masks"].max() <= 1.0


def test_softmax_masks_are_the_class_s_share_of_each_pixel() -> None:
    torch.manual_seed(0)
    model = small_maskrcnn(5, 0, **TINY, mask_loss="softmax").eval()
    assert isinstance(model.roi_heads, SoftmaxMaskRoIHeads)
    logits = {}
    model.roi_heads.mask_predictor.register_forward_hook(lambda module, args, out: logits.update(x=out))
    model.roi_heads.score_thresh = 0.0
    images, _ = _frames(1)
    with torch.inference_mode():
        out = model.roi_heads(model.backbone(model.transform(images)[0].tensors),
                              [torch.tensor([[10.0, 10.0, 60.0, 50.0], [30.0, 40.0, 90.0, 110.0]])], [(120, 160)])[0][0]
    expected = logits["x"].softmax(dim=1)[torch.arange(len(out["labels"])), out["labels"]][:, None]
    assert torch.allclose(out["masks"], expected)


def test_the_softmax_loss_s_targets_are_the_class_inside_the_mask_and_background_outside() -> None:
    masks = torch.zeros(2, 40, 60, dtype=torch.uint8)
    masks[0, 10:30, 10:20] = 1  # instance 0: the left half of the box below
    masks[1, 10:30, 20:30] = 1  # instance 1: its right half
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]] * 2)
    targets = multinomial_mask_targets([masks], [box], [torch.tensor([0, 1])], torch.tensor([3, 2]), 28)
    assert targets.shape == (2, 28, 28) and targets.dtype == torch.int64
    inner = slice(1, 27)  # the box's outermost samples fall half outside the masks
    assert (targets[0, inner, :13] == 3).all() and (targets[0, :, 14:] == 0).all()
    assert (targets[1, :, :13] == 0).all() and (targets[1, inner, 14:27] == 2).all()


def test_weights_carry_their_architecture(tmp_path: Path) -> None:
    from streamseg.models.registry import build_streamseg_small

    arch = {"roi_pool": "pool", "mask_loss": "softmax", "head_channels": 32, "mask_size": 56}
    torch.save({"state_dict": build_streamseg_small(arch).state_dict(), "arch": arch}, tmp_path / "w.pt")
    model, _ = load_model("streamseg-small", str(tmp_path / "w.pt"), 0)
    assert isinstance(model.roi_heads, SoftmaxMaskRoIHeads)
    assert isinstance(model.roi_heads.mask_roi_pool, MultiScaleRoIPool)
    assert model.roi_heads.mask_predictor.conv5_mask.in_channels == 32
    assert model.roi_heads.mask_predictor.conv6_mask.out_channels == 32  # 56x56 masks
    from streamseg.errors import ModelError

    torch.save({"state_dict": {}, "arch": {"roi_pool": "warp"}}, tmp_path / "bad.pt")
    with pytest.raises(ModelError, match="bad.pt record an architecture"):
        load_model("streamseg-small", str(tmp_path / "bad.pt"), 0)


def test_a_stopped_run_resumes_as_if_never_stopped(tmp_path: Path) -> None:
    """Killed after a checkpoint, then resumed: the weights are those of a run never stopped."""
    args = [sys.executable, "-m", "streamseg", "train", "--iters", "6", "--batch", "1", "--eval-frames", "1",
            "--checkpoint-every", "2", "--threads", "1", "-q", "--widths", "8,16,16,24,32", "--fpn-channels", "16",
            "--head-channels", "16", "--sizes", "160x120", "--input", "640x360", "--roi-pool", "align"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    whole = subprocess.run([*args, "--out", str(tmp_path / "whole")], capture_output=True, text=True, env=env,
                           timeout=300)
    assert whole.returncode == 0, whole.stderr
    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([*args, "--out", str(stopped)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    try:
        deadline = time.monotonic() + 240
        while not (stopped / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert (stopped / "checkpoint.pt").exists() and not (stopped / "streamseg_small.pt").exists()
    step = torch.load(stopped / "checkpoint.pt", weights_only=False)["step"]
    other = subprocess.run([*args, "--out", str(stopped), "--seed", "5", "--resume"], capture_output=True, text=True,
                           env=env, timeout=300)
    assert other.returncode == 2 and "from another run" in other.stderr
    resumed = subprocess.run([*args, "--out", str(stopped), "--resume"], capture_output=True, text=True, env=env,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming at step {step} of 6" in resumed.stderr
    a = torch.load(tmp_path / "whole" / "streamseg_small.pt", weights_only=True)["state_dict"]
    b = torch.load(stopped / "streamseg_small.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not (stopped / "checkpoint.pt").exists()
    card = json.loads((stopped / "streamseg_small.json").read_text())
    # the command names what differs from the shipped architecture (--roi-pool align is its own)
    assert card["training"]["command"].endswith("--sizes 160x120 --widths 8,16,16,24,32 --fpn-channels 16 "
                                                "--head-channels 16 --input 640x360")
