"""A new harm in an afternoon: how many labelled edits `editguard train --from` needs, and what it costs the
other categories.

For each held-out category: a base model is trained without it (its positives removed from train and val,
not relabelled as safe), then the category is added back with `train --from` from N labelled positives and
N fresh negatives (positives: the base's removed training items and a fresh synth draw; negatives: the fresh
draw). Reported against N: the category's AUROC (iid test, ood) beside the model trained on all its data
(the demo's model), the old categories' largest ood AUROC drop and the share of ood verdicts that flip at
the base's thresholds (precision >= 0.9 on val), and wall time. Baselines: a logistic regression on the
base's frozen fused features (head-only), `--tune all` (distillation), no replay, and for a pair-only
category the same growth from an output-only base.

    python -m scripts.new_category --data demo --out runs/new_category

`--data` holds the benchmark's train, val, test and ood folders (`make demo` writes them; missing ones are
synthesised). Writes OUT/new_category.{md,json} and OUT/new_category.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from scripts.experiments import EPOCHS, SETTINGS, run, write_table

FRESH = dict(n=6000, seed=11, split="iid")  # the review queue's draw: new positives and fresh negatives
PRECISION = 0.9  # the base's installed thresholds: precision >= this on val (the demo's target)


def manifest_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def without(path: Path, category: str, suffix: str) -> Path:
    """``path``'s manifest with every item of ``category`` removed, beside it (paths stay relative)."""
    return write_lines(path.with_name(f"manifest-{suffix}.jsonl"),
                       [r for r in manifest_lines(path) if category not in r["labels"]])


def new_set(sets: dict, category: str, n: int, seed: int, out: Path) -> Path:
    """N positives of ``category`` (the base's removed training items first, then the fresh draw) and N fresh
    negatives, in one manifest under ``out`` (image paths made absolute)."""
    def absolute(r: dict, root: Path) -> dict:
        r = dict(r)
        for k in ("input_image", "output_image", "mask"):
            if r.get(k):
                r[k] = str((root / r[k]).resolve())
        return r

    rng = np.random.default_rng(seed)
    pos = [absolute(r, sets["train"].parent) for r in manifest_lines(sets["train"]) if category in r["labels"]]
    fresh = [absolute(r, sets["fresh"].parent) for r in manifest_lines(sets["fresh"])]
    pos += [r for r in fresh if category in r["labels"]]
    neg = [r for r in fresh if category not in r["labels"]]
    if n > len(pos):
        raise SystemExit(f"{category}: {n} positives asked, {len(pos)} available; synthesise more fresh data")
    pick = [pos[i] for i in rng.permutation(len(pos))[:n]] + [neg[i] for i in rng.permutation(len(neg))[:n]]
    out.mkdir(parents=True, exist_ok=True)
    return write_lines(out / f"new-{category}-{n}.jsonl", pick)


def taxonomy(names: list[str], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": path.stem, "categories": names}, indent=2))
    return path


class Scores:
    """Probabilities of a model dir on the benchmark's sets, cached beside the model."""

    def __init__(self, sets: dict):
        self.sets = sets

    def __call__(self, model: Path, split: str) -> tuple[list[str], np.ndarray]:
        from editguard.manifest import read_manifest
        from editguard.model.model_dir import load_model_dir
        from editguard.training.data import TripleDataset, collate_batch
        from editguard.training.loop import predict
        import torch

        names = json.loads((model / "config.json").read_text())["labels"]
        f = model / f"probs_{split}.npy"
        if not f.exists():
            net, pre = load_model_dir(model)
            recs = read_manifest(self.sets[split], allow_outside_root=True)
            for r in recs:
                r.labels = []  # the base model does not know the held-out category
            loader = torch.utils.data.DataLoader(TripleDataset(recs, pre, names, cache=False), 128,
                                                 collate_fn=collate_batch)
            np.save(f, predict(net, loader, torch.device("cpu")))
        return names, np.load(f)

    def labels(self, split: str, names: list[str]) -> np.ndarray:
        rows = manifest_lines(self.sets[split])
        return np.array([[n in r["labels"] for n in names] for r in rows], np.float32)


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p))


