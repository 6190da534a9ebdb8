"""The label taxonomy: data, not code.

A taxonomy is a JSON (or YAML) file listing the policy categories. The model
has one sigmoid output per category, in file order; ``unsafe`` is the
aggregate (any category flagged). The taxonomy travels inside every model dir
as ``labels.json`` and the Triton repository's label file is written from it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

__all__ = ["Category", "Taxonomy", "default_taxonomy", "load_taxonomy"]


@dataclass(frozen=True)
class Category:
    name: str  # machine name, used in manifests, outputs and thresholds
    description: str = ""  # what the category covers, for people


@dataclass(frozen=True)
class Taxonomy:
    categories: tuple[Category, ...]
    name: str = "custom"  # a name for reports
    version: int = 1  # bump when categories change meaning
    aggregate: str = "unsafe"  # the name of the any-category verdict

    def __post_init__(self) -> None:
        names = [c.name for c in self.categories]
        if not names:
            raise ValueError("a taxonomy needs at least one category")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate category names in taxonomy: {dupes}")
        for n in names:
            if not n or not n.replace("_", "").isalnum() or n != n.lower():
                raise ValueError(f"category name {n!r} must be lower-case letters, digits and '_'")
        if self.aggregate in names:
            raise ValueError(f"aggregate name {self.aggregate!r} clashes with a category")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.categories]

    def __len__(self) -> int:
        return len(self.categories)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"unknown label {name!r}; known labels: {', '.join(self.names)}") from None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "aggregate": self.aggregate,
            "categories": [{"name": c.name, "description": c.description} for c in self.categories],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Taxonomy":
        unknown = set(d) - {"name", "version", "aggregate", "categories"}
        if unknown:
            raise ValueError(f"unknown taxonomy keys: {sorted(unknown)}")
        cats = []
        for i, c in enumerate(d.get("categories") or []):
            if isinstance(c, str):
                c = {"name": c}
            if not isinstance(c, dict) or "name" not in c:
                raise ValueError(f"taxonomy category #{i} must be a name or {{'name': ..., 'description': ...}}")
            extra = set(c) - {"name", "description"}
            if extra:
                raise ValueError(f"taxonomy category {c['name']!r}: unknown keys {sorted(extra)}")
            cats.append(Category(c["name"], c.get("description", "")))
        return cls(
            categories=tuple(cats),
            name=d.get("name", "custom"),
            version=int(d.get("version", 1)),
            aggregate=d.get("aggregate", "unsafe"),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Load a taxonomy from a ``.json`` or ``.yaml``/``.yml`` file."""
    path = Path(path)
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as e:
            raise ImportError("reading a YAML taxonomy needs PyYAML: pip install pyyaml") from e
        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    try:
        return Taxonomy.from_dict(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def default_taxonomy() -> Taxonomy:
    """The default categories (see DESIGN.md, 'Taxonomy')."""
    text = resources.files(__package__).joinpath("default_taxonomy.json").read_text()
    return Taxonomy.from_dict(json.loads(text))
