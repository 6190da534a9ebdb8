#!/bin/sh
# editguard's entrypoint in NVIDIA's Triton container (deploy/Dockerfile).
#
# `editguard serve --exec` builds Triton's command line with the same function as `editguard serve`
# (the repository, explicit model control with the models the graph loads, the admin protocols
# restricted to the key, the response cache), then replaces itself with tritonserver: Triton is
# this process, logs to the container's output and takes the orchestrator's SIGTERM itself.
#
# Defaults for a container: the repository mounted at /models, the production graph on the native
# onnxruntime backend, every interface, the admin key from a mounted secret (it must exist: none is
# generated). Arguments override them, e.g. `--graph tensorrt` or `--repository s3://bucket/repo`.
set -eu
exec editguard serve --exec \
  --repository /models \
  --graph onnxruntime \
  --host 0.0.0.0 \
  --admin-key-file /run/secrets/editguard/admin-key \
  "$@"
