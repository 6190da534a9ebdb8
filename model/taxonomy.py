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

__all__ = ["Category", "Taxonomy", "default_taxonomy", "load_taxonomy", "appended_categories"]


@dataclass(frozen=True)
class Category:
    name: str  # machine name, used in manifests, outputs and thresholds
    description: str = ""  # what the category covers, for people
    # over a long prompt read in windows: "max" (a harm stated anywhere counts) or "min" (a change the prompt did
    # not ask for: asked for if any window asks for it); see docs/design.md, "Triton tensors"
    windows: str = "max"

    def __post_init__(self) -> None:
        if self.windows not in ("max", "min"):
            raise ValueError(f"taxonomy category {self.name!r}: windows must be 'max' or 'min', got {self.windows!r}")


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

    @property
    def window_min(self) -> list[str]:
        """The categories pooled by their lowest score over a long prompt's windows."""
        return [c.name for c in self.categories if c.windows == "min"]

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
            "categories": [{"name": c.name, "description": c.description,
                            **({"windows": c.windows} if c.windows != "max" else {})} for c in self.categories],
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
            extra = set(c) - {"name", "description", "windows"}
            if extra:
                raise ValueError(f"taxonomy category {c['name']!r}: unknown keys {sorted(extra)}")
            cats.append(Category(c["name"], c.get("description", ""), c.get("windows", "max")))
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


def appended_categories(old: Taxonomy, new: Taxonomy) -> list[str]:
    """The categories ``new`` appends to ``old``: a grown model (``train --from``) keeps the order of the labels
    that the served model and thresholds.json use, so any other change is refused, naming it."""
    o, n = old.names, new.names
    if n[:len(o)] == o:
        if len(n) == len(o):
            raise ValueError(f"the new taxonomy adds no category to {o}; append the new categories after the "
                             "existing ones")
        if new.aggregate != old.aggregate:
            raise ValueError(f"the new taxonomy renames the aggregate verdict {old.aggregate!r} to {new.aggregate!r}; "
                             "clients and dashboards read it by name: keep it")
        return n[len(o):]
    gone = [c for c in o if c not in n]
    problems = []
    for c in gone:
        i = o.index(c)
        if i < len(n) and n[i] not in o:
            problems.append(f"renames {c!r} to {n[i]!r}")
        else:
            problems.append(f"removes {c!r}")
    kept = [c for c in n if c in o]
    if not gone and kept != o or gone and kept != [c for c in o if c in n]:
        problems.append(f"reorders the existing categories (theirs: {kept}, the model's: {o})")
    elif not gone:
        problems.append(f"inserts {[c for c in n[:len(o)] if c not in o]} before existing categories")
    raise ValueError("the new taxonomy " + "; ".join(problems) + ". A model grown with --from can only append "
                     f"categories after its own {o}, which keep their order; for any other change train a new "
                     "model from scratch (without --from)")