def features(model: Path, manifest: Path) -> np.ndarray:
    """The base's fused features (what every head reads) of a manifest's items, no augmentation."""
    import torch

    from editguard.manifest import read_manifest
    from editguard.model.model_dir import load_model_dir
    from editguard.training.data import TripleDataset, collate_batch

    net, pre = load_model_dir(model)
    recs = read_manifest(manifest, allow_outside_root=True)
    for r in recs:
        r.labels = []
    out = []
    with torch.no_grad():
        for b in torch.utils.data.DataLoader(TripleDataset(recs, pre, net.cfg.labels, cache=False), 128,
                                             collate_fn=collate_batch):
            b.pop("labels")
            out.append(net.features(**b).numpy())
    return np.concatenate(out)


def head_only(base: Path, new: Path, replay: Path, category: str, sets: dict, n_replay: int) -> dict:
    """Logistic regression on the base's frozen fused features: the new set and the same replayed negatives."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cache = base / "features"
    cache.mkdir(exist_ok=True)

    def feats(name: str, manifest: Path) -> np.ndarray:
        f = cache / f"{name}.npy"
        if not f.exists():
            np.save(f, features(base, manifest))
        return np.load(f)

    rep = feats("replay", replay)[np.random.default_rng(0).permutation(len(manifest_lines(replay)))[:n_replay]]
    x = np.concatenate([feats(new.stem, new), rep])
    y = np.concatenate([[category in r["labels"] for r in manifest_lines(new)], np.zeros(len(rep), bool)])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000, class_weight="balanced")).fit(x, y)
    res = {}
    for split in ("test", "ood"):
        truth = np.array([category in r["labels"] for r in manifest_lines(sets[split])])
        res[split] = auroc(truth, clf.predict_proba(feats(split, sets[split]))[:, 1])
    return res


def old_change(scores: Scores, base: Path, grown: Path, category: str) -> dict:
    """The old categories on ood: largest AUROC drop from the base, and the share of verdicts (category,
    item) that flip at the base's thresholds."""
    from scripts.experiments import thresholds

    names, p_base = scores(base, "ood")
    grown_names, p_grown = scores(grown, "ood")
    p_grown = p_grown[:, [grown_names.index(n) for n in names]]
    y = scores.labels("ood", names)
    drops = {n: auroc(y[:, j], p_base[:, j]) - auroc(y[:, j], p_grown[:, j]) for j, n in enumerate(names)}
    _, v_base = scores(base, "val")
    th = thresholds(scores.labels("val", names), v_base, PRECISION)
    flips = (p_base >= th) != (p_grown >= th)
    return {"max_auroc_drop": max(drops.values()), "worst": max(drops, key=drops.get),
            "verdict_flips": float(flips.mean()), "items_flipped": float(flips.any(1).mean())}


def grow_row(scores: Scores, sets: dict, base: Path, out: Path, category: str, n: int, *extra: str,
             name: str = "") -> dict:
    names = json.loads((base / "config.json").read_text())["labels"]
    model = out / f"grown-{n}{name}"
    new = new_set(sets, category, n, seed=n, out=out / "data")
    seconds = None
    if not (model / "metrics.json").exists():
        t0 = time.perf_counter()
        run("train", "--from", str(base), "--taxonomy", str(taxonomy(names + [category], out / "taxonomy.json")),
            "--train", str(new), "--val", str(sets["val"]), "--out", str(model), "--device", "cpu",
            "--allow-outside-root", "--no-progress", *extra)
        seconds = time.perf_counter() - t0
    grown = json.loads((model / "grown_from.json").read_text())
    row = {"n": n, "variant": name.strip("-") or "branch", "seconds": round(seconds or grown["seconds"], 1)}
    for split in ("test", "ood"):
        g_names, p = scores(model, split)
        row[split] = auroc(scores.labels(split, [category])[:, 0], p[:, g_names.index(category)])
    row.update(old_change(scores, base, model, category))
    return row


