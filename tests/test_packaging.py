"""What users install: a wheel built from the tracked files ships every one of them, and a non-editable
install of it exports, checks and serves a verdict with nothing from the source tree."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_every_tracked_file_of_the_packages(built_wheel, tracked_files, setup_folders):
    folders = setup_folders
    expected = {package.replace(".", "/") + rel[len(folder):] for rel in tracked_files
                for package, folder in folders.items() if rel.startswith(folder + "/")}
    with zipfile.ZipFile(built_wheel) as z:
        shipped = {n for n in z.namelist() if ".dist-info/" not in n}
    templates = {p for p in expected if p.startswith("editguard/model_repository/")}
    print(f"\n{len(shipped)} files in {built_wheel.name}; model_repository/: {len(templates)} tracked, "
          f"{len({p for p in shipped if p.startswith('editguard/model_repository/')})} shipped")
    assert shipped == expected, (f"missing from the wheel: {sorted(expected - shipped)}; "
                                 f"in the wheel but not tracked: {sorted(shipped - expected)}")
    models = {Path(p).parts[2] for p in templates}
    assert models == {d.name for d in (ROOT / "model_repository").iterdir() if d.is_dir() and d.name != "__pycache__"}


@pytest.mark.slow
def test_a_wheel_install_exports_checks_and_serves_a_verdict(wheel_venv, tiny_model_dir, synth_sets, tmp_path,
                                                            triple_bytes):
    from editguard.serving.served import ServedVersion
    from editguard.serving.triton import free_port

    bin_ = wheel_venv / "bin"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=os.pathsep.join([str(bin_), env.get("PATH", "")]), EDITGUARD_ADMIN_KEY_FILE=str(tmp_path / "key"))

    def run(*args: str) -> str:  # from tmp_path, so no source folder is on sys.path
        r = subprocess.run([*args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{args}: {r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        return r.stdout

    where = run(str(bin_ / "python"), "-c", "import editguard, editguard.model_repository as m; "
                "print(editguard.__file__); print(list(m.__path__)[0])").split()
    assert all(Path(p).is_relative_to(wheel_venv) for p in where), where  # the wheel's copy, not the tree's
    repo = tmp_path / "repository"
    print("\n" + run(str(bin_ / "editguard"), "export", str(tiny_model_dir), "--repository", str(repo)))
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == [
        "editguard", "editguard_classifier", "editguard_prepare", "editguard_verdicts"]
    run(str(bin_ / "editguard"), "check-repository", str(repo))

    ports = [free_port() for _ in range(3)]
    serve = subprocess.Popen([str(bin_ / "editguard"), "serve", "--repository", str(repo), "--grpc-port", str(ports[0]),
                              "--http-port", str(ports[1]), "--metrics-port", str(ports[2]), "--graph", "ensemble"],
                             cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in serve.stdout:
            lines.append(line)
            if "Ctrl-C to stop" in line:
                break
        assert serve.poll() is None, "".join(lines)
        t = triple_bytes(synth_sets["test"], 1)[0]
        (tmp_path / "in.png").write_bytes(t["input"])
        (tmp_path / "out.png").write_bytes(t["output"])
        (tmp_path / "mask.png").write_bytes(t["mask"])
        client = ("import json, sys\nfrom editguard.clients import EditGuardClient\n"
                  f"with EditGuardClient('127.0.0.1:{ports[0]}', timeout=60) as g:\n"
                  f"    v = g.classify('in.png', {t['prompt']!r}, 'out.png', 'mask.png')\n"
                  "assert 'torch' not in sys.modules\n"
                  "print(json.dumps({'scores': v.scores, 'unsafe': v.unsafe, 'version': v.model_version}))\n")
        verdict = json.loads(run(str(bin_ / "python"), "-c", client).strip().splitlines()[-1])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.communicate(timeout=60)
    served = ServedVersion.open(repo)
    expected = served.probabilities([served.prepare(t["input"], t["prompt"], t["output"], t["mask"])])[0]
    print(f"served by the wheel install (version {verdict['version']}): unsafe={verdict['unsafe']}")
    assert list(verdict["scores"]) == served.labels
    assert [verdict["scores"][n] for n in served.labels] == pytest.approx(expected.tolist(), abs=1e-6)
