"""The pixel attacks (family ``pixels``): a perturbation of the upload that rides through the edit.

Inpainting keeps the pixels outside its mask, so a perturbation the attacker adds to the whole upload
reaches the output there too (MMA-Diffusion's attack on Stable Diffusion's inpainting). Here:

- the attacker uploads the image at the network's own input size (the strongest choice: the server's
  resize is then the identity), perturbed by ``delta`` with ``|delta| <= eps`` (L-infinity, on the
  0-255 scale) over the whole image, masked region included;
- the output carries the same ``delta`` outside the mask; inside it the inpainting model's pixels are
  its own;
- ``delta`` comes from projected gradient descent (:func:`editguard.model.adversarial.carried_pgd`,
  the same that adversarial training uses: a random start, ``steps`` signed-gradient steps) on a
  :class:`Surrogate`: the target's own model dir (white-box) or another model (transfer). The
  objective is the logits of the edit's own categories (every category for a safe edit), pushed down;
- the perturbed images are rounded to uint8 and sent as PNG, or as JPEG (quality 90) after a codec
  round trip (``_jpeg`` attacks).

A surrogate needs torch (the ``[train]`` extra); the rest of the red team does not.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image

from ..clients.protocol import encode_image
from .attacks import Attack, Case, register

__all__ = ["Surrogate", "pgd", "EPSILONS"]

EPSILONS = (2, 4, 8)  # L-infinity bounds, on the 0-255 scale
STEPS = 10


class Surrogate:
    """A model dir in torch, for gradients: ``model_dir`` (the target's own: white-box) or another."""

    def __init__(self, model_dir, device: str = "cpu"):
        from ..model.model_dir import load_model_dir
        from ..model.prompt_cache import PromptCache

        self.net, self.pre = load_model_dir(model_dir, device)
        self.net.eval().requires_grad_(False)
        self.cache = PromptCache.of(self.net)
        self.device = device
        self.labels = list(self.net.cfg.labels)

    def inputs(self, cases: list[Case]) -> dict[str, np.ndarray]:
        """The network's inputs for ``cases``, through the model's own preprocessing."""
        from ..model.preprocess import collate

        return collate([self.pre.triple(c.input_image, c.prompt, c.output_image, c.mask) for c in cases])


def pgd(surrogate: Surrogate, cases: list[Case], eps: float, steps: int = STEPS, jpeg: bool = False,
        rng: np.random.Generator | None = None, batch_size: int = 32) -> list[Case]:
    """``cases`` perturbed against ``surrogate`` (see the module docstring), re-encoded for upload."""
    import torch

    from ..model.adversarial import carried_pgd
    from ..model.prompt_cache import with_cache

    rng = rng or np.random.default_rng(0)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    out: list[Case] = []
    for start in range(0, len(cases), batch_size):
        chunk = cases[start:start + batch_size]
        arrays = surrogate.inputs(chunk)
        t = {k: torch.from_numpy(v).to(surrogate.device) for k, v in arrays.items()}
        target = torch.zeros(len(chunk), len(surrogate.labels), device=surrogate.device)
        for i, c in enumerate(chunk):
            idx = [surrogate.labels.index(x) for x in c.labels if x in surrogate.labels]
            target[i, idx if idx else slice(None)] = 1.0
        with torch.no_grad():
            inputs = with_cache(surrogate.cache, t)
        adv_in, adv_out = carried_pgd(surrogate.net, inputs, lambda logits: -(logits * target).sum(), eps, steps,
                                      generator=gen)
        adv_in = adv_in.round().to(torch.uint8).cpu().numpy()
        adv_out = adv_out.round().to(torch.uint8).cpu().numpy()
        for i, c in enumerate(chunk):
            out.append(dataclasses.replace(c, input_image=_encode(adv_in[i], jpeg),
                                           output_image=_encode(adv_out[i], jpeg), mask=_encode(arrays["mask"][i], False)))
    return out


def _encode(arr: np.ndarray, jpeg: bool) -> bytes:
    """PNG (the client's own encoding of an array), or JPEG at quality 90 for the codec round trip."""
    if not jpeg:
        return encode_image(arr)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _register() -> None:
    def make(eps: int, jpeg: bool):
        return lambda cases, surrogate, rng: pgd(surrogate, cases, float(eps), jpeg=jpeg, rng=rng)

    for source, what in (("whitebox", "the target's own model dir (--model-dir)"),
                         ("transfer", "a surrogate model (--surrogate)")):
        for eps in EPSILONS:
            for jpeg in (False, True):
                name = f"pgd_{source}_{eps}" + ("_jpeg" if jpeg else "")
                register(Attack("pixels", name, f"PGD at {eps}/255 on {what}, carried into the output outside the mask"
                                + (", then a JPEG round trip (quality 90)" if jpeg else ""),
                                batch=make(eps, jpeg), needs_model=True, params={"source": source, "eps": eps,
                                                                                  "jpeg": jpeg}))


_register()
