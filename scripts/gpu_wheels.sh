#!/usr/bin/env bash
# The wheels a lent GPU machine lacks for scripts/gpu_check.py, fetched here (PyPI) for its Python 3.12:
# the tritonserver binary (nvidia-pytriton), tritonclient, perf_analyzer, and onnxruntime-gpu (CUDA 13).
#
#   scripts/gpu_wheels.sh [DIR]        # default DIR: .whl (add /.whl/ to .git/info/exclude)
#
# One device call carries at most 64 MiB, and onnxruntime-gpu alone is about 245 MiB. So the small
# wheels stay whole in DIR/ (about 60 MiB: one call), and onnxruntime-gpu is cut into DIR-ort/part-NN
# pieces of 40 MiB beside it, each carried by a call of its own to the same warm machine, which joins them:
#   call 1:    carry DIR                -> pip install DIR/*.whl into /tmp/site
#   call 2..7: carry DIR-ort/part-NN    -> cat >> /tmp/ort.whl   (the last call checks DIR-ort/SHA256,
#              installs it, then runs python3 -m scripts.gpu_check --skeleton .gpu --out $OUT)
set -euo pipefail
dir=${1:-.whl}
venv=${VENV:-.venv}
version() { "$venv/bin/pip" show "$1" | awk '/^Version/ {print $2}'; }
ort="${dir%/}-ort"
mkdir -p "$dir" "$ort"
fetch() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_38_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
fetch "$dir" "nvidia-pytriton==$(version nvidia-pytriton)" "tritonclient==$(version tritonclient)" \
  "perf-analyzer==2.60.0"
tmp=$(mktemp -d)
fetch "$tmp" "onnxruntime-gpu==1.31.*"
split -b 40M -d "$tmp"/onnxruntime_gpu-*.whl "$ort/part-"
basename "$tmp"/onnxruntime_gpu-*.whl > "$ort/NAME"
sha256sum "$tmp"/onnxruntime_gpu-*.whl | cut -d' ' -f1 > "$ort/SHA256"
rm -rf "$tmp"
du -sh "$dir"/*.whl "$ort"
