"""Shared fixtures: small synthetic data sets, one tiny trained model and a real Triton, built once per
session, plus the helpers the tests share (as fixtures: ``encode``, ``png``, ``read_jsonl``, ``served_metrics``,
``subset_manifest``, ``manifest_with_a_bad_item``, ``triple_bytes``, ``model_stats``,
``stand_in_weights``, ``planted``, ``explained_on_the_patch``).

Everything is generated here; no weights or data are committed.

Two tiers (``make test-fast``, ``make test``): a test is ``slow`` when it trains a model, starts
Triton or drives the browser. Tests that use the trained model, the repository or the server are
marked so here; the others carry ``@pytest.mark.slow`` themselves. A test left unmarked that starts
Triton or trains fails with a message that says so, so the fast tier stays fast.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import sysconfig
import tempfile
import urllib.request
import zlib
from collections import defaultdict
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the tests never reach the hub; fail fast if code tries
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# admin keys that `editguard serve` writes or reads in tests live in a temp dir, never in the user's home
os.environ.pop("EDITGUARD_ADMIN_KEY", None)
_KEYS_DIR = tempfile.mkdtemp(prefix="editguard-test-keys-")
atexit.register(shutil.rmtree, _KEYS_DIR, ignore_errors=True)
os.environ["EDITGUARD_ADMIN_KEY_FILE"] = str(Path(_KEYS_DIR) / "admin-key")

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
def few_triples(tmp_path_factory) -> Path:
    """A manifest of 24 clean synthetic triples at 96 px, for the fast tests that need a few real records
    (synth_sets takes seconds to draw)."""
    return generate(tmp_path_factory.mktemp("few"), 24, 12, "iid", image_size=96, progress=False, clean=True)


@pytest.fixture(scope="session")
def tiny_model_dir(synth_sets, tmp_path_factory) -> Path:
    """A tiny triple model trained for a few epochs on the CPU."""
    from editguard.training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("models") / "tiny"
    train(TrainConfig(train=str(synth_sets["train"]), val=str(synth_sets["val"]), out=str(out), preset="tiny",
                      epochs=4, patience=10, progress=False))
    return out


@pytest.fixture(scope="session")
def repository(tiny_model_dir, tmp_path_factory) -> Path:
    """A Triton repository with versions 1 and 2 of the tiny model (FP32)."""
    from editguard.export.writer import ExportConfig, export_version

    repo = tmp_path_factory.mktemp("repo")
    for _ in range(2):
        export_version(ExportConfig(model_dir=str(tiny_model_dir), repository=str(repo), max_batch=32))
    return repo


@pytest.fixture(scope="session")
def triton(repository):
    """A real Triton (the nvidia-pytriton binary here) serving ``repository`` on free loopback ports."""
    from editguard.serving.triton import TritonServer, free_port

    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start(timeout=180)
    yield server
    server.stop()




# -- tiers ----------------------------------------------------------------------------------------
SLOW_FIXTURES = {"tiny_model_dir", "repository", "triton", "precheck_dir", "served", "one_version_repo", "scored",
                 "browser", "ddp_data", "realistic", "preset_models", "preset_served", "frozen_model", "ensemble"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _fast_tests_stay_fast(request, monkeypatch):
    """A test not marked slow may not start Triton or train a model."""
    if request.node.get_closest_marker("slow"):
        return
    from editguard.serving.triton import TritonServer

    def refuse(what):
        def fail(*args, **kw):
            raise AssertionError(f"{request.node.nodeid} {what}: mark it @pytest.mark.slow (make test runs it; "
                                 "make test-fast does not)")
        return fail

    monkeypatch.setattr(TritonServer, "start", refuse("starts Triton"))
    monkeypatch.setattr("editguard.training.train.fit", refuse("trains a model"))
    monkeypatch.setattr("editguard.training.grow.fit", refuse("trains a model"))


@pytest.fixture(scope="session")
def stand_in_weights(tmp_path_factory):
    """``stand_in_weights(preset)``: the preset's stand-in weights folder (model/stand_ins.py: its exact towers
    at random init, in the layout `editguard weights pack` writes), written once per session."""
    from editguard.model.config import preset_config
    from editguard.model.stand_ins import write_stand_in

    made: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in made:
            made[preset] = write_stand_in(preset_config(preset), tmp_path_factory.mktemp("weights") / preset)
        return made[preset]
    return get


# -- helpers (session-scoped: they hold no state, and fixtures of any scope may use them) ----------
def _encode(img, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _planted(folder: Path, box=(40, 24, 72, 48), size=(128, 96)):
    import numpy as np
    from PIL import Image

    src = np.random.default_rng(0).integers(60, 140, (size[1], size[0], 3)).astype(np.uint8)
    out = src.copy()
    x0, y0, x1, y1 = box
    out[y0:y1, x0:x1] = [230, 40, 40]
    Image.fromarray(src).save(folder / "in.png")
    Image.fromarray(out).save(folder / "out.png")
    return folder / "in.png", folder / "out.png", box


@pytest.fixture(scope="session")
def planted():
    """``planted(folder, box=(40, 24, 72, 48), size=(128, 96))``: a hand-made edit, a textured photo and the
    same photo with a bright patch painted inside ``box``, written to ``folder``: ``(in.png, out.png, box)``."""
    return _planted


def _explained_on_the_patch(explainer, src, out, box, size, margin, categories=None):
    import numpy as np

    categories = categories or explainer.labels
    found = explainer.explain(src, "make the wall red", out, categories=categories)
    assert [e.category for e in found] == categories
    located = [e for e in found if e.peak is not None]
    assert located, "no category's score rests on the change"
    x0, y0, x1, y1 = box
    for e in located:
        assert e.heatmap.shape == (size[1], size[0]) and e.heatmap.dtype == np.uint8 and e.heatmap.max() == 255
        px, py = e.peak
        assert x0 - margin <= px < x1 + margin and y0 - margin <= py < y1 + margin, (e.category, e.peak)
        bx0, by0, bx1, by1 = e.box
        assert bx0 < x1 + margin and bx1 > x0 - margin and by0 < y1 + margin and by1 > y0 - margin, e.box
        assert e.heatmap[:, :x0 - 2 * margin].max() < 64, e.category  # nothing far left of the patch
        assert sum(e.shares.values()) == pytest.approx(1.0) or sum(e.shares.values()) == 0
    # the contributions add up to the logit's rise from the neutral triple (nothing asked, nothing changed)
    neutral = {e.category: e.score for e in explainer.explain(src, "", src, categories=categories)}
    for e in found:
        rise = np.log(e.score / (1 - e.score)) - np.log(neutral[e.category] / (1 - neutral[e.category]))
        assert sum(e.contributions.values()) == pytest.approx(rise, abs=2e-3), e.category
    return found


@pytest.fixture(scope="session")
def explained_on_the_patch():
    """``explained_on_the_patch(explainer, src, out, box, size, margin, categories=None)``: explains a
    ``planted`` edit in ``categories`` (default: every one) and checks what holds whatever the weights,
    since integrated gradients attribute to changed pixels only: each located heatmap is at the upload's
    ``size`` and peaks within ``margin`` of the patch, its box overlaps the patch, nothing far left of it
    lights up, and the Shapley values add up to the logit's rise from the neutral triple. Returns the
    explanations."""
    return _explained_on_the_patch


@pytest.fixture(scope="session")
def encode():
    """``encode(img, fmt="PNG", **save_options)``: a PIL image encoded as a client would upload it."""
    return _encode


@pytest.fixture(scope="session")
def png_bomb():
    """``png_bomb(w=100_000, h=100_000)``: a tiny PNG whose header declares w x h pixels."""
    def bomb(w: int = 100_000, h: int = 100_000) -> bytes:
        from PIL import Image

        data = bytearray(_encode(Image.new("RGB", (1, 1))))
        ihdr = data.find(b"IHDR")
        data[ihdr + 4:ihdr + 12] = struct.pack(">II", w, h)
        data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
        return bytes(data)
    return bomb


@pytest.fixture(scope="session")
def png():
    """``png(img)``: a PIL image as PNG bytes."""
    return lambda img: _encode(img, "PNG")


@pytest.fixture(scope="session")
def read_jsonl():
    """``read_jsonl(path)``: the rows of a JSONL file."""
    return _read_jsonl


@pytest.fixture(scope="session")
def model_stats():
    """``model_stats(server, model, version="")``: Triton's statistics of a model, read with the server's
    admin key (statistics are an admin protocol)."""
    def stats(server, model: str, version: str = "") -> list[dict]:
        conn = server.connection()
        with conn.grpc_client(server.grpc_url) as c:
            return c.get_inference_statistics(model, version, headers=conn.admin_headers(),
                                              as_json=True)["model_stats"]
    return stats


@pytest.fixture(scope="session")
def subset_manifest():
    """``subset_manifest(manifest, n, tag)``: the first ``n`` records of ``manifest``, in a manifest beside it
    (paths may not escape its folder)."""
    def subset(manifest: Path, n: int, tag: str) -> Path:
        small = Path(manifest).parent / f"first{n}-{tag}.jsonl"
        small.write_text("".join(Path(manifest).read_text().splitlines(keepends=True)[:n]))
        return small
    return subset


@pytest.fixture(scope="session")
def manifest_with_a_bad_item():
    """``manifest_with_a_bad_item(src, out, n, bad)``: the first ``n`` records of ``src`` with absolute paths,
    record ``bad`` pointing at a truncated PNG; returns ``(manifest, the bad record's id)``."""
    def build(src: Path, out: Path, n: int, bad: int) -> tuple[Path, str]:
        root = Path(src).parent
        rows = _read_jsonl(src)[:n]
        (out.parent / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
        for r in rows:
            for k in ("input_image", "output_image", "mask"):
                r[k] = str(root / r[k])
        rows[bad]["output_image"] = str(out.parent / "bad.png")
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
        return out, rows[bad]["id"]
    return build


@pytest.fixture(scope="session")
def triple_bytes():
    """``triple_bytes(manifest, n, start=0)``: encoded triples as a client sends them (file bytes, the prompt)."""
    def read(manifest: Path, n: int, start: int = 0) -> list[dict]:
        root = Path(manifest).parent
        return [{"id": r["id"], "input": (root / r["input_image"]).read_bytes(),
                 "output": (root / r["output_image"]).read_bytes(), "mask": (root / r["mask"]).read_bytes(),
                 "prompt": r["prompt"], "labels": r["labels"]} for r in _read_jsonl(manifest)[start:start + n]]
    return read


_METRIC_LINE = re.compile(r'^(\w+)(?:\{(.*)\})?\s+(\S+)$')


def _scrape(server) -> dict[str, dict[frozenset, float]]:
    """``/metrics`` as {name: {frozenset of (label, value): sample}}."""
    text = urllib.request.urlopen(f"http://{server.host}:{server.metrics_port}/metrics", timeout=10).read().decode()
    out: dict[str, dict[frozenset, float]] = defaultdict(dict)
    for line in text.splitlines():
        m = _METRIC_LINE.match(line)
        if m and not line.startswith("#"):
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
            out[m.group(1)][labels] = float(m.group(3))
    return out


def _metric_value(metrics, name: str, **labels) -> float:
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for k, v in metrics.get(name, {}).items() if want <= k)


@pytest.fixture(scope="session")
def served_metrics():
    """``(scrape, value)``: ``scrape(server)`` reads a Triton's ``/metrics``; ``value(metrics, name, **labels)`` sums
    the samples of ``name`` whose labels include ``labels``."""
    return _scrape, _metric_value


# -- what users install: a wheel built from the tracked files, in a venv of its own ---------------
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def setup_folders() -> dict[str, str]:
    """setup.py's FOLDERS (package -> folder), read without running setup()."""
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    node = next(n for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "FOLDERS")
    return ast.literal_eval(node.value)


def _tracked() -> list[str]:
    """The repository's tracked files (the wheel is built from these alone)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("the wheel is built from the tracked files: needs git and a clone")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    return [p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


@pytest.fixture(scope="session")
def tracked_files() -> list[str]:
    return _tracked()


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory) -> Path:
    """editguard's wheel, built (no isolation, no network) from a copy of the tracked files only."""
    src = tmp_path_factory.mktemp("wheel-src")
    for rel in _tracked():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    dist = tmp_path_factory.mktemp("dist")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                        "--no-index", "-q", "-w", str(dist)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return next(dist.glob("editguard-*.whl"))


@pytest.fixture(scope="session")
def wheel_venv(built_wheel, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed non-editable. The test venv's packages (torch, onnxruntime,
    the Triton binary) are reachable behind it through a .pth file, so nothing heavy is installed twice;
    the test venv's own editguard is an editable install, whose finder a .pth path line does not load."""
    venv = tmp_path_factory.mktemp("wheel-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                        "--no-deps", "--no-index", str(built_wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    (site / "zz-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv
