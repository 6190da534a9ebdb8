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
   ``n.u.d.e``, ``b_l_0_0_d_y``) are joined again when three or more single letters or stand-ins run
   in a row. Where the separator changes (``c*a*t d-o-g``, ``c*a*t-d-o-g``) a space, or else the first
   separator of the new kind, is the gap between two words (a separator typed twice, ``u.n.v..e.i.l``,
   is the same one; of two spaces, the wider is the gap: ``r e d  c a r``); letters split by spaces alone run
   together (``themlook``), which the :class:`Speller` splits again with the model's words.
5. **Leetspeak inside words**: a digit or symbol standing for a letter (``cl0thes``, ``n4k3d``,
   ``$exy``, ``b00bs``) becomes that letter when the word has at least two real letters, at least
   half as many letters as stand-ins, and the stand-in touches a letter or another stand-in. Numbers,
   sizes and codes (``4k``, ``1080p``, ``5th``, ``h264``, ``2024``) stay as they are.

Paraphrases are not undone here; the prompt tower and the training-time obfuscations
(``training.augment``) are what meet those. Misspellings are undone by :class:`Speller`, which needs
the model's words (its tokenizer's vocabulary and its training prompts) and so runs after this, in
:meth:`~editguard.model.preprocess.Preprocessor.prompt_text`, where ``preprocess.spelling`` is on.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable

__all__ = ["normalize_prompt", "CONFUSABLES", "LEET", "Speller", "LEXICON_FILE", "WORDS_FILE"]

LEXICON_FILE = "lexicon.json"  # in a model dir's tokenizer/: the training prompts' words and their counts
WORDS_FILE = "words.json"  # in a model dir's tokenizer/: English words, the commonest first (Speller.english)

# Cyrillic and Greek letters drawn like a Latin letter (lower and upper case), after NFKC
CONFUSABLES = {
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ї": "i", "ј": "j", "һ": "h", "ԁ": "d", "ԛ": "q",
    "ԝ": "w", "ɡ": "g", "ь": "b", "ӏ": "l", "ո": "n", "ս": "u", "п": "n", "г": "r", "ѵ": "v",
    "А": "A", "В": "B", "Е": "E", "Ё": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
    "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ї": "I", "Ј": "J", "Һ": "H", "Ԁ": "D", "Ԛ": "Q",
    "Ԝ": "W", "Ӏ": "I",
    # Greek
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "γ": "y", "η": "n", "ω": "w", "σ": "o", "ς": "c", "ϲ": "c", "μ": "u", "ϳ": "j",
    "Ϲ": "C", "Ϳ": "J",
    # Latin letters from other blocks (IPA, dotless)
    "ı": "i", "ɩ": "i", "ȷ": "j", "ɑ": "a", "ʋ": "u",
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O",
    "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X",
}

# digits and symbols written for letters
LEET = {"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g", "@": "a", "$": "s",
        "!": "i", "|": "l", "€": "e", "£": "l", "+": "t"}

# characters that render as nothing (beyond category Cf, removed wholesale)
_BLANKS = {"\u115f", "\u1160", "\u3164", "\uffa0", "\u2800", "\u180e", "\u034f"}
# three or more single characters (letters, digits, @ $ ! |) with separators between them
_UNIT = r"(?:[^\W_]|[@$!|])"
_SEP = r"[ .\-_*·•,/~+'\"]{1,3}"
_SPLIT = re.compile(rf"(?<![^\W_@$!|]){_UNIT}(?:{_SEP}{_UNIT}){{2,}}(?![^\W_@$!|])")
_SEPS = re.compile(_SEP)
_WORD = re.compile(r"[^\s]+")
_QUANTITY = re.compile(r"\d+[a-z]{0,2}")  # 100k, 1080p, 5th, 3d


def normalize_prompt(text: str) -> str:
    """``text`` with its obfuscations undone (the module docstring lists them); plain prompts come back
    unchanged, apart from NFKC and whitespace."""
    text = unicodedata.normalize("NFKC", text)
    text = _drop_invisible(text)
    text = _SPLIT.sub(_join, text)
    return _WORD.sub(lambda m: _leet(_fold(m.group(0))), text)


