"""A small Mask R-CNN with mask and keypoint heads, for CPUs: torchvision's parts, a toy backbone.

The architecture is torchvision's ``MaskRCNN`` (RPN, RoIAlign via ``MultiScaleRoIAlign``, box, mask
and keypoint heads on one ``RoIHeads``); only the backbone and head widths are small. Two variants
exist for the Mask R-CNN paper's ablations (``streamseg train --roi-pool pool`` and ``--mask-loss
softmax``): RoIPool's quantized pooling in place of RoIAlign, and a softmax over classes with a
multinomial loss in place of per-class sigmoid masks. They are trained and scored, never shipped.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, project_masks_on_boxes
from torchvision.models.detection.transform import (
    GeneralizedRCNNTransform,
    _resize_image_and_masks,
    resize_boxes,
    resize_keypoints,
)
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign, roi_pool
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.poolers import _convert_to_roi_format, _filter_input, _setup_scales

from .registry import MASK_LOSSES, MASK_SIZES, ROI_POOLS


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3x3 convolutions, the first with stride 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class SmallBackbone(nn.Module):
    """A five-stage conv net (strides 2..32) with an FPN over the stride 4, 8, 16 and 32 stages.

    ``forward(x: FloatTensor[B, 3, H, W]) -> OrderedDict[str, FloatTensor[B, out_channels, h, w]]``
    with keys ``"0"``..``"3"`` and ``"pool"``, as torchvision's detection heads expect.
    """

    def __init__(self, widths: tuple[int, ...] = (16, 24, 48, 64, 96), out_channels: int = 64) -> None:
        super().__init__()
        self.stages = nn.ModuleList()
        c_in = 3
        for width in widths:
            self.stages.append(_block(c_in, width))
            c_in = width
        self.fpn = FeaturePyramidNetwork(list(widths[1:]), out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                features[str(i - 1)] = x
        return self.fpn(features)


class CappedTransform(GeneralizedRCNNTransform):
    """torchvision's transform, resizing only frames larger than the model's input: a frame is scaled
    by ``min(1, max_size / long side, min_size / short side)``, so it is never enlarged and at most
    ``max_size`` by ``min_size``."""

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        h, w = image.shape[-2:]
        scale = min(1.0, self.max_size / max(h, w), self.min_size[-1] / min(h, w))
        if scale == 1.0:
            return image, target
        resized, target = _resize_image_and_masks(image, min(h, w) * scale, max(h, w) * scale, target)
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"], (h, w), resized.shape[-2:])
            if "keypoints" in target:
                target["keypoints"] = resize_keypoints(target["keypoints"], (h, w), resized.shape[-2:])
        return resized, target


class MultiScaleRoIPool(MultiScaleRoIAlign):
    """``MultiScaleRoIAlign``'s choice of level per region, pooled by RoIPool (Fast R-CNN's quantized
    max pooling) instead of RoIAlign: the paper's ablation baseline."""

    def forward(self, x: dict[str, torch.Tensor], boxes: list[torch.Tensor],
                image_shapes: list[tuple[int, int]]) -> torch.Tensor:
        # MultiScaleRoIAlign.forward's own steps, up to the pooling
        features = _filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(features, image_shapes, self.canonical_scale,
                                                         self.canonical_level)
        rois = _convert_to_roi_format(boxes)
        levels = self.map_levels(boxes)
        out = features[0].new_zeros((len(rois), features[0].shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, self.scales)):
            index = torch.where(levels == level)[0]
            out[index] = roi_pool(feature, rois[index], self.output_size, scale).to(out.dtype)
        return out


def multinomial_mask_targets(masks: list[torch.Tensor], boxes: list[torch.Tensor], matched: list[torch.Tensor],
                             classes: torch.Tensor, size: int) -> torch.Tensor:
    """``int64[N, size, size]``: each positive RoI's pixel classes for the softmax mask loss, its
    instance's class where the instance's mask (``masks[image][matched]``, projected on the RoI's box
    as torchvision's sigmoid loss does) covers the pixel, the background (0) elsewhere."""
    inside = torch.cat([project_masks_on_boxes(m, b, i, size) for m, b, i in zip(masks, boxes, matched)]) >= 0.5
    return torch.where(inside, classes[:, None, None], torch.zeros_like(classes)[:, None, None])


