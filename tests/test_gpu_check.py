"""The prepared GPU check's dry run: every step runs here on the CPU, and says what needs CUDA."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_gpu_check_dry_run_runs_every_step(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: run benchmarks/gpu_check.sh")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--dry-run", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=420, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    summary = (tmp_path / "summary.md").read_text()
    assert summary == proc.stdout.rstrip("\n") + "\n" or summary.strip() in proc.stdout
    assert "dry run" in summary.splitlines()[0]
    model_rows = [line for line in summary.splitlines() if line.startswith("| maskrcnn_resnet50_fpn")]
    assert len(model_rows) == 7, summary
    assert all(line.split(" | ")[6] == "needs CUDA" for line in model_rows)  # peak GPU memory
    assert all(float(line.split(" | ")[7].rstrip(" |")) == 20 for line in model_rows)  # instances a frame
    for row in ("against the model alone, 128x72", "against the model alone, 192x108", "against the naive loop",
                "masks, naive loop", "NVDEC against software decoding"):
        assert row in summary, (row, summary)
    assert "| same |" in summary  # the loop's masks are the pipeline's
    for need in ("fp16 needs CUDA", "peak GPU memory needs CUDA", "NVDEC needs CUDA", "tests: listed"):
        assert need in summary, (need, summary)
    for failed in (": not run, the check's", ": exit ", ": stopped at its limit"):  # Check.step's notes
        assert failed not in summary, summary
    for log in ("tests", "weights", "model-alone", "run-1280x720", "run-1920x1080", "loop-1280x720",
                "nvdec-1920x1080"):
        assert (tmp_path / f"{log}.txt").exists()
