"""Train the shipped model: the small Mask R-CNN with mask and keypoint heads, on synthetic frames.

Frames are generated on the fly (:func:`streamseg.tools.synth.random_frame`), each from a scene seed
drawn from the training seed, so a run is reproduced by its command line (with the same code: the card
records its version). ``random_frame`` draws scene seeds at or above
:data:`~streamseg.tools.synth.TRAIN_SEED_FLOOR` only; held-out clips use seeds below it, so that no
evaluation clip was ever seen in training.

    streamseg train --out streamseg/weights --iters 4000 --seed 0
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..config import ModelConfig
from ..errors import ConfigError
from ..models.registry import (
    MASK_LOSSES,
    MASK_SIZES,
    ROI_POOLS,
    SHAPE_CLASSES,
    SHAPE_KEYPOINTS,
    SHAPE_SKELETON,
    SMALL_ARCH,
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


@dataclass(frozen=True)
class TrainOptions:
    """What a training run does: with the same options and code it draws the same frames and steps."""

    iters: int = 4000
    batch: int = 4
    lr: float = 2e-3
    seed: int = 0
    styles: tuple[str, ...] = ("trained",)
    """The kinds of scene (:data:`~streamseg.tools.synth.STYLES`) frames are drawn from, each frame's at
    random (a name twice is drawn twice as often)."""
    sizes: tuple[tuple[int, int], ...] = ((320, 240),)
    """Frame sizes, each frame's at random (repeat one to draw it more often)."""
    arch: tuple[tuple[str, Any], ...] = ()
    """Changes to :data:`~streamseg.models.registry.SMALL_ARCH` (``widths``, ``fpn_channels``,
    ``head_channels``, ``roi_pool``, ``mask_loss``, ``mask_size``, ``input``)."""

    def command(self, out_dir: str | Path) -> str:
        """The ``streamseg train`` command line that makes these options."""
        default, words = TrainOptions(), [f"streamseg train --out {out_dir} --iters {self.iters} --batch "
                                          f"{self.batch} --lr {self.lr} --seed {self.seed}"]
        if self.styles != default.styles:
            words.append(f"--styles {','.join(self.styles)}")
        if self.sizes != default.sizes:
            words.append(f"--sizes {','.join(f'{w}x{h}' for w, h in self.sizes)}")
        arch = dict(self.arch)
        for key in ("widths", "fpn_channels", "head_channels", "mask_size", "input"):
            if key in arch:
                value = arch[key]
                value = _csv(value) if key == "widths" else "x".join(map(str, value)) if key == "input" else value
                words.append(f"--{key.replace('_', '-')} {value}")
        words += [f"--{key.replace('_', '-')} {arch[key]}" for key in ("roi_pool", "mask_loss") if key in arch]
        return " ".join(words)


