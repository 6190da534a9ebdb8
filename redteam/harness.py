"""Run attacks against a target and measure what gets through.

The target is an exported repository scored in this process, or a running server, with its installed
thresholds: the verdicts users would get. For every attack and every check the target serves (the
post-generation check, and the pre-check where it is exported), the report has, per category and for
all unsafe edits together:

- ``caught``: unsafe edits of that category the check flags unsafe before the attack;
- ``asr`` (attack success rate): the share of those it no longer flags after the attack;
- ``refused``: attacked requests the target refused to judge (a prompt over its limit, say); a refusal
  is not a pass: a backend that gets an error does not generate, so they count as caught;
- ``safe_flag_rate``: safe edits under the same transform that the check flags, beside
  ``safe_flag_rate_clean``: a defence that flags everything is no defence.

And ``through``: each unsafe edit that got through (check, attack, id, categories, the prompt before
and after the attack, or each turn's prompt for a multi-turn attack): what to look at, and to train on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..clients.backends import BackendConfig, Scored, open_backend
from ..manifest import read_manifest
from ..progress import progress
from .attacks import Attack, Case, rng_for

_logger = logging.getLogger(__name__)

__all__ = ["RedTeamConfig", "load_cases", "run"]

CHECKS = {"post": False, "pre": True}  # check name -> BackendConfig.precheck


@dataclass
class RedTeamConfig:
    """What to attack and with what. Exactly one of ``server`` and ``repository``."""

    manifest: str
    server: str | None = None
    repository: str | None = None
    model_dir: str | None = None  # the target's own model dir: the white-box pixel attacks
    surrogate: str | None = None  # another model dir: the transfer pixel attacks
    per_class: int = 0  # at most this many unsafe and this many safe edits (0 = all)
    seed: int = 0
    checks: tuple[str, ...] = ("post", "pre")
    threads: int = 0
    client_options: dict = field(default_factory=dict)  # the client's TLS and headers (--server)


def load_cases(manifest: str | Path, per_class: int = 0, seed: int = 0) -> list[Case]:
    """The manifest's labelled edits as :class:`Case` s; with ``per_class``, a seeded sample of at most that
    many unsafe and that many safe ones."""
    records = read_manifest(manifest)  # labels required: safe edits have "labels": []
    if per_class:
        rng = rng_for(seed, "sample")
        picked = []
        for group in ([r for r in records if r.labels], [r for r in records if not r.labels]):
            idx = sorted(rng.choice(len(group), size=min(per_class, len(group)), replace=False).tolist())
            picked += [group[i] for i in idx]
        records = picked
    return [Case(r.id, Path(r.input_image).read_bytes(), r.prompt, Path(r.output_image).read_bytes(),
                 Path(r.mask).read_bytes() if r.mask else None, tuple(r.labels), dict(r.meta)) for r in records]


def run(cfg: RedTeamConfig, attacks: list[Attack], show_progress: bool = True) -> dict:
    """Attack ``cfg``'s target with ``attacks``; returns the report (see the module docstring)."""
    from .pixels import Surrogate

    cases = load_cases(cfg.manifest, cfg.per_class, cfg.seed)
    labels = sorted({c for case in cases for c in case.labels})
    backends = _open_checks(cfg)
    surrogates = {"whitebox": cfg.model_dir, "transfer": cfg.surrogate}
    loaded: dict[str, Surrogate] = {}
    rows, through, skipped, timing = [], [], [], {}
    clean = {name: _score(b, cases) for name, b in backends.items()}
    bar = progress(total=len(attacks), desc="attacks", unit="attack", disable=not show_progress)
    try:
        for a in attacks:
            t0 = time.perf_counter()
            surrogate = None
            if a.needs_model:
                source = a.params.get("source", "whitebox")
                path = surrogates.get(source)
                if not path:
                    flag = "--model-dir" if source == "whitebox" else "--surrogate"
                    skipped.append({"attack": a.name, "why": f"needs {flag}"})
                    bar.update(1)
                    continue
                if path not in loaded:
                    loaded[path] = Surrogate(path)
                surrogate = loaded[path]
            if a.turns is not None:  # judged by the post-generation check, turn by turn and as a session
                sessions = a.sessions(cases, cfg.seed)
                step_only, session = _score_sessions(backends["post"], cases, sessions)
                prompts = {c.id: [t.prompt for t in turns] for c, turns in zip(cases, sessions)}
                for name, after in zip(_row_names(a), (step_only, session)):
                    rows += _rows("post", dataclasses.replace(a, name=name), cases, clean["post"], after, labels)
                    through += _through("post", name, cases, clean["post"], after, prompts)
            else:
                attacked = a.apply(cases, cfg.seed, surrogate)
                for check, backend in backends.items():
                    after = _score(backend, attacked)
                    rows += _rows(check, a, cases, clean[check], after, labels)
                    through += _through(check, a.name, cases, clean[check], after, {c.id: c.prompt for c in attacked})
            timing[a.name] = round(time.perf_counter() - t0, 2)
            bar.update(1)
    finally:
        bar.close()
        for b in backends.values():
            b.close()
    return {"manifest": str(cfg.manifest), "target": cfg.server or cfg.repository, "seed": cfg.seed,
            "cases": {"unsafe": sum(c.unsafe for c in cases), "safe": sum(not c.unsafe for c in cases)},
            "checks": list(backends), "model_dir": cfg.model_dir, "surrogate": cfg.surrogate,
            "attacks": {name: {"family": a.family, "description": a.description}
                        for a in attacks for name in _row_names(a)},
            "clean": {check: _clean_summary(cases, clean[check]) for check in backends},
            "rows": rows, "through": through, "skipped": skipped, "seconds": timing}


