"""The run: every section asked for, their ratios, and the markdown tables."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..model.repository import CLIENT_MODEL, PRECHECK
from .config import BenchConfig
from .inprocess import bench_inprocess, bench_preprocess
from .presets import bench_presets
from .served import (bench_explain, bench_graphs, bench_precheck, bench_ray, bench_served, bench_sessions,
                     bench_uploads)
from .timing import machine
from .workloads import encoded_triples


def run_bench(cfg: BenchConfig) -> dict:
    """Run the chosen sections; write ``bench.json`` and ``bench.md`` under ``cfg.out``; return the results."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(cfg).items() if k != "connection"}  # the admin key stays out of bench.json
    result = {"machine": machine(), "config": config}
    with tempfile.TemporaryDirectory(prefix="editguard-bench-") as tmp:
        work = Path(tmp)
        triples = encoded_triples(64, 256, work) \
            if {"inprocess", "served", "graphs", "precheck", "sessions", "explain", "presets"} & set(cfg.sections) \
            else []
        if "inprocess" in cfg.sections:
            result["inprocess"] = bench_inprocess(cfg, triples, work)
        if "served" in cfg.sections:
            result["served"] = bench_served(cfg, triples)
        if "uploads" in cfg.sections:
            result["uploads"] = bench_uploads(cfg)
        if "graphs" in cfg.sections:
            result["graphs"] = bench_graphs(cfg, triples)
        if "precheck" in cfg.sections:
            result["precheck"] = bench_precheck(cfg, triples)
        if "sessions" in cfg.sections:
            result["sessions"] = bench_sessions(cfg, triples)
        if "explain" in cfg.sections:
            result["explain"] = bench_explain(cfg, triples, work)
        if "preprocess" in cfg.sections:
            result["preprocess"] = bench_preprocess(cfg, work)
        if "presets" in cfg.sections:
            result["presets"] = bench_presets(cfg, triples, work)
        if "ray" in cfg.sections:
            result["ray"] = bench_ray(cfg, work)
    result["ratios"] = ratios(result)
    (out / "bench.json").write_text(json.dumps(result, indent=2))
    (out / "bench.md").write_text(to_markdown(result))
    return result


def ratios(r: dict) -> dict:
    """The headline ratios, measured in this one run, from each section that ran."""
    out: dict = {}
    for section in (_ratios_inprocess, _ratios_uploads, _ratios_precheck, _ratios_sessions, _ratios_explain,
                    _ratios_graphs, _ratios_presets, _ratios_ray, _ratios_preprocess):
        section(r, out)
    return out


def _ratios_inprocess(r: dict, out: dict) -> None:
    if "inprocess" in r:
        rows = r["inprocess"]["rows"]
        bmax = max(x["batch"] for x in rows)
        best = lambda name: max((x["triples_s"] for x in rows if x["runtime"].split(" (")[0] == name
                                 and "zipf" not in x["runtime"] and x["batch"] == bmax), default=float("nan"))
        out["ort_fp32_over_torch_at_max_batch"] = round(best("onnxruntime fp32") / best("torch eager fp32"), 2)
        out["ort_fp16_over_fp32_at_max_batch"] = round(best("onnxruntime fp16") / best("onnxruntime fp32"), 2)
        zipf = {x["runtime"].split()[0]: x["triples_s"] for x in rows if "zipf" in x["runtime"]}
        if len(zipf) == 2:  # a frozen prompt tower, on repeated prompts: the LRU against torch's own cache
            out[f"ort_fp32_over_torch_zipf_b{bmax}"] = round(zipf["onnxruntime"] / zipf["torch"], 2)
        pipe = best("pipeline: the served version in-process")
        if "served" in r:
            served = max(x["triples_s"] for x in r["served"]["rows"])
            out["served_best_over_inprocess_pipeline"] = round(served / pipe, 2)
            out["served_best_over_inprocess_ort_model_only"] = round(served / best("onnxruntime fp32"), 2)


def _ratios_uploads(r: dict, out: dict) -> None:
    if "uploads" in r:
        u = {(x["size"], x["form"]): x for x in r["uploads"]["rows"]}
        small, big = min(x[0] for x in u), max(x[0] for x in u)
        ref = u.get((small, "JPEG bytes"))
        if ref:
            for form in ("PIL images", "PNG bytes"):
                if (big, form) in u:
                    tag = form.split()[0].lower()
                    out[f"upload_{big}_{tag}_c1_over_{small}_jpeg_c1"] = round(u[big, form]["c1_p50_ms"] / ref["c1_p50_ms"], 2)
                    out[f"upload_{big}_{tag}_c16_over_{small}_jpeg_c16"] = round(
                        u[big, form]["c16_triples_s"] / ref["c16_triples_s"], 2)
            for form in ("JPEG bytes", "PNG bytes"):
                if (small, "PIL images") in u and (small, form) in u:
                    out[f"upload_{small}_pixels_c1_over_{form.split()[0].lower()}_bytes_c1"] = round(
                        u[small, "PIL images"]["c1_p50_ms"] / u[small, form]["c1_p50_ms"], 2)


