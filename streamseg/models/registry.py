"""The model registry: names users pass to ``--model``, what each builds, and where its weights come from.

Each entry's ``build()`` returns the architecture with no weights loaded and without touching
the network; :func:`load_model` then loads a local ``--weights`` file, or the entry's default
weights (torchvision's cache or download for the COCO models), or keeps the seeded random
initialisation for the test model. An entry must say, in :class:`ModelInfo`, what its class ids
and keypoints mean, so that stages that never load the model (render, mask writer) can name them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import ModelError

log = logging.getLogger(__name__)

COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7),
                 (6, 8), (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))
"""COCO person skeleton as 0-based keypoint index pairs (COCO's own list, minus one)."""

SHAPE_CLASSES = ("__background__", "circle", "rectangle", "triangle", "star")
SHAPE_KEYPOINTS = ("top", "right", "bottom", "left", "center")
SHAPE_SKELETON = ((0, 4), (1, 4), (2, 4), (3, 4), (0, 1), (1, 2), (2, 3), (3, 0))


@dataclass(frozen=True)
class ModelInfo:
    """What a model's outputs mean."""

    name: str
    """Registry name."""
    categories: tuple[str, ...]
    """Class names by class id; id 0 is the background. COCO's unused ids are named ``N/A``."""
    keypoint_names: tuple[str, ...] = ()
    """Names of the K keypoints per instance; empty without a keypoint head."""
    skeleton: tuple[tuple[int, int], ...] = ()
    """Keypoint index pairs to join with lines when drawing."""
    masks: bool = True
    """Whether the model has a mask head."""

    def category(self, label: int) -> str:
        """The name of class id ``label`` (the id itself, as text, where the model has no such class)."""
        return self.categories[label] if 0 <= label < len(self.categories) else str(label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stage parameters, the masks JSONL header)."""
        return {"name": self.name, "categories": list(self.categories),
                "keypoint_names": list(self.keypoint_names),
                "skeleton": [list(p) for p in self.skeleton], "masks": self.masks}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict`."""
        return cls(data["name"], tuple(data["categories"]), tuple(data.get("keypoint_names", ())),
                   tuple(tuple(p) for p in data.get("skeleton", ())), bool(data.get("masks", True)))


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry. ``default_weights()`` returns a state_dict or None (keep the random init)."""

    info: ModelInfo
    build: Callable[[], Any]
    default_weights: Callable[[], dict[str, Any] | None] = field(default=lambda: None)
    description: str = ""
    build_arch: Callable[[dict[str, Any]], Any] | None = None
    """Builds the architecture a weights file records (its ``arch``), for models that have variants."""
    default_path: str | None = None
    """The default weights as a file (read as ``--weights`` would be, its ``arch`` included), in place of
    ``default_weights``."""


_REGISTRY: dict[str, ModelEntry] = {}


def register(entry: ModelEntry) -> ModelEntry:
    """Add an entry; the name must be new."""
    if entry.info.name in _REGISTRY:
        raise ValueError(f"model {entry.info.name!r} is registered twice")
    _REGISTRY[entry.info.name] = entry
    return entry


def _entries() -> dict[str, ModelEntry]:
    if not _REGISTRY:
        _register_builtin()
    return _REGISTRY


def available() -> dict[str, str]:
    """Registered names and their one-line descriptions."""
    _entries()
    return {name: entry.description for name, entry in sorted(_REGISTRY.items())}


def get_entry(name: str) -> ModelEntry:
    """The entry for ``name``, or a ModelError listing the known names."""
    try:
        return _entries()[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}") from None


def model_info(name: str) -> ModelInfo:
    """What ``name``'s outputs mean, without building it."""
    return get_entry(name).info


def _read_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A weights file's state_dict, and the architecture it records (``arch``) if it does."""
    import torch

    if not os.path.isfile(path):
        raise ModelError(f"weights file not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise ModelError(f"cannot read weights file {path}: {exc}") from None
    arch = data.get("arch") if isinstance(data, dict) and isinstance(data.get("arch"), dict) else None
    if isinstance(data, dict):
        for key in ("model", "state_dict"):
            if isinstance(data.get(key), dict):
                data = data[key]
    if not isinstance(data, dict):
        raise ModelError(f"weights file {path} holds no state_dict")
    return data, arch


def load_model(name: str, weights: str | None, seed: int) -> tuple[Any, ModelInfo]:
    """Build ``name`` on the CPU in eval mode, with ``weights`` (a file) or the entry's defaults;
    ``seed`` seeds a model built without weights (``model.seed``)."""
    import torch

    entry = get_entry(name)
    torch.manual_seed(seed)
    if weights:
        state, arch = _read_checkpoint(weights)
    elif entry.default_path is not None:  # a file in the package, which may record its architecture
        if not os.path.isfile(entry.default_path):
            raise ModelError(f"the shipped weights are missing ({entry.default_path}): reinstall streamseg, or train "
                             "them with `streamseg train --out DIR` and pass --weights DIR/streamseg_small.pt")
        state, arch = _read_checkpoint(entry.default_path)
    else:
        state, arch = entry.default_weights(), None
    if arch is not None and entry.build_arch is not None:
        try:
            model = entry.build_arch(arch)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"weights {weights or entry.default_path} record an architecture ({arch}) that "
                             f"{name} cannot build: {exc}") from None
    else:
        model = entry.build()
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError:
            raise ModelError(_misfit(weights or "(default)", name, model.state_dict(), state)) from None
    return model.eval(), entry.info


def _misfit(weights: str, name: str, wanted: dict[str, Any], given: dict[str, Any]) -> str:
    """Why ``weights`` do not fit ``name``, in one short line, naming the model they do fit if any."""
    import torch

    missing = [k for k in wanted if k not in given]
    unexpected = [k for k in given if k not in wanted]
    misshapen = [k for k in wanted if k in given and tuple(getattr(given[k], "shape", ())) != tuple(wanted[k].shape)]
    parts = [f"{len(v)} {what} (e.g. {v[0][:60]})" for v, what in
             ((missing, "keys missing"), (unexpected, "unexpected"), (misshapen, "of another shape")) if v]
    text = f"weights {weights} do not fit model {name}: {'; '.join(parts[:2])}"
    for other in sorted(_REGISTRY):
        if other == name:
            continue
        try:
            with torch.device("meta"):  # the layout alone, without allocating or initialising weights
                keys = _REGISTRY[other].build().state_dict()
            if keys.keys() == given.keys() and all(tuple(keys[k].shape) == tuple(given[k].shape) for k in keys):
                return f"{text}; they fit {other}: add --model {other}"
        except Exception:  # noqa: BLE001 - a model that cannot be laid out here, or values that are not tensors
            continue
    return text


def _torchvision_weights(weights_enum: Any) -> Callable[[], dict[str, Any]]:
    """Default weights from torchvision's own cache, downloading them when there is internet."""

    def load() -> dict[str, Any]:
        import torch

        checkpoint = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights_enum.url))
        try:
            return weights_enum.get_state_dict(progress=False, check_hash=True)
        except Exception as exc:  # noqa: BLE001 - URLError, socket errors, hash mismatch...
            raise ModelError(
                f"no weights for {weights_enum}: not in torchvision's cache ({checkpoint}) and the download "
                f"failed ({type(exc).__name__}: {exc}). On a machine with internet run "
                f"`python -c \"import torchvision; torchvision.models.get_weight('{weights_enum}').get_state_dict()\"`, "
                f"or download {weights_enum.url} and pass --weights FILE (or put it at {checkpoint})."
            ) from None

    return load


