"""What the Python-backend models of ``model_repository/`` share: Triton's ``execute`` contract.

Both ``editguard`` (and ``editguard_precheck``) and ``editguard_classifier`` answer a dynamic batch
of requests the same way: every request that can't be read gets its own INVALID_ARG error and is
counted, the rest run as one batch, and each request gets exactly one response. Import it only
inside Triton's Python backend (it needs ``triton_python_backend_utils``).
"""

from __future__ import annotations

from typing import Any, Callable

__all__ = ["answer_each", "output_types"]


def output_types(model_config: dict, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{output name: numpy dtype}`` from the model's config (``args["model_config"]``, parsed), the one source
    of its tensors, as Triton's python_backend examples read them; ValueError names a ``required`` output the
    config lacks."""
    import triton_python_backend_utils as pb_utils

    out = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in model_config.get("output", [])}
    missing = [n for n in required if n not in out]
    if missing:
        raise ValueError(f"model {model_config.get('name')!r}: its config declares no output {missing}; the repository "
                         "contract (editguard.model.repository.OUTPUTS) needs them")
    return out


def answer_each(requests: list, read: Callable[[Any], Any], run: Callable[[list], list[list]],
                rejected: Callable[[ValueError], None], failure: str) -> list:
    """One response per request, in order.

    ``read(request)``: the request's work; a ValueError (``PreprocessError`` is one) answers that request
    alone with INVALID_ARG and its message, and ``rejected(error)`` counts it. ``run(works)``: for all
    readable requests at once, one list of output tensors per work; when it raises, each of those
    requests gets INTERNAL with ``failure`` and the message.
    """
    import triton_python_backend_utils as pb_utils

    def error(message: str, code) -> Any:
        return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message, code))

    responses: list = [None] * len(requests)
    good = []
    for i, request in enumerate(requests):
        try:
            good.append((i, read(request)))
        except ValueError as e:
            responses[i] = error(str(e), pb_utils.TritonError.INVALID_ARG)
            rejected(e)
    if not good:
        return responses
    try:
        outputs = run([work for _, work in good])
    except Exception as e:  # the network's own errors answer these requests, and the server goes on
        for i, _ in good:
            responses[i] = error(f"{failure}: {e}", pb_utils.TritonError.INTERNAL)
        return responses
    for (i, _), tensors in zip(good, outputs):
        responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
    return responses
