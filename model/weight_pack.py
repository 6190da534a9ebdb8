"""Weights for air-gapped clusters: a preset's pretrained files in one folder, with a hash manifest.

::

    DIR/weights.json        {"preset", "image_encoder": {"name", "file"}, "text_encoder": {"name", "dir"},
                             "files": {relative path: sha256}}
    DIR/image_encoder/      timm's files of the image tower (model.safetensors, config.json)
    DIR/text_encoder/       the Hugging Face snapshot of the prompt tower (config, weights, tokenizer)

:func:`pack` runs on a machine that reaches the Hugging Face hub (``editguard weights pack``).
:func:`use_pack` runs where training does: it checks every file against its hash (a missing or
changed file is an error that names it), points the model config at the folder's files, and
switches the hub off for the process, so the towers load from the folder and nowhere else.
The pair tower is always trained from scratch and needs no file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from pathlib import Path

from .config import ModelConfig

__all__ = ["WeightPackError", "WeightsUnavailableError", "hub_files", "pack", "write_manifest", "verify", "use_pack"]

MANIFEST = "weights.json"
TEXT_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*", "vocab*", "merges*", "1_Pooling/*"]


class WeightPackError(FileNotFoundError):
    """A weights folder that can't be used as it is: a file missing or changed, or another preset's."""


class WeightsUnavailableError(FileNotFoundError):
    """A preset's pretrained files could not be loaded: no hub, and no local copy given."""


def hub_files(cfg: ModelConfig) -> dict[str, str]:
    """The hub repositories a config's pretrained towers load from: ``{"image_encoder": repo,
    "text_encoder": repo}``, leaving out towers that are random-init or already local."""
    out = {}
    enc = cfg.image_encoder
    if enc.pretrained and not enc.weights:
        from timm.models import get_pretrained_cfg

        pc = get_pretrained_cfg(enc.name)
        out["image_encoder"] = (pc.hf_hub_id if pc is not None and pc.hf_hub_id else enc.name)
    txt = cfg.text_encoder
    if txt.name and txt.pretrained and not txt.name.startswith("pkg:") and not Path(txt.name).expanduser().exists():
        out["text_encoder"] = txt.name
    return out


def unavailable(cfg: ModelConfig, cause: Exception) -> WeightsUnavailableError:
    """The error for a preset whose pretrained files can't be loaded: the files, and both ways out."""
    need = hub_files(cfg)
    files = ", ".join(f"{part} from {repo}" for part, repo in need.items()) or "its towers' files"
    return WeightsUnavailableError(
        f"preset {cfg.preset!r} loads pretrained weights ({files}) and they could not be loaded "
        f"({type(cause).__name__}: {str(cause).splitlines()[0][:200]}). Without the Hugging Face hub, either run "
        f"`editguard weights pack --preset {cfg.preset} --out DIR` on a machine that reaches the hub, copy DIR "
        "here and train with --weights DIR (or $EDITGUARD_WEIGHTS=DIR); or set image_encoder.weights to a local "
        "weights file and text_encoder.name to a local model folder in a model config .json (--preset FILE)")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_manifest(folder: str | Path, cfg: ModelConfig) -> Path:
    """Hash every file under ``folder`` into ``weights.json`` for ``cfg``'s preset; returns its path. The
    image tower's file is ``image_encoder/model.safetensors``, the prompt tower's folder ``text_encoder``."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST}
    doc = {"preset": cfg.preset,
           "image_encoder": {"name": cfg.image_encoder.name, "file": "image_encoder/model.safetensors"}
           if "image_encoder/model.safetensors" in files else None,
           "text_encoder": {"name": cfg.text_encoder.name, "dir": "text_encoder"}
           if any(f.startswith("text_encoder/") for f in files) else None,
           "files": files}
    (folder / MANIFEST).write_text(json.dumps(doc, indent=2) + "\n")
    return folder / MANIFEST


def pack(cfg: ModelConfig, out: str | Path) -> Path:
    """Fetch every pretrained file ``cfg`` needs from the hub into ``out`` and write its manifest (run
    where the hub is reachable)."""
    from huggingface_hub import snapshot_download

    out = Path(out)
    need = hub_files(cfg)
    if not need:
        raise ValueError(f"preset {cfg.preset!r} loads no pretrained weights from the hub: nothing to pack")
    if "image_encoder" in need:
        snapshot_download(need["image_encoder"], local_dir=out / "image_encoder",
                          allow_patterns=["model.safetensors", "config.json"])
    if "text_encoder" in need:
        snapshot_download(need["text_encoder"], local_dir=out / "text_encoder", allow_patterns=TEXT_FILES)
    for cache in list(out.rglob(".cache")):  # huggingface_hub's download bookkeeping: not part of the pack
        shutil.rmtree(cache)
    return write_manifest(out, cfg)


def verify(folder: str | Path) -> dict:
    """The folder's manifest, once every file it lists is there with its hash; WeightPackError names the
    first missing or changed file."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise WeightPackError(f"{folder} is not a weights folder (no {MANIFEST}); make one with `editguard weights "
                              "pack --preset NAME --out DIR` on a machine that reaches the hub")
    doc = json.loads(path.read_text())
    for rel, digest in doc["files"].items():
        f = folder / rel
        if not f.is_file():
            raise WeightPackError(f"{f} is missing from the weights folder; copy the whole folder again, or pack it "
                                  "again")
        if _sha256(f) != digest:
            raise WeightPackError(f"{f} has changed since it was packed (its sha256 is not the one in {path}); copy "
                                  "it again from the packed folder, or pack it again")
    return doc


def use_pack(cfg: ModelConfig, folder: str | Path) -> ModelConfig:
    """``cfg`` with its pretrained towers loading from the verified weights ``folder``, and the hub off for
    this process (``HF_HUB_OFFLINE``). Refuses a folder packed for other towers."""
    folder = Path(folder).resolve()
    doc = verify(folder)
    image, text = cfg.image_encoder, cfg.text_encoder
    if image.pretrained and not image.weights:
        entry = doc.get("image_encoder")
        if not entry or entry["name"] != image.name:
            raise WeightPackError(f"{folder} was packed for preset {doc['preset']!r} (image tower "
                                  f"{(entry or {}).get('name')!r}), not for {image.name!r}")
        image = dataclasses.replace(image, weights=str(folder / entry["file"]))
    if text.name and text.pretrained and not text.name.startswith("pkg:"):
        entry = doc.get("text_encoder")
        if not entry or entry["name"] != text.name:
            raise WeightPackError(f"{folder} was packed for preset {doc['preset']!r} (prompt tower "
                                  f"{(entry or {}).get('name')!r}), not for {text.name!r}")
        text = dataclasses.replace(text, name=str(folder / entry["dir"]))
    os.environ["HF_HUB_OFFLINE"] = "1"  # from this folder and nowhere else
    return dataclasses.replace(cfg, image_encoder=image, text_encoder=text)