SHIPPED_WEIGHTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "weights", "streamseg_small.pt")


SMALL_ARCH: dict[str, Any] = {"widths": [16, 32, 48, 64, 96], "fpn_channels": 48, "head_channels": 48,
                              "roi_pool": "align", "mask_loss": "sigmoid", "mask_size": 28,
                              "input": [320, 240]}
"""The shipped model's architecture (``input``: the largest frame, long side by short side, that it sees
at its own size; larger ones are scaled down to fit, smaller ones never enlarged); a weights file
written by ``streamseg train`` carries its own (``arch``, the ablation variants' included), which
:func:`load_model` builds."""
ROI_POOLS = ("align", "pool")
"""``arch["roi_pool"]``: RoIAlign, or Fast R-CNN's RoIPool (an ablation)."""
MASK_LOSSES = ("sigmoid", "softmax")
"""``arch["mask_loss"]``: per-class sigmoid masks, or a softmax over classes (an ablation)."""
MASK_SIZES = (28, 56)
"""``arch["mask_size"]``: the side of the predicted masks (torchvision's 28, or 56 from one more learned
up-sampling)."""


def build_streamseg_small(arch: dict[str, Any] | None = None) -> Any:
    """The shipped model's architecture (1.2 M parameters), or ``arch``'s changes to it; trained by
    ``streamseg train``."""
    from .small import small_maskrcnn

    arch = {**SMALL_ARCH, **(arch or {})}
    return small_maskrcnn(len(SHAPE_CLASSES), len(SHAPE_KEYPOINTS), widths=tuple(arch["widths"]),
                          fpn_channels=arch["fpn_channels"], head_channels=arch["head_channels"],
                          roi_pool=arch["roi_pool"], mask_loss=arch["mask_loss"],
                          mask_size=arch["mask_size"], max_size=max(arch["input"]),
                          min_size=min(arch["input"]), box_batch_size_per_image=128,
                          rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300)


