"""The deployment as users run it: NVIDIA's Triton container (deploy/Dockerfile, deploy/entrypoint.sh) and
the Kubernetes base (deploy/kubernetes/).

No Docker engine or cluster runs here: the Dockerfile is linted (hadolint, checkov), the Kustomize base
is rendered by kubectl's own kustomize, every resource is validated against the Kubernetes schemas
(kubernetes-validate) and scanned (checkov), the resources are checked against each other and against
the entrypoint, and the entrypoint itself starts a real Triton (the nvidia-pytriton binary) with the
flags `editguard serve` uses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
TOOLS = Path(sys.prefix) / "tools" / "bin"  # `make tools`: checkov and kubernetes-validate in a venv of their own
KUBERNETES_VERSION = "1.30"  # the oldest release the base is checked against (HPA v2, PDB v1, seccompProfile)


def _tool(name: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([str(TOOLS), str(Path(sys.executable).parent),
                                                   os.environ.get("PATH", "")]))
    if path is None:
        pytest.skip(f"{name} is not installed (`make test` installs it: `make tools`, `make kubectl`)")
    return path


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> list[dict]:
    """The Kustomize base as `kubectl apply -k` sends it, with a throwaway admin key file."""
    kubectl = _tool("kubectl")
    base = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(K8S, base, ignore=shutil.ignore_patterns("admin-key"))
    (base / "admin-key").write_text("a-throwaway-test-key\n")
    r = subprocess.run([kubectl, "kustomize", str(base)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    (base.parent / "rendered.yaml").write_text(r.stdout)
    return [d for d in yaml.safe_load_all(r.stdout) if d]


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_the_dockerfile_lints_clean():
    r = subprocess.run([_tool("hadolint"), str(DEPLOY / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    report = _checkov(DEPLOY / "Dockerfile", "dockerfile")
    assert report["summary"]["failed"] == 0, report["results"]["failed_checks"]
    print(f"\nhadolint: clean; checkov dockerfile: {report['summary']['passed']} passed, "
          f"{report['summary']['failed']} failed")


def _checkov(path: Path, framework: str) -> dict:
    r = subprocess.run([_tool("checkov"), "-f", str(path), "--framework", framework, "--skip-download",
                        "--output", "json"], capture_output=True, text=True)
    assert r.stdout.strip(), r.stderr[-2000:]
    report = json.loads(r.stdout)
    return report[0] if isinstance(report, list) else report


def test_every_manifest_is_valid_kubernetes_and_scans_clean(rendered, tmp_path):
    path = tmp_path / "rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered))
    r = subprocess.run([_tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
                       capture_output=True, text=True)
    out = r.stdout + r.stderr
    passed = re.findall(r"passed for resource (\S+)", out)
    no_schema = re.findall(r"Couldn't find schema for kind (\w+)", out)
    assert r.returncode == 0 and "ERROR" not in out, out
    # the Prometheus Operator's kinds have no schema in Kubernetes itself: test_monitoring checks them
    assert sorted(no_schema) == ["PodMonitor", "PrometheusRule"], out
    assert len(passed) == len(rendered) - 2
    report = _checkov(path, "kubernetes")
    skipped = report["results"]["skipped_checks"]
    print(f"\nkubernetes-validate {KUBERNETES_VERSION} --strict: {len(passed)} resources valid; checkov: "
          f"{report['summary']['passed']} passed, {report['summary']['failed']} failed, skipped "
          + ", ".join(f"{c['check_id']} ({c['check_result'].get('suppress_comment')})" for c in skipped))
    assert report["summary"]["failed"] == 0, [(c["check_id"], c["resource"]) for c in
                                              report["results"]["failed_checks"]]
    assert all(c["check_result"].get("suppress_comment") for c in skipped), "a check skipped without a reason"
    assert {c["check_id"] for c in report["results"]["passed_checks"]} >= {
        "CKV_K8S_20", "CKV_K8S_22", "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_37", "CKV_K8S_40",  # no escalation,
        "CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13", "CKV_K8S_8", "CKV_K8S_9",  # read-only root,
        "CKV_K8S_35", "CKV_K8S_38", "CKV2_K8S_6"}  # non-root, limits, probes, the secret as a file, no token


def test_the_resources_fit_each_other_and_the_entrypoint(rendered):
    from editguard.cli import build_parser

    k = _by_kind(rendered)
    dep = k["Deployment"]
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    (c,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}  # Triton's defaults, which serve keeps
    # the entrypoint's command line, with the Deployment's args after it, is one editguard serve accepts
    entry = (DEPLOY / "entrypoint.sh").read_text()
    argv = re.search(r"exec editguard (serve --exec.*?)\"\$@\"", entry, re.S).group(1).replace("\\\n", " ").split()
    a = build_parser().parse_args([*argv, *c["args"]])
    assert a.exec and a.repository == "/models" and a.host == "0.0.0.0" and a.graph == "onnxruntime"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert Path(a.admin_key_file).parent == Path(mounts["admin-key"]["mountPath"])
    assert mounts["repository"]["mountPath"] == a.repository and mounts["repository"]["readOnly"]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["admin-key"]["secret"]["secretName"] == k["Secret"]["metadata"]["name"]  # with kustomize's hash
    assert Path(a.admin_key_file).name in k["Secret"]["data"]
    assert volumes["repository"]["persistentVolumeClaim"]["claimName"] == k["PersistentVolumeClaim"]["metadata"]["name"]
    assert {p["httpGet"]["path"] for p in (c["readinessProbe"], c["startupProbe"])} == {"/v2/health/ready"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    # Triton's --exit-timeout-secs (what `serve` passes) fits in the grace period: requests in flight finish
    from editguard.serving.triton import TritonServer

    assert pod["spec"]["terminationGracePeriodSeconds"] > TritonServer("/models").exit_timeout_s
    svc = k["Service"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= set(ports)
    for kind in ("PodDisruptionBudget", "PodMonitor", "NetworkPolicy"):
        sel = k[kind]["spec"].get("selector") or k[kind]["spec"]["podSelector"]
        assert sel["matchLabels"].items() <= labels.items(), kind
    assert k["PodMonitor"]["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    policy_ports = {p["port"] for rule in k["NetworkPolicy"]["spec"]["ingress"] for p in rule["ports"]}
    assert policy_ports == set(ports.values())
    hpa = k["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == dep["metadata"]["name"] and hpa["minReplicas"] >= 2
    namespaces = {d["metadata"]["namespace"] for d in rendered if d["kind"] != "Namespace"}
    assert namespaces == {k["Namespace"]["metadata"]["name"]}


def test_monitoring_rules_are_the_documented_ones_and_parse(rendered):
    import promql_parser

    k = _by_kind(rendered)
    rule = k["PrometheusRule"]
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and k["PodMonitor"]["apiVersion"] == rule["apiVersion"]
    documented = re.search(r"```yaml\n(groups:.*?)```", (ROOT / "docs" / "operations.md").read_text(), re.S).group(1)
    assert rule["spec"] == yaml.safe_load(documented), "prometheusrule.yaml and docs/operations.md differ"
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    adapter = yaml.safe_load((K8S / "prometheus-adapter-rules.yaml").read_text())["rules"]
    hpa_metric = k["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["pods"]["metric"]["name"]
    assert [r["name"]["as"] for r in adapter] == [hpa_metric]
    exprs += [r["metricsQuery"].replace("<<.GroupBy>>", "namespace, pod").replace("<<.LabelMatchers>>",
                                                                                  'namespace="editguard"')
              for r in adapter]
    for e in exprs:
        promql_parser.parse(e)  # raises ValueError naming the problem
    served = (ROOT / "serving" / "prometheus.py").read_text()
    for name in {n for e in exprs for n in re.findall(r"\b(editguard_[a-z_]+?)(?:_bucket|_sum|_count)?\b", e)}:
        assert f'"{name}"' in served, f"{name} is not a series editguard exports"
    print(f"\n{len(exprs)} PromQL expressions parse; the alert rules match docs/operations.md")


@pytest.mark.slow
def test_the_entrypoint_becomes_triton_with_serves_flags(repository, synth_sets, triple_bytes, tmp_path):
    """deploy/entrypoint.sh as the container runs it, against the nvidia-pytriton binary: the process becomes
    tritonserver (same pid), with the command line `editguard serve` builds, the admin API locked with the
    mounted key, a verdict served, and SIGTERM a clean stop."""
    import tritonclient.grpc as grpcclient

    from editguard.clients import EditGuardClient
    from editguard.serving.triton import TritonServer, free_port

    key_file = tmp_path / "secrets" / "admin-key"
    key_file.parent.mkdir()
    key_file.write_text("the-mounted-secret\n")
    key_file.chmod(0o400)
    ports = [free_port() for _ in range(3)]
    args = ["--repository", str(repository), "--graph", "inline", "--host", "127.0.0.1",
            "--admin-key-file", str(key_file), "--grpc-port", str(ports[0]), "--http-port", str(ports[1]),
            "--metrics-port", str(ports[2])]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    env.pop("EDITGUARD_ADMIN_KEY", None)
    proc = subprocess.Popen([str(DEPLOY / "entrypoint.sh"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            try:
                with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as c:
                    if c.is_server_ready():
                        break
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        exe = Path(f"/proc/{proc.pid}/exe").resolve()
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_text().split("\0")[:-1]
        assert exe.name == "tritonserver", exe  # the shell and editguard exec'd into Triton: signals reach it
        expected = TritonServer(repository, *ports, host="127.0.0.1", admin_key="the-mounted-secret",
                                graph="inline")
        expected.binary = Path(cmdline[0])
        backends = next((f.split("=", 1)[1] for f in cmdline if f.startswith("--backend-directory=")), None)
        caches = next((f.split("=", 1)[1] for f in cmdline if f.startswith("--cache-directory=")), None)
        expected._caches = Path(caches) if caches else None
        assert cmdline == expected.command(Path(backends) if backends else None)
        t = triple_bytes(synth_sets["test"], 1)[0]
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as c:
            with pytest.raises(Exception, match="restricted"):
                c.unload_model("editguard")
        conn = expected.connection()
        with conn.grpc_client(f"127.0.0.1:{ports[0]}") as c:
            assert c.get_inference_statistics("editguard", headers=conn.admin_headers(), as_json=True)
        with EditGuardClient(f"127.0.0.1:{ports[0]}", timeout=30) as guard:
            verdict = guard.classify(t["input"], t["prompt"], t["output"], t["mask"])
        assert verdict.model_version == "2"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out[-3000:]


def test_a_container_without_the_key_refuses_to_start(tmp_path, capsys):
    from editguard.cli import main

    (tmp_path / "repo").mkdir()
    env_key = os.environ.pop("EDITGUARD_ADMIN_KEY", None)
    try:
        assert main(["serve", "--exec", "--repository", str(tmp_path / "repo"), "--admin-key-file",
                     str(tmp_path / "missing")]) == 4
    finally:
        if env_key is not None:
            os.environ["EDITGUARD_ADMIN_KEY"] = env_key
    assert "admin key file" in capsys.readouterr().err and not (tmp_path / "missing").exists()
