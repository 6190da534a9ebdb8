"""Prompt tokenizers: a pretrained HF tokenizer, or a WordPiece trained on the training prompts.

Either way the result is saved as a Hugging Face fast tokenizer
(``tokenizer.json`` + ``tokenizer_config.json``) in the model dir, which
:func:`editguard.model.preprocess.load_tokenizer` reads with ``tokenizers``
alone.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Iterable

from .config import TextEncoderConfig, resolve_local
from .normalize import LEXICON_FILE, WORDS_FILE, Speller

__all__ = ["build_tokenizer"]

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_tokenizer(cfg: TextEncoderConfig, prompts: Iterable[str], out_dir: str | Path) -> int:
    """Write the tokenizer for ``cfg`` to ``out_dir``; returns its vocab size.

    With ``cfg.name`` set, the tokenizer comes from the hub or a local dir via
    ``AutoTokenizer.from_pretrained``. Without it, a lower-cased WordPiece of at
    most ``cfg.vocab_size`` tokens is built from ``prompts``; every printable
    ASCII character is in it, so unseen and obfuscated words ("cl0thes") split
    into characters rather than becoming ``[UNK]``.

    Beside it go ``lexicon.json``, the training prompts' words and their counts, and ``words.json``, an
    English word list (:meth:`~editguard.model.normalize.Speller.english`), which
    :class:`~editguard.model.normalize.Speller` corrects typos toward.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    prompts = list(prompts)
    if cfg.name is not None:
        tok = AutoTokenizer.from_pretrained(resolve_local(cfg.name), use_fast=True)
        if not tok.is_fast:
            raise ValueError(f"{cfg.name}: editguard needs a fast tokenizer (tokenizer.json)")
    else:
        tok = PreTrainedTokenizerFast(
            tokenizer_object=_train_wordpiece(prompts, cfg.vocab_size),
            unk_token="[UNK]",
            pad_token="[PAD]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
    tok.save_pretrained(str(out_dir))
    (out_dir / LEXICON_FILE).write_text(json.dumps(Speller.build_lexicon(prompts), indent=0) + "\n")
    (out_dir / WORDS_FILE).write_text(json.dumps(Speller.english()) + "\n")
    return len(tok)


def _train_wordpiece(prompts: list[str], vocab_size: int):
    """A WordPiece tokenizer whose vocabulary is built deterministically from ``prompts``.

    The vocabulary is the special tokens, every character (as a word start and as a ``##``
    continuation), then the most frequent whole words (ties broken alphabetically) up to
    ``vocab_size``. Words not in it split into characters. (The `tokenizers` trainer is not
    used: it breaks ties between merges in no fixed order, so the same prompts could give
    different vocabularies and seeded training runs would differ.)
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    if not prompts:
        raise ValueError("building a tokenizer needs at least one prompt")
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for p in prompts for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(p)))
    chars = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | {c for w in words for c in w})
    vocab = _SPECIALS + chars + [f"##{c}" for c in chars]
    known = set(vocab)
    for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])):
        if len(vocab) >= vocab_size:
            break
        if w not in known:
            vocab.append(w)
            known.add(w)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))]
    )
    tok.decoder = decoders.WordPiece()
    return tok
