"""The Predictor against torchvision's own Mask R-CNN forward: the same detections, masks and keypoints,
though it folds batch norms into convolutions, lays tensors out channels-last, normalizes after
resizing and pastes masks region by region."""

from __future__ import annotations

import numpy as np
import torch

from streamseg.config import ModelConfig
from streamseg.models.predictor import Predictor
from streamseg.models.registry import load_model
from streamseg.tools.synth import random_frame


def test_the_predictor_gives_torchvisions_detections() -> None:
    rng = np.random.default_rng(11)
    frames = [random_frame(rng, w, h)[0] for w, h in ((640, 360), (640, 360), (320, 240), (321, 241))]
    predictor = Predictor(ModelConfig(name="streamseg-small", score_thresh=0.5))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in predictor.model.modules())  # folded
    model, _ = load_model("streamseg-small", "", 0)  # as built: nothing folded, laid out as torch does
    model.roi_heads.score_thresh = 0.5
    got = predictor(frames[:2]) + predictor(frames[2:])  # batches of frames of one size, as the batcher sends
    with torch.inference_mode():
        tensors = [torch.from_numpy(f).permute(2, 0, 1).float() / 255 for f in frames]
        want = model(tensors[:2]) + model(tensors[2:])  # the same batches: padding to a batch's size counts
    assert sum(len(d.scores) for d in got) >= 8  # the scenes hold shapes the model finds
    for mine, theirs in zip(got, want):
        assert np.array_equal(mine.labels, theirs["labels"].numpy())
        np.testing.assert_allclose(mine.scores, theirs["scores"].numpy(), atol=1e-4)
        np.testing.assert_allclose(mine.boxes, theirs["boxes"].numpy(), atol=1e-2)
        np.testing.assert_allclose(mine.keypoints[..., :2], theirs["keypoints"][..., :2].numpy(), atol=1e-2)
        masks = (theirs["masks"][:, 0] >= 0.5).numpy()  # torchvision pastes each over the whole frame
        full = mine.masks.full()
        for a, b in zip(full, masks):  # a probability at 0.5 within rounding may flip a border pixel
            assert (a != b).sum() <= max(2, b.sum() // 500)


def test_model_input_is_the_largest_frame_the_model_sees_at_its_own_size() -> None:
    """``model.input``: a 640x360 frame goes in whole (the shipped model's own input halves it), a
    1280x720 one halved, and a 320x240 one is never enlarged."""
    own = Predictor(ModelConfig(name="streamseg-small"))
    larger = Predictor(ModelConfig(name="streamseg-small", input="640x360"))

    def seen(predictor: Predictor, width: int, height: int) -> tuple[int, int]:
        images, _ = predictor.model.transform([torch.zeros(3, height, width)])
        return tuple(images.image_sizes[0])[::-1]

    assert seen(own, 640, 360) == (320, 180) and seen(larger, 640, 360) == (640, 360)
    assert seen(larger, 1280, 720) == (640, 360) and seen(larger, 320, 240) == (320, 240)
