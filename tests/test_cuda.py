"""The CUDA path (torchvision's CUDA RoIAlign, fp16 autocast, pinned copies); skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TEST_MODEL, TEST_SCORE_THRESH, read_jsonl

from streamseg.config import ModelConfig
from streamseg.errors import ConfigError
from streamseg.models.predictor import Predictor, resolve_device

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _frames(n: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (242, 322, 3), dtype=np.uint8) for _ in range(n)]


def test_asking_for_cuda_without_it_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


@cuda
@pytest.mark.cuda
def test_cuda_fp32_matches_cpu() -> None:
    frames = _frames()
    cpu = Predictor(ModelConfig(name="tiny-random", device="cpu", score_thresh=TEST_SCORE_THRESH))(frames)
    gpu = Predictor(ModelConfig(name="tiny-random", device="cuda", score_thresh=TEST_SCORE_THRESH, fp16=False))(frames)
    for a, b in zip(cpu, gpu):
        assert len(a) == len(b)
        np.testing.assert_allclose(np.sort(a.scores), np.sort(b.scores), atol=1e-3)


@cuda
@pytest.mark.cuda
def test_cuda_fp16_runs_batched_and_gives_sane_outputs() -> None:
    out = Predictor(ModelConfig(name="tiny-random", device="cuda", score_thresh=0.0, fp16=True))(_frames(8))
    assert len(out) == 8
    for det in out:
        assert det.boxes.dtype == np.float32 and det.masks is not None and (det.masks.height, det.masks.width) == (242, 322)
        assert np.isfinite(det.boxes).all() and np.isfinite(det.scores).all()


@cuda
@pytest.mark.cuda
def test_pipeline_on_cuda(cli, clip: Path, tmp_path: Path) -> None:
    result = cli.run("run", str(clip), "--masks", "m.jsonl", *TEST_MODEL, "--device", "cuda")
    assert result.returncode == 0, result.stderr
    assert len(read_jsonl(tmp_path / "m.jsonl")) == 48


def _decoded(clip: Path, hwaccel: str) -> tuple[list[np.ndarray], list[str]]:
    """Frames of ``clip`` as the decoder opens it with ``hwaccel``, and the warnings it logged."""
    import logging

    from streamseg.config import InputConfig
    from streamseg.stages.readers import open_video

    warnings: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: warnings.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("streamseg.stages.readers").addHandler(handler)
    try:
        container, stream = open_video(str(clip), InputConfig(hwaccel=hwaccel))
        with container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(stream)], warnings
    finally:
        logging.getLogger("streamseg.stages.readers").removeHandler(handler)


def test_nvdec_decoding_falls_back_to_the_cpu_where_there_is_no_gpu(clip: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    software, _ = _decoded(clip, "none")
    frames, warnings = _decoded(clip, "cuda")
    assert len(frames) == len(software) == 48
    assert all(np.array_equal(a, b) for a, b in zip(frames, software))
    assert any("decoding on the CPU" in w for w in warnings), warnings


@cuda
@pytest.mark.cuda
def test_nvdec_decodes_the_same_pictures(clip: Path) -> None:
    software, _ = _decoded(clip, "none")
    frames, warnings = _decoded(clip, "cuda")
    assert not warnings, warnings
    assert len(frames) == len(software) == 48
    # NVDEC's colour conversion may round differently; the pictures are the same
    for a, b in zip(frames, software):
        assert np.abs(a.astype(int) - b.astype(int)).mean() < 2.0


@cuda
@pytest.mark.cuda
def test_roi_align_on_cuda_is_the_cpu_s() -> None:
    """torchvision's CUDA RoIAlign against its CPU kernel, on the same features and boxes (fp32: the
    same bilinear samples, summed in another order)."""
    from torchvision.ops import roi_align

    torch.manual_seed(0)
    features = torch.randn(2, 64, 100, 160)
    boxes = torch.rand(300, 4) * torch.tensor([600.0, 380.0, 60.0, 40.0])
    boxes[:, 2:] += boxes[:, :2]
    rois = torch.cat([torch.randint(0, 2, (300, 1)).float(), boxes], dim=1)
    for size, ratio, aligned in ((7, 2, False), (14, 2, True), (14, 0, False)):
        cpu = roi_align(features, rois, size, 0.25, ratio, aligned)
        gpu = roi_align(features.cuda(), rois.cuda(), size, 0.25, ratio, aligned).cpu()
        torch.testing.assert_close(gpu, cpu, atol=1e-5, rtol=1e-4)


@cuda
@pytest.mark.cuda
def test_the_gpu_paste_is_torchvision_s() -> None:
    """streamseg's paste on the GPU against torchvision's ``paste_masks_in_image`` on the CPU, mask by
    mask: the CUDA kernels round a sample's weight on their own, which can flip a pixel whose value is
    the threshold to the last bit; at most one pixel in 10,000 of the masks' foreground pixels may differ."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from streamseg.masks import paste_masks

    rng = np.random.default_rng(1)
    for n, height, width in ((1, 720, 1280), (40, 720, 1280), (20, 1080, 1920)):
        x1, y1 = rng.uniform(0, width - 2, n), rng.uniform(0, height - 2, n)
        w, h = rng.uniform(1, width / 2, n), rng.uniform(1, height / 2, n)
        boxes = torch.tensor(np.stack([x1, y1, np.minimum(x1 + w, width), np.minimum(y1 + h, height)], 1),
                             dtype=torch.float32)
        probs = torch.sigmoid(torch.randn(n, 1, 28, 28) * 4)
        want = (paste_masks_in_image(probs, boxes, (height, width))[:, 0] >= 0.5).numpy()
        got = paste_masks(probs.cuda(), boxes.cuda(), height, width, 0.5).full()
        assert got.shape == want.shape
        assert np.count_nonzero(got != want) <= max(1, want.sum() // 10_000), (n, height, width)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@cuda
@pytest.mark.cuda
def test_fp16_gives_fp32_s_instances_and_masks() -> None:
    """The shipped model on held-out synthetic frames, fp16 autocast against fp32 on the GPU: the same
    instances (class, box within 2 px, score within 0.02) and masks: outlines may move by a pixel, so
    each mask's pixels that differ are at most two pixels' width of its outline (4 * sqrt(area)), and
    the masks' mean IoU is at least 0.95."""
    from streamseg.tools.synth import Scene

    scene, frames = Scene(11, 640, 360), []
    for _ in range(8):
        frames.append(scene.render()[0])
        scene.step()
    fp32 = Predictor(ModelConfig(device="cuda", fp16=False))(frames)
    fp16 = Predictor(ModelConfig(device="cuda", fp16=True))(frames)
    assert sum(len(d) for d in fp32) >= 16
    ious: list[float] = []
    for a, b in zip(fp32, fp16):
        matched = 0
        for i in range(len(a)):
            same = [j for j in range(len(b)) if b.labels[j] == a.labels[i]
                    and np.abs(b.boxes[j] - a.boxes[i]).max() <= 2.0]
            if a.scores[i] < 0.55 and not same:  # at the threshold, fp16 may leave out what fp32 keeps
                continue
            assert same, (i, a.boxes[i], b.boxes)
            j = same[0]
            assert abs(float(b.scores[j]) - float(a.scores[i])) <= 0.02
            mask_a, mask_b = a.masks.full()[i], b.masks.full()[j]
            assert np.count_nonzero(mask_a ^ mask_b) <= 4 * np.sqrt(mask_a.sum()), i
            ious.append(_mask_iou(mask_a, mask_b))
            matched += 1
        assert matched >= len(a) - 1
    assert np.mean(ious) >= 0.95
