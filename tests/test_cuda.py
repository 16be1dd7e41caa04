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
