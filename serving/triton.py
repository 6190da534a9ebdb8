"""Starting a local Triton: NVIDIA's `tritonserver` from PATH, else the one in the nvidia-pytriton wheel.

The wheel's binary needs a backend dir holding the Python backend with the
stub built for the running Python copied beside it, the running Python's
LIBDIR first in LD_LIBRARY_PATH (or the stub loads the system libpython),
and the wheel's bundled libraries. The stub's embedded Python runs isolated
(it ignores PYTHONPATH) and finds its prefix through ``python3`` on PATH, so
this environment's bin dir goes first on PATH: the stub then sees this
environment's packages (editguard's preprocessing, onnxruntime).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .shared_cache import cache_dir_path

_logger = logging.getLogger(__name__)

__all__ = ["TritonServer", "TritonError", "find_tritonserver", "port_free"]


class TritonError(RuntimeError):
    """Triton could not be found, started, or did not become ready."""


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class _Install:
    binary: Path
    backends: Path | None = None  # a ready backend dir (NVIDIA's install); None = build one from the wheel
    wheel_root: Path | None = None  # the pytriton/tritonserver folder of the wheel


def find_tritonserver() -> _Install:
    """`tritonserver` on PATH (with its own backends), else the nvidia-pytriton wheel's."""
    on_path = shutil.which("tritonserver")
    if on_path:
        backends = Path(os.environ.get("TRITON_BACKENDS_DIR", "/opt/tritonserver/backends"))
        return _Install(Path(on_path), backends if backends.exists() else None)
    try:
        import pytriton
    except ImportError:
        raise TritonError(
            "no Triton found: install the [serve] extra (pip install 'editguard[serve]', which brings the "
            "tritonserver binary inside nvidia-pytriton), or put NVIDIA's tritonserver on PATH"
        ) from None
    root = Path(pytriton.__file__).parent / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise TritonError(f"nvidia-pytriton is installed but {root}/bin/tritonserver is missing; reinstall it")
    return _Install(root / "bin" / "tritonserver", None, root)


