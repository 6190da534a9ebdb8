"""Model control on a running Triton (explicit mode): load new versions, retire old ones."""

from __future__ import annotations

from .repository import CLASSIFIER, FRONT

__all__ = ["load_models"]


def load_models(url: str, models: tuple[str, ...] = (CLASSIFIER, FRONT)) -> None:
    """(Re)load ``models`` so Triton picks up the repository's versions under their version policy.

    The classifier goes first, so a new front version never calls a classifier version that is
    not loaded. Triton keeps serving the loaded versions while the new ones load, and lets
    in-flight requests of a retired version finish.
    """
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(url)
    for m in models:
        client.load_model(m)
