"""Writing Triton repositories: configs rewritten field by field with their comments kept, the
committed templates never written to, and model configs from older releases still loading."""

from __future__ import annotations

import json
import re

import pytest

from editguard.export.writer import ExportConfig, ensure_repository, export_version
from editguard.model.config import ModelConfig, preset_config
from editguard.model.pbtxt import parse_config, read_config, rewrite, write_config
from editguard.model.repository import templates_dir


def _comment_blocks(text: str) -> dict[str, str]:
    """Each run of comment lines, keyed by the first line of the field that follows it."""
    blocks, run = {}, []
    for line in text.splitlines():
        if line.startswith("#"):
            run.append(line)
        elif line.strip():
            if run:
                blocks["\n".join(run)] = re.split(r"[:\s{\[]", line.strip(), maxsplit=1)[0]
            run = []
    return blocks


@pytest.mark.parametrize("template", ["editguard/config.pbtxt", "editguard_classifier/configs/onnxruntime.pbtxt"])
def test_rewritten_config_keeps_each_comment_beside_its_field(template):
    text = (templates_dir() / template).read_text()
    config = parse_config(text)
    assert rewrite(text, config) == text.rstrip("\n") + "\n"  # nothing changed: the very same text
    config.max_batch_size = 32
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend([16])
    config.parameters["preprocess"].string_value = json.dumps({"1": {"image_size": 224}})
    if "decode_device" in config.parameters:
        config.parameters["decode_device"].string_value = "cuda"
    for t in config.input:
        if t.name == "input_ids":
            del t.dims[:]
            t.dims.extend([32])
    out = rewrite(text, config)
    assert parse_config(out) == config
    assert _comment_blocks(out) == _comment_blocks(text)  # every comment, before the same field
    assert "max_batch_size: 32" in out and 'key: "preprocess"' in out
    unchanged = [line for line in text.splitlines() if "output [" in line or "version_policy" in line]
    assert all(line in out.splitlines() for line in unchanged)  # untouched fields keep their own text


def test_write_config_rewrites_the_file_in_place(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text((templates_dir() / "editguard" / "config.pbtxt").read_text())
    config = read_config(path)
    config.parameters["mode"].string_value = "prepare"
    write_config(path, config)
    assert read_config(path) == config
    assert path.read_text().startswith("# editguard: the client-facing model")
    with pytest.raises(ValueError, match="not a valid Triton model config"):
        parse_config("max_batch_size: [", "broken.pbtxt")


def test_export_never_writes_into_the_committed_templates(tmp_path):
    before = {p: p.read_bytes() for p in templates_dir().rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="committed config templates.*--repository repository"):
        ensure_repository(templates_dir())
    with pytest.raises(ValueError, match="committed config templates"):
        export_version(ExportConfig(model_dir=str(tmp_path / "no-such-model"), repository=str(templates_dir())))
    after = {p: p.read_bytes() for p in templates_dir().rglob("*") if p.is_file()}
    assert after == before


def test_configs_from_older_releases_still_load():
    """Model dirs and exported versions written before two experiments were removed carry their keys at
    the value that meant "off"; those load, a model that used one is refused with the reason."""
    d = preset_config("tiny").to_dict()
    assert ModelConfig.from_dict({**d, "precheck_head": False, "image_dropout": 0.0}) == ModelConfig.from_dict(d)
    with pytest.raises(ValueError, match="precheck_head was an experiment that editguard no longer builds"):
        ModelConfig.from_dict({**d, "precheck_head": True})
    with pytest.raises(ValueError, match="unknown keys in config"):
        ModelConfig.from_dict({**d, "prompt_noise": 0.1})
