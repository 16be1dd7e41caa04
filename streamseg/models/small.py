"""A small Mask R-CNN with mask and keypoint heads, for CPUs: torchvision's parts, a toy backbone.

The architecture is torchvision's ``MaskRCNN`` (RPN, RoIAlign via ``MultiScaleRoIAlign``, box, mask
and keypoint heads on one ``RoIHeads``); only the backbone and head widths are small.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.keypoint_rcnn import (
    KeypointRCNNHeads,
    KeypointRCNNPredictor,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool


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


def small_maskrcnn(num_classes: int, num_keypoints: int = 0, min_size: int = 240, max_size: int = 320,
                   widths: tuple[int, ...] = (16, 24, 48, 64, 96), fpn_channels: int = 64,
                   head_channels: int = 64, **kwargs: object) -> MaskRCNN:
    """A ``MaskRCNN`` for small frames; with ``num_keypoints > 0`` it also carries a keypoint head.

    ``num_classes`` counts the background. Images are resized so the short side is ``min_size``
    (long side at most ``max_size``) inside the model, as torchvision's transform does.
    """
    backbone = SmallBackbone(widths, fpn_channels)
    anchors = AnchorGenerator(sizes=((16,), (32,), (64,), (128,), (256,)), aspect_ratios=((0.5, 1.0, 2.0),) * 5)
    levels = ["0", "1", "2", "3"]
    box_pool = MultiScaleRoIAlign(levels, output_size=7, sampling_ratio=2)
    mask_pool = MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
    model = MaskRCNN(
        backbone, num_classes=None, min_size=min_size, max_size=max_size,
        rpn_anchor_generator=anchors, box_roi_pool=box_pool,
        box_head=TwoMLPHead(fpn_channels * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, num_classes),
        mask_roi_pool=mask_pool,
        mask_head=MaskRCNNHeads(fpn_channels, (head_channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(head_channels, head_channels, num_classes),
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100, box_detections_per_img=50,
        **kwargs,
    )
    if num_keypoints:
        model.roi_heads.keypoint_roi_pool = MultiScaleRoIAlign(levels, output_size=14, sampling_ratio=2)
        model.roi_heads.keypoint_head = KeypointRCNNHeads(fpn_channels, (head_channels,) * 4)
        model.roi_heads.keypoint_predictor = KeypointRCNNPredictor(head_channels, num_keypoints)
    return model

