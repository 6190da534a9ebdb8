"""The caches a server's instances share (editguard.serving.shared_cache): across processes, bounded, private,
never a failure. (tests/test_graphs.py: two served instances of a version reuse each other's work.)"""

from __future__ import annotations

import os
import subprocess
import sys

from editguard.serving.shared_cache import SharedCache, cache_dir_path, server_cache_dir


def test_shared_across_processes_bounded_private_and_never_a_failure(tmp_path):
    here = server_cache_dir(os.getpid(), tmp_path)
    assert here == cache_dir_path(os.getpid(), tmp_path) and (here.stat().st_mode & 0o777) == 0o700
    cache = SharedCache(here / "c.sqlite", size=100)
    cache.put(b"a", b"from here")
    other = subprocess.run([sys.executable, "-c", (
        "import sys; from editguard.serving.shared_cache import SharedCache; c = SharedCache(sys.argv[1], 100); "
        "print(c.get(b'a').decode()); c.put(b'b', b'from there')"), str(here / "c.sqlite")],
        capture_output=True, text=True, check=True)
    assert other.stdout.strip() == "from here" and cache.get(b"b") == b"from there"
    cache.put(b"a", b"other")  # a key keeps its first value (both are the same computation's)
    assert cache.get(b"a") == b"from here"
    for i in range(300):
        cache.put(b"k%d" % i, b"v")
    assert len(cache) <= 100 + SharedCache._SWEEP and cache.get(b"k299") == b"v" and cache.get(b"a") is None

    (tmp_path / "broken.sqlite").write_bytes(b"not a database" * 100)
    broken = SharedCache(tmp_path / "broken.sqlite", 10)
    broken.put(b"a", b"b")  # skipped, no error
    assert broken.get(b"a") is None

    # a directory others may write is not used; a gone server's directory is removed
    os.chmod(here, 0o777)
    assert server_cache_dir(os.getpid(), tmp_path) is None
    os.chmod(here, 0o700)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    stale = cache_dir_path(gone.pid, tmp_path)
    stale.mkdir(mode=0o700)
    assert server_cache_dir(os.getpid(), tmp_path) == here and here.exists() and not stale.exists()
