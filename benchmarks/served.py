"""Served sections: a real Triton through the real client (concurrency sweep, pre-check, uploads, graphs) and
Ray batch scoring."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..model.repository import CLASSIFIER, CLIENT_MODEL, PREPARE, PROMPTS, VERDICTS
from .config import BenchConfig
from .timing import closed_loop, pct
from .workloads import PROMPT_POOL, UPLOAD_FORMS, ZIPF_S, prompt_stream, upload_calls, upload_triples


def _stats(client, model: str, headers: dict) -> dict[str, float]:
    s = client.get_inference_statistics(model, headers=headers, as_json=True)["model_stats"]
    tot = {"inferences": 0, "executions": 0, "queue_ns": 0, "compute_ns": 0, "requests": 0, "cache_hits": 0}
    for m in s:
        st = m["inference_stats"]
        tot["inferences"] += int(m.get("inference_count", 0))
        tot["executions"] += int(m.get("execution_count", 0))
        tot["requests"] += int(st.get("success", {}).get("count", 0))
        tot["queue_ns"] += int(st.get("queue", {}).get("ns", 0))
        tot["cache_hits"] += int(st.get("cache_hit", {}).get("count", 0))
        tot["compute_ns"] += sum(int(st.get(k, {}).get("ns", 0)) for k in ("compute_input", "compute_infer",
                                                                            "compute_output"))
    return tot


# the models of the triple model's graphs, by the short names the tables use
STEP_NAMES = {CLIENT_MODEL: "front", CLASSIFIER: "classifier", PROMPTS[CLIENT_MODEL]: "prompt", PREPARE: "prepare",
              VERDICTS: "verdicts"}


def _split(before: dict, after: dict) -> dict:
    """Per model that ran: mean executed batch, queue and compute per request (ms), from two statistics
    snapshots; for the prompt tower, the share of requests Triton's response cache answered."""
    row = {}
    for m in after:
        d = {k: after[m][k] - before[m][k] for k in after[m]}
        if not d["requests"] and m != CLIENT_MODEL:
            continue
        short = STEP_NAMES.get(m, m)
        row[f"{short}_mean_batch"] = round(d["inferences"] / max(d["executions"], 1), 2)
        row[f"{short}_queue_ms"] = round(d["queue_ns"] / max(d["requests"], 1) / 1e6, 3)
        row[f"{short}_compute_ms"] = round(d["compute_ns"] / max(d["requests"], 1) / 1e6, 3)
        if d["cache_hits"]:
            row[f"{short}_cache_hit_rate"] = round(d["cache_hits"] / max(d["requests"], 1), 3)
    return row


def _sweep_point(served: tuple, triples: list[dict], c: int, seconds: float, prompts: list[str] | None = None,
                 warm: int = 0) -> dict:
    """Closed loop at concurrency ``c`` through the client; ``prompts`` replace the triples' own, in order,
    the first ``warm`` of them sent before the measurement (so caches reach their steady state)."""
    from ..clients import EditGuardClient

    url, conn = served
    calls = [(t["input"], t["prompt"], t["output"]) for t in triples] if prompts is None else \
        [(triples[i % len(triples)]["input"], p, triples[i % len(triples)]["output"]) for i, p in enumerate(prompts)]
    with EditGuardClient(url, timeout=60, **conn.client_options()) as guard, conn.grpc_client(url) as stats_client:
        if warm:
            list(guard.classify_many([(str(i), *call) for i, call in enumerate(calls[:warm])], concurrency=16))
        guard.classify(*calls[-1])  # warm-up
        admin = conn.admin_headers()
        models = sorted({m.name for m in stats_client.get_model_repository_index(headers=admin).models
                         if m.name in STEP_NAMES and m.state == "READY"})
        before = {m: _stats(stats_client, m, admin) for m in models}
        lat, wall = closed_loop(guard.classify, calls[warm:], c, seconds)
        after = {m: _stats(stats_client, m, admin) for m in before}
    return {"concurrency": c, "triples_s": round(len(lat) / wall, 1), **pct(lat), **_split(before, after)}


