"""What every command shares: the exit codes, the usage error, how a command's parser is made from its run
function, and the options for reaching a server (TLS, headers, the admin key) and for a JSON summary."""

from __future__ import annotations

import argparse
import textwrap
from typing import Callable

__all__ = ["OK", "CHECK_FAILED", "USAGE", "PARTIAL", "ERROR", "INTERRUPTED", "EXIT_CODES", "UsageError", "command",
           "add_json", "summarize", "add_connection", "client_options", "connection_from"]

# Exit codes, the same for every command.
OK, CHECK_FAILED, USAGE, PARTIAL, ERROR, INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_CODES = {
    OK: "success",
    CHECK_FAILED: "a check ran and failed (check-repository found mismatches, weights verify a changed file)",
    USAGE: "the command line is wrong: an unknown or missing option, options that don't go together",
    PARTIAL: "partly done: some items failed and are listed (score, import), or export --server loaded the new "
             "version into some replicas only",
    ERROR: "the command could not do its work: a missing or malformed file, a server that refused or could not "
           "be reached, Triton that did not start",
    INTERRUPTED: "interrupted (Ctrl-C)",
}


class UsageError(ValueError):
    """The command line itself is wrong (a missing option, options that don't go together): exit 2."""


def command(sub, name: str, run: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The parser of subcommand ``name``, which ``run`` carries out. ``run``'s docstring is its help: the
    first line is the summary ``editguard --help`` lists, then the description, then the examples."""
    summary, _, rest = textwrap.dedent(run.__doc__ or "").strip().partition("\n")
    description, _, examples = textwrap.dedent(rest).strip().partition("\nexample")
    p = sub.add_parser(name, help=summary, description=description.strip(), epilog="example" + examples,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=run, parser=p, summary=None)
    return p


def add_json(p, what: str) -> None:
    """``--json FILE``: the command's summary (``args.summary``, set by its run function) as JSON."""
    p.add_argument("--json", metavar="FILE", help=f"also write {what} as JSON to FILE; '-' writes it to stdout "
                   "and the text to stderr")


def summarize(args: argparse.Namespace, result, failed: int, **extra) -> int:
    """``result`` (a dataclass of counts) and ``extra`` as the ``--json`` summary; exit 3 when ``failed`` items
    were reported, else 0."""
    from dataclasses import asdict

    args.summary = dict(asdict(result), **extra)
    return PARTIAL if failed else OK


def add_connection(p, admin: bool = False) -> None:
    """Options for reaching a server (with --server): TLS, headers, and (``admin``) the admin key."""
    g = p.add_argument_group("connection (with --server)")
    g.add_argument("--ssl", action="store_true", help="gRPC over TLS, verified against the system's CAs unless "
                   "--root-cert is given")
    g.add_argument("--root-cert", metavar="PEM", help="CA certificate that signed the server's (implies --ssl)")
    g.add_argument("--client-cert", metavar="PEM", help="this client's certificate, for a server with mutual TLS")
    g.add_argument("--client-key", metavar="PEM", help="this client's private key, for a server with mutual TLS")
    g.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="gRPC metadata sent on every call (an auth token for a front proxy); repeat for several")
    if admin:
        g.add_argument("--admin-key-file", metavar="FILE", help="the server's admin key, needed for model control "
                       "and statistics (default: $EDITGUARD_ADMIN_KEY, else the file `editguard serve` wrote: "
                       "$EDITGUARD_ADMIN_KEY_FILE or ~/.config/editguard/admin-key)")


def client_options(args: argparse.Namespace) -> dict:
    """EditGuardClient's TLS and header options from :func:`_add_connection`'s flags."""
    from editguard.connection import parse_headers

    return {"ssl": args.ssl, "root_certificates": args.root_cert, "certificate_chain": args.client_cert,
            "private_key": args.client_key, "headers": parse_headers(args.header) or None}


def connection_from(args: argparse.Namespace):
    """A Connection (TLS, headers, admin key) from :func:`_add_connection`'s flags."""
    from editguard.connection import Connection, read_admin_key

    return Connection(**client_options(args), admin_key=read_admin_key(getattr(args, "admin_key_file", None)))


