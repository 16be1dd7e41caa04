#!/usr/bin/env bash
# Run HERE (with network to PyPI) before a GPU check: downloads, into .whl/ (git-ignored), the
# wheels the GPU machine lacks (its image has torch, torchvision, numpy, opencv, pytest, yaml, tqdm;
# no PyAV, pyzmq, pycocotools, jsonschema or scipy), for its Python 3.12 on x86_64.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
for pkg in av pyzmq pycocotools scipy jsonschema jsonschema-specifications referencing rpds-py attrs; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_27_x86_64 --platform any -d .whl "$pkg"
done
ls -la .whl
