"""The presets section: each production preset's exact architecture, exported and served at its own resolution."""

from __future__ import annotations

import json
from pathlib import Path

from ..model.prompt_cache import PromptCache, with_cache
from .config import BenchConfig
from .served import ServedTarget
from .timing import closed_loop, new_uploads, pct, timed
from .workloads import collate_bytes


def preset_version(preset: str, workdir: Path) -> tuple:
    """An untrained model of ``preset``'s exact architecture (a stand-in weights folder where its towers
    come from the hub), exported as version 1 of a repository under ``workdir``: ``(model dir, repository,
    net, preprocessor)``, the net in eval mode."""
    from ..export.writer import ExportConfig, export_version
    from ..model.config import preset_config
    from ..model.model_dir import create_model, save_model_dir
    from ..model.stand_ins import write_stand_in
    from ..model.taxonomy import default_taxonomy
    from ..model.weight_pack import hub_files, use_pack

    cfg = preset_config(preset)
    if hub_files(cfg):
        cfg = use_pack(cfg, write_stand_in(cfg, workdir / "weights"))
    net, pre = create_model(cfg, workdir / "build", prompts=["make the sky pink"])
    model = save_model_dir(net.eval(), workdir / "model", tokenizer_dir=workdir / "build" / "tokenizer",
                           taxonomy=default_taxonomy())
    export_version(ExportConfig(model_dir=str(model), repository=str(workdir / "repo"), max_batch=8))
    return model, workdir / "repo", net, pre


def bench_presets(cfg: BenchConfig, triples: list[dict], workdir: Path) -> dict:
    import torch

    from ..clients import EditGuardClient
    from ..export.onnx_export import FP16_TOL, convert_fp16, ort_session, parity, sample_inputs
    from ..model.repository import CLASSIFIER
    from ..serving.served import ServedVersion

    rows = []
    for preset in cfg.presets:
        model, repo, net, pre = preset_version(preset, workdir / preset)
        cache = PromptCache.of(net)  # torch eager keeps its prompt embeddings (the batch repeats)
        onnx_path = repo / CLASSIFIER / "1" / "model.onnx"
        sess = ort_session(onnx_path)
        served = ServedVersion.open(str(repo), threads=0)
        p32 = json.loads((onnx_path.parent / "export.json").read_text())["parity_fp32"]
        p16 = parity(net, convert_fp16(onnx_path, workdir / preset / "model.fp16.onnx"), sample_inputs(model, pre),
                     FP16_TOL)
        row = {"preset": preset, "image_size": pre.cfg.image_size,
               "params_m": round(sum(p.numel() for p in net.parameters()) / 1e6, 1),
               "parity fp32 / fp16": f"{p32['max_abs_prob']:.1e} / {p16.max_abs_prob:.1e}",
               "train step b8 s": round(_train_step(net, collate_bytes(pre, triples[:8]), cfg.seconds), 2)}
        for b in (1, 8):
            batch = collate_bytes(pre, [triples[i % len(triples)] for i in range(b)])
            tensors = {k: torch.from_numpy(v) for k, v in batch.items()}

            def run_torch():
                with torch.inference_mode():
                    net(**with_cache(cache, tensors))

            feed = {i.name: batch[i.name] for i in sess.get_inputs()}
            row[f"torch b{b} triples/s"] = timed(run_torch, cfg.seconds, b)["triples_s"]
            row[f"ORT b{b} triples/s"] = timed(lambda: sess.run(None, feed), cfg.seconds, b)["triples_s"]
        items = triples[:8]
        row["pipeline b8 triples/s"] = timed(lambda: served.flags(served.probabilities(
            [served.prepare(*new_uploads((t["input"], t["prompt"], t["output"]))) for t in items])), cfg.seconds,
            8)["triples_s"]
        calls = [(t["input"], t["prompt"], t["output"]) for t in triples]
        with ServedTarget(str(repo)) as (url, conn), EditGuardClient(url, timeout=120, **conn.client_options()) as guard:
            guard.classify(*calls[0])  # warm-up
            lat1, _ = closed_loop(guard.classify, calls, 1, cfg.seconds)
            lat4, wall = closed_loop(guard.classify, calls, 4, cfg.seconds)
        row["served c1 p50 ms"] = pct(lat1)["p50_ms"]
        row["served c4 triples/s"] = round(len(lat4) / wall, 1)
        rows.append(row)
    return {"rows": rows, "note": "untrained models of the presets' exact architectures; small and base from "
                                  "stand-in weights folders (random-init towers)"}


def _train_step(net, batch: dict, seconds: float) -> float:
    """Median seconds of one training step (forward, BCE loss, backward, AdamW) on ``batch``; leaves
    ``net`` in eval mode."""
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in batch.items()}
    target = torch.zeros(len(batch["input_ids"]), len(net.cfg.labels))
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    cache = PromptCache.of(net)  # a frozen prompt tower, once per prompt, as training runs it
    net.train()

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(net(**with_cache(cache, tensors)), target).backward()
        opt.step()

    took = timed(step, seconds, len(target))["p50_ms"] / 1e3
    net.eval()
    return took
