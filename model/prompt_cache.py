"""A frozen prompt tower's embeddings, kept beside the network for eager torch (training, evaluation, the
bench), as serving keeps them beside the exported graph (:class:`~editguard.serving.served.PromptEmbeddings`).

A frozen tower gives the same pooled embedding for the same token ids, so each distinct prompt is
computed once, under ``no_grad``, and the network takes it as ``prompt_embedding`` (its training
noise, if any, still goes on top). The network itself holds weights only.
"""

from __future__ import annotations

import torch

__all__ = ["PromptCache", "with_cache"]


class PromptCache:
    """Pooled embeddings of ``tower`` by token ids and attention mask; cleared when over ``limit`` entries."""

    def __init__(self, tower, limit: int = 200_000):
        self.tower, self.limit = tower, limit
        self._cache: dict[bytes, torch.Tensor] = {}

    @classmethod
    def of(cls, net) -> "PromptCache | None":
        """A cache for ``net``'s prompt tower when it is frozen, else None (a trained tower is computed each time)."""
        return cls(net.text) if net.split_prompt else None

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``float32 [B, H]``: each prompt's pooled embedding; those not kept yet are computed as one batch."""
        keys = [r.tobytes() for r in torch.cat([input_ids, attention_mask], 1).cpu().numpy()]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            with torch.no_grad():
                new = self.tower.encode(input_ids[todo], attention_mask[todo])
            if len(self._cache) + len(todo) > self.limit:
                self._cache.clear()
            self._cache.update({keys[i]: e for i, e in zip(todo, new)})
        return torch.stack([self._cache[k] for k in keys])

    def inputs(self, batch: dict) -> dict:
        """``batch`` (the network's keyword inputs) with ``prompt_embedding`` in place of the token ids."""
        out = {k: v for k, v in batch.items() if k not in ("input_ids", "attention_mask")}
        out["prompt_embedding"] = self(batch["input_ids"], batch["attention_mask"])
        return out


def with_cache(cache: PromptCache | None, batch: dict) -> dict:
    """``batch`` as the network takes it: through ``cache`` when there is one."""
    return cache.inputs(batch) if cache is not None else batch
