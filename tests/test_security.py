"""Exposing the server: the admin API behind a key, TLS and mutual TLS, metadata headers.

Everything runs against real Tritons; the certificate authority is made here and thrown away.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from editguard.clients import EditGuardClient, Verdict
from editguard.clients.aio import AsyncEditGuardClient
from editguard.clients.errors import EditGuardError
from editguard.connection import Connection
from editguard.model.repository import CLASSIFIER, CLIENT_MODEL
from editguard.serving.triton import TritonServer, free_port


def test_admin_protocols_need_the_key_while_inference_stays_open(triton, synth_sets, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    with grpcclient.InferenceServerClient(triton.grpc_url) as c:
        for call in (lambda: c.unload_model(CLIENT_MODEL), lambda: c.unload_model(CLASSIFIER),
                     lambda: c.load_model(CLIENT_MODEL), lambda: c.get_inference_statistics(CLIENT_MODEL),
                     lambda: c.unload_model(CLIENT_MODEL,
                                            headers={"triton-grpc-protocol-editguard-admin-key": "guess"})):
            with pytest.raises(Exception, match="restricted"):
                call()
        assert c.is_server_live() and c.is_model_ready(CLIENT_MODEL) and c.get_model_config(CLIENT_MODEL)  # open
    http = httpclient.InferenceServerClient(triton.http_url)
    try:
        with pytest.raises(Exception, match="restricted"):
            http.unload_model(CLIENT_MODEL)
        assert http.is_model_ready(CLIENT_MODEL)
    finally:
        http.close()
    with EditGuardClient(triton.grpc_url) as guard:  # inference works, and the model was never unloaded
        assert isinstance(guard.classify(t["input"], t["prompt"], t["output"], t["mask"]), Verdict)
    conn = triton.connection()
    with conn.grpc_client(triton.grpc_url) as c:  # the key opens the admin protocols
        assert c.get_inference_statistics(CLIENT_MODEL, headers=conn.admin_headers(), as_json=True)["model_stats"]


def _wait_for(proc: subprocess.Popen, text: str, timeout: float = 180) -> str:
    lines, deadline = [], time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if text in line or not line:
            break
    return "".join(lines)


def test_serve_keeps_its_key_secret_and_a_key_holding_roll_out_works(tiny_model_dir, synth_sets, tmp_path,
                                                                     triple_bytes):
    from editguard.cli import main

    repo = tmp_path / "repo"
    assert main(["export", str(tiny_model_dir), "--repository", str(repo)]) == 0
    key_file = tmp_path / "keys" / "admin-key"
    ports = [str(free_port()) for _ in range(3)]
    env = dict(os.environ, EDITGUARD_ADMIN_KEY_FILE=str(key_file))
    cmd = [sys.executable, "-m", "editguard", "serve", "--repository", str(repo), "--grpc-port", ports[0],
           "--http-port", ports[1], "--metrics-port", ports[2]]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        out = _wait_for(proc, "Ctrl-C to stop")
        assert any("gRPC" in ln and ports[0] in ln for ln in out.splitlines()), out
        assert (key_file.stat().st_mode & 0o777) == 0o600  # generated, for its owner only
        key = key_file.read_text().strip()
        assert len(key) >= 32 and key not in out and str(key_file) in out
        log = Path(next(ln.split()[-1] for ln in out.splitlines() if ln.strip().startswith("log")))
        url = f"127.0.0.1:{ports[0]}"
        with grpcclient.InferenceServerClient(url) as c:
            with pytest.raises(Exception, match="restricted"):
                c.unload_model(CLIENT_MODEL)
            assert c.is_model_ready(CLIENT_MODEL, "1")
        # a roll-out without the key is refused with what to do; with it (read as serve wrote it) it loads v2
        wrong = dict(os.environ, EDITGUARD_ADMIN_KEY="not-the-key")
        r = subprocess.run([sys.executable, "-m", "editguard", "export", str(tiny_model_dir), "--repository",
                            str(repo), "--server", url], env=wrong, capture_output=True, text=True, timeout=300)
        assert r.returncode == 3 and "needs the server's admin key" in r.stderr.splitlines()[-1], r.stderr
        assert main(["export", str(tiny_model_dir), "--repository", str(repo), "--version", "3", "--server", url,
                     "--admin-key-file", str(key_file)]) == 0
        t = triple_bytes(synth_sets["test"], 1)[0]
        with EditGuardClient(url) as guard:
            assert guard.classify(t["input"], t["prompt"], t["output"]).model_version == "3"
        assert key not in log.read_text(errors="replace")  # nor in Triton's own log
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and "Triton stopped (exit code 0)" in rest and key not in rest


# -- TLS ------------------------------------------------------------------------------------------
def _authority(tmp: Path, name: str):
    """A throwaway CA: (key, certificate), also written as ``name``-ca.pem."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"editguard test CA {name}")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (tmp / f"{name}-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _issue(tmp: Path, ca, name: str, server: bool) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` (for localhost/127.0.0.1 when ``server``): (cert.pem, key.pem)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
         .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    if server:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                         x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                            critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    cert_path, key_path = tmp / f"{name}.pem", tmp / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("pki")
    servers, clients, rogue = _authority(tmp, "servers"), _authority(tmp, "clients"), _authority(tmp, "rogue")
    server_cert, server_key = _issue(tmp, servers, "server", server=True)
    client_cert, client_key = _issue(tmp, clients, "client", server=False)
    rogue_cert, rogue_key = _issue(tmp, rogue, "rogue-client", server=False)
    return {"server_ca": tmp / "servers-ca.pem", "client_ca": tmp / "clients-ca.pem", "server_cert": server_cert,
            "server_key": server_key, "client_cert": client_cert, "client_key": client_key,
            "rogue_cert": rogue_cert, "rogue_key": rogue_key}


@pytest.fixture(scope="module")
def one_version_repo(repository, tmp_path_factory) -> Path:
    """The session repository with only version 1 (starts faster)."""
    repo = tmp_path_factory.mktemp("tls") / "repo"
    shutil.copytree(repository, repo)
    for model in (m for m in repo.iterdir() if (m / "2").is_dir()):
        shutil.rmtree(model / "2")
    return repo


def _refused(**kw) -> str:
    """The status of a call that fails to connect (a refused handshake is UNAVAILABLE)."""
    with pytest.raises(EditGuardError) as e, EditGuardClient(timeout=3, retries=0, **kw) as guard:
        guard.classify(b"x", "p", b"y")  # a connected call would fail INVALID_ARGUMENT instead
    return e.value.status


def test_tls_serves_tls_clients_and_refuses_plaintext(one_version_repo, pki, synth_sets, tmp_path, read_jsonl,
                                                      subset_manifest, triple_bytes):
    """Server-side TLS; inference also restricted to a header token here, as a front proxy would check one,
    so the client's metadata headers are seen to arrive on every call."""
    t = triple_bytes(synth_sets["test"], 1)[0]
    token = "triton-grpc-protocol-edge-token"
    with TritonServer(one_version_repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                      extra_args=["--grpc-restricted-protocol=inference:edge-token=s3cret"]) as server:
        tls = {"root_certificates": str(pki["server_ca"]), "headers": {token: "s3cret"}}
        with EditGuardClient(server.grpc_url, **tls) as guard:
            v = guard.classify(t["input"], t["prompt"], t["output"], t["mask"])
            assert isinstance(v, Verdict) and v.model_version == "1"
            with pytest.raises(EditGuardError, match="restricted") as e:  # per-call headers override the client's
                guard.classify(t["input"], t["prompt"], t["output"], headers={token: "wrong"})
            assert e.value.status == "PERMISSION_DENIED"  # not retried as Triton's UNAVAILABLE would be

        async def aio():
            async with AsyncEditGuardClient(server.grpc_url, **tls) as guard:
                return await guard.classify(t["input"], t["prompt"], t["output"], t["mask"])

        import asyncio

        assert asyncio.run(aio()).scores == pytest.approx(v.scores, abs=1e-6)
        assert _refused(url=server.grpc_url, headers={token: "s3cret"}) == "UNAVAILABLE"  # plaintext
        # `editguard score` through TLS, with the header
        manifest = subset_manifest(synth_sets["test"], 4, "tls")
        from editguard.cli import main

        out = tmp_path / "scores.jsonl"
        assert main(["score", str(manifest), "--out", str(out), "--server", server.grpc_url, "--root-cert",
                     str(pki["server_ca"]), "--header", f"{token}=s3cret", "--no-progress"]) == 0
        assert len(read_jsonl(out)) == 4
        assert server.running and server.http_url.startswith("127.0.0.1:")  # HTTP has no TLS: loopback only


def test_mutual_tls_refuses_clients_without_a_certificate_it_trusts(one_version_repo, pki, synth_sets, triple_bytes):
    t = triple_bytes(synth_sets["test"], 1)[0]
    with TritonServer(one_version_repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                      tls_ca=pki["client_ca"]) as server:
        ca = str(pki["server_ca"])
        with EditGuardClient(server.grpc_url, root_certificates=ca, certificate_chain=str(pki["client_cert"]),
                             private_key=str(pki["client_key"])) as guard:
            assert isinstance(guard.classify(t["input"], t["prompt"], t["output"], t["mask"]), Verdict)
        assert _refused(url=server.grpc_url, root_certificates=ca) == "UNAVAILABLE"  # no client certificate
        rogue = {"certificate_chain": str(pki["rogue_cert"]), "private_key": str(pki["rogue_key"])}
        assert _refused(url=server.grpc_url, root_certificates=ca, **rogue) == "UNAVAILABLE"  # another CA's
        assert _refused(url=server.grpc_url) == "UNAVAILABLE"  # plaintext
        # model control over mutual TLS with the key
        from editguard.serving.control import load_models

        load_models(server.grpc_url, connection=server.connection(
            root_certificates=ca, certificate_chain=str(pki["client_cert"]), private_key=str(pki["client_key"])))
        assert server.running


def test_bad_tls_settings_are_named():
    with pytest.raises(EditGuardError, match="both the client's private key and its certificate chain"):
        EditGuardClient("localhost:1", private_key=__file__)
    with pytest.raises(EditGuardError, match="is not a file"):
        EditGuardClient("localhost:1", root_certificates="/nonexistent/ca.pem")
    with pytest.raises(Exception, match="--tls-key"):
        TritonServer("repo", tls_cert=__file__)
    with pytest.raises(ValueError, match="NAME=VALUE"):
        from editguard.connection import parse_headers

        parse_headers(["no-equals-sign"])
    assert Connection(admin_key="k").admin_headers() == {"triton-grpc-protocol-editguard-admin-key": "k",
                                                         "editguard-admin-key": "k"}