def base_model(sets: dict, category: str, out: Path, ablation: str = "triple") -> Path:
    model = out / ("base" if ablation == "triple" else f"base-{ablation}")
    if not (model / "metrics.json").exists():
        names = [n for n in json.loads((Path(__file__).parents[1] / "model/default_taxonomy.json").read_text())[
            "categories"]]
        tax = taxonomy([c["name"] for c in names if c["name"] != category], out / "base-taxonomy.json")
        run("train", "--train", str(without(sets["train"], category, f"no-{category}")),
            "--val", str(without(sets["val"], category, f"no-{category}")), "--taxonomy", str(tax),
            "--out", str(model), "--epochs", str(EPOCHS), "--device", "cpu", "--ablation", ablation, "--no-progress")
    return model


def seconds_of(model: Path) -> float:
    return round(sum(json.loads(line)["seconds"] for line in (model / "train_log.jsonl").read_text().splitlines()), 1)


def forward_cost(models: dict[str, Path], reps: int = 7) -> dict[str, float]:
    """Each model's torch forward time on one batch of 64 (the first model's validation examples), relative
    to the first, measured in one run (median of ``reps``, turns interleaved)."""
    import torch
    from safetensors.torch import load_file

    from editguard.model.model_dir import load_model_dir
    from editguard.model.prompt_cache import PromptCache, with_cache

    nets = {k: load_model_dir(m)[0] for k, m in models.items()}
    ex = load_file(str(next(iter(models.values())) / "examples.safetensors"))
    batch = {k: v.repeat(4, *[1] * (v.ndim - 1))[:64] for k, v in ex.items()}
    times: dict[str, list[float]] = {k: [] for k in nets}
    caches = {k: PromptCache.of(net) for k, net in nets.items()}  # the prompt tower once per prompt, as in training
    with torch.no_grad():
        for _ in range(reps):
            for k, net in nets.items():
                t0 = time.perf_counter()
                net(**with_cache(caches[k], batch))
                times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    first = next(iter(med.values()))
    return {k: round(v / first, 2) for k, v in med.items()}


