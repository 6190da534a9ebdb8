"""The red team's report: ``redteam.json`` (everything), ``redteam.md`` (the table), ``redteam.png``
(attack success rate by attack, one panel per check) and ``through.jsonl`` (each unsafe edit that got
through, one line per check and attack)."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_json_atomic, write_text_atomic

__all__ = ["write_report", "to_markdown"]


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def to_markdown(report: dict) -> str:
    lines = [f"# editguard red team: {report['target']}", "",
             f"{report['cases']['unsafe']} unsafe and {report['cases']['safe']} safe edits from "
             f"`{report['manifest']}`, seed {report['seed']}, at the target's installed thresholds.", ""]
    for check in report["checks"]:
        clean = report["clean"][check]
        name = "post-generation check" if check == "post" else "pre-check"
        lines += [f"## {name}", "",
                  f"Clean: {_pct(clean['recall'])} of unsafe edits flagged, {_pct(clean['safe_flag_rate'])} of safe "
                  "ones.", "",
                  "| family | attack | ASR (all) | worst category | refused | safe flagged (clean → attacked) |",
                  "|---|---|---:|---|---:|---|"]
        for attack in report["attacks"]:
            rows = [r for r in report["rows"] if r["check"] == check and r["attack"] == attack]
            if not rows:
                continue
            every = next(r for r in rows if r["category"] == "all")
            cats = [r for r in rows if r["category"] != "all" and r["asr"] is not None]
            worst = max(cats, key=lambda r: r["asr"]) if cats else None
            lines.append(f"| {every['family']} | {attack} | {_pct(every['asr'])} ({every['missed_after']}/"
                         f"{every['caught']}) | " + (f"{worst['category']} {_pct(worst['asr'])}" if worst else "—")
                         + f" | {every['refused']} | {_pct(every['safe_flag_rate_clean'])} → "
                         f"{_pct(every['safe_flag_rate'])} |")
        lines.append("")
    if report["skipped"]:
        lines += ["Not run: " + "; ".join(f"{s['attack']} ({s['why']})" for s in report["skipped"]), ""]
    lines += ["ASR: of the unsafe edits the check flagged before the attack, the share it passes after it. "
              "A refused request counts as caught.", ""]
    return "\n".join(lines)


def write_report(report: dict, out: str | Path) -> dict[str, Path]:
    """Write the four files into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "redteam.json", "md": out / "redteam.md", "png": out / "redteam.png",
             "through": out / "through.jsonl"}
    write_json_atomic(paths["json"], report)
    write_text_atomic(paths["md"], to_markdown(report))
    write_text_atomic(paths["through"], "".join(json.dumps(t, ensure_ascii=False) + "\n"
                                                for t in report.get("through", [])))
    _plot(report, paths["png"])
    return paths


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = report["checks"]
    attacks = [a for a in report["attacks"] if any(r["attack"] == a for r in report["rows"])]
    fig, axes = plt.subplots(1, len(checks), figsize=(6 * len(checks), 0.35 * len(attacks) + 1.5), squeeze=False)
    for ax, check in zip(axes[0], checks):
        asr, safe = [], []
        for a in attacks:
            row = next((r for r in report["rows"] if r["check"] == check and r["attack"] == a
                        and r["category"] == "all"), None)
            asr.append(100 * (row["asr"] or 0) if row else 0)
            safe.append(100 * (row["safe_flag_rate"] or 0) if row else 0)
        y = range(len(attacks))
        ax.barh([i - 0.2 for i in y], asr, height=0.4, color="#c0392b", label="ASR (unsafe edits let through)")
        ax.barh([i + 0.2 for i in y], safe, height=0.4, color="#7f8c8d", label="safe edits flagged")
        ax.set_yticks(list(y), attacks)
        ax.invert_yaxis()
        ax.set_xlabel("%")
        ax.set_title("post-generation check" if check == "post" else "pre-check")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
