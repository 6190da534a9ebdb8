"""Edit sessions on the client's side: judge the conversation, not only the turn.

An abuser splits a refused edit into small steps, each harmless on its own ("make the shirt a bit
shorter", four times). A session keeps, on the caller's side, the origin image (the first upload) and
the prompts of the accepted turns, and each turn sends **one request** with two triples
(:mod:`editguard.model.session` defines them):

- the *step* triple: this turn's input (the previous accepted output), its prompt, its output;
- the *cumulative* triple: the origin, the turn prompts joined in order, this turn's output. It is sent
  marked as such (``CUMULATIVE``), and the server reads its prompt turn by turn: each turn prompt's own
  windows, which that turn's step triple already encoded, so the prompt tower's cache holds them.

Both ride the same dynamic batch; the turn is unsafe when either is. The server keeps no state::

    with EditGuardClient("localhost:8001") as guard:
        session = guard.session(upload)
        for prompt in prompts:
            output = inpaint(session.current, prompt)
            verdict = session.classify(prompt, output)
            if verdict.unsafe:
                refuse(verdict.fired, verdict.flagged_categories)

Policy (:class:`SessionPolicy`):

- a refused turn does not advance the session: the next turn starts again from the last accepted
  output, and the refused prompt is not part of the history;
- **thresholds**: each check is judged at the server's session thresholds for it (``SESSION_THRESHOLDS``,
  installed by ``editguard calibrate --sessions``: a step and a cumulative threshold per category, chosen
  together for a session-level target), or at the one-shot thresholds where none are installed;
- **escalation**: after a refusal, later turns of the session are judged at stricter thresholds,
  ``escalation`` times those (0.5 halves them), against an attacker who probes with small
  variations. 1.0 turns it off;
- ``max_history``: the cumulative prompt carries the last ``max_history`` accepted prompts (the origin
  image stays the first upload's), so it stays within what the model reads;
- :meth:`EditSession.restart` starts again from a new upload: a new origin and no history; the
  refusals, and so the escalation, stay unless ``keep_escalation=False``.

A session is one conversation: judge its turns one at a time (it is not shared between threads);
the client under it is shared as usual. A client with several endpoints sends a session's turns to
one of them (the server there has its earlier turns' images and prompt windows in its caches).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Mapping

from ..model.repository import SESSION_CHECKS, SESSION_THRESHOLDS_OUTPUT, THRESHOLDS_OUTPUT
from ..model.session import MAX_HISTORY, cumulative_request
from .errors import InvalidInputError, ServerError
from .protocol import ImageInput, Verdict

CHECKS_CUMULATIVE = tuple(c == "cumulative" for c in SESSION_CHECKS)  # a turn's rows: the step, the cumulative triple

__all__ = ["SessionPolicy", "SessionVerdict", "EditSession", "AsyncEditSession"]


@dataclass(frozen=True)
class SessionPolicy:
    escalation: float = 0.5  # after a refusal, later turns flag at this times the served thresholds (1: off)
    max_history: int = MAX_HISTORY  # accepted turn prompts the cumulative prompt carries

    def __post_init__(self) -> None:
        if not 0.0 < self.escalation <= 1.0:
            raise ValueError(f"escalation is a factor on the thresholds in (0, 1], got {self.escalation}")
        if self.max_history < 1:
            raise ValueError(f"max_history must be at least 1, got {self.max_history}")


@dataclass(frozen=True)
class SessionVerdict:
    """One turn's verdict: ``unsafe`` when the step or the cumulative triple is flagged (``fired`` says which),
    at the served session thresholds or, after a refusal in the session, at the escalated ones. ``step`` and
    ``cumulative`` are the server's verdicts at its one-shot thresholds."""

    unsafe: bool
    turn: int  # this turn's number among the session's accepted turns (1 = the first edit of the upload)
    fired: tuple[str, ...]  # "step" and/or "cumulative"
    flagged: dict[str, bool]  # per category, either check
    step: Verdict
    cumulative: Verdict | None  # None at turn 1, where the cumulative triple is the step triple
    escalated: bool  # judged at the escalated thresholds

    @property
    def flagged_categories(self) -> list[str]:
        return [k for k, v in self.flagged.items() if v]

    @property
    def latency_ms(self) -> float:
        return self.step.latency_ms