def _ratios_precheck(r: dict, out: dict) -> None:
    if "precheck" in r:
        rows = {x["model"].split()[0]: x for x in r["precheck"]["rows"]}
        pre, post = rows.get(PRECHECK), rows.get(CLIENT_MODEL)
        if pre and post:
            out["precheck_c1_over_triple_c1"] = round(pre["c1_p50_ms"] / post["c1_p50_ms"], 2)
            out["precheck_c16_over_triple_c16"] = round(pre["c16_triples_s"] / post["c16_triples_s"], 2)


def _ratios_sessions(r: dict, out: dict) -> None:
    if "sessions" in r:
        repeated, new, unseen, seen, *large = r["sessions"]["rows"]
        pairs = [(turn_name, turn, name, single) for turn_name, turn in (("", unseen), ("_first_turn_judged", seen))
                 for name, single in (("repeated_prompts", repeated), ("new_prompts", new))]
        if large:  # the same at 1024 px uploads
            pairs.append(("_first_turn_judged", large[1], "repeated_prompts_1024px", large[0]))
        for turn_name, turn, name, single in pairs:
            out[f"session_turn{turn_name}_c1_over_single_c1_{name}"] = round(turn["c1_p50_ms"] / single["c1_p50_ms"], 2)
            out[f"session{turn_name}_c16_triples_s_over_single_{name}"] = round(
                turn["c16_triples_s"] / single["c16_triples_s"], 2)


def _ratios_explain(r: dict, out: dict) -> None:
    if "explain" in r:
        off, idle, _ = r["explain"]["rows"]
        out["verdict_c1_explain_served_over_not"] = round(idle["c1_p50_ms"] / off["c1_p50_ms"], 2)
        out["verdict_c16_explain_served_over_not"] = round(idle["c16_triples_s"] / off["c16_triples_s"], 2)


def _ratios_graphs(r: dict, out: dict) -> None:
    if "graphs" in r:
        g = {(x["graph"].split()[0], x["prompts"], x["concurrency"]): x for x in r["graphs"]["rows"]}
        for c in (1, 16):
            if ("inline", "zipf", c) in g and ("ensemble", "zipf", c) in g:
                out[f"graph_ensemble_over_inline_zipf_c{c}_throughput"] = round(
                    g["ensemble", "zipf", c]["triples_s"] / g["inline", "zipf", c]["triples_s"], 2)


def _ratios_presets(r: dict, out: dict) -> None:
    for row in r.get("presets", {}).get("rows", []):
        name = row["preset"]
        out[f"{name}_ort_over_torch_b8"] = round(row["ORT b8 triples/s"] / row["torch b8 triples/s"], 2)
        out[f"{name}_served_c4_over_inprocess_pipeline_b8"] = round(row["served c4 triples/s"]
                                                                    / row["pipeline b8 triples/s"], 2)


def _ratios_ray(r: dict, out: dict) -> None:
    if "ray" in r:
        rate = {x["workers"]: x["triples_s"] for x in r["ray"]["rows"] if x["engine"] == "ray"}
        for w in sorted(k for k in rate if k != 1):
            if 1 in rate:
                out[f"ray_{w}_workers_over_1"] = round(rate[w] / rate[1], 2)
        local = next((x["triples_s"] for x in r["ray"]["rows"] if x["engine"] == "local"), None)
        if local and rate:
            out["ray_best_over_local_engine"] = round(max(rate.values()) / local, 2)


def _ratios_preprocess(r: dict, out: dict) -> None:
    if "preprocess" in r:
        rows = r["preprocess"]["rows"]
        for size in (512, 1024):
            rate = {x["decoder"]: x["images_s"] for x in rows if x["format"] == "JPEG" and x["size"] == size}
            for name, key in (("pillow draft", "draft"), ("torchvision cpu", "torchvision_cpu"),
                              ("torchvision cuda", "nvjpeg")):
                if rate.get("pillow") and rate.get(name):
                    out[f"jpeg{size}_{key}_over_pillow"] = round(rate[name] / rate["pillow"], 2)


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(x.get(k, "")) for k in keys) + " |" for x in rows]
    return "\n".join(lines)


def to_markdown(r: dict) -> str:
    m = r["machine"]
    parts = [f"machine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), f"command: `{m['command']}`"]
    for section in ("inprocess", "served", "uploads", "graphs", "precheck", "sessions", "explain", "presets",
                    "preprocess", "ray"):
        if section in r:
            parts += [f"\n### {section}\n", _table(r[section]["rows"])]
    parts += ["\n### ratios (this run)\n", _table([{"ratio": k, "value": v} for k, v in r["ratios"].items()])]
    return "\n".join(parts) + "\n"