def _join(m: re.Match) -> str:
    """A run of split letters joined, a word where the separator stays the same (typed once or more:
    ``u.n.v..e.i.l``): where it changes, the space (``c*a*t d-o-g``, ``c a t d.o.g``) or else the first
    separator of the new kind (``c*a*t-d-o-g``) is the gap between words. A run of under two letters
    (``1, 2, 3``) stays."""
    run = m.group(0)
    seps = _SEPS.findall(run)
    units = _SEPS.split(run)
    if sum(u.isalpha() for u in units) < 2:
        return run
    # a separator typed twice is the same one (u.n.v..e.i.l); two spaces are still a gap (r e d  c a r)
    kinds = [sep if sep.isspace() else frozenset(sep) for sep in seps]
    gaps = set()
    for k in range(1, len(seps)):
        if kinds[k] != kinds[k - 1] and seps[k].isspace() and seps[k - 1].isspace():
            gaps.add(k if len(seps[k]) > len(seps[k - 1]) else k - 1)  # the wider space is the gap
        elif kinds[k] != kinds[k - 1]:
            gaps.add(k if seps[k].isspace() or not seps[k - 1].isspace() else k - 1)
    words, word = [], units[0]
    for k, unit in enumerate(units[1:]):
        if k in gaps:
            words.append(word)
            word = unit
        else:
            word += unit
    return " ".join(words + [word])


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
    if not stand_ins or letters < 2 or len(stand_ins) > 2 * letters or _QUANTITY.fullmatch(core.lower()):
        return word
    if any(not (c.isalpha() or c in LEET or c in "-'") for c in core):
        return word  # a code, a path or a number with units: not a spelled word
    chars = list(core)
    last = len(core) - 1
    for i in stand_ins:
        left = i > 0 and (core[i - 1].isalpha() or core[i - 1] in LEET)
        right = i < last and (core[i + 1].isalpha() or core[i + 1] in LEET)
        if (left and right) or (i == 0 and right and core[1].isalpha()) or \
                (i == last and (core[i].isdigit() or core[i] == "|") and left):
            chars[i] = LEET[core[i]]
    start = word.index(core)
    return word[:start] + "".join(chars) + word[start + len(core):]


_LETTERS = re.compile(r"(?<!\w)[A-Za-z]+(?!\w)")  # a whole word of Latin letters alone
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
# what a character may stand for inside a word: the leetspeak letters, and "i" and "l" for each other (a
# Greek iota, a palochka, a capital I and a 1 are each read as either)
_READINGS = {**{c: [LEET[c]] for c in LEET}, "1": ["i", "l"], "!": ["i", "l"], "|": ["l", "i"], "i": ["i", "l"],
             "l": ["l", "i"]}
_CHAT = {**_READINGS, "8": ["b", "ate"]}  # ... and, with a word list, an 8 for the sound "ate" (h8, m8)
# a word's letters and stand-ins (apostrophes and hyphens split it)
_PIECE = re.compile(r"(?<!\w)[A-Za-z0-9@$|!+€£]+(?!\w)")
_SHORT = ("a", "i", "an", "as", "at", "be", "by", "do", "go", "he", "if", "in", "is", "it", "me", "my", "no",
          "of", "on", "or", "so", "to", "up", "us", "we")  # the short words a run of split letters may hold
_MOST_READINGS = 64
COMMON = 30_000  # a word list's commonest words: a typo is read as a rarer one only where it is likelier


