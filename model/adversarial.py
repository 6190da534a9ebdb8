"""A perturbation carried through an inpainting edit: the one definition that the red team attacks with
(:mod:`editguard.redteam.pixels`) and that adversarial training defends against (``train --adversarial``).

The attacker perturbs the whole upload by ``delta`` (``|delta| <= eps`` on the 0-255 scale). Inpainting
keeps the pixels outside its mask, so the output carries the same ``delta`` there; inside the mask the
inpainting model's pixels are its own. :func:`carried_pgd` finds ``delta`` by projected gradient ascent
on an objective of the network's logits: a random start, then ``steps`` signed-gradient steps of
``step_size`` (default ``2.5 * eps / steps``), each projected back onto the bound.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["carried_pgd"]


def carried_pgd(net: torch.nn.Module, inputs: dict[str, torch.Tensor],
                objective: Callable[[torch.Tensor], torch.Tensor], eps: float, steps: int, step_size: float | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_image, output_image)`` as float ``[B, S, S, 3]`` on the 0-255 scale, perturbed to raise
    ``objective(logits)``. ``inputs``: the network's keyword inputs (uint8 images, the mask, the prompt's
    ids or embedding). The network's parameters get no gradient from this."""
    src, dst = inputs["input_image"].float(), inputs["output_image"].float()
    keep = (inputs["mask"] < 128).to(src.dtype).unsqueeze(-1)  # outside the mask: carried into the output
    rest = {k: v for k, v in inputs.items() if k not in ("input_image", "output_image")}
    step_size = 2.5 * eps / steps if step_size is None else step_size
    delta = (torch.rand(src.shape, generator=generator, device="cpu").to(src.device) * 2 - 1) * eps
    params = [p for p in net.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            delta.requires_grad_(True)
            logits = net(input_image=(src + delta).clamp(0, 255), output_image=(dst + delta * keep).clamp(0, 255),
                         **rest)
            (grad,) = torch.autograd.grad(objective(logits.float()), delta)
            delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
    finally:
        for p in params:
            p.requires_grad_(True)
    delta = delta.detach()
    return (src + delta).clamp(0, 255), (dst + delta * keep).clamp(0, 255)
