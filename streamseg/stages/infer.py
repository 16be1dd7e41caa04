"""Infer: run Mask R-CNN on each batch; CUDA (its RoIAlign kernel, fp16 autocast) when present, else CPU."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError, DeviceError
from ..messages import Batch, Detections, EndOfStream, FrameResult, StreamStart, StreamStatus
from ..stage import ALL_PORTS, Emit, Stage

log = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; an explicit CUDA device must exist."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device is {name!r} but no CUDA device is usable here; use --device cpu or auto")
    return name


def _is_device_error(exc: BaseException) -> bool:
    """A CUDA failure (out of memory, an illegal access, a lost device), after which a new process may work."""
    import torch

    kinds = tuple(k for k in (torch.OutOfMemoryError, getattr(torch, "AcceleratorError", None)) if k is not None)
    return isinstance(exc, kinds) or "CUDA" in str(exc) or "cuDNN" in str(exc)


class Predictor:
    """A loaded model that turns RGB frames into :class:`Detections`, batch by batch.

    This is the same call the infer stage makes, usable in-process (benchmarks, tests, notebooks).
    It runs torchvision's Mask R-CNN step by step (transform, backbone, RPN, RoI heads) and does
    the last step itself: boxes and keypoints are scaled back to the frame as torchvision does,
    and the masks of the instances that passed ``score_thresh`` are pasted and thresholded
    together, on the model's device, by :func:`~streamseg.masks.paste_masks` (the same masks as
    torchvision's per-mask loop over full frames, without that loop). With ``encode_rle`` the
    masks' COCO RLE comes too (:attr:`Detections.rles`).
    """

    def __init__(self, model_name: str, weights: str | None = None, device: str = "auto",
                 score_thresh: float = 0.5, mask_thresh: float = 0.5, fp16: bool = True,
                 torch_threads: int = 0, seed: int = 0, encode_rle: bool = False) -> None:
        import torch

        from ..models import load_model

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(resolve_device(device))
        self.model, self.info = load_model(model_name, weights, seed)
        self.model.roi_heads.score_thresh = score_thresh
        self.mask_thresh = mask_thresh
        self.encode_rle = encode_rle
        self.cuda = self.device.type == "cuda"
        self.fp16 = fp16 and self.cuda
        if self.cuda:
            torch.backends.cudnn.benchmark = True
            self.model.backbone.to(memory_format=torch.channels_last)
        self.model.to(self.device)

    def __call__(self, images: list[np.ndarray]) -> list[Detections]:
        """Detections for each ``uint8[H, W, 3]`` RGB image, in order."""
        import torch

        with torch.inference_mode():
            tensors = [self._to_tensor(image) for image in images]
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.fp16):
                outputs, sizes = self._forward(tensors)
            return [self._detections(out, size, image.shape[:2]) for out, size, image in zip(outputs, sizes, images)]

    def _forward(self, images: list[Any]) -> tuple[list[dict[str, Any]], list[tuple[int, int]]]:
        """``GeneralizedRCNN.forward`` without its last step: raw detections, and the size each
        image had inside the model."""
        from collections import OrderedDict

        import torch

        model = self.model
        batch, _ = model.transform(images)
        features = model.backbone(batch.tensors)
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        return detections, [tuple(size) for size in batch.image_sizes]

    def _to_tensor(self, image: np.ndarray) -> Any:
        import torch

        with warnings.catch_warnings():  # a frame in shared memory is read-only; it is only read here
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
        if self.cuda:  # pinned staging memory lets the copy overlap with the previous batch's work
            tensor = tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.float().div_(255.0)

    def _detections(self, out: dict[str, Any], size: tuple[int, int], frame: tuple[int, int]) -> Detections:
        """Scale one image's raw detections back to its frame (torchvision's ``postprocess``) and
        paste its masks there."""
        from torchvision.models.detection.transform import resize_boxes, resize_keypoints

        from ..masks import paste_and_encode, paste_masks

        boxes = resize_boxes(out["boxes"].float(), size, frame)
        keypoints = None
        if "keypoints" in out:
            kp = resize_keypoints(out["keypoints"].float(), size, frame)
            kp[..., 2] = out["keypoints_scores"].float()
            keypoints = kp.cpu().numpy().astype(np.float32)
        masks = rles = None
        if "masks" in out:
            if self.encode_rle:
                masks, rles = paste_and_encode(out["masks"].float(), boxes, *frame, self.mask_thresh)
            else:
                masks = paste_masks(out["masks"].float(), boxes, *frame, self.mask_thresh)
        return Detections(boxes.cpu().numpy(), out["scores"].float().cpu().numpy(),
                          out["labels"].cpu().numpy().astype(np.int64), masks, keypoints, rles)


class InferStage(Stage):
    """Runs the model on each Batch and emits one FrameResult per frame, in order.

    Ports: ``render`` gets each result with its image (for drawing); ``masks`` and ``publish`` get
    it without. Any of them may be absent from the worker's outputs.
    """

    outputs = ("render", "masks", "publish")

    def __init__(self, model: dict[str, Any], ports: tuple[str, ...] = ("render", "masks")) -> None:
        super().__init__()
        self.model_cfg = model
        self.ports = tuple(ports)
        self.predictor: Predictor | None = None
        self.max_fps = float(model.get("max_fps") or 0.0)
        self.next_start = 0.0
        self.last: dict[str, int] = {}
        """Stream -> index of the newest result sent (what the next one comes after)."""

    def _throttle(self, frames: int) -> None:
        """With ``model.max_fps``, wait so that inference runs no faster than that many frames a second."""
        if self.max_fps <= 0:
            return
        now = time.monotonic()
        if self.next_start > now:
            time.sleep(self.next_start - now)
        self.next_start = max(now, self.next_start) + frames / self.max_fps

    def setup(self) -> None:
        cfg = self.model_cfg
        threads = cfg.get("torch_threads", 0) or max(1, len(os.sched_getaffinity(0)) - 1)
        self.predictor = Predictor(cfg["name"], cfg.get("weights"), cfg.get("device", "auto"),
                                   cfg.get("score_thresh", 0.5), cfg.get("mask_thresh", 0.5),
                                   cfg.get("fp16", True), threads, cfg.get("seed", 0))
        log.info("model %s on %s", cfg["name"], self.predictor.device)

    def process(self, message: Any) -> Iterable[Emit]:
        if isinstance(message, (StreamStart, StreamStatus)):
            return [(ALL_PORTS, message)]
        if not isinstance(message, Batch):
            return []
        self._throttle(len(message.frames))
        assert self.predictor is not None, "setup() first"
        try:
            results = self.predictor([f.image for f in message.frames])
        except RuntimeError as exc:
            if self.predictor.cuda and _is_device_error(exc):
                raise DeviceError(f"the GPU failed: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
            raise
        self.count("batches")
        self.count("frames", len(results))
        emits: list[Emit] = []
        for frame, detections in zip(message.frames, results):
            self.count("instances", len(detections))
            h, w = frame.image.shape[:2]
            prev = self.last.get(frame.stream_id, -1)
            self.last[frame.stream_id] = frame.index
            for port in self.ports:
                image = frame.image if port == "render" else None
                emits.append((port, FrameResult(frame.stream_id, frame.index, frame.pts, frame.time_base,
                                                w, h, detections, image, frame.captured, prev)))
        return emits

    def passes_on(self, eos: EndOfStream) -> EndOfStream:
        return dataclasses.replace(eos, last=self.last.get(eos.stream_id, -1))
