"""Attacks: what an adversary does to a request the guard refused, as small, seeded transforms.

An :class:`Attack` takes a :class:`Case` (one labelled edit as the attacker holds it: encoded images, the
prompt, the mask) and returns the attacked case. Each draw comes from its own random generator, seeded
from the run's seed, the attack and the case, so a run is repeatable and an attacker's variety is
covered. A family groups attacks (``wording``, ``long_prompt``, ``mask``, ``pixels``); the report gives
one row per attack and category.

Add a family of your own in a few lines::

    from editguard.redteam import Case, attack

    @attack("wording", "shouting", "the prompt in capitals with exclamation marks")
    def shouting(case: Case, rng) -> Case:
        return case.with_prompt(case.prompt.upper() + "!!!")

It is then run by ``editguard redteam --attacks wording`` (or ``--attacks shouting``) and by
:func:`editguard.redteam.harness.run`. An attack that needs a model (the pixel attacks) sets
``needs_model`` and takes the whole list of cases with :class:`Surrogate` in ``batch``.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

__all__ = ["Case", "Attack", "ATTACKS", "attack", "register", "select", "rng_for"]


@dataclass(frozen=True)
class Case:
    """One labelled edit: ``input_image``, ``output_image`` and ``mask`` as encoded bytes (``mask`` may be
    None), the prompt, the categories (``[]`` = safe) and the manifest's ``meta``."""

    id: str
    input_image: bytes
    prompt: str
    output_image: bytes
    mask: bytes | None = None
    labels: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict, compare=False)
    cumulative: bool = False  # an edit session's cumulative triple (the decomposition family builds them)

    @property
    def unsafe(self) -> bool:
        return bool(self.labels)

    def with_prompt(self, prompt: str) -> "Case":
        return dataclasses.replace(self, prompt=prompt)


@dataclass(frozen=True)
class Attack:
    """A documented transform. ``transform(case, rng)`` attacks one case; an attack with ``needs_model``
    has ``batch(cases, surrogate, rng)`` instead, which attacks them all with a model's gradients; a
    multi-turn attack has ``turns(case, rng)``, which splits a case into the turns of a session (the
    harness judges them turn by turn and as a session)."""

    family: str
    name: str
    description: str
    transform: Callable[[Case, np.random.Generator], Case] | None = None
    batch: Callable[..., list[Case]] | None = None
    needs_model: bool = False
    params: dict = field(default_factory=dict)
    turns: Callable[[Case, np.random.Generator], list[Case]] | None = None

    def sessions(self, cases: list[Case], seed: int) -> list[list[Case]]:
        """A multi-turn attack's turns, per case."""
        return [self.turns(c, rng_for(seed, self.name, c.id)) for c in cases]

    def apply(self, cases: list[Case], seed: int, surrogate=None) -> list[Case]:
        if self.turns is not None:
            raise ValueError(f"attack '{self.name}' spans several turns: run it with Attack.sessions")
        if self.needs_model:
            if surrogate is None:
                raise ValueError(f"attack '{self.name}' needs a model to take gradients from: give --model-dir "
                                 "(white-box) or --surrogate (transfer)")
            return self.batch(cases, surrogate, rng_for(seed, self.name, "batch"))
        return [self.transform(c, rng_for(seed, self.name, c.id)) for c in cases]


ATTACKS: dict[str, Attack] = {}


def register(a: Attack) -> Attack:
    """Add ``a`` to :data:`ATTACKS` (a name already there is replaced)."""
    ATTACKS[a.name] = a
    return a


def attack(family: str, name: str, description: str, **params) -> Callable:
    """Decorator: register ``fn(case, rng) -> Case`` as the attack ``name`` of ``family``."""
    def wrap(fn: Callable[[Case, np.random.Generator], Case]):
        register(Attack(family, name, description, transform=fn, params=params))
        return fn
    return wrap


def select(names: Iterable[str] | None) -> list[Attack]:
    """The attacks named (or every attack of a family named); all registered ones for None."""
    if not names:
        return list(ATTACKS.values())
    chosen: dict[str, Attack] = {}
    for n in names:
        hits = [a for a in ATTACKS.values() if n in (a.name, a.family)]
        if not hits:
            families = sorted({a.family for a in ATTACKS.values()})
            raise ValueError(f"no attack or family called {n!r}; families: {', '.join(families)}; "
                             f"attacks: {', '.join(ATTACKS)}")
        chosen.update((a.name, a) for a in hits)
    return list(chosen.values())


def rng_for(seed: int, *parts: str) -> np.random.Generator:
    """A generator seeded from ``seed`` and ``parts`` (an attack's name and a case's id)."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(parts).encode())])
