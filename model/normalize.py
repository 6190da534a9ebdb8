"""Prompt normalisation: the spellings an attacker uses to slip a request past a text model, folded back.

Part of the one preprocessing definition (:meth:`editguard.model.preprocess.Preprocessor.prompt_text`
calls :func:`normalize_prompt` when ``preprocess.normalize_prompt`` is on), so training, the exported
model's parity check, the served model and the pixels path all read the same text.

In order:

1. **Unicode compatibility forms** (NFKC): full-width letters, ligatures, mathematical alphanumerics
   (``𝐫𝐞𝐦𝐨𝐯𝐞``), superscripts and circled letters become plain letters.
2. **Invisible characters** go: format characters (zero-width space and joiners, the word joiner,
   soft hyphens, bidirectional controls, tag characters), variation selectors, fillers that render
   as blank (Hangul fillers, the braille blank), and combining marks stacked on a Latin letter
   ("Zalgo" text). Other whitespace becomes a plain space.
3. **Look-alike letters** (Cyrillic and Greek letters drawn like Latin ones) fold to Latin inside a
   word whose every non-Latin letter is such a look-alike (``rеmоvе`` with Cyrillic е and о). A
   word with letters of its own script (Russian ``одежда``) is left as it is.
4. **Letters split apart** by spaces, dots, dashes, stars and the like (``r e m o v e``,
   ``n.u.d.e``) are joined again when three or more single letters run in a row.
5. **Leetspeak inside words**: a digit or symbol standing for a letter (``cl0thes``, ``n4k3d``,
   ``$exy``, ``b00bs``) becomes that letter when the word has at least two real letters, at least
   half as many letters as stand-ins, and the stand-in touches a letter or another stand-in. Numbers, sizes and codes
   (``4k``, ``1080p``, ``h264``, ``2024``) have fewer letters and stay as they are.

Paraphrases are not undone here; the prompt tower and the training-time obfuscations
(``training.augment``) are what meet those. Misspellings are undone by :class:`Speller`, which needs
the model's words (its tokenizer's vocabulary and its training prompts) and so runs after this, in
:meth:`~editguard.model.preprocess.Preprocessor.prompt_text`, where ``preprocess.spelling`` is on.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

__all__ = ["normalize_prompt", "CONFUSABLES", "LEET", "Speller", "LEXICON_FILE"]

LEXICON_FILE = "lexicon.json"  # in a model dir's tokenizer/: the training prompts' words and their counts

# Cyrillic and Greek letters drawn like a Latin letter (lower and upper case), after NFKC
CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ɡ": "g", "ь": "b", "ӏ": "l", "ո": "n", "ս": "u",
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ї": "I", "Ј": "J", "Һ": "H", "Ԁ": "D", "Ԛ": "Q",
    "Ԝ": "W", "Ӏ": "I",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "γ": "y", "η": "n", "ω": "w",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}

# digits and symbols written for letters
LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s",
        "!": "i", "|": "l", "€": "e", "£": "l", "+": "t"}

# characters that render as nothing (beyond category Cf, removed wholesale)
_BLANKS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e", "\u034f"}
# three or more single letters with the same separator between each (the run ends where it changes)
_SPLIT = re.compile(r"(?<![^\W_])([^\W\d_])([ .\-_*·•,/|~+'\"]{1,3})([^\W\d_])((?:\2[^\W\d_])+)(?![^\W_])")
_WORD = re.compile(r"[^\s]+")


def normalize_prompt(text: str) -> str:
    """``text`` with its obfuscations undone (the module docstring lists them); plain prompts come back
    unchanged, apart from NFKC and whitespace."""
    text = unicodedata.normalize("NFKC", text)
    text = _drop_invisible(text)
    text = _SPLIT.sub(lambda m: m.group(1) + m.group(3) + m.group(4).replace(m.group(2), ""), text)
    return _WORD.sub(lambda m: _leet(_fold(m.group(0))), text)


def _drop_invisible(text: str) -> str:
    out: list[str] = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cf" or ch in _BLANKS or 0xFE00 <= ord(ch) <= 0xFE0F or 0xE0100 <= ord(ch) <= 0xE01EF:
            continue
        if cat in ("Mn", "Me") and out and out[-1].isascii() and out[-1].isalpha():
            continue  # a combining mark stacked on a Latin letter
        if cat in ("Mn", "Me") and out and out[-1] in CONFUSABLES:
            continue
        out.append(" " if ch.isspace() else ch)
    return "".join(out)


def _fold(word: str) -> str:
    """Cyrillic/Greek look-alikes to Latin, when every non-ASCII letter of ``word`` is one."""
    foreign = [c for c in word if c.isalpha() and not c.isascii()]
    if not foreign or not all(c in CONFUSABLES for c in foreign):
        return word
    return "".join(CONFUSABLES.get(c, c) for c in word)


def _leet(word: str) -> str:
    """Digits and symbols inside ``word`` read as the letters they stand for (see the module docstring)."""
    core = word.strip(".,;:?!\"'()[]{}")
    if not core:
        return word
    letters = sum(c.isalpha() for c in core)
    stand_ins = [i for i, c in enumerate(core) if c in LEET]
    if not stand_ins or letters < 2 or len(stand_ins) > 2 * letters:
        return word
    if any(not (c.isalpha() or c in LEET or c in "-'") for c in core):
        return word  # a code, a path or a number with units: not a spelled word
    chars = list(core)
    last = len(core) - 1
    for i in stand_ins:
        left = i > 0 and (core[i - 1].isalpha() or core[i - 1] in LEET)
        right = i < last and (core[i + 1].isalpha() or core[i + 1] in LEET)
        if (left and right) or (i == 0 and right and core[1].isalpha()) or \
                (i == last and core[i].isdigit() and core[i - 1].isalpha()):
            chars[i] = LEET[core[i]]
    start = word.index(core)
    return word[:start] + "".join(chars) + word[start + len(core):]


_LETTERS = re.compile(r"(?<!\w)[A-Za-z]+(?!\w)")  # a whole word of Latin letters alone
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"


class Speller:
    """Typos undone: a word the model does not know, one edit (a letter dropped, added, replaced, or two
    swapped) from one it does, becomes that word.

    The known words are the training prompts' (the lexicon, ``tokenizer/lexicon.json``, written with the
    tokenizer) and the tokenizer's whole-word vocabulary. Of several candidates, the lexicon's most
    frequent wins, then the vocabulary's first (a WordPiece vocabulary lists common words first). Words of
    under ``min_len`` letters, words with digits or non-Latin letters, and words the model knows stay as
    they are, so a typo the training prompts themselves contain is read as the model learned it.
    """

    def __init__(self, lexicon: dict[str, int], vocab: Iterable[str] = (), min_len: int = 4):
        self.min_len = min_len
        self.rank: dict[str, tuple[int, int]] = {}
        for i, w in enumerate(vocab):
            if len(w) >= 3 and w.isascii() and w.isalpha() and w.islower():
                self.rank.setdefault(w, (0, i))
        for w, n in lexicon.items():
            self.rank[w] = (-n, 0)

    @classmethod
    def build_lexicon(cls, prompts: Iterable[str], min_count: int = 2) -> dict[str, int]:
        """The words (3+ Latin letters, lower-cased, after :func:`normalize_prompt`) seen at least
        ``min_count`` times in ``prompts``."""
        counts = Counter(w.lower() for p in prompts for w in _LETTERS.findall(normalize_prompt(p)) if len(w) >= 3)
        return {w: n for w, n in sorted(counts.items()) if n >= min_count}

    @classmethod
    def load(cls, tokenizer_dir: str | Path, tokenizer) -> "Speller":
        """The speller of a model dir's tokenizer: its lexicon file where there is one, and ``tokenizer``'s
        vocabulary in id order."""
        path = Path(tokenizer_dir) / LEXICON_FILE
        lexicon = json.loads(path.read_text()) if path.exists() else {}
        vocab = tokenizer.get_vocab()
        return cls(lexicon, sorted(vocab, key=vocab.get))

    def correct(self, text: str) -> str:
        return _LETTERS.sub(lambda m: self._word(m.group(0)), text)

    def _word(self, word: str) -> str:
        low = word.lower()
        if len(low) < self.min_len or low in self.rank:
            return word
        cands = [c for c in _edits(low) if c in self.rank]
        if not cands:
            return word
        best = min(cands, key=lambda c: (self.rank[c], c))
        if word.isupper():
            return best.upper()
        return best.capitalize() if word[0].isupper() else best


def _edits(w: str) -> set[str]:
    """Every string one edit from ``w``: a letter deleted, two neighbours swapped, one replaced or inserted."""
    out: set[str] = set()
    for i in range(len(w) + 1):
        a, b = w[:i], w[i:]
        if b:
            out.add(a + b[1:])
            out.update(a + c + b[1:] for c in _ALPHABET)
        if len(b) > 1:
            out.add(a + b[1] + b[0] + b[2:])
        out.update(a + c + b for c in _ALPHABET)
    out.discard(w)
    return out
