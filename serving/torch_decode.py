"""JPEG decoding on a torch device (nvJPEG on a GPU) behind the preprocessing contract.

A served client model that decodes with Pillow spends most of its time on the host, turning encoded
uploads into pixels it then shrinks to ``image_size``. :class:`TorchDecoder` moves that work to the
device: ``torchvision.io.decode_jpeg(device="cuda")`` decodes a request's JPEGs in one nvJPEG call,
and the letterbox resize runs there too, so only the ``S x S`` result comes back to the host.

It is a :class:`~editguard.model.preprocess.Preprocessor` with the image half overridden, so it
keeps that contract and leans on it:

- the same limits and the same errors: every upload's header is checked by
  :meth:`Preprocessor.header` before anything is decoded;
- the same geometry: :meth:`Preprocessor.placement` gives the resized size and offset;
- the same EXIF orientation, read from the header and applied on the device;
- anything else goes to the Pillow path unchanged: PNG, WebP and other formats, CMYK JPEGs,
  PIL images and arrays, masks, JPEGs that don't end with the end-of-image marker (truncated ones
  among them), and any JPEG the device decoder refuses (so a corrupt upload gets
  Pillow's error message, naming the input).

The pixels are not bit-identical to Pillow's: a full-size decode followed by an antialiased
bilinear resize differs from Pillow's exact resample by under half a grey level on average, and
from its DCT-domain draft (the served default) by up to about one (``tests/test_torch_decode.py``
bounds both; nvJPEG's IDCT may add a little on a GPU). The served client model turns this on with
its ``decode_device`` parameter (``editguard export --decode-device cuda``); it needs torch and
torchvision in the Python backend's environment. With ``device="cpu"`` torchvision decodes with
libjpeg-turbo: no faster than Pillow, but it runs the same code where there is no GPU.
"""

from __future__ import annotations

import numpy as np

from ..model.config import PreprocessConfig
from ..model.preprocess import ImageSource, Preprocessor

__all__ = ["TorchDecoder"]

_ORIENTATION = 0x0112  # the EXIF tag


class TorchDecoder(Preprocessor):
    """A :class:`Preprocessor` that decodes and letterboxes JPEGs on ``device`` (``"cuda"``,
    ``"cuda:1"``, ``"cpu"``); everything else (prompts, masks, other formats) is inherited."""

    def __init__(self, cfg: PreprocessConfig, tokenizer=None, device: str = "cuda", speller=None):
        super().__init__(cfg, tokenizer, speller)
        try:
            import torch
            import torch.nn.functional as F
            from torchvision.io import ImageReadMode, decode_jpeg
        except ImportError as e:
            raise RuntimeError(f"decoding on {device!r} needs torch and torchvision in this Python environment "
                               f"({e}); install them, or leave decode_device empty to decode with Pillow") from e
        self.torch, self.F, self._decode_jpeg, self._rgb = torch, F, decode_jpeg, ImageReadMode.RGB
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"decode_device is {device!r} but torch sees no CUDA device here; leave "
                               "decode_device empty to decode with Pillow")

    def image(self, data: ImageSource, field: str = "image") -> np.ndarray:
        """One image, ``uint8 [S, S, 3]`` (what :meth:`Preprocessor.image` returns)."""
        return self._images({field: data})[field][0]

    # -- internals ----------------------------------------------------------------
    def _orientation(self, data: ImageSource, field: str) -> int | None:
        """The EXIF orientation (1-8) of encoded bytes the device can take (a single-frame RGB or
        grayscale JPEG within the limits); None for anything the Pillow path should take. A header
        the limits refuse raises here, before any decoding."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            return None
        data = bytes(data)
        if not data.endswith(b"\xff\xd9") or len(data) > self.cfg.max_image_bytes:
            # no end-of-image marker (truncated, or trailing bytes), too big, or empty: Pillow decides,
            # as a GPU decoder may return a partial image without an error
            return None
        img = self.header(data, field)
        if img.format != "JPEG" or img.mode not in ("RGB", "L"):
            return None
        try:
            orientation = int(img.getexif().get(_ORIENTATION, 1))
        except Exception:  # an unreadable EXIF block: let Pillow decide, as it does on that path
            return None
        return orientation if 1 <= orientation <= 8 else 1

    def _images(self, images: dict[str, ImageSource]) -> dict[str, tuple[np.ndarray, tuple[int, int]]]:
        """``{field: (uint8 [S, S, 3], source size)}``: the device-ready JPEGs in one decoder call, the
        rest (and all of them, when the decoder refuses one) on the Pillow path."""
        orientation = {f: self._orientation(data, f) for f, data in images.items()}
        ready = [f for f, o in orientation.items() if o is not None]
        decoded = dict(zip(ready, self._decode([images[f] for f in ready]) or []))
        done = super()._images({f: data for f, data in images.items() if f not in decoded})
        for f in decoded:
            t = _orient(decoded[f], orientation[f])
            done[f] = (self._letterbox(t), (t.shape[2], t.shape[1]))
        return {f: done[f] for f in images}

    def _decode(self, blobs: list[bytes | bytearray | memoryview]):
        """Decoded ``uint8 [3, H, W]`` tensors on the device, or None when the decoder refuses any of
        them (decode_jpeg returns nothing partial); the caller then takes the Pillow path."""
        if not blobs:
            return []
        torch = self.torch
        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]  # (a writable copy)
        try:
            return self._decode_jpeg(tensors, mode=self._rgb, device=self.device)
        except (RuntimeError, ValueError):
            return None

    def _letterbox(self, t) -> np.ndarray:
        """``uint8 [3, H, W]`` on the device to ``uint8 [S, S, 3]`` on the host, placed like Pillow's."""
        torch, s = self.torch, self.cfg.image_size
        w, h, left, top = self.placement(t.shape[2], t.shape[1])
        resized = self.F.interpolate(t[None].float(), size=(h, w), mode="bilinear", antialias=True,
                                     align_corners=False)[0]
        canvas = torch.full((3, s, s), self.cfg.pad_value, dtype=torch.uint8, device=t.device)
        canvas[:, top:top + h, left:left + w] = resized.round_().clamp_(0, 255).to(torch.uint8)
        return canvas.permute(1, 2, 0).contiguous().cpu().numpy()


def _orient(t, orientation: int):
    """Apply an EXIF orientation to ``[C, H, W]`` as Pillow's ``ImageOps.exif_transpose`` does."""
    if orientation == 2:
        return t.flip(2)
    if orientation == 3:
        return t.flip(1).flip(2)
    if orientation == 4:
        return t.flip(1)
    if orientation == 5:
        return t.transpose(1, 2)
    if orientation == 6:
        return t.transpose(1, 2).flip(2)
    if orientation == 7:
        return t.transpose(1, 2).flip(1).flip(2)
    if orientation == 8:
        return t.transpose(1, 2).flip(1)
    return t