class ServedTarget:
    """A Triton on ``repository`` for one section (or the running one at ``url``); entered, it gives
    ``(url, connection)``."""

    def __init__(self, repository: str, url: str | None = None, connection=None, graph: str = ""):
        from ..connection import Connection

        self.repository, self.url, self.server, self.graph = repository, url, None, graph
        self.connection = connection or Connection()

    def __enter__(self) -> tuple:
        if self.url is None:
            from ..serving.triton import TritonServer, free_port

            self.server = TritonServer(self.repository, grpc_port=free_port(), http_port=free_port(),
                                       metrics_port=free_port(), graph=self.graph).start()
            self.url, self.connection = self.server.grpc_url, self.server.connection()
        return self.url, self.connection

    def __exit__(self, *exc) -> None:
        if self.server is not None:
            self.server.stop()


def bench_served(cfg: BenchConfig, triples: list[dict]) -> dict:
    with ServedTarget(cfg.repository, cfg.server, cfg.connection) as served:
        rows = [_sweep_point(served, triples, c, cfg.seconds) for c in cfg.concurrency]
    return {"rows": rows, "server": cfg.server or "started by bench"}


def bench_precheck(cfg: BenchConfig, triples: list[dict]) -> dict:
    """The pre-check beside the triple model on the same 256 px JPEG triples, through the same client:
    c1 latency and c16 throughput. Needs a repository with an editguard_precheck version."""
    from ..clients import EditGuardClient
    from ..model.repository import PRECHECK, versions

    if not cfg.server and not versions(cfg.repository, PRECHECK):
        raise ValueError(f"section precheck: {cfg.repository} has no {PRECHECK} version; export a model trained "
                         "with --ablation precheck into it")
    rows = []
    with ServedTarget(cfg.repository, cfg.server, cfg.connection) as (url, conn), \
            EditGuardClient(url, timeout=60, **conn.client_options()) as guard:
        calls = {"editguard (after generation)": (guard.classify, [(t["input"], t["prompt"], t["output"])
                                                                   for t in triples]),
                 "editguard_precheck (before)": (guard.precheck, [(t["input"], t["prompt"]) for t in triples])}
        for name, (fn, args) in calls.items():
            fn(*args[0])  # warm-up
            lat1, _ = closed_loop(fn, args, 1, cfg.seconds)
            lat16, wall = closed_loop(fn, args, 16, cfg.seconds)
            rows.append({"model": name, "c1_p50_ms": pct(lat1)["p50_ms"], "c1_p95_ms": pct(lat1)["p95_ms"],
                         "c16_triples_s": round(len(lat16) / wall, 1)})
    return {"rows": rows}


UPLOAD_SIDE = 1024  # the sessions section's large uploads, in px


