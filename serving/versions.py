"""The versions a repository serves and a server holds: list them, pin one, unpin, roll back.

Triton serves the version folders its ``version_policy`` selects: editguard's configs say
``latest { num_versions: 2 }``, so a new export is served next to the one before it, and requests
that name no version get the newest. Pinning writes ``specific { versions: [V] }`` into every config
(``config.pbtxt`` and ``configs/*.pbtxt``) of the client-facing model and the models behind it (its
networks and the ensemble's steps), in the repository that every replica reads. Each server given
then reloads them, one at a time (:func:`~editguard.serving.control.roll_out`): Triton keeps serving
the loaded versions until the reloaded ones are ready, and lets requests in flight on a retired one
finish. A pin lasts through restarts and new replicas; an export while pinned adds a version that
is not served until :func:`set_policy` unpins it. A roll-back pins the newest version older than
the one served: no model dir is needed, every exported version stays on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model.pbtxt import read_config, write_config
from ..model.repository import PAIRS, PROMPTS, graph_models, templates_dir, versions
from .control import roll_out, server_models, serving_version

__all__ = ["repository_models", "pinned", "set_policy", "rollback_target", "serving_now", "apply_policy",
           "list_versions", "format_listing"]


def repository_models(repository: str | Path, client_model: str) -> list[str]:
    """The models one version of ``client_model`` is made of in ``repository``, networks first (as export writes
    them)."""
    repo = Path(repository)
    return [m for m in graph_models(client_model, bool(versions(repo, PROMPTS[client_model]))) if (repo / m).is_dir()]


def _configs(repo: Path, model: str) -> list[Path]:
    return [p for p in [repo / model / "config.pbtxt", *sorted((repo / model / "configs").glob("*.pbtxt"))]
            if p.exists()]


def pinned(repository: str | Path, client_model: str) -> int | None:
    """The version ``client_model``'s config pins in ``repository``, or None when it follows its latest versions."""
    policy = read_config(Path(repository) / client_model / "config.pbtxt").version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return None
    return int(policy.specific.versions[0]) if len(policy.specific.versions) == 1 else None


def set_policy(repository: str | Path, client_model: str, version: int | None) -> list[Path]:
    """Pin ``client_model`` and the models behind it to ``version`` in ``repository``, or (None) give them back their
    committed policy (the latest two). Every model must have that version on disk. Returns the configs
    written (atomically, comments kept)."""
    repo = Path(repository)
    if client_model not in PAIRS:
        raise ValueError(f"model must be one of {sorted(PAIRS)}, got {client_model!r}")
    if not (repo / client_model / "config.pbtxt").exists():
        raise FileNotFoundError(f"{repo} has no {client_model} model; export one with `editguard export MODEL_DIR "
                                f"--repository {repo}`")
    models = repository_models(repo, client_model)
    if version is not None:
        lacking = [m for m in models if version not in versions(repo, m)]
        if lacking:
            raise FileNotFoundError(f"version {version} of {client_model} is not in {repo} for {', '.join(lacking)}; "
                                    f"versions on disk: {versions(repo, client_model)}")
    written = []
    for model in models:
        committed = read_config(templates_dir() / model / "config.pbtxt").version_policy
        for path in _configs(repo, model):
            cfg = read_config(path)
            before = cfg.SerializeToString()
            cfg.ClearField("version_policy")
            if version is None:
                cfg.version_policy.CopyFrom(committed)
            else:
                cfg.version_policy.specific.versions.append(version)
            if cfg.SerializeToString() != before:
                write_config(path, cfg)
                written.append(path)
    return written


def rollback_target(repository: str | Path, client_model: str, serving: int) -> int:
    """The newest version of ``client_model`` older than ``serving`` that every model behind it has on disk."""
    repo = Path(repository)
    models = repository_models(repo, client_model)
    older = [v for v in versions(repo, client_model) if v < serving and all(v in versions(repo, m) for m in models)]
    if not older:
        raise FileNotFoundError(f"{repo} has no version of {client_model} older than {serving} to roll back to "
                                f"(versions on disk: {versions(repo, client_model)})")
    return max(older)


