"""The one definition of preprocessing: decode, resize, tokenize.

Training, export parity checks, the Triton preprocess step and the tests all
call this module; nothing else turns bytes into tensors. It needs only numpy,
Pillow and ``tokenizers`` (no torch), so the Triton Python backend can run it.

What the network receives (the ONNX inputs):

- images: ``uint8 [S, S, 3]`` RGB, letterboxed (or stretched) to ``S =
  image_size``; normalisation happens inside the network;
- mask: ``uint8 [S, S]``, 0 = unchanged, 255 = edited, resized the same way;
  a missing mask is all 255 ("anything may have changed"), and so is one the pixels contradict
  (:meth:`Preprocessor.honest_mask`);
- prompt: ``int64 [W, T]`` token ids and attention mask: the prompt (normalised, see
  :mod:`editguard.model.normalize`) in up to ``prompt_windows`` overlapping windows of ``T = max_tokens``
  tokens, each starting half a window after the last, then, from window ``prompt_windows`` on, each of
  its clauses alone (:func:`clauses`, up to ``clause_windows``); ``W = prompt_windows +
  clause_windows``, and the windows a prompt does not fill are all padding (attention 0). A prompt
  that needs more than ``prompt_windows`` windows is refused, never cut. An edit session's cumulative
  prompt (:mod:`editguard.model.session`: the turn prompts joined) is read turn by turn where
  ``session_turns`` is on: each turn's windows and clauses as that prompt alone gives them.

Decisions on odd inputs (documented in the README): animated images use their
first frame; EXIF orientation is honoured; alpha is composited onto black;
16-bit, CMYK, palette and grayscale images are converted to 8-bit RGB; a mask
must have the same size as the input image.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import ModelConfig, PreprocessConfig
from .normalize import Speller, normalize_prompt

__all__ = ["PreprocessError", "Preprocessor", "ImageSource", "DecodedImages"]

ImageSource = Union[bytes, bytearray, memoryview, str, Path, Image.Image, np.ndarray]


class PreprocessError(ValueError):
    """An input that can't be turned into tensors. ``field`` names the input; ``kind`` is the reason's
    class, for counting (the served model's ``editguard_rejected_total{reason=...}``): ``decode``,
    ``too_large``, ``bad_mask``, ``bad_prompt``, or the serving checks' ``bad_request``,
    ``bad_pixels`` and ``spec_mismatch``."""

    def __init__(self, field: str, message: str, kind: str = "decode"):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message
        self.kind = kind


@dataclass
class Preprocessor:
    """Turns raw triples into the network's input arrays.

    Build it with :meth:`from_dir` (a model dir or a Triton preprocess
    version dir: ``config.json`` plus ``tokenizer/tokenizer.json``).
    """

    cfg: PreprocessConfig
    tokenizer: "object"  # a tokenizers.Tokenizer with truncation and padding set
    speller: Speller | None = None  # typos undone (with preprocess.spelling); built by load()
    images: "DecodedImages | None" = None  # encoded images already decoded, by content (a server sets one)

    @classmethod
    def from_dir(cls, path: str | Path) -> "Preprocessor":
        path = Path(path)
        return cls.load(ModelConfig.load(path / "config.json").preprocess, path / "tokenizer")

    @classmethod
    def load(cls, cfg: PreprocessConfig, tokenizer_dir: str | Path) -> "Preprocessor":
        """The preprocessor of ``cfg`` with the tokenizer (and its lexicon) in ``tokenizer_dir``."""
        tok = load_tokenizer(tokenizer_dir, cfg.max_tokens)
        return cls(cfg, tok, Speller.load(tokenizer_dir, tok) if cfg.spelling else None)

    # -- images ---------------------------------------------------------------
    def decode(self, data: ImageSource, field: str = "image") -> Image.Image:
        """Decode encoded bytes (or a path, PIL image, uint8 array) to an RGB PIL image."""
        return _to_rgb(self._load(data, field), field)

    def _load(self, data: ImageSource, field: str) -> Image.Image:
        # (masks are never drafted: a mask must keep the input image's exact size)
        if isinstance(data, Image.Image):
            img = data
        elif isinstance(data, np.ndarray):
            img = _from_array(data, field)
        else:
            if isinstance(data, (str, Path)):
                try:
                    data = Path(data).read_bytes()
                except OSError as e:
                    raise PreprocessError(field, f"can't read image file: {e}") from e
            data = bytes(data)
            if not data:
                raise PreprocessError(field, "empty image (0 bytes)")
            if len(data) > self.cfg.max_image_bytes:
                raise PreprocessError(
                    field, f"encoded image is {len(data)} bytes, over the limit of {self.cfg.max_image_bytes}",
                    "too_large")
            img = self._open(data, field)
        return img

    def header(self, data: bytes, field: str) -> Image.Image:
        """Open encoded bytes lazily (nothing decoded yet) and refuse what the limits refuse: a
        format Pillow can't identify, too many pixels, a decompression bomb."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise PreprocessError(field, f"image declares too many pixels, over the limit of {self.cfg.max_pixels} "
                                  f"(a decompression bomb?): {e}", "too_large") from e
        except UnidentifiedImageError as e:
            raise PreprocessError(field, f"not a decodable image ({type(e).__name__}: {e})") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:  # a corrupt header
            raise PreprocessError(field, f"corrupt or truncated image ({e})") from e
        w, h = img.size
        if w * h > self.cfg.max_pixels:
            raise PreprocessError(
                field, f"image is {w}x{h} = {w * h} pixels, over the limit of {self.cfg.max_pixels}", "too_large")
        if w < 1 or h < 1:
            raise PreprocessError(field, f"image has no pixels ({w}x{h})")
        return img

    def _open(self, data: bytes, field: str) -> Image.Image:
        img = self.header(data, field)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)  # animated GIF/WebP/APNG: the first frame
                full = img.size
                if self.cfg.jpeg_draft and img.format == "JPEG" and field != "mask":
                    s = self.cfg.image_size  # both sides stay >= s, so any EXIF rotation still has enough pixels
                    img.draft("RGB", (s, s))
                img.load()
                loaded = img.size
                img = ImageOps.exif_transpose(img)
                if img.size != loaded:  # rotated by its EXIF orientation
                    full = (full[1], full[0])
                img.info["source_size"] = full  # before any draft: what a mask must match
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise PreprocessError(field, f"image declares too many pixels, over the limit of {self.cfg.max_pixels} "
                                  f"(a decompression bomb?): {e}", "too_large") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or corrupt data
            raise PreprocessError(field, f"corrupt or truncated image ({e})") from e
        if img.width < 1 or img.height < 1:
            raise PreprocessError(field, f"image has no pixels ({img.width}x{img.height})")
        return img

    def image(self, data: ImageSource, field: str = "image") -> np.ndarray:
        """Decode and resize one image: ``uint8 [S, S, 3]``."""
        return self.resize(self.decode(data, field), Image.BILINEAR)

    def mask(self, data: ImageSource | None, image_size: tuple[int, int], field: str = "mask") -> np.ndarray:
        """Decode and resize a mask (``uint8 [S, S]``); None means the whole image may have changed."""
        s = self.cfg.image_size
        if data is None:
            return np.full((s, s), 255, np.uint8)
        img = self._load(data, field)
        if img.mode != "L":  # a grayscale mask is used as it is (RGB and back would give the same values)
            img = _to_rgb(img, field)
        if img.size != tuple(image_size):
            raise PreprocessError(
                field,
                f"mask is {img.width}x{img.height} but the input image is {image_size[0]}x{image_size[1]}; "
                "send the mask at the input image's size",
                "bad_mask",
            )
        return self.resize(img.convert("L"), Image.NEAREST)

    def placement(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Where an image of ``width`` x ``height`` lands in the ``S x S`` network input: ``(w, h, left,
        top)``, the resized size and its offset (letterbox: aspect kept, centred on the pad value;
        stretch: the whole square). The one geometry every resize path uses."""
        s = self.cfg.image_size
        if self.cfg.resize == "stretch":
            return s, s, 0, 0
        scale = s / max(width, height)
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        return w, h, (s - w) // 2, (s - h) // 2

    def resize(self, img: Image.Image, resample: int) -> np.ndarray:
        s = self.cfg.image_size
        w, h, left, top = self.placement(img.width, img.height)
        resized = img.resize((w, h), resample, reducing_gap=self.cfg.reducing_gap)
        if (w, h) == (s, s):
            return np.asarray(resized, dtype=np.uint8)
        canvas = Image.new(img.mode, (s, s), self.cfg.pad_value if img.mode != "RGB" else (self.cfg.pad_value,) * 3)
        canvas.paste(resized, (left, top))
        return np.asarray(canvas, dtype=np.uint8)

    # -- prompts ----------------------------------------------------------------
    def prompt_text(self, prompt: str | bytes, field: str = "prompt") -> str:
        """Validate and clean one prompt: UTF-8, no NULs or control characters, at most ``max_prompt_chars``
        characters (a longer one is refused), its obfuscations folded when ``normalize_prompt`` is on and its
        typos undone when ``spelling`` is."""
        prompt = self._checked_text(prompt, field)
        if self.cfg.normalize_prompt:
            prompt = normalize_prompt(prompt)
        if self.speller is not None:
            prompt = self.speller.correct(prompt)
        return "".join(ch if ch.isprintable() or ch in " \t\n" else " " for ch in prompt)

    def _checked_text(self, prompt: str | bytes, field: str) -> str:
        """``prompt`` as text, checked: UTF-8, and at most ``max_prompt_chars`` characters."""
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            try:
                prompt = bytes(prompt).decode("utf-8")
            except UnicodeDecodeError as e:
                raise PreprocessError(field, f"prompt is not valid UTF-8 ({e})", "bad_prompt") from e
        if not isinstance(prompt, str):
            raise PreprocessError(field, f"prompt must be text, got {type(prompt).__name__}", "bad_prompt")
        if len(prompt) > self.cfg.max_prompt_chars:
            raise PreprocessError(field, f"prompt is {len(prompt)} characters, over the limit of "
                                  f"{self.cfg.max_prompt_chars}; shorten it", "bad_prompt")
        return prompt

    @property
    def prompt_token_limit(self) -> int:
        """The most prompt tokens (special tokens aside) that ``prompt_windows`` windows cover."""
        post = self.tokenizer.post_processor
        content = self.cfg.max_tokens - (post.num_special_tokens_to_add(False) if post else 0)
        return content + (self.cfg.prompt_windows - 1) * (content - content // 2)

    def tokens(self, prompts: list[str | bytes], cumulative: list[bool] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Tokenize prompts: ``(input_ids, attention_mask)``, both ``int64 [B, windows, max_tokens]``
        (see the module docstring). A prompt longer than the windows cover raises :class:`PreprocessError`.
        ``cumulative[k]``: prompt ``k`` is a session's cumulative prompt, read turn by turn with
        ``preprocess.session_turns`` (:meth:`_turn_windows`)."""
        fields = [f"prompt[{i}]" if len(prompts) > 1 else "prompt" for i in range(len(prompts))]
        turns = cumulative if self.cfg.session_turns and cumulative is not None else [False] * len(prompts)
        ids = np.full((len(prompts), self.cfg.windows, self.cfg.max_tokens), self.tokenizer.padding["pad_id"],
                      np.int64)
        att = np.zeros_like(ids)
        for k, (p, f, by_turn) in enumerate(zip(prompts, fields, turns)):
            windows, clause_windows = self._turn_windows(p, f) if by_turn else self._windows(self.prompt_text(p, f), f)
            for j, win in enumerate(windows):
                ids[k, j], att[k, j] = win.ids, win.attention_mask
            for j, win in enumerate(clause_windows, start=self.cfg.prompt_windows):  # the clauses from index W
                ids[k, j], att[k, j] = win.ids, win.attention_mask
        return ids, att

    def _windows(self, text: str, field: str) -> tuple[list, list]:
        """One cleaned prompt's token windows and its clauses' (each clause's first window)."""
        e = self.tokenizer.encode(text)
        windows = [e, *e.overflowing]
        w, t = self.cfg.prompt_windows, self.cfg.max_tokens
        if len(windows) > w:
            raise PreprocessError(field, f"prompt is longer than the {self.prompt_token_limit} tokens this model "
                                  f"reads ({w} windows of {t}); shorten it", "bad_prompt")
        # the clauses of a prompt already known to fit (so a long run of commas is refused, never split)
        parts = clauses(text, self.cfg.clause_windows)
        return windows, (self.tokenizer.encode_batch(parts) if parts else [])

    def _turn_windows(self, prompt: str | bytes, field: str) -> tuple[list, list]:
        """A session's cumulative prompt (the turn prompts joined by ``PROMPT_SEPARATOR``) read turn by turn: each
        turn's windows and clauses as :meth:`_windows` reads that prompt alone, the turns' windows one after the
        other, then their clauses. Where they do not all fit the window axis, the latest turns that do are kept."""
        from .session import PROMPT_SEPARATOR

        turns = [x for x in self._checked_text(prompt, field).split(PROMPT_SEPARATOR) if x.strip()] or [""]
        windows: list = []
        clause_windows: list = []
        for part in reversed(turns):
            own, cs = self._windows(self.prompt_text(part, field), field)
            if len(windows) + len(own) > self.cfg.prompt_windows:
                break
            windows[:0] = own
            clause_windows[:0] = cs
        return windows, clause_windows[-self.cfg.clause_windows:] if self.cfg.clause_windows else []

    # -- whole triples ----------------------------------------------------------
    def triple(
        self,
        input_image: ImageSource,
        prompt: str | bytes,
        output_image: ImageSource | None,
        mask: ImageSource | None = None,
        cumulative: bool = False,
    ) -> dict[str, np.ndarray]:
        """One triple as unbatched network inputs (see the module docstring). ``output_image`` None:
        a request before generation (the pre-check), without ``output_image``. ``cumulative``: a session's
        cumulative triple (:meth:`tokens`)."""
        ids, att = self.tokens([prompt], [cumulative])
        return {**self.pixels(input_image, output_image, mask), "input_ids": ids[0], "attention_mask": att[0]}

    def pixels(self, input_image: ImageSource, output_image: ImageSource | None,
               mask: ImageSource | None = None) -> dict[str, np.ndarray]:
        """The image half of :meth:`triple` (``input_image``, ``output_image`` unless None, ``mask``):
        what a client on the pixels path computes on its side. Needs no tokenizer."""
        images = {"input_image": input_image}
        if output_image is not None:
            images["output_image"] = output_image
        done = self._images(images) if self.images is None else self.images.lookup(images, self._images)
        out = {f: arr for f, (arr, _) in done.items()}
        out["mask"] = self.mask(mask, done["input_image"][1])
        if output_image is not None:  # the mask rules hold on every decode path
            out["mask"] = self.honest_mask(out["input_image"], out["output_image"], out["mask"])
        return out

    def _images(self, images: dict[str, ImageSource]) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
        """``{field: (uint8 [S, S, 3], source size)}``: each image decoded and resized; the source size (before
        any JPEG draft, after EXIF rotation) is what a mask must match."""
        done = {}
        for field, data in images.items():
            img = self.decode(data, field)
            done[field] = (self.resize(img, Image.BILINEAR), img.info.get("source_size", img.size))
        return done

    # a pixel "changed" when a channel moved by more than this (0-255): over codec and regeneration noise
    CHANGED = 24
    # a mask is contradicted when less than this share of it changed while the images changed elsewhere
    INSIDE_SHARE, OUTSIDE_SHARE = 0.02, 0.01

    def honest_mask(self, input_image: np.ndarray, output_image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``mask`` (``uint8 [S, S]``, network size), or all 255 ("anything may have changed", the handling
        of a missing mask) when the pixels contradict it: under ``INSIDE_SHARE`` of the mask changed while
        over ``OUTSIDE_SHARE`` of the image outside it did (an empty mask, or one placed away from the
        change). With ``preprocess.mask_union`` every pixel that changed by over ``CHANGED`` joins the mask
        (a mask beside the change cannot hide it). Off with ``preprocess.mask_check: false``. The served
        pixels path checks the same."""
        if not self.cfg.mask_check:
            return mask
        changed = np.abs(output_image.astype(np.int16) - input_image.astype(np.int16)).max(-1) > self.CHANGED
        inside = mask > 127
        n_in = int(inside.sum())
        share_in = (changed & inside).sum() / n_in if n_in else 0.0
        if share_in < self.INSIDE_SHARE and (changed & ~inside).sum() > self.OUTSIDE_SHARE * mask.size:
            return np.full_like(mask, 255)
        return np.maximum(mask, changed.astype(np.uint8) * 255) if self.cfg.mask_union else mask


class DecodedImages:
    """An LRU of decoded images keyed by their encoded bytes' content (a BLAKE2b digest), so bytes a server
    already turned into pixels are not decoded again: an edit session's origin and its previous output
    come back on every turn, and a turn's step and cumulative triples share one output. A pure
    memo: a hit returns exactly what decoding the bytes returns, so no verdict depends on what is in it.
    Only encoded bytes are kept (not paths, arrays or PIL images), read-only, and bytes that fail to
    decode are never kept. ``size``: entries kept (each ``3 * S * S`` bytes: 150 KB at 224 px). ``shared``:
    a store the other processes of the server read too (``get(key)``, ``put(key, value)`` on bytes:
    :class:`~editguard.serving.shared_cache.SharedCache`), looked up on a miss here."""

    def __init__(self, size: int, shared=None):
        self.size, self.shared = size, shared
        self._cache: OrderedDict[bytes, tuple[np.ndarray, tuple[int, int]]] = OrderedDict()
        self.hits = self.misses = 0  # hits: here or in the shared store; misses: decoded
        self._lock = threading.Lock()  # (callers may share one between threads)

    def lookup(self, images: dict[str, ImageSource], decode) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
        """What ``decode(images)`` returns (``{field: (pixels, source size)}``), taking what is cached and
        decoding the rest, the same bytes once."""
        keys = {f: b"image:" + hashlib.blake2b(bytes(d), digest_size=16).digest()
                if isinstance(d, (bytes, bytearray, memoryview)) else None for f, d in images.items()}
        done, todo, first = {}, {}, {}
        with self._lock:
            for f, k in keys.items():
                if k is not None and k in self._cache:
                    self._cache.move_to_end(k)
                    done[f] = self._cache[k]
        for f, k in keys.items():
            if f in done:
                continue
            entry = _unpack(self.shared.get(k)) if k is not None and self.shared is not None else None
            if entry is not None:
                done[f] = entry
            elif k is None or k not in first:
                todo[f] = images[f]
                first.setdefault(k, f)
        fresh = decode(todo) if todo else {}  # (outside the lock: other threads decode meanwhile)
        for f, entry in fresh.items():
            entry[0].flags.writeable = False
            if keys[f] is not None and self.shared is not None:
                self.shared.put(keys[f], _pack(entry))
        with self._lock:
            self.misses += len(fresh)
            self.hits += len(images) - len(fresh)
            for f, entry in [*fresh.items(), *done.items()]:
                if keys[f] is not None and self.size:
                    self._cache[keys[f]] = entry
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return {f: done[f] if f in done else fresh[f] if f in fresh else fresh[first[keys[f]]] for f in images}


def _pack(entry: tuple[np.ndarray, tuple[int, int]]) -> bytes:
    arr, (w, h) = entry
    return np.array([w, h, *arr.shape], "<u4").tobytes() + arr.tobytes()


def _unpack(value: bytes | None) -> tuple[np.ndarray, tuple[int, int]] | None:
    if value is None or len(value) < 20:
        return None
    w, h, *shape = np.frombuffer(value[:20], "<u4").tolist()
    arr = np.frombuffer(value[20:], np.uint8)
    return (arr.reshape(shape), (w, h)) if arr.size == int(np.prod(shape)) else None


_CLAUSE_BREAK = re.compile(r"[.!?;:,]+(?=\s|$)|[()\[\]{}\n]|\s[-\u2013\u2014]+\s")


def clauses(text: str, most: int) -> list[str]:
    """``text``'s clauses, for ``preprocess.clause_windows``: split at sentence and clause punctuation
    followed by a space, brackets, line breaks and dashes between spaces; only those with a letter; none for a
    prompt of one clause. Over ``most``, the two adjacent clauses with the fewest words between them are
    joined until ``most`` remain."""
    if most <= 0:
        return []
    parts = [c.strip() for c in _CLAUSE_BREAK.split(text)]
    parts = [c for c in parts if any(ch.isalpha() for ch in c)]
    if len(parts) < 2:
        return []
    while len(parts) > most:
        i = min(range(len(parts) - 1), key=lambda j: len(parts[j].split()) + len(parts[j + 1].split()))
        parts[i:i + 2] = [parts[i] + ", " + parts[i + 1]]
    return parts


def collate(items: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Stack unbatched network inputs into a batch."""
    return {k: np.stack([it[k] for it in items]) for k in items[0]}


def load_tokenizer(path: str | Path, max_tokens: int):
    """Load ``tokenizer.json`` from a tokenizer dir with fixed-length windows (overlapping by half, the
    overflow kept) and padding."""
    from tokenizers import Tokenizer

    path = Path(path)
    tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    pad = _pad_token(path, tok)
    content = max_tokens - (tok.post_processor.num_special_tokens_to_add(False) if tok.post_processor else 0)
    tok.enable_truncation(max_length=max_tokens, stride=max(0, content // 2))  # windows overlap by half
    tok.enable_padding(length=max_tokens, pad_id=tok.token_to_id(pad), pad_token=pad)
    return tok


def _pad_token(path: Path, tok) -> str:
    cfg_file = path / "tokenizer_config.json"
    if cfg_file.exists():
        pad = json.loads(cfg_file.read_text()).get("pad_token")
        if isinstance(pad, dict):
            pad = pad.get("content")
        if pad and tok.token_to_id(pad) is not None:
            return pad
    for cand in ("[PAD]", "<pad>", "<|endoftext|>"):
        if tok.token_to_id(cand) is not None:
            return cand
    raise ValueError(f"{path}: tokenizer has no pad token; set pad_token in tokenizer_config.json")


def _from_array(arr: np.ndarray, field: str) -> Image.Image:
    if arr.dtype != np.uint8:
        raise PreprocessError(field, f"array images must be uint8, got {arr.dtype}")
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
        return Image.fromarray(arr.squeeze(2) if arr.ndim == 3 and arr.shape[2] == 1 else arr)
    raise PreprocessError(field, f"array images must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")


def _to_rgb(img: Image.Image, field: str) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8))
    if img.mode == "F":
        arr = np.nan_to_num(np.asarray(img, dtype=np.float64))
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except (ValueError, OSError) as e:
        raise PreprocessError(field, f"can't convert image mode {img.mode!r} to RGB ({e})") from e