class Speller:
    """Words read as the model knows them: stand-ins and typos undone with the model's own words.

    The known words are the training prompts' (the lexicon, ``tokenizer/lexicon.json``, written with the
    tokenizer), an English word list (``tokenizer/words.json``, commonest first, written with the tokenizer
    since it was added: :meth:`english`) and the tokenizer's whole-word vocabulary. The word list reads a
    typo of a word that neither the training prompts nor the vocabulary hold (``todler`` toddler, ``whten``
    whiten); a model dir written before it has none and reads prompts as it was trained to. A word the
    model does not know is read as, in order:

    1. a known word that its stand-ins spell (``7h3`` the, ``wal|`` wall, ``g1ow`` glow: a ``1``, ``!``,
       ``|``, ``i`` or ``l`` may be either ``i`` or ``l``, which :func:`normalize_prompt` cannot tell apart);
    2. the article and a known word (``akid``: letters split by spaces, ``a k i d``, joined with the word
       before them);
    3. a known word one edit away (a letter dropped, added, replaced, or two swapped), for words of
       ``min_len`` or more letters; a word of one letter fewer only as a training word a letter was
       dropped from (``bst`` best);
    4. two to four known words run together, for words of 6 or more letters (``themlook``: letters split by
       spaces that :func:`normalize_prompt` joined across a word boundary);
    5. its stand-ins read as their first letters (``70dd|3r`` toddler), when it has at least half as many
       letters as stand-ins.

    Of several candidates, one that keeps the word's first letter wins (typos rarely touch it, bar a swap
    of the first two). Then, without a word list, a training word, then the likelier typo (a letter
    dropped, doubled or two swapped, then one replaced, then one added), then the lexicon's most frequent,
    then the vocabulary's first (a WordPiece vocabulary lists common words first). With a word list, the
    likelier typo of the commoner word: the typo's tier (0, 1, 2 as listed) plus the word's rarity (0 a
    training word, 1 a vocabulary word or one of the list's 30,000 commonest, 2 a rarer one), so ``htat``
    is that (a swap) and not hat (a letter added), and ``mnke`` make and not minke; then the commoner.
    Known words stay as they are, so a typo the training prompts themselves contain is read as the
    model learned it, except that a word only the word list or the vocabulary knows is read as a training
    word its stand-ins may spell (``pis`` pls), and one only the word list knows as a training word two
    swapped letters or one dropped or doubled away (``tael`` teal). Words of non-Latin letters, numbers
    and numbers with units (``100k``, ``5th``) stay as they are.
    """

    def __init__(self, lexicon: dict[str, int], vocab: Iterable[str] = (), min_len: int = 4,
                 words: Iterable[str] = ()):
        self.min_len = min_len
        self.rank: dict[str, tuple[int, int]] = {}
        words = [w for w in words if _plain(w)]
        for i, w in enumerate(words):  # the word list, commonest first, then the vocabulary in id order
            self.rank.setdefault(w, (0, i))
        vocab = [w for w in vocab if _plain(w)]
        for i, w in enumerate(vocab):
            self.rank.setdefault(w, (0, len(words) + i))
        for w, n in lexicon.items():
            self.rank[w] = (-n, 0)
        self.listed_only = set(words).difference(vocab, lexicon)  # words only the word list knows
        self.rare = self.listed_only.difference(words[:COMMON])  # ... and not among its commonest
        # a speller with a word list (a model dir trained since it was added) also reads an 8 as "ate" and ranks
        # the likelier typo above a training word; one without reads prompts as models before it were trained to
        self.listed = bool(words)
        self.readings = _CHAT if self.listed else _READINGS
        # the words a run-together word may split into: the lexicon's, the vocabulary's of 4+ letters, short ones
        self.parts = dict(lexicon) | {w: 0 for w in vocab if len(w) >= 4 and w not in lexicon} | {w: 1 for w in _SHORT}

    @classmethod
    def build_lexicon(cls, prompts: Iterable[str], min_count: int = 2) -> dict[str, int]:
        """The words (3+ Latin letters, lower-cased, after :func:`normalize_prompt`) seen at least
        ``min_count`` times in ``prompts``."""
        counts = Counter(w.lower() for p in prompts for w in _LETTERS.findall(normalize_prompt(p)) if len(w) >= 3)
        return {w: n for w, n in sorted(counts.items()) if n >= min_count}

    @classmethod
    def load(cls, tokenizer_dir: str | Path, tokenizer) -> "Speller":
        """The speller of a model dir's tokenizer: its lexicon and word list files where they are, and
        ``tokenizer``'s vocabulary in id order."""
        path, words = Path(tokenizer_dir) / LEXICON_FILE, Path(tokenizer_dir) / WORDS_FILE
        lexicon = json.loads(path.read_text()) if path.exists() else {}
        vocab = tokenizer.get_vocab()
        return cls(lexicon, sorted(vocab, key=vocab.get), words=json.loads(words.read_text()) if words.exists() else ())

    @staticmethod
    def english(min_count: int = 100) -> list[str]:
        """English words of 3+ letters counted ``min_count`` times or more in pyspellchecker's English
        word-frequency list, commonest first: about 44,000 at the default. ``train``
        writes them to the model dir's ``tokenizer/words.json``, so served models read prompts as the
        model was trained to, with no package to find at serving time."""
        import gzip
        from importlib import resources

        try:
            source = resources.files("spellchecker") / "resources" / "en.json.gz"
        except ModuleNotFoundError as e:
            raise ImportError("the speller's English word list comes from pyspellchecker: "
                              "pip install 'editguard[train]'") from e
        with source.open("rb") as f:
            counts = json.loads(gzip.decompress(f.read()))
        return [w for w, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count and _plain(w)]

    def correct(self, text: str) -> str:
        return _PIECE.sub(lambda m: self._piece(m.group(0)), text)

    def _piece(self, piece: str) -> str:
        word = piece.rstrip("!")  # exclamation marks after a word are punctuation
        return (self._word(word) if word else "") + piece[len(word):]

    def _word(self, word: str) -> str:
        low = word.lower()
        letters = sum(c.isalpha() for c in low)
        if not letters or _QUANTITY.fullmatch(low):
            return word  # a number, or one with its unit (100k, 1080p, 5th)
        word_like = 2 * letters >= len(low) - letters  # at least half as many letters as stand-ins
        if low in self.rank:  # known; a word only the vocabulary knows may stand for one the training prompts use
            if low in self.listed_only:  # ... and one only the word list knows may be a typo of a training word
                best = self._best([c for c in _edits(low) if self.rank.get(c, (0,))[0] and _typo(low, c) == 0
                                   and c[:1] in (low[:1], low[1:2])], [low])
                if best is not None:
                    return best
            if self.rank[low][0] or not any(c in _READINGS for c in low):
                return word
            best = self._best([r for r in _readings(low, self.readings) if self.rank.get(r, (0,))[0]], [low])
            return word if best is None else best
        readings = _readings(low, self.readings)
        best = self._best([r for r in readings if r in self.rank], readings)
        if best is None and low[:1] == "a" and low[1:] in self.rank and low[1:] not in self.listed_only:
            best = "a " + low[1:]  # the article run into its word (letters split by spaces: a k i d)
        if best is None and word_like and len(low) >= self.min_len:
            best = self._best([c for r in readings[:16] for c in _edits(r) if c in self.rank], readings)
        elif best is None and word_like and len(low) == self.min_len - 1:  # only a letter dropped from a word
            best = self._best([c for r in readings[:16] for c in _inserts(r) if self.rank.get(c, (0,))[0] < 0],
                              readings)
        if best is None and len(low) >= 6 and low.isalpha():
            best = self._split(low)
        if best is None and word_like and not low.isalpha() and low[0] != "@":  # (not a handle)
            best = readings[0]  # a word the model has not seen, its stand-ins read as their first letters
        if best is None:
            return word
        if word.isupper() and word.isalpha():
            return best.upper()
        return best.capitalize() if word[0].isupper() else best

    def _best(self, cands: list[str], readings: list[str]) -> str | None:
        if not cands:
            return None
        word = readings[0]
        starts = {r[:1] for r in readings} | {r[1:2] for r in readings}  # a typo may swap the first two letters

        def key(c: str):  # the first letter kept; the likelier typo; a training word; the most frequent
            if self.listed:  # the likelier typo of the commoner word: a typo's tier plus the word's rarity
                rarity = 0 if self.rank[c][0] else 2 if c in self.rare else 1
                return c[:1] not in starts, _typo(word, c) + rarity, rarity, self.rank[c], c
            return c[:1] not in starts, self.rank[c][0] == 0, _typo(word, c), self.rank[c], c
        return min(cands, key=key)

    def _split(self, w: str) -> str | None:
        """``w`` as the fewest known words (2 to 4) run together, the most frequent of equals."""
        best: list[tuple[int, float, list[str]] | None] = [None] * (len(w) + 1)
        best[0] = (0, 0.0, [])
        for end in range(1, len(w) + 1):
            for start in range(max(0, end - 20), end):
                part, prev = w[start:end], best[start]
                if prev is None or part not in self.parts or prev[0] >= 4:
                    continue
                cand = (prev[0] + 1, prev[1] - math.log1p(self.parts[part]), prev[2] + [part])
                if best[end] is None or cand[:2] < best[end][:2]:
                    best[end] = cand
        found = best[len(w)]
        return " ".join(found[2]) if found is not None and found[0] >= 2 else None