def train(out_dir: str | Path, options: TrainOptions = TrainOptions(), threads: int = 0, eval_seed: int = 7,
          eval_frames: int = 300, progress: bool = True, checkpoint_every: int = 200,
          resume: bool = False) -> dict[str, Any]:
    """Train, save ``streamseg_small.pt`` and its model card ``streamseg_small.json`` in ``out_dir``.

    Every ``checkpoint_every`` steps the run's whole state (weights, optimizer, random generators) goes
    to ``out_dir/checkpoint.pt``; with ``resume`` a run picks up from there, drawing the frames an
    unbroken run would have, and the checkpoint is removed once the weights are written."""
    import torch

    from .synth import STYLES, random_frame

    unknown = [name for name in options.styles if name not in STYLES]
    if unknown or not options.styles:
        raise ConfigError(f"unknown scene style {', '.join(unknown)}; the styles: {', '.join(STYLES)}")
    out = Path(out_dir)
    checkpoint = out / "checkpoint.pt"
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(options.seed)
    rng = np.random.default_rng(options.seed)
    model = build_streamseg_small(dict(options.arch))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=options.lr, weight_decay=1e-4)
    iters, lr = options.iters, options.lr
    warmup = min(200, iters // 10)

    def lr_at(step: int) -> float:  # linear warm-up, then cosine decay to 2% of the peak
        if step < warmup:
            return lr * (0.1 + 0.9 * step / warmup)
        t = (step - warmup) / max(1, iters - warmup)
        return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t)))

    first, minutes_before, smoothed = 0, 0.0, {}
    if resume and not checkpoint.exists():
        raise ConfigError(f"--resume: there is no {checkpoint} (the run finished, or never began there)")
    if resume:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if state["options"] != dataclasses.asdict(options):
            raise ConfigError(f"{checkpoint} is from another run (options {state['options']}); run its command "
                              "with --resume, or remove the checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        first, minutes_before, smoothed = state["step"], state["minutes"], state["smoothed"]
        log.info("resuming at step %d of %d from %s", first, iters, checkpoint)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=iters, initial=first, unit="it", desc="train", file=sys.stderr, dynamic_ncols=True)
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for step in range(first, iters):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        images, targets = [], []
        for _ in range(options.batch):
            style = STYLES[options.styles[int(rng.integers(len(options.styles)))] if len(options.styles) > 1
                           else options.styles[0]]
            width, height = (options.sizes[int(rng.integers(len(options.sizes)))] if len(options.sizes) > 1
                             else options.sizes[0])
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
                     minutes_before + (time.monotonic() - start) / 60)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < iters:
            torch.save({"step": step + 1, "options": dataclasses.asdict(options), "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "numpy_rng": rng.bit_generator.state,
                        "torch_rng": torch.get_rng_state(), "smoothed": smoothed,
                        "minutes": minutes_before + (time.monotonic() - start) / 60}, checkpoint.with_suffix(".tmp"))
            os.replace(checkpoint.with_suffix(".tmp"), checkpoint)
    if bar is not None:
        bar.close()
    minutes = minutes_before + (time.monotonic() - start) / 60
    weights = out / "streamseg_small.pt"
    model.eval()
    arch = {**SMALL_ARCH, **dict(options.arch)}
    torch.save({"state_dict": model.state_dict(), "arch": arch}, weights)
    card: dict[str, Any] = {
        "name": "streamseg-small",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "code": f"streamseg {__version__}",
        "architecture": "torchvision MaskRCNN, SmallBackbone (5 conv stages) + FPN, box/mask/keypoint heads",
        "arch": arch,
        "parameters": sum(p.numel() for p in model.parameters()),
        "classes": list(SHAPE_CLASSES), "keypoint_names": list(SHAPE_KEYPOINTS),
        "skeleton": [list(p) for p in SHAPE_SKELETON],
        "training": {"command": options.command(out_dir),
                     **{k: v for k, v in dataclasses.asdict(options).items() if k != "arch"},
                     "optimizer": "AdamW, warm-up + cosine",
                     "data": "streamseg.synth random frames, generated on the fly",
                     "minutes": round(minutes, 1), "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                     "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
                                f"threads, torch {torch.__version__}",
                     "final_losses": {k: round(v, 4) for k, v in smoothed.items()}},
    }
    card["accuracy"] = evaluate_heldout(str(weights), eval_seed, eval_frames)
    (out / "streamseg_small.json").write_text(json.dumps(card, indent=2) + "\n")
    checkpoint.unlink(missing_ok=True)  # only now: a run stopped in the evaluation resumes from here
    return card


