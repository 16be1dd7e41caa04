#!/usr/bin/env bash
# The GPU check, in one call on a lent GPU machine (device tool), from the repository root:
#   here:   bash benchmarks/fetch_gpu_wheels.sh
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
# Installs the carried wheels, then runs benchmarks/gpu_check.py: the CUDA tests, and torchvision's
# Mask R-CNN R50-FPN (random-init weights, 20 instances a frame) timed alone, in `streamseg run`,
# with NVDEC, and against the single-process loop; at most 470 s, every step within its own limit.
# Writes its logs and summary.md to $OUT (the device tool brings them back) or to ./gpu-check/.
# Here, without a GPU: `python benchmarks/gpu_check.py --dry-run` (the CPU path, 2 tiny frames a step).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site" || { echo "wheel install failed"; exit 1; }
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  python3 -c "import torch, torchvision, av, zmq; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'torchvision', torchvision.__version__, 'av', av.__version__, 'zmq', zmq.__version__)"
} 2>&1 | tee "$out/env.txt"
python3 benchmarks/gpu_check.py --out "$out" "$@"
