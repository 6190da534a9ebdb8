"""Prompt tokenizers: a pretrained HF tokenizer, or a WordPiece trained on the training prompts.

Either way the result is saved as a Hugging Face fast tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``) in the model dir, which
:func:`editguard.model.preprocess.load_tokenizer` reads with ``tokenizers``
alone.
"""

from __future__ import annotations

import string
from pathlib import Path
from typing import Iterable

from .config import TextEncoderConfig

__all__ = ["build_tokenizer"]

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tokenizer(cfg: TextEncoderConfig, prompts: Iterable[str], out_dir: str | Path) -> int:
    """Write the tokenizer for ``cfg`` to ``out_dir``; returns its vocab size.

    With ``cfg.name`` set, the tokenizer comes from the hub or a local dir via
    ``AutoTokenizer.from_pretrained``. Without it, a lower-cased WordPiece of
    ``cfg.vocab_size`` is trained on ``prompts``; every printable ASCII
    character is in its alphabet, so unseen and obfuscated words ("cl0thes")
    split into pieces rather than becoming ``[UNK]``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    if cfg.name is not None:
        tok = AutoTokenizer.from_pretrained(cfg.name, use_fast=True)
        if not tok.is_fast:
            raise ValueError(f"{cfg.name}: editguard needs a fast tokenizer (tokenizer.json)")
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=_train_wordpiece(list(prompts), cfg.vocab_size),
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    tok.save_pretrained(str(out_dir))
    return len(tok)


def _train_wordpiece(prompts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if not prompts:
        raise ValueError("training a tokenizer needs at least one prompt")
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=list(string.ascii_lowercase + string.digits + string.punctuation),
        show_progress=False,
    )
    tok.train_from_iterator(prompts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    return tok