def serving_now(repository: str | Path, client_model: str, urls: list[str], connection=None) -> int:
    """The version that answers requests naming none: the first server's newest ready one, else (no server,
    or the model not loaded there) the repository's pin or newest version."""
    serving = serving_version(server_models(urls[0], connection), client_model) if urls else None
    if serving is None:
        serving = pinned(repository, client_model) or max(versions(repository, client_model), default=0)
    return serving


def apply_policy(repository: str | Path, client_model: str, version: int | None, urls: list[str],
                 connection=None) -> tuple[list[Path], int | None]:
    """Pin ``client_model`` to ``version`` (None: unpin) in the repository (:func:`set_policy`), then reload the
    servers at ``urls`` one at a time (:func:`~editguard.serving.control.roll_out`). Returns the configs
    written and the version the first server answers with afterwards (None without servers). A server that
    refuses raises as ``roll_out`` does, after the repository was written."""
    written = set_policy(repository, client_model, version)
    if not urls:
        return written, None
    roll_out(urls, connection=connection, ensure=(PAIRS[client_model], client_model))
    return written, serving_version(server_models(urls[0], connection), client_model)


def _thresholds(version_dir: Path, labels: list[str]) -> dict:
    """A summary of a version's thresholds.json: which categories it calibrates, for what, from what."""
    path = version_dir / "thresholds.json"
    if not path.exists():
        return {"installed": False, "summary": "none installed: every category at 0.5"}
    doc = json.loads(path.read_text())
    cats = doc.get("categories", {})
    targets = sorted({str(c.get("target")) for c in cats.values() if c.get("target")})
    out = {"installed": True, "calibrated": sorted(n for n in labels if n in cats), "targets": targets,
           "created": doc.get("created"), "source": doc.get("source"), "carried_from": doc.get("carried_from"),
           "thresholds": {n: round(float(c["threshold"]), 4) for n, c in cats.items()}}
    text = f"{len(out['calibrated'])}/{len(labels)} categories"
    text += f" for {', '.join(targets)}" if targets else ""
    text += f", from {doc['source']}" if doc.get("source") else ""
    text += f", {doc['created']}" if doc.get("created") else ""
    text += f" (carried from version {doc['carried_from']})" if doc.get("carried_from") else ""
    out["summary"] = text
    return out


def list_versions(repository: str | Path | None, held: dict[str, dict[str, str]] | None) -> dict:
    """What each client-facing model has: per version, on disk (labels, thresholds) and on the server (state).
    ``held``: :func:`~editguard.serving.control.server_models` of one server, or None; ``repository``: the
    repository on disk, or None."""
    repo = Path(repository) if repository else None
    doc: dict = {"repository": str(repo) if repo else None, "models": {}}
    for client_model in PAIRS:
        on_disk = versions(repo, client_model) if repo else []
        states = (held or {}).get(client_model, {})
        if not on_disk and not states:
            continue
        entry: dict = {"pinned": pinned(repo, client_model) if repo and on_disk else None,
                       "serving": serving_version(held, client_model) if held is not None else None, "versions": {}}
        for v in sorted({*on_disk, *(int(k) for k in states if k.isdigit())}):
            row: dict = {"on_disk": v in on_disk}
            if held is not None:
                row["state"] = states.get(str(v), "not loaded")
            if v in on_disk:
                labels = json.loads((repo / client_model / str(v) / "config.json").read_text())["labels"]
                row.update(labels=labels, thresholds=_thresholds(repo / client_model / str(v), labels))
            entry["versions"][str(v)] = row
        doc["models"][client_model] = entry
    return doc


def format_listing(doc: dict) -> str:
    """:func:`list_versions` as a table per model."""
    out = []
    for client_model, entry in doc["models"].items():
        policy = f"pinned to version {entry['pinned']}" if entry["pinned"] else "the latest two versions"
        serving = f"; requests without a version get {entry['serving']}" if entry["serving"] else ""
        out.append(f"{client_model}: {policy}{serving}")
        out.append(f"  {'version':>7}  {'server':<22} {'labels':>6}  thresholds")
        for v, row in reversed(list(entry["versions"].items())):
            labels = str(len(row["labels"])) if "labels" in row else "-"
            thresholds = row["thresholds"]["summary"] if "thresholds" in row else "(not in the repository here)"
            out.append(f"  {v:>7}  {row.get('state', '-'):<22} {labels:>6}  {thresholds}")
    return "\n".join(out) or "no editguard models here"
