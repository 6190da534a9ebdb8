"""A served version: one exported version of a client model, as the server runs it.

The repository's layout and names are :mod:`editguard.model.repository`'s. A frozen prompt tower is its
own graph: its embedding depends on the prompt alone. :class:`ServedVersion` runs it behind an LRU of
embeddings by token ids (:class:`PromptEmbeddings`), so a repeated prompt costs a dictionary lookup; the
ensemble graph in Triton caches the same step with Triton's response cache.

:class:`ServedVersion` is the one definition of what the served model does to a triple:
preprocessing (:mod:`editguard.model.preprocess`), the onnxruntime classifier with its checks
(:class:`OnnxClassifier`), and the version's thresholds. The Triton Python model
(``model_repository/editguard/model.py``), the in-process scorer (``editguard score
--repository``), the Ray actors and ``editguard bench`` all run this class, so "the same scores
as served" holds by construction. It needs numpy, Pillow, tokenizers and onnxruntime; no torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

from ..model.config import ModelConfig
from ..model.preprocess import DecodedImages, ImageSource, Preprocessor, collate
from ..model.repository import CLIENT_MODEL, PAIRS, PROBABILITIES, PROMPT_EMBEDDING, PROMPTS, ThresholdsFile, versions

_logger = logging.getLogger(__name__)

__all__ = ["OnnxClassifier", "PromptEmbeddings", "ServedVersion", "IMAGE_CACHE", "PROMPT_CACHE"]

# decoded images a served version keeps (DecodedImages): 256 of them are 38 MB at 224 px; prompt windows'
# embeddings (PromptEmbeddings): 4096 are 6 MB at MiniLM's 384 dims
IMAGE_CACHE, PROMPT_CACHE = 256, 4096


def _image_cache() -> int:
    return int(os.environ.get("EDITGUARD_IMAGE_CACHE", IMAGE_CACHE))


def _prompt_cache(size: int | None = None) -> int:
    return int(os.environ.get("EDITGUARD_PROMPT_CACHE", PROMPT_CACHE if size is None else size))


class OnnxClassifier:
    """``model.onnx`` and ``export.json`` of one classifier version dir, in an onnxruntime session.

    ``threads``: onnxruntime's intra-op threads (0: its default, every core); the environment
    variable ``EDITGUARD_ORT_THREADS`` overrides it. ``cuda_device``: use the CUDA execution
    provider on that device when onnxruntime has it.
    """

    def __init__(self, version_dir: str | Path, threads: int = 0, cuda_device: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("running the exported network needs onnxruntime: pip install 'editguard[serve]'") from e

        version_dir = Path(version_dir)
        self.meta = json.loads((version_dir / "export.json").read_text())
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = int(os.environ.get("EDITGUARD_ORT_THREADS", threads))
        if threads:
            opts.intra_op_num_threads = threads
        providers: list = ["CPUExecutionProvider"]
        if cuda_device is not None and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": cuda_device}))
        self.session = ort.InferenceSession(str(version_dir / "model.onnx"), opts, providers=providers)
        self.inputs = {i.name: i.shape[1:] for i in self.session.get_inputs()}  # per-item shapes
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.vocab_size = int(self.meta["vocab_size"])
        # a prompt tower's graph with a dynamic window axis (``[B, W, T]`` ids): run only the filled windows
        self.windowed = self.outputs == [PROMPT_EMBEDDING] and not isinstance(self.inputs["input_ids"][0], int)

    def check(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The arrays this version takes, checked (shapes, token ids in range); raises ValueError
        naming the input and the problem. Untrusted callers reach the classifier directly."""
        out = {}
        for name, shape in self.inputs.items():
            a = arrays.get(name)
            if a is None:
                raise ValueError(f"input '{name}' is required by this model version")
            if a.ndim != len(shape) + 1 or any(isinstance(d, int) and d != n for d, n in zip(shape, a.shape[1:])):
                raise ValueError(f"input '{name}' has item shape {list(a.shape[1:])}, this model version takes {shape}")
            out[name] = a
        if "input_ids" in out:
            ids = out["input_ids"]
            if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
                bad = int(ids.max() if ids.max() >= self.vocab_size else ids.min())
                raise ValueError(f"input 'input_ids': token id {bad} is out of range [0, {self.vocab_size})")
            att = out["attention_mask"]
            if att.size and not np.isin(att, (0, 1)).all():
                raise ValueError("input 'attention_mask' must hold only 0 and 1")
        sizes = {a.shape[0] for a in out.values()}
        if len(sizes) != 1:
            raise ValueError(f"inputs disagree on the batch size: {sorted(sizes)}")
        return out

    def run(self, batches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Run checked batches as one onnxruntime call; the outputs split back per batch. A windowed prompt
        tower runs only the windows that hold some of a prompt, as one batch of single windows (a short
        prompt costs one window, not ``prompt_windows``); the others are zero rows, as in the graph."""
        feed = {n: np.concatenate([b[n] for b in batches]) if len(batches) > 1 else batches[0][n]
                for n in self.inputs}
        used = feed["attention_mask"][:, :, 0] > 0 if self.windowed else None
        if used is not None and used.any():  # (a caller's batch of nothing but padding runs whole, as before)
            filled = self.session.run(self.outputs, {n: a[used][:, None] for n, a in feed.items()})[0][:, 0]
            results = [np.zeros((*used.shape, filled.shape[-1]), filled.dtype)]
            results[0][used] = filled
        else:
            results = self.session.run(self.outputs, feed)
        split, start = [], 0
        for b in batches:
            n = next(iter(b.values())).shape[0]
            split.append({name: r[start:start + n] for name, r in zip(self.outputs, results)})
            start += n
        return split


class PromptEmbeddings:
    """A frozen prompt tower's graph (``REPO/editguard_prompt/N``) behind an LRU of embeddings.

    Keyed by a window's token ids and attention mask (a whole prompt's, for a tower without a window
    axis), so two spellings that tokenise alike share an entry. ``size``: entries kept (default 4096,
    about 6 MB for MiniLM's 384 dims; the environment variable ``EDITGUARD_PROMPT_CACHE`` overrides it,
    0 turns the cache off). Only the windows a prompt fills are run (:meth:`OnnxClassifier.run`).
    """

    def __init__(self, version_dir: str | Path, threads: int = 0, cuda_device: int | None = None,
                 size: int | None = None, shared=None, width: int | None = None):
        self.net = OnnxClassifier(version_dir, threads, cuda_device)
        self.size = _prompt_cache(size)
        # a SharedCache the server's other instances read and write, looked up on a miss here; ``width``: the
        # embedding's size (the classifier's), without which it is not used (a value of another length is a miss)
        self.shared, self._bytes = (shared, 4 * width) if isinstance(width, int) else (None, 0)
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """``float32 [B, H]`` for ``int64 [B, T]`` ids and mask, ``[B, W, H]`` for a prompt's windows
        ``[B, W, T]``. A windowed tower's cache is kept per window: a window several prompts share (a clause
        they have in common, a session's earlier turn prompts inside its cumulative prompt) runs once; the
        windows past a prompt's end are zero rows, as in the graph."""
        if self.net.windowed and input_ids.ndim == 3:
            used = attention_mask[:, :, 0] > 0
            if used.any():
                rows = self._lookup(input_ids[used][:, None], attention_mask[used][:, None])[:, 0]
                out = np.zeros((*used.shape, rows.shape[-1]), np.float32)
                out[used] = rows
                return out
        return self._lookup(input_ids, attention_mask)

    def _lookup(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """One cache entry per row; each distinct uncached row runs once."""
        keys = [i.tobytes() + a.tobytes() for i, a in zip(input_ids, attention_mask)]
        todo = {k: i for i, k in reversed(list(enumerate(keys))) if k not in self._cache}  # first row of each
        fresh, shared_keys = {}, {}  # shared_keys: each missing row's key in the shared store, hashed once
        if self.shared is not None:
            shared_keys = {k: b"prompt:" + hashlib.blake2b(k, digest_size=16).digest() for k in todo}
            for k, shared_key in shared_keys.items():
                value = self.shared.get(shared_key)
                if value is not None and len(value) == self._bytes:
                    fresh[k] = np.frombuffer(value, np.float32).reshape(*input_ids.shape[1:-1], -1)
                    del todo[k]
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        if todo:
            rows = sorted(todo.values())
            batch = self.net.check({"input_ids": input_ids[rows], "attention_mask": attention_mask[rows]})
            out = self.net.run([batch])[0][PROMPT_EMBEDDING].astype(np.float32)
            for r, e in zip(rows, out):
                fresh[keys[r]] = e
                if shared_keys:
                    self.shared.put(shared_keys[keys[r]], e.tobytes())
        rows = []
        for k in keys:
            e = fresh.get(k)
            if e is None:
                e = self._cache[k]
                self._cache.move_to_end(k)
            rows.append(e)
        if self.size:
            for k, e in fresh.items():
                self._cache[k] = e
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return np.stack(rows)


class ServedVersion:
    """One version of a client-facing model: preprocessing, classifier and thresholds.

    ``front_dir``: ``REPO/editguard/N`` (or the pre-check's). ``classifier_dir``: the network's
    version dir, run here by onnxruntime; None when the caller runs the network elsewhere (the
    ensemble's prepare and verdicts steps), and then :meth:`probabilities` is not available. A
    classifier that takes ``prompt_embedding`` comes with its prompt tower (the same version of the
    client model's prompt model), run here behind an LRU (:class:`PromptEmbeddings`). ``decode_device``:
    decode JPEG uploads with torchvision on that torch device ("cuda": nvJPEG) instead of Pillow.

    Encoded images are decoded once by content (:class:`~editguard.model.preprocess.DecodedImages`, an LRU
    of ``IMAGE_CACHE`` entries; the environment variable ``EDITGUARD_IMAGE_CACHE`` overrides it, 0 turns it
    off): an edit session sends its origin and its previous output again on every turn, and a turn's two
    triples share one output. ``shared_dir``: where the server's instances of this version share both
    caches (:mod:`~editguard.serving.shared_cache`), so a session's next turn finds its earlier work
    whichever instance takes it.
    """

    def __init__(self, client_dir: str | Path, classifier_dir: str | Path | None = None, *, threads: int = 0,
                 cuda_device: int | None = None, decode_device: str = "", shared_dir: str | Path | None = None):
        self.dir = Path(client_dir)
        self.version = self.dir.name
        shared = {}
        if shared_dir is not None:  # the caches the server's instances of this version share
            from .shared_cache import SharedCache

            name = f"{self.dir.parent.name}-{self.version}"
            shared = {what: SharedCache(Path(shared_dir) / f"{name}-{what}.sqlite", size)
                      for what, size in (("images", _image_cache()), ("prompts", _prompt_cache()))}
        config = ModelConfig.load(self.dir / "config.json")
        self.labels: list[str] = list(config.labels)
        self.precheck = config.ablation == "precheck"  # the request only: no output image
        self.pre = Preprocessor.from_dir(self.dir)
        if decode_device:  # JPEGs decoded and letterboxed by torchvision there; the rest by Pillow
            from .torch_decode import TorchDecoder

            self.pre = TorchDecoder(self.pre.cfg, self.pre.tokenizer, decode_device, self.pre.speller)
        self.pre.images = DecodedImages(_image_cache(), shared.get("images"))
        self.spec = self.pre.cfg.pixels_spec()
        self.net = OnnxClassifier(classifier_dir, threads, cuda_device) if classifier_dir is not None else None
        self.prompt = None
        if self.net is not None and PROMPT_EMBEDDING in self.net.inputs:
            prompt_dir = self.dir.parent.parent / PROMPTS[self.dir.parent.name] / self.version
            if not (prompt_dir / "model.onnx").exists():
                raise FileNotFoundError(f"{classifier_dir} takes {PROMPT_EMBEDDING}, but its prompt tower "
                                        f"{prompt_dir}/model.onnx is missing; export the model dir again")
            self.prompt = PromptEmbeddings(prompt_dir, threads, cuda_device, shared=shared.get("prompts"),
                                           width=self.net.inputs[PROMPT_EMBEDDING][-1])
        self.thresholds_file = ThresholdsFile(self.dir, self.labels)

    @classmethod
    def open(cls, repository: str | Path, model: str = CLIENT_MODEL, version: str | int = "", *, threads: int = 0,
             cuda_device: int | None = None) -> "ServedVersion":
        """The version ``version`` (default: the newest) of ``model`` in an exported repository, with its
        classifier, ready to score offline. A malformed thresholds.json raises ValueError here."""
        repo = Path(repository)
        if model not in PAIRS:
            raise ValueError(f"model must be one of {sorted(PAIRS)}, got {model!r}")
        have = versions(repo, model)
        if not have:
            raise FileNotFoundError(f"{repo} has no exported versions of {model}; run `editguard export MODEL_DIR "
                                    f"--repository {repo}`")
        version = str(version or max(have))
        if int(version) not in have:
            raise FileNotFoundError(f"{repo} has no version {version} of {model} (it has {have})")
        served = cls(repo / model / version, repo / PAIRS[model] / version, threads=threads, cuda_device=cuda_device)
        served.refresh_thresholds(strict=True)
        return served

    # -- thresholds ------------------------------------------------------------------------
    @property
    def thresholds(self) -> np.ndarray:
        """``float32 [C]``: this version's thresholds as last read."""
        return self.thresholds_file.values

    @property
    def session_thresholds(self) -> np.ndarray:
        """``float32 [2, C]``: the thresholds of an edit session's step and cumulative checks, as last read."""
        return self.thresholds_file.session_values

    def refresh_thresholds(self, strict: bool = False) -> None:
        """Re-read thresholds.json if it changed (:meth:`~editguard.model.repository.ThresholdsFile.refresh`)."""
        self.thresholds_file.refresh(strict)

    # -- the work ----------------------------------------------------------------------------
    def prepare(self, input_image: ImageSource, prompt: str | bytes, output_image: ImageSource | None,
                mask: ImageSource | None = None, cumulative: bool = False) -> dict[str, np.ndarray]:
        """One request's network inputs (:meth:`Preprocessor.triple`); a pre-check never reads the output
        image. ``cumulative``: a session's cumulative triple, its prompt read turn by turn where this version
        does. Raises :class:`~editguard.model.preprocess.PreprocessError` naming the input."""
        return self.pre.triple(input_image, prompt, None if self.precheck else output_image, mask,
                               cumulative=cumulative and not self.precheck)

    def probabilities(self, items: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
        """``float32 [B, C]`` for prepared items, run as one checked onnxruntime call. Raises RuntimeError
        when the batch does not fit the network or onnxruntime fails."""
        if self.net is None:
            raise RuntimeError(f"version {self.version} was opened without its classifier")
        try:
            batch = collate(list(items))
            if self.prompt is not None:
                batch[PROMPT_EMBEDDING] = self.prompt(batch.pop("input_ids"), batch.pop("attention_mask"))
            batch = self.net.check(batch)
        except ValueError as e:  # this version's own preprocessing does not fit its network
            raise RuntimeError(f"the prepared batch does not fit the network: {e}") from e
        try:
            return self.net.run([batch])[0][PROBABILITIES].astype(np.float32)
        except Exception as e:  # onnxruntime's own errors
            raise RuntimeError(f"onnxruntime failed: {e}") from e

    def flags(self, probabilities: np.ndarray) -> np.ndarray:
        """``bool [B, C]``: each category's score against this version's current threshold."""
        return probabilities >= self.thresholds