def _plain(w: str) -> bool:
    """A lower-case word of 3+ Latin letters: what the speller knows from a vocabulary or a word list."""
    return len(w) >= 3 and w.isascii() and w.isalpha() and w.islower()


def _readings(w: str, readings: dict[str, list[str]] = _READINGS) -> list[str]:
    """The spellings ``w``'s stand-ins may hide, the first reading of each first (at most 64)."""
    out = [""]
    for c in w:
        options = readings.get(c, c)
        out = [o + x for o in out for x in options][:_MOST_READINGS]
    return out


def _typo(typed: str, meant: str) -> int:
    """How unlikely a typo turns ``meant`` into ``typed``: 0 for a letter dropped, doubled, or two swapped
    (the commonest), 1 for a letter replaced, 2 for a letter added."""
    if len(typed) < len(meant) or sorted(typed) == sorted(meant):
        return 0
    if len(typed) > len(meant):
        i = next((i for i, (a, b) in enumerate(zip(typed, meant)) if a != b), len(meant))
        return 0 if i > 0 and typed[i] == typed[i - 1] else 2
    return 1


def _inserts(w: str) -> set[str]:
    """Every string with one more letter than ``w``."""
    return {w[:i] + c + w[i:] for i in range(len(w) + 1) for c in _ALPHABET}


def _edits(w: str) -> set[str]:
    """Every string one edit from ``w``: a letter deleted, two neighbours swapped, one replaced or inserted."""
    out = _inserts(w)
    for i in range(len(w)):
        a, b = w[:i], w[i:]
        out.add(a + b[1:])
        out.update(a + c + b[1:] for c in _ALPHABET)
        if len(b) > 1:
            out.add(a + b[1] + b[0] + b[2:])
    out.discard(w)
    return out
