#!/usr/bin/env bash
# The wheels that scripts/gpu_check.py needs on a GPU machine with no registry access, fetched on a
# machine that reaches PyPI: the tritonserver binary (nvidia-pytriton), tritonclient, perf_analyzer,
# onnxruntime-gpu (built for CUDA 13) and pyspellchecker (the speller's word list, which training writes
# into the model dir), for the GPU machine's Python (default 3.12; PYVER=3.11 ...).
#
#   scripts/gpu_wheels.sh [DIR]        # default DIR: .whl (ignored by git)
#
# Copy DIR to the GPU machine beside the clone and install it there with pip --no-index (gpu_check.py's
# docstring has the command). SPLIT=40M also cuts each wheel over that size into DIR/NAME.part-NN
# pieces with DIR/NAME.sha256, for a transfer that limits the size of one file; join them there with
# `cat DIR/NAME.part-* > DIR/NAME && sha256sum -c DIR/NAME.sha256`.
set -euo pipefail
dir=${1:-.whl}
venv=${VENV:-.venv}
pyver=${PYVER:-3.12}
version() { "$venv/bin/pip" show "$1" | awk '/^Version/ {print $2}'; }
mkdir -p "$dir"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_38_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$dir" \
  "nvidia-pytriton==$(version nvidia-pytriton)" "tritonclient==$(version tritonclient)" "perf-analyzer==2.60.0" \
  "onnxruntime-gpu==1.31.*" "pyspellchecker==$(version pyspellchecker)"
if [ -n "${SPLIT:-}" ]; then
  for whl in "$dir"/*.whl; do
    if [ "$(stat -c %s "$whl")" -gt "$(numfmt --from=iec "$SPLIT")" ]; then
      (cd "$dir" && sha256sum "$(basename "$whl")" > "$(basename "$whl").sha256")
      split -b "$SPLIT" -d "$whl" "$whl.part-"
      rm "$whl"
    fi
  done
fi
du -sh "$dir"
