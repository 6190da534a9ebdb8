"""Model control on a running Triton (explicit mode): load new versions, retire old ones."""

from __future__ import annotations

from ..model.served import CLASSIFIER, FRONT

__all__ = ["load_models", "roll_out"]


def load_models(url: str, models: tuple[str, ...] = (CLASSIFIER, FRONT), connection=None) -> None:
    """(Re)load ``models`` so Triton picks up the repository's versions under their version policy.

    The classifier goes first, so a new front version never calls a classifier version that is
    not loaded. Triton keeps serving the loaded versions while the new ones load, and lets
    in-flight requests of a retired version finish.

    Model control is an admin protocol: ``connection`` (a :class:`~editguard.connection.Connection`)
    carries the admin key, and TLS where the server uses it; None reads the key as ``editguard serve`` does.
    """
    from ..connection import Connection, missing_header, read_admin_key

    connection = connection or Connection(admin_key=read_admin_key())
    client = connection.grpc_client(url)
    try:
        for m in models:
            try:
                client.load_model(m, headers=connection.admin_headers())
            except Exception as e:
                if missing_header(e):
                    raise PermissionError(f"{url} refused to load {m}: model control needs the server's admin key "
                                          "(--admin-key-file, or $EDITGUARD_ADMIN_KEY)") from e
                raise
    finally:
        client.close()


def roll_out(urls: list[str], models: tuple[str, ...] = (CLASSIFIER, FRONT), connection=None) -> None:
    """Load the repository's new versions into replicas one at a time (all read the same repository).

    ``load_model`` returns once the new versions are ready on that replica, so at every moment each
    replica serves a complete set, and clients that hold several endpoints (or a load balancer with
    health checks) keep being answered. A failure stops the roll-out at the replica that failed;
    the ones not yet reached keep their old versions.
    """
    for i, url in enumerate(urls):
        try:
            load_models(url, models, connection)
        except Exception as e:
            cls = PermissionError if isinstance(e, PermissionError) else RuntimeError
            raise cls(f"roll-out stopped at replica {i + 1}/{len(urls)} ({url}): {e}; "
                      f"replicas {urls[:i] or 'none'} have the new version, the rest the old one") from e