def _prepare_wheel_backends(inst: _Install, workdir: Path) -> tuple[Path, dict[str, str]]:
    """A backend dir with the Python backend and this Python's stub, plus the environment it needs."""
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = inst.wheel_root / "python_backend_stubs" / ver / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonError(f"the nvidia-pytriton wheel has no Python backend stub for Python {ver}")
    py = workdir / "backends" / "python"
    py.mkdir(parents=True, exist_ok=True)
    for f in (inst.wheel_root / "backends" / "python").iterdir():
        if f.is_file():
            shutil.copy2(f, py / f.name)
    shutil.copy2(stub, py / stub.name)
    libs = [sysconfig.get_config_var("LIBDIR"), str(inst.wheel_root.parent.parent / "nvidia_pytriton.libs")]
    env = {
        "LD_LIBRARY_PATH": os.pathsep.join([*libs, os.environ.get("LD_LIBRARY_PATH", "")]).rstrip(os.pathsep),
        # the stub's Python runs isolated (PYTHONPATH is ignored) and finds its prefix through the
        # `python3` on PATH: this environment's first, so it sees this environment's packages
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    return workdir / "backends", env


@dataclass
class TritonServer:
    """A real Triton process on loopback; a context manager. Ports default to Triton's 8000/8001/8002."""

    repository: str | Path
    grpc_port: int = 8001
    http_port: int = 8000
    metrics_port: int = 8002
    host: str = "127.0.0.1"
    model_control: str = "explicit"  # "explicit": load everything at start, reload through the API
    log_file: str | Path | None = None  # Triton's output; default: a temp file
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra environment for Triton and its stubs
    # the key of the admin protocols (model control, statistics, shared memory, trace, logging);
    # None: a random one for this process only. Inference, health, metadata and model config stay open.
    admin_key: str | None = field(default=None, repr=False)
    tls_cert: str | Path | None = None  # PEM server certificate and key: gRPC over TLS
    tls_key: str | Path | None = None
    tls_ca: str | Path | None = None  # PEM CA of the client certificates: mutual TLS (clients without one are refused)
    # the serving graph: Triton's --model-config-name ("" or "inline": each model's config.pbtxt; "ensemble":
    # editguard as an ensemble over the Python steps; "onnxruntime"/"tensorrt": over the native networks)
    graph: str = ""
    # Triton's response cache (the `local` cache), which the ensemble's prompt-tower step uses; 0: none
    cache_bytes: int = 64 << 20
    # Triton's --exit-timeout-secs: on SIGTERM, how long requests in flight may take to finish (a container's
    # grace period must be longer: deploy/kubernetes/deployment.yaml)
    exit_timeout_s: int = 30
    _proc: subprocess.Popen | None = None
    _caches: Path | None = None  # the wheel's caches/ folder (NVIDIA's install finds its own)
    _workdir: Path | None = None

    def __post_init__(self) -> None:
        if self.admin_key is None:
            self.admin_key = secrets.token_urlsafe(32)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise TritonError("TLS needs both the server certificate (--tls-cert) and its key (--tls-key)")
        if self.tls_ca and not self.tls_cert:
            raise TritonError("mutual TLS (--tls-ca) needs the server's own certificate too (--tls-cert, --tls-key)")
        from ..connection import require_files

        require_files({f"--{n.replace('_', '-')}": getattr(self, n) for n in ("tls_cert", "tls_key", "tls_ca")},
                      lambda name, path: TritonError(f"{name} {path} is not a file"))

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    @property
    def http_host(self) -> str:
        """Triton's HTTP endpoint has no TLS: with TLS on, it stays on loopback (health checks, local use)."""
        return "127.0.0.1" if self.tls else self.host

    def connection(self, **kw):
        """A :class:`~editguard.connection.Connection` holding this server's admin key."""
        from ..connection import Connection

        return Connection(admin_key=self.admin_key, **kw)

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"{self.http_host}:{self.http_port}"

    def command(self, backends: Path | None, redact: bool = False) -> list[str]:
        """Triton's command line (``redact``: the admin key replaced, for logs)."""
        from ..connection import ADMIN_HEADER, ADMIN_PROTOCOLS

        cmd = [str(self.binary), f"--model-repository={Path(self.repository).resolve()}",
               f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}",
               f"--metrics-port={self.metrics_port}", f"--grpc-address={self.host}",
               f"--http-address={self.http_host}", f"--metrics-address={self.host}",
               f"--model-control-mode={self.model_control}", "--log-verbose=0",
               f"--exit-timeout-secs={self.exit_timeout_s}", "--allow-cpu-metrics=true"]
        key = "REDACTED" if redact else self.admin_key
        restricted = f"{','.join(ADMIN_PROTOCOLS)}:{ADMIN_HEADER}={key}"
        cmd += [f"--grpc-restricted-protocol={restricted}", f"--http-restricted-api={restricted}"]
        if self.tls:
            cmd += ["--grpc-use-ssl=true", f"--grpc-server-cert={Path(self.tls_cert).resolve()}",
                    f"--grpc-server-key={Path(self.tls_key).resolve()}"]
            if self.tls_ca:
                cmd += ["--grpc-use-ssl-mutual=true", f"--grpc-root-cert={Path(self.tls_ca).resolve()}"]
        if self.model_control == "explicit":
            cmd += [f"--load-model={m}" for m in self.models_to_load()]
        if backends is not None:
            cmd.append(f"--backend-directory={backends}")
        if self.graph not in ("", "inline"):
            cmd.append(f"--model-config-name={self.graph}")
        if self.cache_bytes:
            if self._caches is not None:
                cmd.append(f"--cache-directory={self._caches}")
            cmd.append(f"--cache-config=local,size={self.cache_bytes}")
        return cmd + list(self.extra_args)

    def models_to_load(self) -> list[str]:
        """What the graph serves: the inline graph leaves the ensemble's steps unloaded (its client model runs the
        networks, the prompt tower too, in-process); the ensembles load everything."""
        from ..model.repository import PREPARE, PROMPTS, VERDICTS

        if self.graph not in ("", "inline"):
            return ["*"]
        skip = {PREPARE, VERDICTS} | set(PROMPTS.values())
        repo = Path(self.repository)
        return sorted(p.name for p in repo.iterdir() if (p / "config.pbtxt").exists() and p.name not in skip) \
            if repo.is_dir() else ["*"]

    def _launch(self) -> tuple[list[str], dict[str, str]]:
        """Triton's command line and environment: the binary found, the wheel's backends prepared, the ports
        checked free."""
        repo = Path(self.repository)
        if not repo.is_dir():
            raise TritonError(f"model repository {repo} does not exist; create one with `editguard export`")
        for name, port, host in (("grpc", self.grpc_port, self.host), ("http", self.http_port, self.http_host),
                                 ("metrics", self.metrics_port, self.host)):
            if not port_free(port, host):
                raise TritonError(f"{name} port {port} is in use; stop what holds it or pass --{name}-port")
        inst = find_tritonserver()
        if inst.wheel_root is not None and self.graph in ("onnxruntime", "tensorrt"):
            raise TritonError(f"the {self.graph} graph runs the networks on Triton's native {self.graph} backend, "
                              "which the tritonserver binary in the nvidia-pytriton wheel does not have: run it in "
                              "NVIDIA's Triton container, or serve the same ensemble over the Python backend here "
                              "with --graph ensemble")
        self.binary, self._caches = inst.binary, inst.wheel_root / "caches" if inst.wheel_root else None
        self._workdir = Path(tempfile.mkdtemp(prefix="editguard-triton-"))
        env = dict(os.environ, **self.env)
        backends = inst.backends
        if inst.wheel_root is not None:
            backends, extra = _prepare_wheel_backends(inst, self._workdir)
            env.update(extra)
        _logger.info("starting %s", " ".join(self.command(backends, redact=True)))
        return self.command(backends), env

    def start(self, timeout: float = 120.0) -> "TritonServer":
        """Start Triton as a child process, its log in ``log_file``, and wait until it is ready."""
        cmd, env = self._launch()
        log = Path(self.log_file) if self.log_file else self._workdir / "triton.log"
        self.log_path = log
        self._log = open(log, "ab")
        self._proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                      start_new_session=True)
        self._wait_ready(timeout)
        return self

    def become(self) -> None:
        """Become Triton: replace this process with ``tritonserver`` and the same command line as :meth:`start`
        (a container's entrypoint). Triton then logs to this process's output and receives the orchestrator's
        signals itself (SIGTERM: it stops taking requests and drains the ones in flight). Never returns."""
        cmd, env = self._launch()
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(cmd[0], cmd, env)

    def _wait_ready(self, timeout: float) -> None:
        import tritonclient.http as http

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise TritonError(f"tritonserver exited with code {self._proc.returncode}:\n{self.log_tail()}")
            # a fresh connection each time, closed at once: Triton's shutdown waits for open connections
            client = http.InferenceServerClient(self.http_url)
            try:
                if client.is_server_ready():
                    return
            except Exception:  # not listening yet
                pass
            finally:
                client.close()
            time.sleep(0.25)
        tail = self.log_tail()
        self.stop()
        raise TritonError(f"tritonserver was not ready after {timeout:.0f} s:\n{tail}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (Triton drains in-flight requests), then SIGKILL after ``timeout``; returns the exit code."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log.close()
        shutil.rmtree(cache_dir_path(self._proc.pid), ignore_errors=True)  # its instances' shared caches
        self._remove_workdir()
        return self._proc.returncode

    def _remove_workdir(self) -> None:
        """The temp dir (the wheel's backends, the default log) goes with a clean exit; after any other, the
        log stays there for a post-mortem, and the warning names it."""
        workdir, self._workdir = self._workdir, None  # handled once: a second stop() neither removes nor warns
        if workdir is None or not workdir.exists():
            return
        if self._proc.returncode == 0 or self.log_file:
            shutil.rmtree(workdir, ignore_errors=True)
            return
        shutil.rmtree(workdir / "backends", ignore_errors=True)
        _logger.warning("tritonserver exited with code %s; its log stays in %s", self._proc.returncode, self.log_path)

    def kill(self) -> None:
        """SIGKILL the whole process group (Triton and its Python stubs), as a crash would."""
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def __enter__(self) -> "TritonServer":
        return self.start() if self._proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
