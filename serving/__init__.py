"""editguard.serving: what runs when a request arrives: starting Triton, model control and version policy,
the served version (preprocess, the checked onnxruntime call, thresholds), the Python-backend skeleton,
Prometheus metrics and the GPU decoder."""