def bench_sessions(cfg: BenchConfig, triples: list[dict]) -> dict:
    """A session turn (its step and cumulative triple in one request, ``guard.session``) beside a single
    triple, on the same 256 px PNG triples through the same client: c1 latency, and c16 throughput in
    triples/s (a turn is two) and in calls/s. The single triple is measured with the triples' own (repeating)
    prompts and with every prompt new; every call's images are new uploads (:func:`new_uploads`). A turn's
    step prompt is a triple's own; its first turn's prompt is new, and either the server never saw it nor the
    turn's origin and input, or that first turn was judged just before, untimed, as in a real session (the
    server has decoded its images and encoded its prompt, on whichever instance; the c16 figures count both
    turns' work: three triples in two requests). The last two rows repeat a cached single triple and a real
    session's turn on photo-like PNG uploads of ``UPLOAD_SIDE`` px (about 1.7 MB each), where decoding weighs
    more."""
    from ..clients import EditGuardClient

    rows, n, k = [], len(triples), 4096  # calls enough that no prompt made new repeats within a run
    with ServedTarget(cfg.repository, cfg.server, cfg.connection) as (url, conn), \
            EditGuardClient(url, timeout=60, **conn.client_options()) as guard:
        def turn(origin, first_prompt, current, prompt, output):
            session = guard.session(origin)  # a session one accepted turn in: the next turn sends both triples
            session.prompts, session.masks, session.current = [first_prompt], [None], current
            return session.classify(prompt, output)

        def first_turn(origin, first_prompt, current, prompt, output):
            """Untimed: the session's first turn, judged (and accepted whatever its verdict)."""
            session = guard.session(origin)
            session.classify(first_prompt, current)
            session.prompts, session.masks, session.current = [first_prompt], [None], current
            return session, prompt, output

        def next_turn(session, prompt, output):
            return session.classify(prompt, output)

        def sessions(ts: list[dict]) -> list[tuple]:  # first prompts of their own: no call before cached them
            m = len(ts)
            return [(ts[i % m]["input"], f"{i} then {ts[i % m]['prompt']}", ts[i % m]["output"],
                     ts[(i + 1) % m]["prompt"], ts[(i + 1) % m]["output"]) for i in range(k)]

        big = upload_triples(UPLOAD_SIDE, triples)
        calls = {"single triple, the triples' prompts": (guard.classify, [(t["input"], t["prompt"], t["output"])
                                                                         for t in triples], 1, None),
                 "single triple, every prompt new": (guard.classify, [
                     (triples[i % n]["input"], f"{i} {triples[i % n]['prompt']}", triples[i % n]["output"])
                     for i in range(k)], 1, None),
                 "session turn (step + cumulative), its first turn never seen": (turn, sessions(triples), 2, None),
                 "session turn (step + cumulative), its first turn judged before": (next_turn, sessions(triples), 3,
                                                                                    first_turn),
                 f"single triple, the triples' prompts, {UPLOAD_SIDE} px photos": (
                     guard.classify, [(t["input"], t["prompt"], t["output"]) for t in big], 1, None),
                 f"session turn, its first turn judged before, {UPLOAD_SIDE} px photos": (
                     next_turn, sessions(big), 3, first_turn)}
        for name, (fn, args, per_call, setup) in calls.items():
            fn(*(setup(*args[-1]) if setup else args[-1]))  # warm-up
            half = len(args) // 2 if len(args) == k else 0  # the made-new prompts: other ones at c16
            lat1, _ = closed_loop(fn, args[:half or None], 1, cfg.seconds, setup)
            lat16, wall = closed_loop(fn, args[half:], 16, cfg.seconds, setup)
            rows.append({"call": name, "c1_p50_ms": pct(lat1)["p50_ms"], "c1_p95_ms": pct(lat1)["p95_ms"],
                         "c16_calls_s": round(len(lat16) / wall, 1),
                         "c16_triples_s": round(per_call * len(lat16) / wall, 1)})
    return {"rows": rows}


def bench_explain(cfg: BenchConfig, triples: list[dict], work: Path) -> dict:
    """The served explanations (``editguard_explain``, ``export --explain``): the verdicts' c1 latency and c16
    throughput with the repository served without it and with it loaded but not called, then an explain
    call's c1 latency; the same triples, one run. Needs a repository exported with ``--explain``."""
    import shutil

    from ..clients import EditGuardClient
    from ..model.repository import EXPLAIN

    if not (Path(cfg.repository) / EXPLAIN).is_dir():
        raise ValueError(f"{cfg.repository} has no {EXPLAIN}: export the model dir with `editguard export --explain`")
    without = work / "without-explain"
    shutil.copytree(cfg.repository, without, ignore=lambda d, names: [EXPLAIN] if Path(d) == Path(cfg.repository)
                    else [], symlinks=True)
    calls = [(t["input"], t["prompt"], t["output"]) for t in triples]
    rows = []
    for name, repo in (("verdicts, editguard_explain not served", without),
                       ("verdicts, editguard_explain served, not called", Path(cfg.repository))):
        with ServedTarget(str(repo), None, cfg.connection) as (url, conn), \
                EditGuardClient(url, timeout=60, **conn.client_options()) as guard:
            guard.classify(*calls[0])  # warm-up
            lat1, _ = closed_loop(guard.classify, calls, 1, cfg.seconds)
            lat16, wall = closed_loop(guard.classify, calls, 16, cfg.seconds)
            rows.append({"call": name, "c1_p50_ms": pct(lat1)["p50_ms"], "c1_p95_ms": pct(lat1)["p95_ms"],
                         "c16_triples_s": round(len(lat16) / wall, 1)})
            if repo == Path(cfg.repository):
                guard.explain(*calls[0])
                lat1, _ = closed_loop(lambda *c: guard.explain(*c, categories=["sexual"]), calls, 1, cfg.seconds)
                rows.append({"call": "explain (one category)", "c1_p50_ms": pct(lat1)["p50_ms"],
                             "c1_p95_ms": pct(lat1)["p95_ms"], "c16_triples_s": None})
    return {"rows": rows}