def shipped_card() -> dict[str, Any]:
    """The shipped weights' model card (``streamseg_small.json``: how they were trained, what they
    score), or an empty dict where it is missing."""
    import json

    path = os.path.splitext(SHIPPED_WEIGHTS)[0] + ".json"
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _tiny_random() -> Any:
    """The small architecture at its narrowest, with class logits spread out so that random
    scores are distinct (ties would make instance order depend on floating-point noise)."""
    from torch import nn

    from .small import small_maskrcnn

    model = small_maskrcnn(len(SHAPE_CLASSES), len(SHAPE_KEYPOINTS), min_size=240, max_size=320,
                           widths=(8, 16, 16, 24, 32), fpn_channels=16, head_channels=16)
    nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=4.0)
    return model


COCO_CATEGORIES = (
    "__background__", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse",
    "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A", "N/A",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite", "baseball bat",
    "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A", "wine glass", "cup", "fork",
    "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza",
    "donut", "cake", "chair", "couch", "potted plant", "bed", "N/A", "dining table", "N/A", "N/A", "toilet",
    "N/A", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "N/A", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")
"""The 91 class ids of torchvision's COCO detection models (as in their weights' metadata)."""
COCO_PERSON = ("no person", "person")
COCO_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")


def _torchvision_model(builder: str, weights: str, **kwargs: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(build, default_weights) of a torchvision detection model, both importing torchvision only when
    called: listing models and reading their metadata stays cheap (the supervisor does it)."""

    def build() -> Any:
        from torchvision.models import detection

        return getattr(detection, builder)(weights=None, weights_backbone=None, **kwargs)

    def default_weights() -> dict[str, Any]:
        from torchvision.models import detection

        enum_name, _, member = weights.partition(".")
        return _torchvision_weights(getattr(getattr(detection, enum_name), member))()

    return build, default_weights


def _register_builtin() -> None:
    for name, builder, weights, info, description in (
            ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn", "MaskRCNN_ResNet50_FPN_Weights.COCO_V1",
             ModelInfo("maskrcnn_resnet50_fpn", COCO_CATEGORIES),
             "torchvision Mask R-CNN ResNet-50-FPN, COCO (box AP 37.9, mask AP 34.6)"),
            ("maskrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn_v2", "MaskRCNN_ResNet50_FPN_V2_Weights.COCO_V1",
             ModelInfo("maskrcnn_resnet50_fpn_v2", COCO_CATEGORIES),
             "torchvision Mask R-CNN ResNet-50-FPN v2, COCO (box AP 47.4, mask AP 41.8)"),
            ("keypointrcnn_resnet50_fpn", "keypointrcnn_resnet50_fpn", "KeypointRCNN_ResNet50_FPN_Weights.COCO_V1",
             ModelInfo("keypointrcnn_resnet50_fpn", COCO_PERSON, COCO_KEYPOINTS, COCO_SKELETON, masks=False),
             "torchvision Keypoint R-CNN ResNet-50-FPN, COCO persons (box AP 54.6, keypoint AP 65.0)")):
        extra = {"num_classes": len(info.categories)}
        if info.keypoint_names:
            extra["num_keypoints"] = len(info.keypoint_names)
        build, default_weights = _torchvision_model(builder, weights, **extra)
        register(ModelEntry(info, build, default_weights, description))
    register(ModelEntry(
        ModelInfo("streamseg-small", SHAPE_CLASSES, SHAPE_KEYPOINTS, SHAPE_SKELETON),
        build_streamseg_small, description="shipped default: small Mask R-CNN + keypoints, trained on streamseg "
        "synth shapes (offline)", build_arch=build_streamseg_small, default_path=SHIPPED_WEIGHTS))
    register(ModelEntry(
        ModelInfo("tiny-random", SHAPE_CLASSES, SHAPE_KEYPOINTS, SHAPE_SKELETON),
        _tiny_random,
        description="test model: the small architecture with seeded random weights (detections are noise)"))
