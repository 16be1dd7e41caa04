#!/usr/bin/env bash
# The CUDA check, in one call on a lent GPU machine (device tool), from the repository root:
#   here:   bash benchmarks/fetch_gpu_wheels.sh
#   device: run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=500)
# Installs the carried wheels, runs the CUDA tests, then times the model alone against the whole
# pipeline on the GPU (benchmarks/pipeline_efficiency.py) at 640x360 and 1280x720. Writes logs to
# $OUT (the device tool brings them back) or to ./gpu-check/.
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
python3 -m pytest -q -ra tests/test_cuda.py tests/test_codec.py tests/test_stages.py 2>&1 | tee "$out/tests.txt"
status=${PIPESTATUS[0]}
for size in 640x360 1280x720; do
  timeout 150 python3 benchmarks/pipeline_efficiency.py --model streamseg-small --score-thresh 0.5 \
    --size "$size" --frames 300 --max-batch 8 2>&1 | tee "$out/efficiency-$size.txt"
done
exit "$status"
