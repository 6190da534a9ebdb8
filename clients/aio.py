"""The asyncio twin of :class:`EditGuardClient`, on ``tritonclient.grpc.aio``::

    async with AsyncEditGuardClient("localhost:8001") as guard:
        verdict = await guard.classify(src_png, "make the sky pink", out_png)
        async for item_id, result in guard.classify_many(triples, concurrency=16):
            ...
"""

from __future__ import annotations

import asyncio
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Iterable, Mapping

from .client import (OUTPUTS, ClientSettings, ImageInput, PixelsPrep, Triple, Verdict, _as_request, _as_triple,
                     _Backoff, _for_item, build_inputs, check_prompt, make_verdict, prepare, published_specs,
                     spec_mismatch, to_error, wants_pixels)
from .errors import EditGuardError, InvalidInputError, ServerUnavailableError

__all__ = ["AsyncEditGuardClient"]


@dataclass
class AsyncEditGuardClient(ClientSettings):
    """Same arguments and behaviour as :class:`EditGuardClient`, with ``async`` methods."""

    _clients: list = field(default_factory=list, init=False, repr=False)
    _rr: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        import tritonclient.grpc.aio as aio

        self._aio = aio
        self._clients = self._connect(aio=True)
        self._rr = itertools.count()
        self._prep: dict[str, PixelsPrep] = {}

    async def pixels_prep(self, refresh: bool = False, offset: int = 0, model: str | None = None) -> PixelsPrep:
        """As :meth:`EditGuardClient.pixels_prep`."""
        model = model or self.model
        prep = self._prep.get(model)
        if prep is None or refresh:
            client = self._clients[(next(self._rr) + offset) % len(self._clients)]
            try:
                config = await client.get_model_config(model, headers=self._headers(), as_json=True)
                specs = published_specs(config)
                ready = {v for v in specs if await client.is_model_ready(model, v, headers=self._headers())}
            except EditGuardError:
                raise
            except Exception as e:
                raise to_error(e) from e
            prep = self._prep[model] = self._choose_spec(model, specs, ready)
        return prep

    async def close(self) -> None:
        for c in self._clients:
            await c.close()

    async def __aenter__(self) -> "AsyncEditGuardClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def ready(self, model: str | None = None) -> bool:
        model = model or self.model
        for c in self._clients:
            try:
                if await c.is_model_ready(model, self._version(model), headers=self._headers()):
                    return True
            except Exception:  # an endpoint that does not answer is simply not ready
                continue
        return False

    async def wait_ready(self, timeout: float = 60.0, model: str | None = None) -> None:
        deadline = time.monotonic() + timeout
        while not await self.ready(model):
            if time.monotonic() > deadline:
                raise ServerUnavailableError(f"model {model or self.model!r} not ready at {', '.join(self._urls)}")
            await asyncio.sleep(0.2)

    async def classify(self, input_image: ImageInput, prompt: str, output_image: ImageInput,
                       mask: ImageInput | None = None, *, timeout: float | None = None, id: str | None = None,
                       headers: Mapping[str, str] | None = None) -> Verdict:
        if output_image is None:
            raise _for_item(InvalidInputError("output_image is required; before generation, use precheck()"), id)
        return await self._call(self.model, input_image, prompt, output_image, mask, timeout, id, headers)

    async def precheck(self, input_image: ImageInput, prompt: str, mask: ImageInput | None = None, *,
                       timeout: float | None = None, id: str | None = None,
                       headers: Mapping[str, str] | None = None) -> Verdict:
        """As :meth:`EditGuardClient.precheck`."""
        return await self._call(self.precheck_model, input_image, prompt, None, mask, timeout, id, headers)

    async def _call(self, model: str, input_image, prompt, output_image, mask, timeout, id, headers) -> Verdict:
        t0 = time.perf_counter()
        pixels = self.pixels and wants_pixels(input_image, output_image, mask)
        inputs = None
        try:
            if not pixels:
                inputs = build_inputs(self._aio, *prepare(input_image, prompt, output_image, mask))
            else:
                check_prompt(prompt)
        except InvalidInputError as e:
            raise _for_item(e, id)
        outputs = [self._aio.InferRequestedOutput(n) for n in OUTPUTS]
        plan = _Backoff(timeout or self.timeout, self.retries, self.backoff)
        offset, refreshed = 0, False
        while True:
            try:
                if inputs is None:  # the pixels path: prepared for the version that will answer
                    prep = await self.pixels_prep(refresh=refreshed, offset=offset, model=model)
                    arrays = prep.arrays(input_image, output_image, mask)
                    inputs = prep.inputs(self._aio, arrays, prompt, mask is not None)
                client = self._clients[(next(self._rr) + offset) % len(self._clients)]
                result = await client.infer(model, inputs, model_version=self._version(model), outputs=outputs,
                                            client_timeout=max(plan.remaining(), 0.001),
                                            headers=self._headers(headers))
                return make_verdict(result, model, (time.perf_counter() - t0) * 1e3, id)
            except Exception as e:  # tritonclient raises InferenceServerException for gRPC errors
                err = e if isinstance(e, EditGuardError) else to_error(e, id)
                if pixels and not refreshed and spec_mismatch(err):
                    refreshed, inputs = True, None  # a roll-out changed the preprocessing: read it again, once
                    continue
                delay = plan.next_delay(err.status or "")
                if delay is None:
                    raise _for_item(err, id) from e
                offset += 1
                await asyncio.sleep(delay)

    async def classify_many(self, triples: Iterable, *, concurrency: int = 8
                            ) -> AsyncIterator[tuple[str, Verdict | EditGuardError]]:
        """Async generator of ``(id, verdict or error)``, at most ``concurrency`` in flight."""
        async for out in self._many((_as_triple(t) for t in triples), concurrency, precheck=False):
            yield out

    async def precheck_many(self, requests: Iterable, *, concurrency: int = 8
                            ) -> AsyncIterator[tuple[str, Verdict | EditGuardError]]:
        """As :meth:`EditGuardClient.precheck_many`."""
        async for out in self._many((_as_request(t) for t in requests), concurrency, precheck=True):
            yield out

    async def _many(self, items, concurrency: int, precheck: bool):
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        items = iter(items)

        async def one(t: Triple):
            try:
                if precheck:
                    return t.id, await self.precheck(t.input_image, t.prompt, t.mask, id=t.id)
                return t.id, await self.classify(t.input_image, t.prompt, t.output_image, t.mask, id=t.id)
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
