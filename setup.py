"""What goes into editguard's wheel; the project's metadata is in pyproject.toml.

The top-level folders install as one namespace (``model/`` as ``editguard.model``, and so on), each
sub-folder as a package of its own. The Triton templates under ``model_repository/`` ship as data,
one package per folder, listed from the folder itself: a model folder added there ships without an
edit here (tests/test_packaging.py compares a built wheel with the tracked files).
"""

from pathlib import Path

from setuptools import setup

FOLDERS = {"editguard": "editguard", "editguard.model": "model", "editguard.training": "training",
           "editguard.export": "export", "editguard.serving": "serving", "editguard.clients": "clients",
           "editguard.benchmarks": "benchmarks", "editguard.redteam": "redteam",
           "editguard.model_repository": "model_repository"}
# data files by pattern, for a folder and every folder below it
DATA = {"editguard": ["py.typed"], "editguard.clients": ["review_page.html"], "editguard.model": ["*.json"],
        "editguard.model_repository": ["*.pbtxt", "*.py"]}


def _packages(package: str, folder: str) -> list[str]:
    """``package`` and one package per folder below ``folder`` (``__pycache__`` aside)."""
    below = sorted(d.relative_to(folder) for d in Path(folder).rglob("*")
                   if d.is_dir() and "__pycache__" not in d.parts)
    return [".".join([package, *d.parts]) for d in [Path(), *below]]


package_data = {p: DATA.get(top, []) for top, folder in FOLDERS.items() for p in _packages(top, folder)}
setup(package_dir=FOLDERS, packages=sorted(package_data), package_data=package_data)
