"""Model control on a running Triton (explicit mode): load new versions, retire old ones."""

from __future__ import annotations

__all__ = ["load_models", "unload_models", "roll_out", "load_order", "server_models", "serving_version"]


def load_order(models) -> list[str]:
    """``models`` in the order a roll-out loads them: the networks (prompt towers, then classifiers), then
    the ensemble's Python steps, then the client-facing models that call them."""
    def rank(name: str) -> int:
        return 0 if name.endswith("_prompt") else 1 if name.endswith("_classifier") else \
            2 if name.endswith(("_prepare", "_verdicts")) else 3
    return sorted(models, key=lambda m: (rank(m), m))


def _refused(url: str, e: Exception, what: str) -> Exception:
    """The error to raise when ``url`` did not ``what``: PermissionError without the admin key, else RuntimeError."""
    from ..connection import missing_header

    if missing_header(e):
        return PermissionError(f"{url} refused to {what}: model control needs the server's admin key "
                               "(--admin-key-file, or $EDITGUARD_ADMIN_KEY)")
    return RuntimeError(f"{url} could not {what}: {e}")


def server_models(url: str, connection=None) -> dict[str, dict[str, str]]:
    """``{model: {version: state}}`` of what a server holds (Triton's repository index; an admin protocol:
    ``connection`` carries the key, None reads it as ``editguard serve`` writes it). A model that is not
    loaded has ``{"": state}``, its state with the reason (``UNAVAILABLE: unloaded``)."""
    from ..connection import Connection, read_admin_key

    connection = connection or Connection(admin_key=read_admin_key())
    with connection.grpc_client(url) as client:
        try:
            index = client.get_model_repository_index(headers=connection.admin_headers())
        except Exception as e:
            raise _refused(url, e, "list its models") from e
    out: dict[str, dict[str, str]] = {}
    for m in index.models:
        out.setdefault(m.name, {})[m.version] = m.state + (f": {m.reason}" if m.reason and m.state != "READY" else "")
    return out


def serving_version(held: dict[str, dict[str, str]], client_model: str) -> int | None:
    """The version that answers requests naming none: the newest READY version of ``client_model``."""
    ready = [int(v) for v, state in held.get(client_model, {}).items() if v.isdigit() and state == "READY"]
    return max(ready) if ready else None


def load_models(url: str, models: tuple[str, ...] | None = None, connection=None, ensure: tuple[str, ...] = ()) -> None:
    """(Re)load ``models`` (default: every model the server serves now, plus ``ensure``) so Triton picks up
    the repository's versions under their version policy.

    The networks go first and the client models last (:func:`load_order`), so a new version of a client
    model never calls a network version that is not loaded. Triton keeps serving the loaded
    versions while the new ones load, and lets in-flight requests of a retired version finish.

    Model control is an admin protocol: ``connection`` (a :class:`~editguard.connection.Connection`)
    carries the admin key, and TLS where the server uses it; None reads the key as ``editguard serve`` does.
    """
    from ..connection import Connection, read_admin_key

    connection = connection or Connection(admin_key=read_admin_key())
    if models is None:
        held = server_models(url, connection)
        models = tuple({m for m, states in held.items() if "READY" in states.values()} | set(ensure))
    client = connection.grpc_client(url)
    try:
        for m in load_order(models):
            try:
                client.load_model(m, headers=connection.admin_headers())
            except Exception as e:
                raise _refused(url, e, f"load {m}") from e
    finally:
        client.close()


def unload_models(url: str, models, connection=None) -> None:
    """Unload ``models`` from the server at ``url`` (the client-facing ones first, the reverse of
    :func:`load_order`); requests in flight finish. Needs the admin key, as :func:`load_models`."""
    from ..connection import Connection, read_admin_key

    connection = connection or Connection(admin_key=read_admin_key())
    with connection.grpc_client(url) as client:
        for m in reversed(load_order(models)):
            try:
                client.unload_model(m, headers=connection.admin_headers())
            except Exception as e:
                raise _refused(url, e, f"unload {m}") from e


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
