"""`editguard versions`: list what a real Triton serves, roll back, pin and unpin under load, with no failed
request, and the errors an on-call meets."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from editguard.cli import main
from editguard.clients import EditGuardClient, EditGuardError
from editguard.model.pbtxt import read_config
from editguard.serving.triton import TritonServer, free_port

pytestmark = pytest.mark.slow


class _Load:
    """Clients classifying in a loop: each answer's (start time, version), and every error."""

    def __init__(self, url: str, triples: list[dict], clients: int = 2):
        self.answers: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(url, triples, k)) for k in range(clients)]

    def _run(self, url: str, triples: list[dict], k: int) -> None:
        with EditGuardClient(url, timeout=60) as guard:
            i = k
            while not self._stop.is_set():
                t = triples[i % len(triples)]
                start = time.monotonic()
                try:
                    self.answers.append((start, guard.classify(t["input"], t["prompt"], t["output"]).model_version))
                except EditGuardError as e:
                    self.failures.append(str(e))
                i += 1

    def __enter__(self) -> "_Load":
        for th in self._threads:
            th.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for th in self._threads:
            th.join()

    def versions_after(self, t: float) -> set[str]:
        return {v for start, v in self.answers if start > t}

    def wait_for(self, n: int, after: float) -> None:
        deadline = time.monotonic() + 60
        while sum(start > after for start, _ in self.answers) < n and time.monotonic() < deadline:
            time.sleep(0.05)


def _listing(url: str, repo: Path, tmp_path: Path) -> dict:
    out = tmp_path / "list.json"
    assert main(["versions", "list", "--server", url, "--repository", str(repo), "--json", str(out)]) == 0
    return json.loads(out.read_text())["models"]["editguard"]


def test_rollback_pin_and_unpin_under_load_fail_no_request(tiny_model_dir, synth_sets, tmp_path, triple_bytes,
                                                          monkeypatch, capsys):
    repo = tmp_path / "repo"
    summary = tmp_path / "export.json"
    for _ in range(3):
        assert main(["export", str(tiny_model_dir), "--repository", str(repo), "--max-batch", "16",
                     "--json", str(summary)]) == 0
    exported = json.loads(summary.read_text())
    assert exported["version"] == 3 and exported["parity_fp32"]["max_abs_prob"] <= 1e-4
    assert exported["loaded_into"] == []
    key = "one-key-for-the-on-call"
    monkeypatch.setenv("EDITGUARD_ADMIN_KEY", key)
    triples = triple_bytes(synth_sets["test"], 8)
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                      admin_key=key) as server:
        url = server.grpc_url
        before = _listing(url, repo, tmp_path)
        assert before["serving"] == 3 and before["pinned"] is None
        assert {v: r["state"] for v, r in before["versions"].items()} == {"1": "not loaded", "2": "READY",
                                                                           "3": "READY"}
        assert before["versions"]["3"]["thresholds"]["installed"] is False
        steps = []
        with _Load(url, triples) as load:
            load.wait_for(20, 0)
            for argv, serves in ((["rollback"], "2"), (["unpin"], "3"), (["pin", "1"], "1")):
                assert main(["versions", *argv, "--server", url, "--repository", str(repo)]) == 0, argv
                done = time.monotonic()
                load.wait_for(20, done)
                steps.append((argv[0], serves, load.versions_after(done)))
            # an export while pinned lands on disk and is loaded, but the pin keeps serving version 1
            assert main(["export", str(tiny_model_dir), "--repository", str(repo), "--max-batch", "16",
                         "--server", url]) == 0
            assert "pinned to version 1, so version 4 is not served" in capsys.readouterr().out
            done = time.monotonic()
            load.wait_for(20, done)
            steps.append(("export", "1", load.versions_after(done)))
            assert main(["versions", "unpin", "--server", url, "--repository", str(repo)]) == 0
            done = time.monotonic()
            load.wait_for(20, done)
            steps.append(("unpin", "4", load.versions_after(done)))
        after = _listing(url, repo, tmp_path)
    print(f"\nversions under load: {len(load.answers)} requests, {len(load.failures)} failed; "
          + "; ".join(f"after {s}: {sorted(v)}" for s, _, v in steps))
    assert load.failures == [], load.failures[:3]
    for step, serves, seen in steps:
        assert seen == {serves}, (step, seen)
    assert after["serving"] == 4 and after["pinned"] is None
    assert {v: r["state"] for v, r in after["versions"].items() if r["state"] == "READY"} == {"3": "READY",
                                                                                            "4": "READY"}
    for model in ("editguard", "editguard_classifier", "editguard_prepare", "editguard_verdicts"):  # unpinned
        assert read_config(repo / model / "config.pbtxt").version_policy.latest.num_versions == 2, model


def test_version_commands_say_what_is_wrong(tiny_model_dir, tmp_path, monkeypatch, capsys):
    repo = tmp_path / "repo"
    assert main(["export", str(tiny_model_dir), "--repository", str(repo), "--max-batch", "8"]) == 0
    assert main(["versions", "pin", "7", "--repository", str(repo)]) == 4
    assert "version 7 of editguard is not in" in capsys.readouterr().err
    assert main(["versions", "rollback", "--repository", str(repo)]) == 4
    assert "no version of editguard older than 1" in capsys.readouterr().err
    assert main(["versions", "pin", "--repository", str(repo)]) == 2
    assert main(["versions", "unload", "--repository", str(repo), "--server", "127.0.0.1:1"]) == 2
    # pinned without a server: the repository says so, and the listing shows it
    assert main(["versions", "pin", "1", "--repository", str(repo)]) == 0
    assert "versions load --server" in capsys.readouterr().out
    assert main(["versions", "list", "--repository", str(repo)]) == 0
    assert "editguard: pinned to version 1" in capsys.readouterr().out
    monkeypatch.delenv("EDITGUARD_ADMIN_KEY", raising=False)
    monkeypatch.setenv("EDITGUARD_ADMIN_KEY_FILE", str(tmp_path / "no-key"))
    with TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port()) as server:
        assert main(["versions", "list", "--server", server.grpc_url]) == 4
        assert "needs the server's admin key" in capsys.readouterr().err
