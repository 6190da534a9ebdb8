"""Reading and rewriting Triton's ``config.pbtxt`` with Triton's own schema, keeping its comments.

Protobuf's text format drops comments, and the committed configs explain their settings in
comments beside each field. :func:`rewrite` therefore changes a config field by field: each
top-level field (each ``parameters`` entry on its own) that is unchanged keeps its original text,
comments and layout; a changed one is written again in the same place, after the same comments;
a new one goes at the end. The result is parsed back and compared with the intended config, so
a rewrite can't silently change anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..files import write_text_atomic

__all__ = ["read_config", "parse_config", "rewrite", "write_config"]


def parse_config(text: str, where: str = "config.pbtxt"):
    """A ``ModelConfig`` (``tritonclient.grpc.model_config_pb2``) from config.pbtxt text; ValueError names
    ``where`` and the parser's line and column."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"{where}: not a valid Triton model config: {e}") from e


def read_config(path: str | Path):
    """Parse a config.pbtxt with Triton's own schema."""
    return parse_config(Path(path).read_text(), str(path))


def write_config(path: str | Path, config, source: str | None = None) -> None:
    """Write ``config`` to ``path`` atomically, as ``source`` (config text; default: the file's own text)
    rewritten field by field (:func:`rewrite`), or freshly serialised when there is neither."""
    path = Path(path)
    if source is None and path.exists():
        source = path.read_text()
    write_text_atomic(path, rewrite(source, config) if source is not None else _fresh(config))


def _fresh(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


@dataclass
class _Chunk:
    """Comment and blank lines, then the text of one or more top-level fields (``body``; may be empty)."""

    lead: list[str] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    keys: list[tuple] = field(default_factory=list)  # ("name",) or ("parameters", key) for each field in body


def _depth_change(line: str) -> int:
    """Net ``{[`` minus ``}]`` on a line, outside strings and comments."""
    depth, quote, escape = 0, "", False
    for ch in line:
        if quote:
            if escape:
                escape = False
            elif ch == "\\":
                escape = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            break
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
    return depth


def _chunks(text: str) -> list[_Chunk]:
    chunks, cur, depth = [], _Chunk(), 0
    for line in text.splitlines():
        bare = line.strip()
        if depth == 0 and (not bare or bare.startswith("#")):
            if cur.body:  # comments after a field belong to the next one
                chunks.append(cur)
                cur = _Chunk()
            cur.lead.append(line)
            continue
        if depth == 0 and cur.body:
            chunks.append(cur)
            cur = _Chunk()
        cur.body.append(line)
        depth += _depth_change(line)
    chunks.append(cur)
    return chunks


def _keys(msg) -> list[tuple]:
    out = []
    for f, value in msg.ListFields():
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            out += [(f.name, k) for k in value]
        else:
            out.append((f.name,))
    return out


def _value(msg, key: tuple):
    if len(key) == 2:
        m = getattr(msg, key[0])
        return m[key[1]] if key[1] in m else None
    v = getattr(msg, key[0])
    return list(v) if hasattr(v, "extend") else v


_NUMBER_LISTS = ("dims", "preferred_batch_size", "gpus", "shape")  # Triton's repeated number fields


def _one_line(msg) -> str:
    """``msg`` in text format on one line, repeated numbers as lists (``dims: [ 64, 64, 3 ]``)."""
    from google.protobuf import text_format

    text = text_format.MessageToString(msg, as_one_line=True)
    def as_list(m: re.Match) -> str:
        numbers = [m[2], *re.findall(r"-?\d+", m[3])]
        return f"{m[1]}: [ {', '.join(numbers)} ]"

    return re.sub(rf"\b({'|'.join(_NUMBER_LISTS)}): (-?\d+)((?: \1: -?\d+)*)", as_list, text)


def _render(msg, key: tuple) -> list[str]:
    """One field (or map entry) of ``msg`` as config text: one line, or a list with one item a line."""
    from tritonclient.grpc import model_config_pb2

    name = key[0]
    if len(key) == 2:
        one = model_config_pb2.ModelConfig()
        getattr(one, name)[key[1]].CopyFrom(getattr(msg, name)[key[1]])
        return [_one_line(one)]
    value = getattr(msg, name)
    if hasattr(value, "extend") and len(value) and hasattr(value[0], "ListFields"):
        items = [f"  {{ {_one_line(v)} }}" for v in value]
        return [f"{name} ["] + [x + ("," if i < len(items) - 1 else "") for i, x in enumerate(items)] + ["]"]
    one = model_config_pb2.ModelConfig()
    if hasattr(value, "extend"):
        getattr(one, name).extend(value)
    elif hasattr(value, "ListFields"):
        getattr(one, name).CopyFrom(value)
    else:
        setattr(one, name, value)
    return [_one_line(one)]


def rewrite(text: str, config) -> str:
    """``text`` (a config.pbtxt) changed to say ``config``, keeping the comments and layout of every field
    that did not change; see the module docstring. Raises ValueError if the result would not parse back
    to ``config``."""
    old = parse_config(text)
    chunks = _chunks(text)
    for c in chunks:
        c.keys = _keys(parse_config("\n".join(c.body))) if c.body else []
    new_keys = _keys(config)
    written: set[tuple] = set()
    lines: list[str] = []
    for c in chunks:
        lines += c.lead
        if c.keys and all(k in new_keys and _value(old, k) == _value(config, k) for k in c.keys):
            lines += c.body  # unchanged: the original text
        else:  # changed or removed: the new value in the same place (a list split over chunks, once)
            lines += [x for k in c.keys if k in new_keys and k not in written for x in _render(config, k)]
        written.update(k for k in c.keys if k in new_keys)
    lines += [x for k in new_keys if k not in written for x in _render(config, k)]  # new fields: at the end
    out = "\n".join(lines).rstrip("\n") + "\n"
    if parse_config(out) != config:
        raise ValueError("rewriting config.pbtxt field by field did not reproduce the config; this is a bug")
    return out
