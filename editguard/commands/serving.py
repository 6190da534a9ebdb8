"""`editguard serve` and `versions`: Triton on a repository, and which versions it serves. Each command parses
its arguments and calls its stage's public functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..model.repository import CLIENT_MODEL, CLIENT_MODELS
from .base import ERROR, OK, PARTIAL, UsageError, add_connection, add_json, command, connection_from

__all__ = ["add_serve", "add_versions"]


def add_serve(sub) -> None:
    p = command(sub, "serve", _run_serve)
    p.add_argument("--repository", default="repository", help="Triton model repository (default: %(default)s)")
    p.add_argument("--grpc-port", type=int, default=8001)
    p.add_argument("--http-port", type=int, default=8000)
    p.add_argument("--metrics-port", type=int, default=8002)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for readiness")
    p.add_argument("--graph", default="inline", choices=["inline", "ensemble", "onnxruntime", "tensorrt"],
                   help="the serving graph (Triton's --model-config-name): inline (default: one Python model runs "
                   "everything; fastest with the Python backend only), ensemble (prepare -> prompt tower -> "
                   "classifier -> verdicts over the Python stand-ins), or onnxruntime/tensorrt (the ensemble "
                   "over the native backends, in NVIDIA's container)")
    p.add_argument("--cache-mb", type=int, default=64, help="Triton's response cache, which keeps the prompt "
                   "tower's embeddings in the ensemble graph (MiB; 0 turns it off; default: %(default)s)")
    g = p.add_argument_group("security")
    g.add_argument("--admin-key-file", metavar="FILE", help="file holding the admin key; written with a new random "
                   "key if it does not exist (default: $EDITGUARD_ADMIN_KEY_FILE or ~/.config/editguard/admin-key; "
                   "$EDITGUARD_ADMIN_KEY, if set, is the key itself)")
    g.add_argument("--tls-cert", metavar="PEM", help="server certificate: gRPC over TLS")
    g.add_argument("--tls-key", metavar="PEM", help="the server certificate's private key")
    g.add_argument("--tls-ca", metavar="PEM", help="CA of the client certificates: mutual TLS, clients without a "
                   "certificate it signed are refused")
    p.add_argument("--exec", action="store_true", help="become tritonserver (a container's entrypoint: Triton logs "
                   "to this output and takes SIGTERM itself) instead of supervising it; the admin key must exist "
                   "($EDITGUARD_ADMIN_KEY, or --admin-key-file from a mounted secret): none is generated")


def _run_serve(args: argparse.Namespace) -> int:
    """start a local Triton on a model repository

    Start Triton on the repository: NVIDIA's tritonserver from PATH if present, else the binary
    inside the nvidia-pytriton wheel (pip install 'editguard[serve]'). Waits until the models
    are ready, prints the endpoints, and stops cleanly on Ctrl-C or SIGTERM. Inference, health,
    metadata and model config are open; the admin protocols (model load/unload, statistics,
    shared memory, trace, logging) need the admin key: $EDITGUARD_ADMIN_KEY, else
    --admin-key-file, generated there (mode 0600) when the file does not exist. The key is never
    printed. Beyond loopback, serve gRPC with TLS (--tls-cert, --tls-key; --tls-ca for mutual
    TLS): Triton's HTTP endpoint has no TLS, so it then stays on loopback.

    examples:
      editguard serve --repository repository
      editguard serve --repository repository --graph ensemble     # the production graph, Python stand-ins
      editguard serve --repository repository --host 0.0.0.0 --tls-cert server.pem --tls-key server.key \\
          --tls-ca clients-ca.pem
      editguard serve --exec --repository /models --host 0.0.0.0 --graph onnxruntime \\
          --admin-key-file /run/secrets/editguard/admin-key   # NVIDIA's container (deploy/entrypoint.sh)

    then classify with the client (see the README):
      from editguard.clients import EditGuardClient
      EditGuardClient("localhost:8001").classify(source, prompt, edited, mask)
    """
    import signal
    import time

    from editguard.connection import read_admin_key, serve_admin_key
    from editguard.serving.triton import TritonServer

    if args.exec:  # a generated key would land on the container's own disk, where no client can read it
        key, key_source = read_admin_key(args.admin_key_file), None
        if key is None:
            raise FileNotFoundError("serve --exec needs the admin key: set $EDITGUARD_ADMIN_KEY or mount a secret "
                                    "and pass its file with --admin-key-file")
    else:
        key, key_source = serve_admin_key(args.admin_key_file)
    server = TritonServer(args.repository, args.grpc_port, args.http_port, args.metrics_port, host=args.host,
                          admin_key=key, tls_cert=args.tls_cert, tls_key=args.tls_key, tls_ca=args.tls_ca,
                          graph=args.graph, cache_bytes=args.cache_mb << 20)
    if args.exec:
        server.become()
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    server.start(args.timeout)
    _print_endpoints(server, args, key_source)
    while not stop["now"] and server.running:
        time.sleep(0.2)
    if not server.running:
        print(f"editguard serve: tritonserver exited unexpectedly:\n{server.log_tail()}", file=sys.stderr)
        server.stop()  # its shared caches go; its log stays (the warning names it)
        return ERROR
    print("stopping Triton ...", flush=True)
    code = server.stop()
    print(f"Triton stopped (exit code {code})")
    return OK


def _print_endpoints(server, args: argparse.Namespace, key_source: str) -> None:
    print(f"Triton is ready (pid {server.pid}), repository {args.repository}, {args.graph} graph")
    tls = ("mutual TLS" if args.tls_ca else "TLS") if args.tls_cert else "plaintext"
    if not args.tls_cert and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"editguard serve: warning: listening on {args.host} without TLS: prompts, images and the admin key "
              "cross the network in the clear; pass --tls-cert and --tls-key", file=sys.stderr)
    print(f"  gRPC     {server.grpc_url} ({tls})")
    loopback = " (loopback only: Triton's HTTP has no TLS)" if args.tls_cert else ""
    print(f"  HTTP     http://{server.http_url}{loopback}")
    print(f"  metrics  http://{args.host}:{args.metrics_port}/metrics")
    print(f"  log      {server.log_path}")
    print(f"  admin    model control and statistics need the admin key from {key_source}")
    print("Ctrl-C to stop.", flush=True)


def add_versions(sub) -> None:
    p = command(sub, "versions", _run_versions)
    p.add_argument("action", choices=["list", "load", "unload", "pin", "unpin", "rollback"],
                   help="list: the versions on disk and on the server; load, unload: models on the server; pin "
                   "VERSION, unpin, rollback: which version the repository serves, reloaded on the servers")
    p.add_argument("args", nargs="*", metavar="VERSION|MODEL", help="pin: the version; load, unload: model names "
                   "(load's default: every model the server serves now)")
    p.add_argument("--repository", default="repository", help="the repository on disk that the servers read "
                   "(default: %(default)s)")
    p.add_argument("--server", metavar="URL", help="Triton gRPC host:port; comma-separate the replicas that share "
                   "the repository: pin, unpin and rollback reload them one at a time")
    p.add_argument("--model", default=CLIENT_MODEL, choices=CLIENT_MODELS,
                   help="the client-facing model to pin, unpin or roll back, with the models behind it "
                   "(default: %(default)s)")
    add_connection(p, admin=True)
    add_json(p, "list's table")


def _run_versions(args: argparse.Namespace) -> int:
    """list the versions a server serves; load, unload, pin a version, unpin, roll back

    Triton serves the versions the model's version policy selects (editguard's: the latest two) and
    answers requests that name no version with the newest. `list` shows each version on disk
    (labels, installed thresholds) and, with --server, its state there and the version requests
    get. `pin VERSION` writes that version into the policy of the model and of every model behind
    it (its networks, the ensemble's steps) in the repository, so every replica, a restarted one
    too, serves it alone; with --server the replicas reload, one at a time, with no failed
    requests. `unpin` goes back to the latest two. `rollback` pins the newest version older than
    the one served: no model dir is needed. `load` and `unload` are Triton's model control. All
    server calls need the admin key.

    examples:
      editguard versions list --server localhost:8001
      editguard versions rollback --server localhost:8001                 # serve the version before
      editguard versions unpin --server localhost:8001                    # back to the latest two
      editguard versions pin 3 --server triton-a:8001,triton-b:8001 --repository /shared/repository
      editguard versions unload editguard_precheck --server localhost:8001
    """
    from editguard.clients.protocol import parse_urls

    urls = parse_urls(args.server) if args.server else []
    conn = connection_from(args)
    if args.action == "list":
        return _versions_list(args, urls, conn)
    if args.action in ("load", "unload"):
        return _versions_control(args, urls, conn)
    return _versions_policy(args, urls, conn)


def _versions_list(args: argparse.Namespace, urls: list[str], conn) -> int:
    from editguard.serving.control import server_models
    from editguard.serving.versions import format_listing, list_versions

    repo_here = Path(args.repository).is_dir()
    if not urls and not repo_here:
        raise FileNotFoundError(f"repository {args.repository} does not exist; pass --server, or --repository")
    args.summary = list_versions(args.repository if repo_here else None, server_models(urls[0], conn) if urls else None)
    print(format_listing(args.summary))
    return OK


def _versions_control(args: argparse.Namespace, urls: list[str], conn) -> int:
    from editguard.serving.control import roll_out, unload_models

    if not urls:
        raise UsageError(f"{args.action} needs --server")
    if args.action == "unload" and not args.args:
        raise UsageError("unload needs the models to unload, e.g. editguard_precheck")
    for url in urls:
        if args.action == "load":
            roll_out([url], tuple(args.args) or None, conn)
        else:
            unload_models(url, args.args, conn)
        print(f"{url}: {args.action}ed {', '.join(args.args) or 'every model it serves'}")
    return OK


def _versions_policy(args: argparse.Namespace, urls: list[str], conn) -> int:
    """pin, unpin, rollback."""
    from editguard.serving.versions import apply_policy, rollback_target, serving_now

    if not Path(args.repository).is_dir():
        raise FileNotFoundError(f"repository {args.repository} does not exist: {args.action} writes the version "
                                "policy there (pass --repository, the folder the servers read)")
    version: int | None = None
    if args.action == "pin":
        if len(args.args) != 1 or not args.args[0].isdigit():
            raise UsageError("pin needs one version number, e.g. editguard versions pin 3")
        version = int(args.args[0])
    elif args.action == "rollback":
        serving = serving_now(args.repository, args.model, urls, conn)
        version = rollback_target(args.repository, args.model, serving)
        print(f"rolling {args.model} back from version {serving} to {version}")
    what = f"pinned to version {version}" if version is not None else "following its latest two versions"
    try:
        written, answers = apply_policy(args.repository, args.model, version, urls, conn)
    except (RuntimeError, PermissionError) as e:
        print(f"editguard versions: {args.model} {what} in {args.repository}, but {e}", file=sys.stderr)
        return PARTIAL
    print(f"{args.model} {what} in {args.repository} ({len(written)} configs changed)")
    if urls:
        print(f"reloaded on {', '.join(urls)}; {urls[0]} answers with version {answers}")
    else:
        print("servers pick it up when they (re)load: editguard versions load --server URL")
    if version is not None:
        print(f"to serve the latest versions again: editguard versions unpin --repository {args.repository}")
    return OK