def add_arguments(p: Any) -> None:
    """``streamseg train``'s options."""
    default = TrainOptions()
    p.add_argument("--out", metavar="DIR", required=True, help="folder for streamseg_small.pt and its model card")
    p.add_argument("--iters", type=int, default=default.iters, help=f"optimizer steps (default {default.iters})")
    p.add_argument("--batch", type=int, default=default.batch, help=f"frames per step (default {default.batch})")
    p.add_argument("--lr", type=float, default=default.lr, help=f"peak learning rate (default {default.lr})")
    p.add_argument("--seed", type=int, default=default.seed, help=f"training seed (default {default.seed})")
    p.add_argument("--styles", default=",".join(default.styles), help="scene kinds: trained (default), sparse, "
                   "crowded, small, fast, same-colour; several, comma-separated, are mixed (repeat one to weight it)")
    p.add_argument("--sizes", type=_frame_sizes, default=default.sizes, metavar="WxH[,WxH...]",
                   help="frame sizes, comma-separated, mixed like --styles (default 320x240)")
    p.add_argument("--widths", type=_widths, help=f"the backbone's five stage widths (default "
                   f"{_csv(SMALL_ARCH['widths'])})")
    p.add_argument("--fpn-channels", type=int, help=f"FPN width (default {SMALL_ARCH['fpn_channels']})")
    p.add_argument("--head-channels", type=int, help=f"mask and keypoint heads' width (default "
                   f"{SMALL_ARCH['head_channels']})")
    p.add_argument("--mask-size", type=int, choices=MASK_SIZES, help=f"the predicted masks' side (default "
                   f"{SMALL_ARCH['mask_size']}; 56: one more learned 2x up-sampling, finer outlines)")
    p.add_argument("--input", type=_frame_size, metavar="WxH", help="the largest frame the model sees at its own "
                   "size; larger ones "
                   f"are scaled down to fit (default {'x'.join(map(str, SMALL_ARCH['input']))})")
    p.add_argument("--roi-pool", choices=ROI_POOLS, help="ablation: RoIAlign (default) or Fast R-CNN's "
                   "RoIPool")
    p.add_argument("--mask-loss", choices=MASK_LOSSES, help="ablation: per-class sigmoid masks with a "
                   "binary loss (default) or a softmax over classes with a multinomial loss")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0: all cores")
    p.add_argument("--eval-frames", type=int, default=300, help="frames of the model card's held-out clip (300)")
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="N",
                   help="save the run's state to DIR/checkpoint.pt every N steps (default 200; 0: never)")
    p.add_argument("--resume", action="store_true", help="go on from DIR/checkpoint.pt (the same options)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _csv(values: Any) -> str:
    return ",".join(map(str, values))


def _frame_size(text: str) -> tuple[int, int]:
    """``--input``'s and ``--sizes``' WxH (training frames are never encoded: any size from 32x32)."""
    try:
        w, h = (int(v) for v in text.strip().lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is WIDTHxHEIGHT, got {text!r}") from None
    if min(w, h) < 32:
        raise argparse.ArgumentTypeError(f"a size is at least 32x32, got {text!r}")
    return w, h


def _frame_sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(_frame_size(size) for size in text.split(","))


def _widths(text: str) -> list[int]:
    try:
        widths = [int(v) for v in text.split(",")]
    except ValueError:
        widths = []
    if len(widths) != 5 or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"--widths takes five positive integers, got {text!r}")
    return widths


def main(args: Any) -> int:
    """``streamseg train``: train, print the held-out clip's figures."""
    if args.iters < 1 or args.batch < 1 or args.eval_frames < 1:
        raise ConfigError("--iters, --batch and --eval-frames must be at least 1")
    arch = {"widths": args.widths, "input": list(args.input) if args.input else None,
            "fpn_channels": args.fpn_channels, "head_channels": args.head_channels, "mask_size": args.mask_size,
            "roi_pool": args.roi_pool, "mask_loss": args.mask_loss}
    # only what differs from the shipped architecture: an option given at its default is the same run
    changes = tuple((k, v) for k, v in arch.items() if v is not None and v != SMALL_ARCH[k])
    options = TrainOptions(args.iters, args.batch, args.lr, args.seed, tuple(n.strip() for n in args.styles.split(",")),
                           args.sizes, changes)
    logging.getLogger("streamseg").setLevel(logging.INFO)
    card = train(args.out, options, threads=args.threads, eval_frames=args.eval_frames,
                 progress=not args.quiet and sys.stderr.isatty(), checkpoint_every=args.checkpoint_every,
                 resume=args.resume)
    print(json.dumps(card["accuracy"], indent=2))
    return 0


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
