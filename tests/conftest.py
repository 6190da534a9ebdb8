"""Shared fixtures: small synthetic data sets and one tiny trained model, built once per session.

Everything is generated here; no weights or data are committed.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no machine here reaches the hub; fail fast if code tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# admin keys that `editguard serve` writes or reads in tests live in a temp dir, never in the user's home
os.environ.pop("EDITGUARD_ADMIN_KEY", None)
os.environ["EDITGUARD_ADMIN_KEY_FILE"] = str(Path(tempfile.mkdtemp(prefix="editguard-test-keys-")) / "admin-key")

from editguard.training.synth import generate  # noqa: E402


@pytest.fixture(scope="session")
def synth_sets(tmp_path_factory) -> dict[str, Path]:
    """Manifests: train (1500), val (300), test (400), ood (400), at 96 px, from the clean renderer
    (every triple has a mask; the realistic renderer has its own tests in test_synth.py)."""
    root = tmp_path_factory.mktemp("synth")
    sizes = {"train": (1500, 11, "iid"), "val": (300, 12, "iid"), "test": (400, 13, "iid"), "ood": (400, 14, "ood")}
    return {name: generate(root / name, n, seed, split, image_size=96, progress=False, clean=True)
            for name, (n, seed, split) in sizes.items()}


@pytest.fixture(scope="session")
def tiny_model_dir(synth_sets, tmp_path_factory) -> Path:
    """A tiny triple model trained for a few epochs on the CPU."""
    from editguard.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "tiny"
    train(TrainConfig(train=str(synth_sets["train"]), val=str(synth_sets["val"]), out=str(out), epochs=4,
                      patience=10, progress=False))
    return out


def encode(img, fmt: str = "PNG", **kw) -> bytes:
    """A PIL image encoded as a client would upload it."""
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png(img) -> bytes:
    return encode(img, "PNG")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def repository(tiny_model_dir, tmp_path_factory) -> Path:
    """A Triton repository with versions 1 and 2 of the tiny model (FP32)."""
    from editguard.export.repository import ExportConfig, export_version

    repo = tmp_path_factory.mktemp("repo")
    for _ in range(2):
        export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(repo), max_batch=32))
    return repo


@pytest.fixture(scope="session")
def triton(repository):
    """A real Triton (the nvidia-pytriton binary here) serving ``repository`` on free loopback ports."""
    from editguard.export.triton import TritonServer, free_port

    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start(timeout=180)
    yield server
    server.stop()


def model_stats(server, model: str, version: str = "") -> list[dict]:
    """Triton's statistics of ``model``: an admin protocol, read with the server's admin key."""
    conn = server.connection()
    with conn.grpc_client(server.grpc_url) as c:
        return c.get_inference_statistics(model, version, headers=conn.admin_headers(), as_json=True)["model_stats"]


def subset_manifest(manifest: Path, n: int, tag: str) -> Path:
    """The first ``n`` records of ``manifest``, in a manifest beside it (paths may not escape its folder)."""
    small = Path(manifest).parent / f"first{n}-{tag}.jsonl"
    small.write_text("".join(Path(manifest).read_text().splitlines(keepends=True)[:n]))
    return small


def manifest_with_a_bad_item(src: Path, out: Path, n: int, bad: int) -> tuple[Path, str]:
    """The first ``n`` records of ``src`` with absolute paths, record ``bad`` pointing at a truncated
    PNG; returns ``(manifest, the bad record's id)``."""
    root = Path(src).parent
    rows = read_jsonl(src)[:n]
    (out.parent / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    for r in rows:
        for k in ("input_image", "output_image", "mask"):
            r[k] = str(root / r[k])
    rows[bad]["output_image"] = str(out.parent / "bad.png")
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out, rows[bad]["id"]


def triple_bytes(manifest: Path, n: int, start: int = 0) -> list[dict]:
    """Encoded triples as a client sends them: file bytes and the prompt."""
    root = Path(manifest).parent
    out = []
    for r in read_jsonl(manifest)[start:start + n]:
        out.append({"id": r["id"], "input": (root / r["input_image"]).read_bytes(),
                    "output": (root / r["output_image"]).read_bytes(), "mask": (root / r["mask"]).read_bytes(),
                    "prompt": r["prompt"], "labels": r["labels"]})
    return out
