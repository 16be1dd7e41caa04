"""Train the shipped model: the small Mask R-CNN with mask and keypoint heads, on synthetic frames.

Frames are generated on the fly (:func:`streamseg.tools.synth.random_frame`), each from a scene seed
drawn from the training seed, so a run is reproduced by its command line (with the same code: the card
records its version). ``random_frame`` draws scene seeds at or above
:data:`~streamseg.tools.synth.TRAIN_SEED_FLOOR` only; held-out clips use seeds below it, so that no
evaluation clip was ever seen in training.

    streamseg train --out streamseg/weights --iters 3000 --seed 0
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import ModelConfig
from ..errors import ConfigError
from ..models.registry import (
    SHAPE_CLASSES,
    SHAPE_KEYPOINTS,
    SHAPE_SKELETON,
    build_streamseg_small,
)

log = logging.getLogger(__name__)

TRAIN_MIN_AREA_PX = 20
"""Instances smaller than this are left out of training targets (they are ignored in evaluation)."""


def make_target(instances: list[Any]) -> dict[str, Any]:
    """torchvision detection targets (boxes, labels, masks, keypoints) of a synthetic frame."""
    import torch

    keep = [i for i in instances if i.area >= TRAIN_MIN_AREA_PX]
    k = len(SHAPE_KEYPOINTS)
    if not keep:
        return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64),
                "masks": torch.zeros((0, 1, 1), dtype=torch.uint8), "keypoints": torch.zeros((0, k, 3))}
    return {"boxes": torch.tensor([i.box() for i in keep], dtype=torch.float32),
            "labels": torch.tensor([i.label for i in keep], dtype=torch.int64),
            "masks": torch.from_numpy(np.stack([i.mask for i in keep]).astype(np.uint8)),
            "keypoints": torch.from_numpy(np.stack([i.keypoints for i in keep]).astype(np.float32))}


def train(out_dir: str | Path, iters: int = 3000, batch: int = 4, lr: float = 2e-3, seed: int = 0,
          width: int = 320, height: int = 240, threads: int = 0, eval_seed: int = 7, eval_frames: int = 300,
          progress: bool = True, styles: tuple[str, ...] = ("trained",)) -> dict[str, Any]:
    """Train, save ``streamseg_small.pt`` and its model card ``streamseg_small.json`` in ``out_dir``.

    ``styles``: the kinds of scene (:data:`~streamseg.tools.synth.STYLES`) frames are drawn from, each
    frame's at random (a name twice is drawn twice as often)."""
    import torch

    from .synth import STYLES, random_frame

    unknown = [name for name in styles if name not in STYLES]
    if unknown or not styles:
        raise ConfigError(f"unknown scene style {', '.join(unknown)}; the styles: {', '.join(STYLES)}")

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = build_streamseg_small()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    warmup = min(200, iters // 10)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 2% of the peak
        if step < warmup:
            return lr * (0.1 + 0.9 * step / warmup)
        t = (step - warmup) / max(1, iters - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=iters, unit="it", desc="train", file=sys.stderr, dynamic_ncols=True)
    start = time.monotonic()
    smoothed: dict[str, float] = {}
    for step in range(iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        images, targets = [], []
        for _ in range(batch):
            style = STYLES[styles[int(rng.integers(len(styles)))] if len(styles) > 1 else styles[0]]
            image, instances = random_frame(np.random.default_rng(int(rng.integers(2**63))), width, height, style)
            images.append(torch.from_numpy(image).permute(2, 0, 1).float().div_(255))
            targets.append(make_target(instances))
        losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        for name, value in losses.items():
            smoothed[name] = 0.95 * smoothed.get(name, value.item()) + 0.05 * value.item()
        if bar is not None:
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{sum(smoothed.values()):.3f}", lr=f"{lr_at(step):.1e}")
        if step % 200 == 0 or step == iters - 1:
            log.info("step %d/%d loss %.3f (%s) %.1f min", step, iters, sum(smoothed.values()),
                     " ".join(f"{k.replace('loss_', '')}={v:.3f}" for k, v in smoothed.items()),
                     (time.monotonic() - start) / 60)
    if bar is not None:
        bar.close()
    minutes = (time.monotonic() - start) / 60
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "streamseg_small.pt"
    model.eval()
    torch.save(model.state_dict(), weights)
    card: dict[str, Any] = {
        "name": "streamseg-small",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "code": f"streamseg {__version__}",
        "architecture": "torchvision MaskRCNN, SmallBackbone (5 conv stages) + FPN, box/mask/keypoint heads",
        "parameters": sum(p.numel() for p in model.parameters()),
        "classes": list(SHAPE_CLASSES), "keypoint_names": list(SHAPE_KEYPOINTS),
        "skeleton": [list(p) for p in SHAPE_SKELETON],
        "input_size": [width, height],
        "training": {"command": f"streamseg train --out {out_dir} --iters {iters} --batch {batch} --lr {lr} "
                                f"--seed {seed}" + (f" --styles {','.join(styles)}" if styles != ("trained",) else ""),
                     "iters": iters, "batch": batch, "lr": lr, "optimizer": "AdamW, warm-up + cosine",
                     "seed": seed, "data": "streamseg.synth random frames, generated on the fly",
                     "minutes": round(minutes, 1), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
                                f"threads, torch {torch.__version__}",
                     "styles": list(styles),
                     "final_losses": {k: round(v, 4) for k, v in smoothed.items()}},
    }
    card["accuracy"] = evaluate_heldout(str(weights), eval_seed, eval_frames, width, height)
    (out / "streamseg_small.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def evaluate_heldout(weights: str, seed: int = 7, frames: int = 300, width: int = 320, height: int = 240,
                     model: str = ModelConfig.name, score_thresh: float = ModelConfig.score_thresh) -> dict[str, Any]:
    """Mask, box and keypoint AP of ``weights`` on a held-out synthetic clip (model called directly)."""
    import tempfile
    from fractions import Fraction

    import av

    from ..formats.records import frame_record
    from ..models import model_info
    from ..models.predictor import Predictor
    from ..runtime.messages import FrameResult
    from .evaluate import evaluate, load_ground_truth
    from .synth import TRAIN_SEED_FLOOR, is_training_seed, write_video

    if is_training_seed(seed):
        raise ValueError(f"held-out seeds must be below {TRAIN_SEED_FLOOR}")
    info = model_info(model)
    with tempfile.TemporaryDirectory() as tmp:
        clip, gt_path = Path(tmp) / "heldout.mp4", Path(tmp) / "heldout.json"
        write_video(clip, gt_path, seed, frames, width, height)
        predictor = Predictor(ModelConfig(name=model, weights=weights, device="cpu", score_thresh=score_thresh))
        with av.open(str(clip)) as container:
            images = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        records = []
        start = time.perf_counter()
        for index, image in enumerate(images):
            det = predictor([image])[0]
            records.append(frame_record(FrameResult("0", index, index, Fraction(1, 30), width, height, det), info))
        fps = len(images) / (time.perf_counter() - start)
        stats = evaluate(records, load_ground_truth(gt_path), verbose=False)
    return {"heldout_seed": seed, "frames": frames, "size": [width, height],
            "mask_AP": round(stats["segm"]["AP"], 4), "mask_AP50": round(stats["segm"]["AP50"], 4),
            "box_AP": round(stats["bbox"]["AP"], 4),
            "keypoint_AP": round(stats.get("keypoints", {}).get("AP", 0.0), 4),
            "model_fps_batch1": round(fps, 1), "score_thresh": score_thresh}
