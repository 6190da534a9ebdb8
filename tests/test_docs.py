"""The docs as a user follows them: their code runs as written against a real Triton, and they speak of
the product, not of how it was built."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _block(doc: Path, after: str, lang: str) -> str:
    """The first ```lang block after the line that contains ``after``."""
    text = doc.read_text()
    start = text.index(after)
    m = re.compile(rf"```{lang}\n(.*?)```", re.S).search(text, start)
    assert m, f"{doc.name}: no {lang} block after {after!r}"
    return m.group(1)


@pytest.mark.slow
def test_the_http_example_runs_as_written(triton, synth_sets, triple_bytes, tmp_path):
    from editguard.clients import EditGuardClient

    script = tmp_path / "classify.sh"
    script.write_text(_block(ROOT / "docs" / "serving.md", "### From any language: HTTP", "sh"))
    t = triple_bytes(synth_sets["test"], 1)[0]
    (tmp_path / "in.png").write_bytes(t["input"])
    (tmp_path / "out.png").write_bytes(t["output"])
    prompt = t["prompt"] + ' — "quoted", naïve'  # quotes and UTF-8 need no escaping: the prompt travels as bytes
    env = {"PATH": "/usr/bin:/bin", "URL": f"http://{triton.http_url}", "IN": "in.png", "OUT": "out.png",
           "PROMPT": prompt}
    r = subprocess.run(["sh", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    outputs = {o["name"]: o["data"] for o in json.loads(r.stdout)["outputs"]}
    with EditGuardClient(triton.grpc_url) as guard:
        v = guard.classify(t["input"], prompt, t["output"])
    assert outputs["LABELS"] == list(v.scores) and outputs["UNSAFE"] == [v.unsafe]
    assert outputs["SCORES"] == pytest.approx(list(v.scores.values()), abs=1e-6)
    (tmp_path / "out.png").write_bytes(t["output"][:60])  # a truncated upload: a 400 that names the input
    r = subprocess.run(["sh", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 22 and "OUTPUT_IMAGE" in json.loads(r.stdout)["error"], r.stdout


@pytest.mark.slow
def test_the_python_examples_run_as_written(triton, synth_sets, triple_bytes):
    import asyncio

    t = triple_bytes(synth_sets["test"], 1)[0]
    for doc, after, call in ((ROOT / "README.md", "## Using it from an inpainting backend", "safe_to_return"),
                             (ROOT / "docs" / "serving.md", "`AsyncEditGuardClient` is the `asyncio` twin", "check")):
        code = re.sub(r"(?m)^  ", "", _block(doc, after, "python")) if doc.name == "serving.md" else \
            _block(doc, after, "python")
        scope: dict = {"__name__": "example"}
        exec(compile(code.replace("localhost:8001", triton.grpc_url), f"{doc.name} example", "exec"), scope)
        result = scope[call](t["input"], t["prompt"], t["output"])
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
        assert isinstance(result, bool), (doc.name, result)
        broken = scope[call](t["input"], t["prompt"], t["output"][:60])  # fails closed on a bad upload
        assert (asyncio.run(broken) if asyncio.iscoroutine(broken) else broken) is False
    # the session snippet: two turns, each through one request
    scope = {"__name__": "example"}
    code = _block(ROOT / "README.md", "**Edit sessions.**", "python").replace("localhost:8001", triton.grpc_url)
    exec(compile(code, "README.md session example", "exec"), scope)
    final, fired, categories = scope["edit_session"](t["input"], [t["prompt"], "a little more"],
                                                     lambda image, prompt: t["output"])
    assert (final is None) == bool(fired) and set(fired) <= {"step", "cumulative"}
    assert final is None or final == t["output"]


# Phrases that speak of how editguard was built rather than of the product: where it was made ("here",
# "this machine"), the arrangements it was made under, its tracker and history. Say what the product has
# and hasn't run on instead ("measured on a 2-core x86 CPU", "not yet run on a GPU").
BUILD_TALK = [r"\bno session\b", r"\bthis session\b", r"\bsessions? so far\b", r"\blent\b", r"\blending\b",
              r"\bdevice time\b", r"\bthis machine\b", r"\bmachines? this project\b", r"\bproject's machines\b",
              r"\bhere\b", r"\bissues?\b", r"\bat commit [0-9a-f]{6,}\b", r"\btoday's\b"]
# Real product uses of those words: (file, the phrase on the line)
ALLOWED = [("docs/design.md", "`export` copies them and never writes here")]


def _texts() -> list[Path]:
    out = [*DOCS, ROOT / "Makefile", *sorted((ROOT / "scripts").glob("*")), *sorted((ROOT / "deploy").rglob("*"))]
    return [p for p in out if p.is_file() and p.suffix not in (".png", ".pyc")]


def test_the_docs_speak_of_the_product():
    hits = []
    for path in _texts():
        rel = str(path.relative_to(ROOT))
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if any(f == rel and phrase in line for f, phrase in ALLOWED):
                continue
            hits += [f"{rel}:{n}: {m.group(0)!r} in {line.strip()[:100]}"
                     for pat in BUILD_TALK for m in [re.search(pat, line, re.I)] if m]
    print(f"\n{len(_texts())} files read; {len(hits)} phrases about how editguard was built")
    assert not hits, "\n".join(hits)
