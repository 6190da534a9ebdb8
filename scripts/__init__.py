"""The demo and the research scripts; run them from the repository root as ``python -m scripts.NAME``."""
