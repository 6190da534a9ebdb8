"""How a client reaches a Triton: TLS files, metadata headers, and the admin key.

``editguard serve`` restricts Triton's admin protocols (model load/unload, shared memory,
statistics, trace, logging) to callers that send the admin key; inference, health, metadata and
model config stay open. The key comes from ``$EDITGUARD_ADMIN_KEY``, else from a file
(``--admin-key-file``, ``$EDITGUARD_ADMIN_KEY_FILE``, or ``~/.config/editguard/admin-key``);
``serve`` generates one into that file (mode 0600) when there is none. Keys are never logged.

Triton checks the key as a request header: over gRPC it expects the header name with the prefix
``triton-grpc-protocol-``, over HTTP the bare name. :meth:`Connection.admin_headers` sends both.
"""

from __future__ import annotations

import os
import secrets
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["ADMIN_HEADER", "ADMIN_PROTOCOLS", "Connection", "default_key_file", "parse_headers", "read_admin_key",
           "serve_admin_key", "missing_header", "require_files"]

ADMIN_HEADER = "editguard-admin-key"
GRPC_PREFIX = "triton-grpc-protocol-"  # Triton prepends this to the configured key for gRPC metadata
ADMIN_PROTOCOLS = ("model-repository", "shared-memory", "statistics", "trace", "logging")
ENV_KEY, ENV_KEY_FILE = "EDITGUARD_ADMIN_KEY", "EDITGUARD_ADMIN_KEY_FILE"


def default_key_file() -> Path:
    """``$EDITGUARD_ADMIN_KEY_FILE``, else ``$XDG_CONFIG_HOME/editguard/admin-key`` (``~/.config``)."""
    if os.environ.get(ENV_KEY_FILE):
        return Path(os.environ[ENV_KEY_FILE])
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "editguard" / "admin-key"


def _check_key(key: str, where: str) -> str:
    key = key.strip()
    if not key:
        raise ValueError(f"the admin key in {where} is empty; put a key there or remove it to have one generated")
    if not all(c.isalnum() or c in "-_.~" for c in key):
        raise ValueError(f"the admin key in {where} may hold only letters, digits and -_.~ (it travels as a header)")
    return key


def read_admin_key(key_file: str | Path | None = None) -> str | None:
    """The admin key from ``$EDITGUARD_ADMIN_KEY``, else from ``key_file`` (default: :func:`default_key_file`);
    None when there is none."""
    if os.environ.get(ENV_KEY):
        return _check_key(os.environ[ENV_KEY], f"${ENV_KEY}")
    path = Path(key_file) if key_file else default_key_file()
    if not path.exists():
        if key_file:
            raise FileNotFoundError(f"admin key file {path} does not exist; `editguard serve --admin-key-file "
                                    f"{path}` writes one, or set ${ENV_KEY}")
        return None
    mode = path.stat().st_mode
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(f"admin key file {path} is readable by other users; chmod 600 it", UserWarning, stacklevel=2)
    return _check_key(path.read_text(), str(path))


def serve_admin_key(key_file: str | Path | None = None) -> tuple[str, str]:
    """The key a server starts with, and where it came from (for the operator; never the key itself):
    as :func:`read_admin_key`, else a new random key written to the key file with mode 0600."""
    if os.environ.get(ENV_KEY):
        return read_admin_key(), f"${ENV_KEY}"
    path = Path(key_file) if key_file else default_key_file()
    if path.exists():
        return read_admin_key(path), str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over an existing file
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key, f"{path} (new)"


@dataclass(frozen=True)
class Connection:
    """TLS and headers for tritonclient: ``ssl`` (implied by any certificate file), ``root_certificates``
    (the CA that signed the server's certificate; default: the system's), ``private_key`` and
    ``certificate_chain`` (the client's, for mutual TLS), ``headers`` sent on every call (an auth token
    for a front proxy, say), and ``admin_key`` for the restricted admin protocols."""

    ssl: bool = False
    root_certificates: str | None = None
    private_key: str | None = None
    certificate_chain: str | None = None
    headers: Mapping[str, str] | None = None
    admin_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if bool(self.private_key) != bool(self.certificate_chain):
            raise ValueError("mutual TLS needs both the client's private key and its certificate chain")
        require_files({n: getattr(self, n) for n in ("root_certificates", "private_key", "certificate_chain")},
                      lambda name, path: FileNotFoundError(f"{name}: {path} is not a file"))

    @property
    def tls(self) -> bool:
        return bool(self.ssl or self.root_certificates or self.certificate_chain)

    def client_kwargs(self) -> dict:
        """Keyword arguments for ``tritonclient.grpc[.aio].InferenceServerClient``."""
        if not self.tls:
            return {}
        return {"ssl": True, "root_certificates": self.root_certificates, "private_key": self.private_key,
                "certificate_chain": self.certificate_chain}

    def client_options(self) -> dict:
        """Keyword arguments for :class:`~editguard.clients.EditGuardClient` (TLS and headers)."""
        return {"ssl": self.ssl, "root_certificates": self.root_certificates, "private_key": self.private_key,
                "certificate_chain": self.certificate_chain, "headers": self.headers}

    def call_headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str] | None:
        """Headers for one call: the connection's, then ``extra``; None when there are none."""
        h = {**(self.headers or {}), **(extra or {})}
        return {k.lower(): v for k, v in h.items()} or None

    def admin_headers(self) -> dict[str, str]:
        """Headers for an admin call (load/unload, statistics) over gRPC or HTTP."""
        if not self.admin_key:
            return self.call_headers() or {}
        return {**(self.call_headers() or {}), GRPC_PREFIX + ADMIN_HEADER: self.admin_key,
                ADMIN_HEADER: self.admin_key}

    def grpc_client(self, url: str, aio: bool = False):
        if aio:
            import tritonclient.grpc.aio as module
        else:
            import tritonclient.grpc as module
        return module.InferenceServerClient(url, **self.client_kwargs())


def require_files(paths: Mapping[str, str | Path | None], error: Callable[[str, str], Exception]) -> None:
    """Raise ``error(name, path)`` for the first of ``paths`` that is given but is not a file (TLS material)."""
    for name, path in paths.items():
        if path and not Path(path).is_file():
            raise error(name, str(path))


def missing_header(e: Exception) -> bool:
    """Triton refused the call because a header it requires (the admin key of a restricted protocol)
    is missing or wrong. It answers UNAVAILABLE, but that is not transient: retrying won't help."""
    return "is restricted, expecting header" in str(e)


def parse_headers(pairs: list[str] | None) -> dict[str, str]:
    """``["name=value", ...]`` (the CLI's ``--header``) -> a dict."""
    out = {}
    for p in pairs or []:
        name, sep, value = p.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--header {p!r}: give NAME=VALUE")
        out[name.strip().lower()] = value
    return out