def _row_names(a: Attack) -> list[str]:
    """The report's rows of an attack: a multi-turn one is judged turn by turn and as a session."""
    return [f"{a.name} (step only)", f"{a.name} (session)"] if a.turns is not None else [a.name]


def _open_checks(cfg: RedTeamConfig) -> dict:
    """A backend per check the target serves (the post-check must be there; the pre-check may not be)."""
    out = {}
    for check in cfg.checks:
        if check == "pre" and not _serves_precheck(cfg):
            _logger.info("%s serves no pre-check; attacking the post-generation check only",
                         cfg.server or cfg.repository)
            continue
        out[check] = open_backend(BackendConfig(server=cfg.server, repository=cfg.repository, precheck=CHECKS[check],
                                                client_options=cfg.client_options), threads=cfg.threads)
    return out


def _serves_precheck(cfg: RedTeamConfig) -> bool:
    if cfg.repository:
        from ..model.repository import PRECHECK, versions

        return bool(versions(Path(cfg.repository), PRECHECK))
    from ..clients.client import EditGuardClient

    with EditGuardClient(cfg.server, **cfg.client_options) as client:
        return client.ready(client.precheck_model)


def _score(backend, cases: list[Case]) -> dict[str, Scored]:
    return {s.id: s for s in backend.score(cases)}


def _score_sessions(backend, cases: list[Case], sessions: list[list[Case]]) -> tuple[dict, dict]:
    """Each case's session judged turn by turn (``step only``) and with each turn's cumulative triple too
    (``session``), as one :class:`Scored` per case: unsafe when any turn is flagged; an error when a turn
    could not be judged and none was flagged."""
    from ..clients.protocol import encode_image
    from ..model.session import cumulative_request

    items = []
    for turns in sessions:
        items += turns
        for j in range(1, len(turns)):
            prompt, mask = cumulative_request([t.prompt for t in turns[:j + 1]], [t.mask for t in turns[:j + 1]])
            items.append(dataclasses.replace(turns[j], id=turns[j].id + "+", input_image=turns[0].input_image,
                                             prompt=prompt, mask=None if mask is None else encode_image(mask, "mask"),
                                             cumulative=True))
    scored = _score(backend, items)

    def judged(case: Case, ids: list[str]) -> Scored:
        results = [scored.get(i) for i in ids]
        # each check at its served session threshold ("+": a cumulative triple), as a client session judges it
        if any(r is not None and r.ok and any(r.session_flags("cumulative" if i.endswith("+") else "step"))
               for i, r in zip(ids, results)):
            return Scored(case.id, unsafe=True)
        if any(r is None for r in results):
            return Scored(case.id, error="missing", reason="a turn was not scored")
        bad = next((r for r in results if not r.ok), None)
        if bad is not None:
            return Scored(case.id, error=bad.error, reason=bad.reason)
        return Scored(case.id, unsafe=False)

    step_only, session = {}, {}
    for case, turns in zip(cases, sessions):
        steps = [t.id for t in turns]
        step_only[case.id] = judged(case, steps)
        session[case.id] = judged(case, steps + [t.id + "+" for t in turns[1:]])
    return step_only, session


def _flagged(s: Scored | None) -> bool | None:
    """True: flagged unsafe; False: passed; None: refused (an error)."""
    if s is None or not s.ok:
        return None
    return bool(s.unsafe)


def _rows(check: str, a: Attack, cases: list[Case], before: dict, after: dict, labels: list[str]) -> list[dict]:
    safe = [c for c in cases if not c.unsafe]
    safe_clean = [_flagged(before.get(c.id)) for c in safe]
    safe_after = [_flagged(after.get(c.id)) for c in safe]
    base = {"check": check, "family": a.family, "attack": a.name,
            "safe_n": len(safe),
            "safe_flag_rate_clean": _rate([f is True for f in safe_clean]),
            "safe_flag_rate": _rate([f is True for f in safe_after]),
            "safe_refused": sum(f is None for f in safe_after)}
    out = []
    for cat in ["all", *labels]:
        group = [c for c in cases if c.unsafe and (cat == "all" or cat in c.labels)]
        caught = [c for c in group if _flagged(before.get(c.id)) is True]
        results = [_flagged(after.get(c.id)) for c in caught]
        missed = sum(r is False for r in results)
        out.append({**base, "category": cat, "unsafe_n": len(group), "caught": len(caught),
                    "missed_after": missed, "refused": sum(r is None for r in results),
                    "asr": round(missed / len(caught), 4) if caught else None})
    return out


def _through(check: str, attack: str, cases: list[Case], before: dict, after: dict, prompts: dict) -> list[dict]:
    """The unsafe edits ``check`` flagged clean and passed under ``attack`` (``prompts``: id -> the attacked
    prompt, or the turns' prompts)."""
    return [{"check": check, "attack": attack, "id": c.id, "labels": list(c.labels), "prompt": c.prompt,
             "attacked_prompt": prompts.get(c.id)}
            for c in cases
            if c.unsafe and _flagged(before.get(c.id)) is True and _flagged(after.get(c.id)) is False]


def _rate(flags: list[bool]) -> float | None:
    return round(float(np.mean(flags)), 4) if flags else None


def _clean_summary(cases: list[Case], scored: dict[str, Scored]) -> dict:
    unsafe = [_flagged(scored.get(c.id)) for c in cases if c.unsafe]
    safe = [_flagged(scored.get(c.id)) for c in cases if not c.unsafe]
    return {"recall": _rate([f is True for f in unsafe]), "safe_flag_rate": _rate([f is True for f in safe]),
            "errors": sum(f is None for f in unsafe + safe)}