def bench_uploads(cfg: BenchConfig) -> dict:
    """c1 latency, c16 throughput and client CPU per triple, per upload size and form (masks included)."""
    from ..clients import EditGuardClient

    rows = []
    with ServedTarget(cfg.repository, cfg.server, cfg.connection) as (url, conn), \
            EditGuardClient(url, timeout=60, **conn.client_options()) as guard:
        for size in cfg.upload_sizes:
            for form in UPLOAD_FORMS:
                calls = upload_calls(size, form)
                guard.classify(*calls[0])  # warm-up (and the pixels spec)
                cpu0 = time.process_time()
                lat1, _ = closed_loop(guard.classify, calls, 1, cfg.seconds)
                cpu = (time.process_time() - cpu0) / len(lat1) * 1e3
                lat16, wall = closed_loop(guard.classify, calls, 16, cfg.seconds)
                sent = sum(len(x) for x in calls[0] if isinstance(x, bytes))
                rows.append({"size": size, "form": form, "kb_sent": round(sent / 1024) if sent else "-",
                             "c1_p50_ms": pct(lat1)["p50_ms"], "c1_p95_ms": pct(lat1)["p95_ms"],
                             "c16_triples_s": round(len(lat16) / wall, 1), "client_cpu_ms": round(cpu, 2)})
    return {"rows": rows}


GRAPHS = {"inline": "inline (default)", "ensemble": "ensemble"}


GRAPH_WARM = 1000  # Zipf requests sent before each repeated-prompt measurement


def bench_graphs(cfg: BenchConfig, triples: list[dict]) -> dict:
    """c1 and c16 on 256 px PNG bytes for each serving graph of one repository (Triton's
    --model-config-name), with every prompt new and with Zipf-repeated prompts; Triton's per-model
    queue, compute and cache split beside the client's latency."""
    rows = []
    for graph, name in GRAPHS.items():
        with ServedTarget(cfg.repository, graph=graph) as served:
            for repeated in (False, True):
                for c in (1, 16):
                    prompts = prompt_stream(20000, repeated, seed=c)
                    rows.append({"graph": name, "prompts": "zipf" if repeated else "unique",
                                 **_sweep_point(served, triples, c, cfg.seconds, prompts,
                                                GRAPH_WARM if repeated else 0)})
    return {"rows": rows, "prompts": f"zipf: Zipf(s={ZIPF_S}) over {PROMPT_POOL} distinct prompts, the first "
                                      f"{GRAPH_WARM} of the stream sent before measuring; unique: every request a "
                                      "new prompt"}


def bench_ray(cfg: BenchConfig, workdir: Path) -> dict:
    import ray

    from ..clients.ray_engine import start_ray
    from ..clients.score import ScoreConfig, score
    from ..training.synth import generate

    manifest = generate(workdir / "ray", cfg.ray_items, seed=98, image_size=256, progress=False)
    started = start_ray()  # start-up is paid once here, as a long-lived cluster would have paid it
    rows = []
    try:
        runs = [("local", None)] + [("ray", w) for w in cfg.ray_workers]
        for engine, workers in runs:
            out = workdir / f"scores-{engine}-{workers}"
            s = score(ScoreConfig(manifest=str(manifest), out=str(out), repository=cfg.repository, engine=engine,
                                  workers=workers, progress=False))
            rows.append({"engine": engine, "workers": workers or "-", "triples": s.scored, "seconds": s.seconds,
                         "triples_s": round(s.scored / s.seconds, 1)})
    finally:
        if started:
            ray.shutdown()
    return {"rows": rows, "cluster_cpus": os.cpu_count()}
