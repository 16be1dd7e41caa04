"""The model as one call: :class:`Predictor` turns RGB frames into :class:`Detections`, batch by batch.

The inference stage runs it; so can anything in-process (training's evaluation, benchmarks, tests,
a notebook). torch is imported on first use, so importing this module stays cheap.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import ConfigError
from ..runtime.messages import Detections


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is usable, else ``cpu``; an explicit CUDA device must exist."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"model.device is {name!r} but no CUDA device is usable here; use --device cpu or auto")
    return name


class Predictor:
    """A loaded model that turns RGB frames into :class:`Detections`, batch by batch.

    This is the same call the infer stage makes, usable in-process (benchmarks, tests, notebooks).
    It runs torchvision's Mask R-CNN step by step (transform, backbone, RPN, RoI heads), with its
    batch norms folded into the convolutions and its tensors channels-last (``model.channels_last``),
    and does the last step
    itself: boxes and keypoints are scaled back to the frame as torchvision does,
    and the masks of the instances that passed ``score_thresh`` are pasted and thresholded
    together, on the model's device, by :func:`~streamseg.masks.paste_masks` (the same masks as
    torchvision's per-mask loop over full frames, without that loop). With ``encode_rle`` the
    masks' COCO RLE comes too (:attr:`Detections.rles`).
    """

    def __init__(self, config: ModelConfig = ModelConfig(), encode_rle: bool = False) -> None:
        """``config``: the ``model`` section (which model, weights, device, thresholds; ``torch_threads``
        0 leaves torch's own thread count alone here, the inference worker resolves it first)."""
        import torch

        from .registry import load_model

        if config.torch_threads:
            torch.set_num_threads(config.torch_threads)
        self.config = config
        self.device = torch.device(resolve_device(config.device))
        self.model, self.info = load_model(config.name, config.weights, config.seed)
        if config.input:  # the largest frame it sees at its own size, in place of its own
            width, height = (int(side) for side in config.input.split("x"))
            self.model.transform.min_size, self.model.transform.max_size = (min(width, height),), max(width, height)
        self.model.roi_heads.score_thresh = config.score_thresh
        if config.detections_per_img:
            self.model.roi_heads.detections_per_img = config.detections_per_img
        self.mask_thresh = config.mask_thresh
        self.encode_rle = encode_rle
        self.cuda = self.device.type == "cuda"
        self.fp16 = config.fp16 and self.cuda
        if self.cuda:
            torch.backends.cudnn.benchmark = True
        # the same model, faster: batch norms folded into the convolutions before them, and images and
        # weights laid out channels-last, which oneDNN and cuDNN convolve fastest (the masks stay the same)
        fuse_conv_bn(self.model)
        self.layout = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.layout)

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
        from torchvision.models.detection.image_list import ImageList

        model, transform = self.model, self.model.transform
        # torchvision's transform, with each image normalized after it is resized rather than before
        # (resizing is linear: the same numbers but for rounding), which is fewer pixels to normalize
        images = [transform.normalize(transform.resize(image, None)[0]) for image in images]
        sizes = [(int(image.shape[-2]), int(image.shape[-1])) for image in images]
        batch = ImageList(transform.batch_images(images, size_divisible=transform.size_divisible), sizes)
        features = model.backbone(batch.tensors.contiguous(memory_format=self.layout))
        if isinstance(features, torch.Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(batch, features)
        detections, _ = model.roi_heads(features, proposals, batch.image_sizes)
        return detections, sizes

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
        from torchvision.models.detection.transform import (
            resize_boxes,
            resize_keypoints,
        )

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


def fuse_conv_bn(module: Any) -> None:
    """Fold each ``BatchNorm2d`` that follows a ``Conv2d`` in a ``Sequential`` into that convolution
    (an inference-only model: the norm's running statistics are constants), in place."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for child in module.children():
        fuse_conv_bn(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and type(norm) is nn.BatchNorm2d and not (conv.training or norm.training):
                module[i], module[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
