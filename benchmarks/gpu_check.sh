#!/usr/bin/env bash
# The CUDA check, in one call on a lent GPU machine (device tool), from the repository root:
#   here:   bash benchmarks/fetch_gpu_wheels.sh
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=500)
# Installs the carried wheels, runs the CUDA tests, then times on the GPU: mask pasting against
# torchvision's, the whole pipeline against the model alone at 640x360 and 1280x720, and against
# the single-process loop at 1280x720. Writes logs to $OUT (the device tool brings them back) or
# to ./gpu-check/.
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
python3 -m pytest -q -ra tests/test_cuda.py tests/test_codec.py tests/test_stages.py tests/test_masks.py 2>&1 \
  | tee "$out/tests.txt"
status=${PIPESTATUS[0]}
timeout 60 python3 benchmarks/mask_paste.py --device cuda 2>&1 | tee "$out/mask-paste.txt"
timeout 200 python3 benchmarks/pipeline_efficiency.py --model streamseg-small --score-thresh 0.5 \
  --sizes 640x360,1280x720 --frames 300 --max-batch 8 --rounds 2 2>&1 | tee "$out/efficiency.txt"
timeout 120 python3 benchmarks/single_loop.py --size 1280x720 --frames 300 --rounds 2 2>&1 | tee "$out/single-loop.txt"
exit "$status"
