"""The asyncio twin of :class:`~editguard.clients.EditGuardClient`, on ``tritonclient.grpc.aio``::

    async with AsyncEditGuardClient("localhost:8001") as guard:
        verdict = await guard.classify(src_png, "make the sky pink", out_png)
        async for item_id, result in guard.classify_many(triples, concurrency=16):
            ...

It drives the same call state machine (:class:`~editguard.clients.call_state.Call`: deadline, retries,
endpoints, the pixels path's one refresh) with ``await`` where the sync client blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Iterable, Mapping

from .call_state import Call, ClientSettings, Home
from .errors import EditGuardError, InvalidInputError, ServerError
from .protocol import (ImageInput, PixelsPrep, Triple, Verdict, as_request, as_triple, explain_request, explanations,
                       mapped_errors, no_explain_model, published_specs)
from .session import AsyncEditSession

__all__ = ["AsyncEditGuardClient"]


@dataclass
class AsyncEditGuardClient(ClientSettings):
    """Same arguments and behaviour as :class:`~editguard.clients.EditGuardClient`, with ``async`` methods."""

    _clients: list = field(default_factory=list, init=False, repr=False)
    _session_type = AsyncEditSession  # what :meth:`session` makes

    def __post_init__(self) -> None:
        import tritonclient.grpc.aio as aio

        self._aio = aio
        self._clients = self._connect(aio=True)

    async def pixels_prep(self, refresh: bool = False, offset: int = 0, model: str | None = None) -> PixelsPrep:
        """As :meth:`EditGuardClient.pixels_prep`."""
        model = model or self.model
        if refresh or model not in self._prep:
            client = self._pick(offset)
            with mapped_errors():
                specs = published_specs(await client.get_model_config(model, headers=self._headers(), as_json=True))
                ready = {v for v in specs if await client.is_model_ready(model, v, headers=self._headers())}
            self._remember_spec(model, specs, ready)
        return self._prep[model]

    async def close(self) -> None:
        for c in self._clients:
            await c.close()

    async def __aenter__(self) -> "AsyncEditGuardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def ready(self, model: str | None = None) -> bool:
        """As :meth:`EditGuardClient.ready`."""
        model = model or self.model
        for c in self._clients:
            with contextlib.suppress(Exception):  # an endpoint that does not answer is simply not ready
                if await c.is_model_ready(model, self._version(model), headers=self._headers()):
                    return True
        return False

    async def wait_ready(self, timeout: float = 60.0, model: str | None = None) -> None:
        """As :meth:`EditGuardClient.wait_ready`."""
        deadline = time.monotonic() + timeout
        while not await self.ready(model):
            if time.monotonic() > deadline:
                raise self._not_ready(model, timeout)
            await asyncio.sleep(0.2)

    async def classify(self, input_image: ImageInput, prompt: str, output_image: ImageInput,
                       mask: ImageInput | None = None, *, timeout: float | None = None, id: str | None = None,
                       headers: Mapping[str, str] | None = None) -> Verdict:
        """As :meth:`EditGuardClient.classify`."""
        return (await self._call(self.model, [(input_image, prompt, output_image, mask)], timeout, id, headers))[0]

    async def precheck(self, input_image: ImageInput, prompt: str, mask: ImageInput | None = None, *,
                       timeout: float | None = None, id: str | None = None,
                       headers: Mapping[str, str] | None = None) -> Verdict:
        """As :meth:`EditGuardClient.precheck`."""
        return (await self._call(self.precheck_model, [(input_image, prompt, None, mask)], timeout, id, headers))[0]

    async def explain(self, input_image: ImageInput, prompt: str, output_image: ImageInput,
                      mask: ImageInput | None = None, *, categories: Iterable[str] | None = None,
                      timeout: float | None = None, headers: Mapping[str, str] | None = None) -> list[dict]:
        """:meth:`EditGuardClient.explain <editguard.clients.client.EditGuardClient.explain>`, awaited."""
        request = explain_request(self._aio, input_image, prompt, output_image, mask, categories)
        client = self._pick()
        try:
            with mapped_errors():
                return explanations(await client.infer(**request, model_version=self.version,
                                                       headers=self._headers(headers),
                                                       client_timeout=timeout or self.timeout))
        except ServerError as e:
            ready = True
            with contextlib.suppress(Exception):  # the question may fail too: then the error stands as it is
                ready = await client.is_model_ready(request["model_name"], self.version, headers=self._headers(headers))
            if not ready:
                raise no_explain_model(e) from e
            raise

    async def _call(self, model: str, rows: list, timeout: float | None, item_id: str | None,
                    headers: Mapping[str, str] | None, thresholds: tuple[str, ...] = (),
                    cumulative: tuple[bool, ...] = (), home: Home | None = None) -> list[Verdict]:
        """One request of ``rows`` (``(input, prompt, output, mask)`` each): a Verdict per row."""
        call = Call(self, model, self._aio, rows, timeout, item_id, headers, thresholds, cumulative, home)
        while True:
            try:
                if call.needs_pixels:
                    call.use_pixels(await self.pixels_prep(call.refresh, call.offset, model))
                return call.verdicts(await self._pick(call.offset, home).infer(**call.request()))
            except Exception as e:  # tritonclient raises InferenceServerException for gRPC errors
                await asyncio.sleep(call.retry_after(e))

    async def classify_many(self, triples: Iterable, *, concurrency: int = 8, outputs: tuple[str, ...] = ()
                            ) -> AsyncIterator[tuple[str, Verdict | EditGuardError]]:
        """Async generator of ``(id, verdict or error)``, at most ``concurrency`` in flight; ``outputs`` as for
        :meth:`EditGuardClient.classify_many`."""
        async for out in self._many((as_triple(t) for t in triples), concurrency, self.model, tuple(outputs)):
            yield out

    async def precheck_many(self, requests: Iterable, *, concurrency: int = 8
                            ) -> AsyncIterator[tuple[str, Verdict | EditGuardError]]:
        """As :meth:`EditGuardClient.precheck_many`."""
        async for out in self._many((as_request(t) for t in requests), concurrency, self.precheck_model):
            yield out

    async def _many(self, items, concurrency: int, model: str, outputs: tuple[str, ...] = ()):
        self._check_concurrency(concurrency)
        items = iter(items)
        asked = [outputs]  # emptied once the server refuses them

        async def one(t: Triple):
            extra = asked[0]
            try:
                rows = [(t.input_image, t.prompt, t.output_image, t.mask)]
                return t.id, (await self._call(model, rows, None, t.id, None, extra, (t.cumulative,)))[0]
            except InvalidInputError as e:
                if extra and any(name in str(e) for name in extra):
                    asked[0] = ()
                    return await one(t)
                return t.id, e
            except EditGuardError as e:
                return t.id, e

        pending = {asyncio.ensure_future(one(t)) for t in itertools.islice(items, concurrency)}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for fut in done:
                yield fut.result()
                nxt = next(items, None)
                if nxt is not None:
                    pending.add(asyncio.ensure_future(one(nxt)))