class SoftmaxMaskRoIHeads(RoIHeads):
    """``RoIHeads`` with the mask branch the paper compares against: a softmax over the classes at each
    pixel (the background one of them), trained with a multinomial loss, so classes compete for a
    pixel; the box and keypoint branches are torchvision's."""

    def select_training_samples(self, proposals: Any, targets: Any) -> Any:
        self._samples = super().select_training_samples(proposals, targets)
        return self._samples

    def forward(self, features: Any, proposals: Any, image_shapes: Any, targets: Any = None) -> Any:
        pool = self.mask_roi_pool
        self.mask_roi_pool = None  # the parent runs the box and keypoint branches alone
        try:
            result, losses = super().forward(features, proposals, image_shapes, targets)
        finally:
            self.mask_roi_pool = pool
        if self.training:
            sampled, matched, labels, _ = self._samples
            positive = [torch.where(label > 0)[0] for label in labels]
            boxes = [p[i] for p, i in zip(sampled, positive)]
            matched = [m[i] for m, i in zip(matched, positive)]
        else:
            boxes = [r["boxes"] for r in result]
        logits = self.mask_predictor(self.mask_head(pool(features, boxes, image_shapes)))
        if self.training:
            classes = torch.cat([t["labels"][m] for t, m in zip(targets, matched)])
            pixel_class = multinomial_mask_targets([t["masks"] for t in targets], boxes, matched, classes,
                                                   logits.shape[-1])
            losses["loss_mask"] = F.cross_entropy(logits, pixel_class) if len(classes) else logits.sum() * 0
        else:
            labels = torch.cat([r["labels"] for r in result])
            probs = logits.softmax(dim=1)[torch.arange(len(labels), device=labels.device), labels][:, None]
            for r, masks in zip(result, probs.split([len(r["labels"]) for r in result])):
                r["masks"] = masks
        return result, losses


class FineMaskPredictor(nn.Sequential):
    """Mask logits at 56x56 from the mask head's 14x14 features: two learned 2x up-samplings where
    torchvision's ``MaskRCNNPredictor`` has one (28x28), so that a pasted mask's cells are half as wide
    on a shape's outline."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(OrderedDict([
            ("conv5_mask", nn.ConvTranspose2d(channels, channels, 2, 2)), ("relu5", nn.ReLU(inplace=True)),
            ("conv6_mask", nn.ConvTranspose2d(channels, channels, 2, 2)), ("relu6", nn.ReLU(inplace=True)),
            ("mask_fcn_logits", nn.Conv2d(channels, num_classes, 1))]))
        for name, param in self.named_parameters():
            if "weight" in name:
                nn.init.kaiming_normal_(param, mode="fan_out", nonlinearity="relu")


def small_maskrcnn(num_classes: int, num_keypoints: int = 0, min_size: int = 240, max_size: int = 320,
                   widths: tuple[int, ...] = (16, 24, 48, 64, 96), fpn_channels: int = 64,
                   head_channels: int = 64, roi_pool: str = "align", mask_loss: str = "sigmoid",
                   mask_size: int = 28, **kwargs: object) -> MaskRCNN:
    """A ``MaskRCNN`` for small frames; with ``num_keypoints > 0`` it also carries a keypoint head.

    ``num_classes`` counts the background. A frame larger than ``max_size`` by ``min_size`` (long side
    by short side) is scaled down to fit inside the model (:class:`CappedTransform`); smaller ones are
    seen at their own size. ``roi_pool`` (``align`` or ``pool``: the box, mask and keypoint heads all
    pool with it, as the paper's one network does) and ``mask_loss`` (``sigmoid`` or ``softmax``)
    choose the ablation variants; ``mask_size`` (28 or 56) is the side of the predicted masks.
    """
    if roi_pool not in ROI_POOLS or mask_loss not in MASK_LOSSES or mask_size not in MASK_SIZES:
        raise ValueError(f"roi_pool must be one of {ROI_POOLS}, mask_loss one of {MASK_LOSSES} and mask_size one "
                         f"of {MASK_SIZES}")
    backbone = SmallBackbone(widths, fpn_channels)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    levels = ["0", "1", "2", "3"]
    pooler = MultiScaleRoIAlign if roi_pool == "align" else MultiScaleRoIPool
    model = MaskRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        rpn_anchor_generator=anchors, box_roi_pool=pooler(levels, output_size=7, sampling_ratio=2),
        box_head=TwoMLPHead(fpn_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_roi_pool=pooler(levels, output_size=14, sampling_ratio=2),
        mask_head=MaskRCNNHeads(fpn_channels, (head_channels,) * 4, 1),
        mask_predictor=(MaskRCNNPredictor(head_channels, head_channels, num_classes) if mask_size == 28
                        else FineMaskPredictor(head_channels, num_classes)),
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_detections_per_img=50,
        **kwargs,
    )
    transform = model.transform
    model.transform = CappedTransform(min_size, max_size, transform.image_mean, transform.image_std,
                                      size_divisible=transform.size_divisible)
    if mask_loss == "softmax":
        model.roi_heads.__class__ = SoftmaxMaskRoIHeads
    if num_keypoints:
        model.roi_heads.keypoint_roi_pool = pooler(levels, output_size=14, sampling_ratio=2)
        model.roi_heads.keypoint_head = KeypointRCNNHeads(fpn_channels, (head_channels,) * 4)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(head_channels, num_keypoints)
    return model
