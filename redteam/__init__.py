"""The red team: attack a guard the way abusers will and measure what gets through (``editguard redteam``).

:mod:`.attacks` (the library: :class:`Case`, :class:`Attack`, the ``@attack`` decorator), the families
:mod:`.wording` (obfuscated wording, long prompts), :mod:`.masks` (lying masks), :mod:`.pixels` (PGD
carried through the edit) and :mod:`.decompose` (an edit split over several turns), :mod:`.harness`
(run them against a repository or a server at its installed thresholds) and :mod:`.report` (JSON,
markdown, PNG). docs/red-team.md has the threat model and the figures.
"""

from . import decompose, masks, pixels, wording  # noqa: F401  (they register their attacks)
from .attacks import ATTACKS, Attack, Case, attack, register, select

__all__ = ["ATTACKS", "Attack", "Case", "attack", "register", "select"]
