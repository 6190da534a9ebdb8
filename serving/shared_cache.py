"""A cache the instances of one served model version share, so work done for one request serves the next.

Triton runs each instance of a Python-backend model as a process of its own, and gives a request to
whichever instance is free: at one request at a time, two instances take turns. What one request leaves
in its instance's memory (a decoded image, a prompt window's embedding) is then missing from the next
request, which is exactly what an edit session's next turn needs: the turn sends its origin and its
previous output again, and its cumulative prompt holds the earlier turns' prompts.

:class:`SharedCache` is a bounded key-value store in SQLite (Python's standard library), one file per
cache, in a directory private to the server process (``editguard-<uid>-<server pid>`` under the
temporary directory, mode 0700; a directory that another user owns or others can write is not used).
Entries go first in, first out, beyond ``size``. It is a memo and never a source of truth: every value
is what the instance would compute itself, a lookup that fails (a locked or broken file) is a miss, and
a write that fails is skipped, so it can only save work. Directories of servers that are gone are
removed when the next server's models load.

Each instance keeps its own in-memory LRU in front of it (:class:`~editguard.serving.served.PromptEmbeddings`,
:class:`~editguard.model.preprocess.DecodedImages`); the shared file is read on that LRU's misses.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import stat
import tempfile
import threading
from pathlib import Path

__all__ = ["SharedCache", "server_cache_dir", "cache_dir_path"]

_logger = logging.getLogger(__name__)

_PREFIX = "editguard-cache-"


def cache_dir_path(server_pid: int, root: str | Path | None = None) -> Path:
    """Where the instances of the server ``server_pid`` share their caches (nothing is created)."""
    return Path(root or tempfile.gettempdir()) / f"{_PREFIX}{os.getuid()}-{server_pid}"


def server_cache_dir(server_pid: int | None = None, root: str | Path | None = None) -> Path | None:
    """The directory the instances of one server share (``server_pid``: default, this process's parent, the
    server that started this Python-backend instance), created private to this user; None when it can't
    be used safely. Directories of this user's servers that are no longer running are removed (and
    ``editguard serve`` removes its server's when it stops)."""
    pid = os.getppid() if server_pid is None else server_pid
    path, uid = cache_dir_path(pid, root), os.getuid()
    for old in path.parent.glob(f"{_PREFIX}{uid}-*"):
        try:
            other = int(old.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if other != pid and not _running(other):
            shutil.rmtree(old, ignore_errors=True)
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        _logger.warning("no shared cache (can't create %s: %s); each instance caches on its own", path, e)
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        _logger.warning("no shared cache: %s is not a private directory of this user; each instance caches on its "
                        "own", path)
        return None
    return path


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class SharedCache:
    """``bytes`` values by ``bytes`` keys in the SQLite file ``path``, the ``size`` newest kept. Safe to use from
    several threads and processes; :meth:`get` and :meth:`put` never raise for the store's own failures."""

    _SWEEP = 64  # puts between trims to ``size``

    def __init__(self, path: str | Path, size: int):
        self.path, self.size = Path(path), size
        self._lock = threading.Lock()
        self._puts = 0
        self._db: sqlite3.Connection | None = None
        try:
            db = sqlite3.connect(self.path, timeout=0.2, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")  # a memo: nothing to lose in a crash
            db.execute("CREATE TABLE IF NOT EXISTS cache (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                       "key BLOB UNIQUE NOT NULL, value BLOB NOT NULL)")
            self._db = db
        except sqlite3.Error as e:
            _logger.warning("shared cache %s unavailable (%s); each instance caches on its own", self.path, e)

    def get(self, key: bytes) -> bytes | None:
        """The value stored for ``key``, or None (also when the store can't be read now)."""
        if self._db is None:
            return None
        try:
            with self._lock:
                row = self._db.execute("SELECT value FROM cache WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error:
            return None
        return None if row is None else bytes(row[0])

    def put(self, key: bytes, value: bytes) -> None:
        """Store ``value`` for ``key`` (a key already there keeps its value: both are the same computation's)."""
        if self._db is None or not self.size:
            return
        try:
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO cache (key, value) VALUES (?, ?)", (key, value))
                self._puts += 1
                if self._puts % self._SWEEP == 0:
                    self._db.execute("DELETE FROM cache WHERE id <= (SELECT MAX(id) FROM cache) - ?", (self.size,))
        except sqlite3.Error:
            pass

    def __len__(self) -> int:
        if self._db is None:
            return 0
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM cache").fetchone()[0]
