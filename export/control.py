"""Model control on a running Triton (explicit mode): load new versions, retire old ones."""

from __future__ import annotations

__all__ = ["load_models", "roll_out", "load_order"]


def load_order(models) -> list[str]:
    """``models`` in the order a roll-out loads them: the networks (prompt towers, then classifiers), then
    the ensemble's Python steps, then the client-facing models that call them."""
    def rank(name: str) -> int:
        return 0 if name.endswith("_prompt") else 1 if name.endswith("_classifier") else \
            2 if name.endswith(("_prepare", "_verdicts")) else 3
    return sorted(models, key=lambda m: (rank(m), m))


def load_models(url: str, models: tuple[str, ...] | None = None, connection=None, ensure: tuple[str, ...] = ()) -> None:
    """(Re)load ``models`` (default: every model the server serves now, plus ``ensure``) so Triton picks up
    the repository's versions under their version policy.

    The networks go first and the client-facing models last (:func:`load_order`), so a new front
    version never calls a network version that is not loaded. Triton keeps serving the loaded
    versions while the new ones load, and lets in-flight requests of a retired version finish.

    Model control is an admin protocol: ``connection`` (a :class:`~editguard.connection.Connection`)
    carries the admin key, and TLS where the server uses it; None reads the key as ``editguard serve`` does.
    """
    from ..connection import Connection, missing_header, read_admin_key

    connection = connection or Connection(admin_key=read_admin_key())
    client = connection.grpc_client(url)
    def refused(e: Exception, what: str) -> Exception:
        if missing_header(e):
            return PermissionError(f"{url} refused to {what}: model control needs the server's admin key "
                                   "(--admin-key-file, or $EDITGUARD_ADMIN_KEY)")
        return e

    try:
        if models is None:
            try:
                index = client.get_model_repository_index(headers=connection.admin_headers())
            except Exception as e:
                raise refused(e, "list its models") from e
            models = tuple({m.name for m in index.models if m.state == "READY"} | set(ensure))
        for m in load_order(models):
            try:
                client.load_model(m, headers=connection.admin_headers())
            except Exception as e:
                raise refused(e, f"load {m}") from e
    finally:
        client.close()


def roll_out(urls: list[str], models: tuple[str, ...] | None = None, connection=None,
             ensure: tuple[str, ...] = ()) -> None:
    """Load the repository's new versions into replicas one at a time (all read the same repository).

    ``load_model`` returns once the new versions are ready on that replica, so at every moment each
    replica serves a complete set, and clients that hold several endpoints (or a load balancer with
    health checks) keep being answered. A failure stops the roll-out at the replica that failed;
    the ones not yet reached keep their old versions.
    """
    for i, url in enumerate(urls):
        try:
            load_models(url, models, connection, ensure)
        except Exception as e:
            cls = PermissionError if isinstance(e, PermissionError) else RuntimeError
            raise cls(f"roll-out stopped at replica {i + 1}/{len(urls)} ({url}): {e}; "
                      f"replicas {urls[:i] or 'none'} have the new version, the rest the old one") from e