@dataclass
class _SessionState:
    """The caller-side state both session classes share; no network here."""

    client: object
    origin: ImageInput
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    refusals: int = 0  # refused turns in this session (escalation applies after the first)
    session_thresholds: bool = True  # ask for SESSION_THRESHOLDS (False once a version exported before them refuses)

    def __post_init__(self) -> None:
        self._start(self.origin)
        # the endpoint this session's turns go to (the next one round-robin, then the one that answered the
        # last turn): the server there keeps the earlier turns' decoded images and prompt windows in its caches
        self.home = self.client._home()

    def _start(self, upload: ImageInput) -> None:
        if upload is None:
            raise InvalidInputError("a session needs the uploaded image it starts from")
        self.origin = upload
        self.current: ImageInput = upload  # the last accepted output: the next turn's input
        self.prompts: list[str] = []  # accepted turn prompts
        self.masks: list = []  # accepted turn masks (None: that turn had none)

    @property
    def endpoint(self) -> str:
        """The endpoint (``host:port``) this session's next turn goes to first."""
        urls = self.client._urls
        return urls[self.home.index % len(urls)]

    @property
    def turn(self) -> int:
        """The number the next turn gets."""
        return len(self.prompts) + 1

    def restart(self, upload: ImageInput, keep_escalation: bool = True) -> None:
        """Start again from a new upload: a new origin, no history. The refusals (and so the escalation)
        stay unless ``keep_escalation`` is False."""
        self._start(upload)
        if not keep_escalation:
            self.refusals = 0

    def _rows(self, prompt: str, output_image: ImageInput, mask, input_image) -> list[tuple]:
        """The turn's request: the step triple, then (from turn 2) the cumulative triple (``CHECKS_CUMULATIVE``)."""
        step = (self.current if input_image is None else input_image, prompt, output_image, mask)
        if not self.prompts:
            return [step]
        joined, union = cumulative_request(self.prompts + [prompt], self.masks + [mask], self.policy.max_history)
        return [step, (self.origin, joined, output_image, union)]

    def _judge(self, verdicts: list[Verdict], prompt: str, output_image: ImageInput, mask) -> SessionVerdict:
        escalated = self.refusals > 0
        flags = [self._flags(v, escalated, check) for v, check in zip(verdicts, SESSION_CHECKS)]
        fired = tuple(name for name, f in zip(("step", "cumulative"), flags) if any(f.values()))
        union = {k: any(f[k] for f in flags) for k in flags[0]}
        turn = self.turn
        if fired:
            self.refusals += 1
        else:
            self.current = output_image
            self.prompts.append(prompt)
            self.masks.append(mask)
        return SessionVerdict(bool(fired), turn, fired, union, verdicts[0], verdicts[1] if len(verdicts) > 1 else None,
                              escalated)

    def _flags(self, v: Verdict, escalated: bool, check: str) -> dict[str, bool]:
        """Each category of one check ("step" or "cumulative") against the session's thresholds of that check
        (the one-shot ones where the server has none), times the escalation after a refusal."""
        th = v.session_thresholds.get(check) or v.thresholds
        factor = self.policy.escalation if escalated else 1.0
        return {k: s >= factor * th[k] for k, s in v.scores.items()}

    def _outputs(self) -> tuple[str, ...]:
        """What a turn asks for besides the verdicts: the thresholds of both checks, where the server has them."""
        return (THRESHOLDS_OUTPUT, SESSION_THRESHOLDS_OUTPUT) if self.session_thresholds else (THRESHOLDS_OUTPUT,)

    def _without_session_thresholds(self, e: InvalidInputError) -> bool:
        """A version exported before session thresholds refuses SESSION_THRESHOLDS: judge both checks at the
        served one-shot thresholds from now on (True), as editguard did before them."""
        if not self.session_thresholds or SESSION_THRESHOLDS_OUTPUT not in str(e):
            return False
        self.session_thresholds = False
        return True


@contextlib.contextmanager
def _needs_thresholds():
    """A served version exported before sessions has no THRESHOLDS output: say what to do."""
    try:
        yield
    except InvalidInputError as e:
        if THRESHOLDS_OUTPUT not in str(e) or SESSION_THRESHOLDS_OUTPUT in str(e):
            raise
        raise ServerError(f"{e}: the served version was exported before edit sessions and does not answer "
                          f"{THRESHOLDS_OUTPUT}; export the model again with this editguard (classify still works)",
                          item_id=e.item_id, status=e.status) from e


class EditSession(_SessionState):
    """A session on :class:`~editguard.clients.EditGuardClient` (``guard.session(upload)``)."""

    def classify(self, prompt: str, output_image: ImageInput, mask: ImageInput | None = None, *,
                 input_image: ImageInput | None = None, timeout: float | None = None, id: str | None = None,
                 headers: Mapping[str, str] | None = None) -> SessionVerdict:
        """Judge this turn: ``output_image`` made from the session's :attr:`current` image (or ``input_image``)
        with ``prompt`` and ``mask``. One request; raises what ``classify`` raises."""
        c = self.client
        rows = self._rows(prompt, output_image, mask, input_image)
        cumulative = CHECKS_CUMULATIVE[:len(rows)]
        with _needs_thresholds():
            try:
                verdicts = c._call(c.model, rows, timeout, id, headers, self._outputs(), cumulative, self.home)
            except InvalidInputError as e:
                if not self._without_session_thresholds(e):
                    raise
                verdicts = c._call(c.model, rows, timeout, id, headers, self._outputs(), cumulative, self.home)
        return self._judge(verdicts, prompt, output_image, mask)


class AsyncEditSession(_SessionState):
    """A session on :class:`~editguard.clients.AsyncEditGuardClient`; ``await session.classify(...)``."""

    async def classify(self, prompt: str, output_image: ImageInput, mask: ImageInput | None = None, *,
                       input_image: ImageInput | None = None, timeout: float | None = None, id: str | None = None,
                       headers: Mapping[str, str] | None = None) -> SessionVerdict:
        """As :meth:`EditSession.classify`."""
        c = self.client
        rows = self._rows(prompt, output_image, mask, input_image)
        cumulative = CHECKS_CUMULATIVE[:len(rows)]
        with _needs_thresholds():
            try:
                verdicts = await c._call(c.model, rows, timeout, id, headers, self._outputs(), cumulative, self.home)
            except InvalidInputError as e:
                if not self._without_session_thresholds(e):
                    raise
                verdicts = await c._call(c.model, rows, timeout, id, headers, self._outputs(), cumulative, self.home)
        return self._judge(verdicts, prompt, output_image, mask)
