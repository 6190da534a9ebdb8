"""The model dir: the output of ``train``, the input of ``export`` and ``evaluate``.

Self-contained and loadable offline, with no pickles::

    config.json            ModelConfig (architecture, preprocessing, labels)
    labels.json            the taxonomy
    model.safetensors      all weights
    tokenizer/             HF fast tokenizer (tokenizer.json, tokenizer_config.json, ...), lexicon.json, words.json
    text_encoder/          HF config of the text tower, to rebuild it without the hub
    metrics.json           validation metrics of the saved weights
    examples.safetensors   a few preprocessed validation triples (export parity checks)
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from ..files import atomic_path, replace_dir, write_json_atomic
from .config import ModelConfig, preset_config
from .preprocess import Preprocessor
from .taxonomy import Taxonomy, default_taxonomy, load_taxonomy

_logger = logging.getLogger(__name__)

__all__ = ["create_model", "save_model_dir", "load_model_dir", "check_model_dir", "GROWN"]

GROWN = "grown_from.json"  # in a model grown by `train --from`: the parent, its labels, and what trained
REQUIRED = ("config.json", "labels.json", "model.safetensors", "tokenizer/tokenizer.json")


def create_model(
    cfg: ModelConfig | str,
    workdir: str | Path,
    *,
    prompts: list[str] = (),
    taxonomy: Taxonomy | None = None,
    reuse_tokenizer: bool = False,
):
    """Create a new model and its preprocessing: ``(net, preprocessor)``.

    ``cfg`` is a :class:`ModelConfig` or a preset name. The tokenizer is
    written to ``workdir/tokenizer`` (or read from there with
    ``reuse_tokenizer``), trained on ``prompts`` for the tiny text
    tower, else from the hub or a local dir). Pretrained towers load through
    ``timm.create_model`` and ``from_pretrained``; when their files can't be had (no hub, nothing
    local), :class:`~editguard.model.weight_pack.WeightsUnavailableError` says which and what to do.
    """
    from .network import build_network
    from .preprocess import load_tokenizer
    from .tokenizer import build_tokenizer

    cfg = preset_config(cfg) if isinstance(cfg, str) else cfg
    taxonomy = taxonomy or default_taxonomy()
    if cfg.labels and cfg.labels != taxonomy.names:
        raise ValueError(f"config labels {cfg.labels} differ from the taxonomy's {taxonomy.names}")
    cfg.labels = taxonomy.names
    # a pre-check judges the request alone: a harm it states anywhere counts, whatever the category
    cfg.window_min = taxonomy.window_min if cfg.use_output_image else []
    tok_dir = Path(workdir) / "tokenizer"
    try:
        if reuse_tokenizer and (tok_dir / "tokenizer.json").exists():  # e.g. DDP ranks > 0
            vocab = load_tokenizer(tok_dir, cfg.preprocess.max_tokens).get_vocab_size(with_added_tokens=True)
        else:
            vocab = build_tokenizer(cfg.text_encoder, prompts, tok_dir)
        net = build_network(cfg, vocab_size=vocab)
        if cfg.use_input_image or cfg.use_output_image:  # a new model normalises as its image tower was trained to
            mean, std = net.image.input_contract()
            cfg.preprocess = dataclasses.replace(cfg.preprocess, mean=mean, std=std)
            net.image.set_normalization(mean, std)
    except OSError as e:  # the hub's and timm's "can't download" errors (offline, unreachable, not cached)
        from .weight_pack import hub_files, unavailable

        if hub_files(cfg):
            raise unavailable(cfg, e) from e
        raise
    return net, Preprocessor.load(cfg.preprocess, tok_dir)


def save_model_dir(
    net,
    out: str | Path,
    *,
    tokenizer_dir: str | Path,
    taxonomy: Taxonomy,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a complete model dir. Each file is replaced atomically."""
    from safetensors.torch import save_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", net.cfg.to_dict())
    write_json_atomic(out / "labels.json", taxonomy.to_dict())
    with atomic_path(out / "model.safetensors") as tmp:
        save_model(net, str(tmp), metadata={"format": "pt", "editguard": "1"}, force_contiguous=True)
    if Path(tokenizer_dir).resolve() != (out / "tokenizer").resolve():
        replace_dir(tokenizer_dir, out / "tokenizer")
    if net.cfg.use_prompt:
        text_dir = out / "text_encoder"
        text_dir.mkdir(exist_ok=True)
        write_json_atomic(text_dir / "config.json", net.text.encoder.config.to_dict())
    if metrics is not None:
        write_json_atomic(out / "metrics.json", metrics)
    return out


def check_model_dir(path: str | Path) -> Path:
    """Raise a clear FileNotFoundError when ``path`` is not a complete model dir."""
    path = Path(path)
    missing = [f for f in REQUIRED if not (path / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not an editguard model dir (missing {', '.join(missing)}); "
            "create one with `editguard train --out DIR`"
        )
    return path


def load_model_dir(path: str | Path, device: str = "cpu"):
    """Load ``(net, preprocessor)`` from a model dir, offline; the net is in eval mode."""
    from safetensors.torch import load_model
    from transformers import AutoConfig

    from .network import build_network

    path = check_model_dir(path)
    cfg = ModelConfig.load(path / "config.json")
    taxonomy = load_taxonomy(path / "labels.json")
    if taxonomy.names != cfg.labels:
        raise ValueError(f"{path}: labels.json {taxonomy.names} disagrees with config.json {cfg.labels}")
    # architecture only: weights come from model.safetensors, never from the hub
    build_cfg = dataclasses.replace(cfg, image_encoder=dataclasses.replace(cfg.image_encoder, pretrained=False))
    text_cfg = AutoConfig.from_pretrained(str(path / "text_encoder")) if cfg.use_prompt else None
    net = build_network(build_cfg, text_hf_config=text_cfg)
    net.cfg = cfg
    missing, unexpected = load_model(net, str(path / "model.safetensors"), strict=True, device=device)
    net.to(device).eval()
    return net, Preprocessor.from_dir(path)