def plot(rows: dict, full: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cats = list(rows)
    fig, axes = plt.subplots(1, len(cats), figsize=(5.5 * len(cats), 4), squeeze=False)
    for ax, c in zip(axes[0], cats):
        for variant, style in (("branch", "o-"), ("towers", "D"), ("tune-all", "x"), ("head-only", "s--"),
                               ("output-only", "^:")):
            pts = [r for r in rows[c] if r["variant"] == variant]
            if pts:
                ax.plot([r["n"] for r in pts], [r["ood"] for r in pts], style, label=f"{variant} (ood)")
        ax.axhline(full[c]["ood"], color="k", lw=1, label="trained on all its data (ood)")
        ax.axhline(full[c]["ood"] - 0.02, color="k", lw=1, ls=":", label="goal: within 0.02")
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["n"] for r in rows[c]}), [str(n) for n in sorted({r["n"] for r in rows[c]})])
        ax.minorticks_off()
        ax.set_xlabel("labelled positives N (and N negatives)")
        ax.set_ylabel("AUROC of the new category")
        ax.set_title(c)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="demo", help="folder with train/ val/ test/ ood/ (default: %(default)s)")
    ap.add_argument("--full", default=None, help="a model trained on all the data (default: DATA/model)")
    ap.add_argument("--out", default="runs/new_category", help="models, data and tables (default: %(default)s)")
    ap.add_argument("--categories", nargs="+", default=["violence_gore", "identity_alteration"],
                    help="categories to hold out and add back (default: %(default)s)")
    ap.add_argument("--sizes", nargs="+", type=int, default=[25, 50, 100, 200, 400])
    ap.add_argument("--pair-only", default="identity_alteration",
                    help="the category also grown from an output-only base (default: %(default)s)")
    ap.add_argument("--output-only-sizes", nargs="+", type=int, default=[25, 200],
                    help="N for the output-only base's growth (default: %(default)s)")
    ap.add_argument("--compare-at", type=int, default=200, help="N for --tune all and no replay (default: %(default)s)")
    a = ap.parse_args(argv)
    data, out = Path(a.data), Path(a.out)
    sets = {}
    for name, s in {**SETTINGS, "fresh": FRESH}.items():
        folder = (out / "data" if name == "fresh" else data) / name
        if not (folder / "manifest.jsonl").exists():
            run("synth", "--out", str(folder), "--n", str(s["n"]), "--seed", str(s["seed"]), "--split", s["split"])
        sets[name] = folder / "manifest.jsonl"
    full = Path(a.full) if a.full else data / "model"
    if not (full / "metrics.json").exists():
        run("train", "--train", str(sets["train"]), "--val", str(sets["val"]), "--out", str(full), "--epochs",
            str(EPOCHS), "--device", "cpu", "--no-progress")
    scores = Scores(sets)
    rows, full_rows = {}, {}
    for c in a.categories:
        folder = out / c
        base = base_model(sets, c, folder)
        names, _ = scores(full, "test")
        full_rows[c] = {s: auroc(scores.labels(s, [c])[:, 0], scores(full, s)[1][:, names.index(c)])
                        for s in ("test", "ood")}
        full_rows[c]["seconds"] = seconds_of(full)
        full_rows[c]["base_seconds"] = seconds_of(base)
        rows[c] = [grow_row(scores, sets, base, folder, c, n, "--tune", "branch") for n in a.sizes]
        rows[c] += [grow_row(scores, sets, base, folder, c, a.compare_at, "--tune", "branch", "--replay-size", "0",
                             name="-no-replay"),
                    grow_row(scores, sets, base, folder, c, a.compare_at, "--tune", "all", name="-tune-all"),
                    grow_row(scores, sets, base, folder, c, a.compare_at, "--tune", "towers", name="-towers")]
        for n in a.sizes:
            new = new_set(sets, c, n, seed=n, out=folder / "data")
            rows[c].append({"n": n, "variant": "head-only",
                            **head_only(base, new, without(sets["train"], c, f"no-{c}"), c, sets, 2000)})
        if c == a.pair_only:
            ob = base_model(sets, c, folder, "output-only")
            full_rows[c]["output_only_base_seconds"] = seconds_of(ob)
            for n in a.output_only_sizes:
                r = grow_row(scores, sets, ob, folder, c, n, "--tune", "branch", name="-output-only")
                rows[c].append(dict(r, variant="output-only"))
    n = a.compare_at
    costs = {c: forward_cost({"parent": out / c / "base", "branch": out / c / f"grown-{n}",
                              "towers": out / c / f"grown-{n}-towers"}) for c in a.categories}
    md = table(rows, full_rows) + "\n\nForward time of a batch of 64 on the CPU, relative to the parent (one run):\n\n" + \
        "| category | parent | branch | towers |\n|---|---:|---:|---:|\n" + "\n".join(
            f"| {c} | {v['parent']:.2f} | {v['branch']:.2f} | {v['towers']:.2f} |" for c, v in costs.items())
    full_rows["forward_cost"] = costs
    write_table(out, "new_category", md, {"rows": rows, "full": full_rows})
    plot(rows, {c: full_rows[c] for c in rows}, out / "new_category.png")
    return 0


def table(rows: dict, full: dict) -> str:
    lines = []
    for c, rs in rows.items():
        f = full[c]
        lines += [f"\n### {c}\n",
                  f"Trained on all its data (full retraining, {f['seconds']:.0f} s): AUROC iid {f['test']:.4f}, "
                  f"ood {f['ood']:.4f}. Base without it: {f['base_seconds']:.0f} s.\n",
                  "| variant | N | AUROC iid | AUROC ood | ood gap to full | old: max ood AUROC drop | old: verdicts "
                  "flipped | items flipped | seconds |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in rs:
            old = (f"{r['max_auroc_drop']:+.4f} ({r['worst']}) | {100 * r['verdict_flips']:.2f}% | "
                   f"{100 * r['items_flipped']:.2f}% | {r['seconds']:.0f}") if "seconds" in r else "n/a | n/a | n/a | n/a"
            lines.append(f"| {r['variant']} | {r['n']} | {r['test']:.4f} | {r['ood']:.4f} | "
                         f"{r['ood'] - f['ood']:+.4f} | {old} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
