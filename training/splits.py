"""``editguard split``: train/val/test manifests in which no source photo lands in two splits.

Real editing corpora hold one photo many times: several edits of it, the later turns of a
multi-turn edit (whose input is the previous turn's output), re-encodes and resizes. A random
split puts the same photo in train and test and flatters every figure. So items are grouped first:

- by a perceptual hash of the input and of the output image (the signs of a 256-bit block of the
  image's low-frequency DCT, which a re-encode or a resize barely moves): items whose images are
  within ``max_distance`` bits of one another share a group, so copies, re-encodes and later
  turns of one photo group together;
- by session: the turns of a multi-turn edit (the manifest's ``session``) are always one group;
- by the values of user-given keys (``--group-by meta.user``: a user, a photo id).

Groups then go to splits, the largest first, each to the split furthest below its share of the
group's labels (stratified by label where the groups allow it). The report gives each split's
size and label counts, the groups, the near-duplicate triples (the same images and the same
prompt), and the leak count: items in val or test whose group also has items in train. It is 0
by construction; the report puts a naive random split's count of the same manifest beside it.

Writes ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` (``names``) beside the manifest, so the
image paths stay as they are, and ``split_report.json``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..manifest import meta_column, meta_field

__all__ = ["SplitConfig", "split_manifest", "phash", "hamming", "leaks"]

HASH_BYTES = 32  # a 256-bit hash


@dataclass
class SplitConfig:
    manifest: str  # the manifest to split (JSONL, Parquet or CSV)
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1)  # shares of the items, in the order of ``names``
    names: tuple[str, ...] = ("train", "val", "test")
    # meta fields ("meta.FIELD" or "FIELD") whose equal values share a group
    group_by: list[str] = field(default_factory=list)
    # hash bits (of 256) within which two images count as one photo: re-encodes and resizes of one photo measured
    # up to 10 apart, different photos of the synthetic benchmark 31 and more
    max_distance: int = 16
    seed: int = 0  # breaks ties between groups of one size
    allow_outside_root: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if len(self.fractions) != len(self.names) or any(f < 0 for f in self.fractions) or \
                abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"fractions {self.fractions} must be one non-negative share per split "
                             f"{self.names}, adding up to 1")
        if not 0 <= self.max_distance < HASH_BYTES:
            raise ValueError(f"max_distance must be 0..{HASH_BYTES - 1} bits, got {self.max_distance}")
        for key in self.group_by:
            meta_field(key, "--group-by")


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(64)


def phash(path: str | Path) -> bytes:
    """A 256-bit perceptual hash of an image (32 bytes): its grey levels at 64x64, the 16x16 lowest
    frequencies of their 2-D DCT, each above the median or not. Re-encoding or resizing the image
    moves few of the bits."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft("L", (128, 128))  # JPEG: decode at a reduced scale, the hash only needs 64x64
        g = np.asarray(ImageOps.exif_transpose(im).convert("L").resize((64, 64), Image.BILINEAR), np.float64)
    low = (_DCT @ g @ _DCT.T)[:16, :16].flatten()
    return np.packbits(low > np.median(low[1:])).tobytes()


def hamming(a: bytes, b: bytes) -> int:
    """Bits that differ between two hashes."""
    return int(np.unpackbits(np.frombuffer(a, np.uint8) ^ np.frombuffer(b, np.uint8)).sum())


class _Groups:
    """Union-find over item indices."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _link_near(groups: _Groups, owners: list[int], hashes: list[bytes], max_distance: int) -> None:
    """Join the owners of hashes within ``max_distance`` bits. Two 256-bit hashes that close agree exactly
    on at least one of their 32 bytes (pigeonhole), so only hashes sharing a byte are compared."""
    h = np.frombuffer(b"".join(hashes), np.uint8).reshape(len(hashes), HASH_BYTES)
    own = np.array(owners)
    for band in range(HASH_BYTES):
        order = np.argsort(h[:, band], kind="stable")
        bounds = np.flatnonzero(np.diff(h[order, band])) + 1
        for bucket in np.split(order, bounds):
            for k, i in enumerate(bucket[:-1]):
                rest = bucket[k + 1:]
                near = np.unpackbits(h[rest] ^ h[i], axis=1).sum(1) <= max_distance
                for j in rest[near]:
                    groups.union(int(own[i]), int(own[j]))


def _near_duplicates(records, hashes_in, hashes_out, max_distance: int) -> list[tuple[str, str]]:
    """Pairs of items with the same prompt whose input and output images are both within ``max_distance``."""
    by_prompt: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_prompt.setdefault(" ".join(r.prompt.lower().split()), []).append(i)
    pairs = []
    for items in by_prompt.values():
        for a, i in enumerate(items):
            for j in items[a + 1:]:
                if hamming(hashes_in[i], hashes_in[j]) <= max_distance and \
                        hamming(hashes_out[i], hashes_out[j]) <= max_distance:
                    pairs.append((records[i].id, records[j].id))
    return pairs


def leaks(group_of: list[int], split_of: list[int], train: int = 0) -> int:
    """Items outside the ``train`` split whose group also has items in it."""
    in_train = {g for g, s in zip(group_of, split_of) if s == train}
    return sum(1 for g, s in zip(group_of, split_of) if s != train and g in in_train)


def _assign(group_of: list[int], records, cfg: SplitConfig) -> list[int]:
    """A split per item: whole groups, the largest first, each to the split furthest below its share of the
    group's labels (``safe`` counts as a label)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(group_of):
        members.setdefault(g, []).append(i)
    tags = [tuple(r.labels) or ("safe",) for r in records]
    total: dict[str, int] = {}
    for t in tags:
        for c in t:
            total[c] = total.get(c, 0) + 1
    have = [dict.fromkeys(total, 0) for _ in cfg.names]
    size = [0] * len(cfg.names)
    rng = np.random.default_rng(cfg.seed)
    order = sorted(members, key=lambda g: (-len(members[g]), rng.random()))
    split_of = [0] * len(records)
    for g in order:
        labels = [c for i in members[g] for c in tags[i]]

        def deficit(s: int) -> float:
            want = cfg.fractions[s]
            if want == 0:
                return -np.inf
            by_label = np.mean([(want * total[c] - have[s][c]) / total[c] for c in labels])
            return by_label + (want * len(records) - size[s]) / len(records)

        s = max(range(len(cfg.names)), key=deficit)
        for i in members[g]:
            split_of[i] = s
            size[s] += 1
            for c in tags[i]:
                have[s][c] += 1
    return split_of


