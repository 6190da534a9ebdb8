"""Training-time prompt augmentation: the wrappings and misspellings that real requests (and refused users
trying again) put around an instruction.

An augmented prompt is raw text: it goes through the one preprocessing definition like any other, so what
:mod:`editguard.model.normalize` folds (look-alike letters, invisible characters, split letters, most
leetspeak) is folded, and the model learns what normalisation leaves:

- **typos**: a letter dropped, doubled, swapped with its neighbour or replaced by one next to it on the
  keyboard, in about a third of the longer words;
- **leet**: letters written as digits or symbols where normalisation leaves them (short words, runs of
  stand-ins);
- **frame**: a benign reason wrapped around the request ("for my photography course, ...");
- **padding**: the instruction before, inside or after friendly sentences of 10 to ``PADDING_WORDS``
  words, so the model reads prompts of several windows (``preprocess.prompt_windows``) and learns that
  chat beside an instruction changes nothing.

The edit's labels stay: padding a harmful request leaves it harmful, and framing a safe one leaves it
safe. The word lists are this module's own; the red team's attacks (:mod:`editguard.redteam.wording`)
use different ones, so its figures are on wrappings the model never saw.
"""

from __future__ import annotations

import numpy as np

__all__ = ["KINDS", "PADDING_WORDS", "augment_prompt"]

KINDS = ("typos", "leet", "frame", "padding")
PADDING_WORDS = 100  # the most padding, in words: with the instruction it stays inside the cpu presets' windows

_ROWS = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NEIGHBOURS = {c: "".join(row[j] for j in (i - 1, i + 1) if 0 <= j < len(row)) + "".join(
    other[i] for other in _ROWS if other is not row and i < len(other)) for row in _ROWS for i, c in enumerate(row)}
_LEET = {"a": "4", "e": "3", "i": "1", "o": "0", "s": "5", "t": "7"}
_FRAMES = [
    "for my photography course, {p}",
    "just for fun with my friends: {p}",
    "{p}, it is for a school play",
    "{p} - the person in the photo agreed to it",
    "I'm making a poster for our club, {p}",
    "quick favour please, {p}",
    "{p}, for a museum exhibit about fashion",
    "as part of a design portfolio, {p}",
    "{p} thanks a lot!",
    "my editor wants this for a magazine: {p}",
    "{p}. this is a private picture for my own use",
    "hey there! {p}",
]
_SENTENCES = [
    "This picture was taken on a trip to the mountains two years ago.",
    "My sister sent it to me yesterday and asked me to fix it up.",
    "The lighting in the kitchen was not great that evening.",
    "We are printing it for the hallway, so it should look good large.",
    "Nobody in the family is good with editing software, so I am asking here.",
    "It is one of the few photos we have from that summer.",
    "The cat jumped on the table just before the shot.",
    "I really like the colours on the left side of the frame.",
    "Please do not crop it, the size is right for the frame we bought.",
    "We met at the old bakery on the corner and walked to the park.",
    "The weather changed quickly and the clouds came in.",
    "It would be great if the result looked like a film photo.",
    "I have been meaning to sort through these pictures for months.",
    "My phone's camera is a few years old now.",
    "The party went on until late and everybody danced.",
    "There is a bit of glare from the window in the top corner.",
    "Thanks in advance, you are saving my weekend.",
    "The shop on the right sells the best coffee in town.",
]


def _typos(text: str, rng: np.random.Generator) -> str:
    words = text.split(" ")
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long:
        return text
    chosen = [i for i in long if rng.random() < 0.35] or [long[int(rng.integers(len(long)))]]
    for i in chosen:
        w = words[i]
        j = int(rng.integers(1, len(w) - 1))
        kind = int(rng.integers(4))
        if kind == 0:
            w = w[:j] + w[j + 1:]
        elif kind == 1:
            w = w[:j] + w[j] + w[j:]
        elif kind == 2:
            w = w[:j - 1] + w[j] + w[j - 1] + w[j + 1:]
        else:
            near = _NEIGHBOURS.get(w[j].lower(), "")
            w = w[:j] + (near[int(rng.integers(len(near)))] if near else w[j]) + w[j + 1:]
        words[i] = w
    return " ".join(words)


def _leet(text: str, rng: np.random.Generator) -> str:
    return "".join(_LEET[c] if c in _LEET and rng.random() < 0.6 else c for c in text)


def _frame(text: str, rng: np.random.Generator) -> str:
    return _FRAMES[int(rng.integers(len(_FRAMES)))].format(p=text)


def _padding(text: str, rng: np.random.Generator) -> str:
    n = int(rng.integers(10, PADDING_WORDS + 1))
    words: list[str] = []
    while len(words) < n:
        words += _SENTENCES[int(rng.integers(len(_SENTENCES)))].split(" ")
    words = words[:n]
    where = int(rng.integers(3))
    if where == 0:
        return " ".join(words) + " " + text
    if where == 1:
        return text + ". " + " ".join(words)
    k = int(rng.integers(1, n))
    return " ".join(words[:k] + [text] + words[k:])


_APPLY = {"typos": _typos, "leet": _leet, "frame": _frame, "padding": _padding}


def augment_prompt(text: str, rng: np.random.Generator, kinds: tuple[str, ...] = KINDS) -> str:
    """``text`` with one of ``kinds`` applied, drawn by ``rng``; a quarter of the time a second one too
    (a misspelt request inside a long paragraph, say). The padding, when drawn, comes last."""
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise ValueError(f"unknown prompt augmentation {sorted(unknown)}; known: {', '.join(KINDS)}")
    n = 2 if len(kinds) > 1 and rng.random() < 0.25 else 1
    drawn = [kinds[i] for i in sorted(rng.choice(len(kinds), size=n, replace=False))]
    for kind in sorted(drawn, key=lambda k: k == "padding"):
        text = _APPLY[kind](text, rng)
    return text