def split_manifest(cfg: SplitConfig) -> dict:
    """Split ``cfg.manifest``; write the split manifests and ``split_report.json`` beside it; return the report."""
    from ..manifest import read_manifest
    from ..progress import parallel_map

    path = Path(cfg.manifest)
    records = read_manifest(path, require_labels=False, allow_outside_root=cfg.allow_outside_root)
    images = [str(p) for r in records for p in (r.input_image, r.output_image)]
    hashes = list(parallel_map(phash, images, desc="hash", unit="image", show=cfg.progress))
    h_in, h_out = hashes[0::2], hashes[1::2]
    groups = _Groups(len(records))
    _link_near(groups, [i // 2 for i in range(len(hashes))], hashes, cfg.max_distance)
    first_turn: dict[str, int] = {}
    for i, r in enumerate(records):
        if r.session is not None:
            groups.union(i, first_turn.setdefault(r.session, i))
    for key in cfg.group_by:
        first: dict = {}
        for i, value in enumerate(meta_column([r.meta for r in records], key, "--group-by")):
            if value is not None:
                groups.union(i, first.setdefault(json.dumps(value, sort_keys=True), i))
    group_of = [groups.find(i) for i in range(len(records))]
    split_of = _assign(group_of, records, cfg)
    naive = np.random.default_rng(cfg.seed).choice(len(cfg.names), len(records), p=cfg.fractions).tolist()
    report = _report(cfg, records, group_of, split_of, naive, _near_duplicates(records, h_in, h_out, cfg.max_distance))
    root = path.parent.resolve()
    for s, name in enumerate(cfg.names):
        lines = [json.dumps(_record(r, root)) + "\n" for r, si in zip(records, split_of) if si == s]
        (path.parent / f"{name}.jsonl").write_text("".join(lines))
    (path.parent / "split_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _record(r, root: Path) -> dict:
    rel = lambda p: os.path.relpath(p, root)  # noqa: E731
    rec = {"id": r.id, "input_image": rel(r.input_image), "output_image": rel(r.output_image), "prompt": r.prompt}
    if r.mask:
        rec["mask"] = rel(r.mask)
    if r.has_labels:
        rec["labels"] = list(r.labels)
    if r.meta:
        rec["meta"] = r.meta
    if r.session is not None:
        rec.update(session=r.session, turn=r.turn)
        if r.cumulative_labels is not None:
            rec["cumulative_labels"] = list(r.cumulative_labels)
    return rec


def _report(cfg: SplitConfig, records, group_of, split_of, naive, duplicates) -> dict:
    sizes = {g: group_of.count(g) for g in set(group_of)}
    per_split = {}
    for s, name in enumerate(cfg.names):
        idx = [i for i, si in enumerate(split_of) if si == s]
        counts: dict[str, int] = {}
        for i in idx:
            for c in records[i].labels or ["safe"]:
                counts[c] = counts.get(c, 0) + 1
        per_split[name] = {"items": len(idx), "groups": len({group_of[i] for i in idx}), "labels": counts}
    return {"manifest": str(cfg.manifest), "items": len(records), "groups": len(sizes),
            "largest_group": max(sizes.values()),
            "grouped_by": [f"images (perceptual hash, <= {cfg.max_distance} of 256 bits)", "session", *cfg.group_by],
            "splits": per_split, "leaks": leaks(group_of, split_of), "naive_random_split_leaks": leaks(group_of, naive),
            "near_duplicate_triples": [list(p) for p in duplicates]}
