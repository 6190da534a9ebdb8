"""The editguard network: one shared timm image tower, an optional pair tower, an HF text tower,
a fusion head.

Reads top to bottom: towers, fusion head, the model, then the factory.
All inputs are what :mod:`editguard.model.preprocess` produces (uint8 images,
int64 token ids); normalisation happens here, inside ``forward``, so the
exported ONNX graph takes raw uint8 pixels.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .config import ImageEncoderConfig, ModelConfig, TextEncoderConfig, resolve_local
from .weights import timm_weights_file

_logger = logging.getLogger(__name__)

__all__ = ["EditGuardNet", "ParamGroup", "build_network"]


class ImageTower(nn.Module):
    """A timm backbone shared by the input and output images.

    Takes ``uint8 [B, S, S, 3]`` and, when ``with_mask``, ``uint8 [B, S, S]``
    as a 4th channel; returns pooled features ``[B, num_features]``.
    """

    def __init__(self, cfg: ImageEncoderConfig, mean, std, with_mask: bool):
        super().__init__()
        import timm

        kw = {"num_classes": 0, "in_chans": 4 if with_mask else 3}
        if cfg.drop_path_rate:
            kw["drop_path_rate"] = cfg.drop_path_rate
        with tempfile.TemporaryDirectory(prefix="editguard-weights-") as tmp:
            if cfg.pretrained and cfg.weights:  # timm loads it as its own (and adapts the stem to the mask channel)
                kw["pretrained_cfg_overlay"] = {"file": str(timm_weights_file(cfg.weights, cfg.name, Path(tmp)))}
            self.backbone = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kw)
        self.with_mask = with_mask
        self.num_features = self.backbone.num_features
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0), persistent=False)

    def input_contract(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The backbone's own (mean, std) from timm's pretrained cfg: what a new model's preprocessing takes."""
        from timm.data import resolve_data_config

        dc = resolve_data_config(model=self.backbone)
        return tuple(dc["mean"][:3]), tuple(dc["std"][:3])

    def set_normalization(self, mean, std) -> None:
        """Normalise with ``mean`` and ``std`` (per channel, on the 0..1 scale) from now on."""
        self.mean.copy_(torch.tensor(mean).view(1, 3, 1, 1) * 255.0)
        self.inv_std.copy_(1.0 / (torch.tensor(std).view(1, 3, 1, 1) * 255.0))

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``uint8 [B, S, S, 3]`` -> normalised ``float32 [B, 3, S, S]``."""
        return (image.permute(0, 3, 1, 2).float() - self.mean) * self.inv_std

    def forward(self, image: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalize(image)
        if self.with_mask:
            x = torch.cat([x, mask.unsqueeze(1).float() * (1.0 / 255.0)], dim=1)
        return self.backbone(x)


class PairTower(nn.Module):
    """Early fusion of the aligned pair: where the two images differ, pixel by pixel.

    A random-init timm backbone over 10 channels: the normalised input and output, their absolute
    difference, and the mask. Pooled embeddings of each image alone lose *where* a small change is;
    this tower sees it from the first layer. Returns ``[B, num_features]``.
    """

    def __init__(self, name: str):
        super().__init__()
        import timm

        self.backbone = timm.create_model(name, pretrained=False, num_classes=0, in_chans=10)
        self.num_features = self.backbone.num_features

    def forward(self, src: torch.Tensor, out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``src``, ``out``: normalised ``[B, 3, S, S]``; ``mask``: ``uint8 [B, S, S]``."""
        m = mask.unsqueeze(1).float() * (1.0 / 255.0)
        return self.backbone(torch.cat([src, out, (out - src).abs(), m], dim=1))


class TextTower(nn.Module):
    """A Hugging Face encoder; returns a pooled prompt embedding ``[B, hidden]``."""

    def __init__(self, cfg: TextEncoderConfig, hf_config=None, vocab_size: int | None = None, max_tokens: int = 32):
        super().__init__()
        from transformers import AutoModel, BertConfig

        if hf_config is not None:  # rebuilding from a model dir: architecture only, weights come after
            self.encoder = AutoModel.from_config(hf_config)
        elif cfg.name is None:
            if vocab_size is None:
                raise ValueError("a tiny text encoder needs the tokenizer's vocab_size")
            bert = BertConfig(vocab_size=vocab_size, max_position_embeddings=max_tokens, type_vocab_size=1, **cfg.tiny)
            self.encoder = AutoModel.from_config(bert, add_pooling_layer=False)
        elif cfg.pretrained:
            self.encoder = AutoModel.from_pretrained(resolve_local(cfg.name))
        else:
            from transformers import AutoConfig

            self.encoder = AutoModel.from_config(AutoConfig.from_pretrained(resolve_local(cfg.name)))
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler = None  # unused (we pool ourselves); unused weights would also stall DDP
        self.pooling, self.normalize, self.noise = cfg.pooling, cfg.normalize, cfg.embedding_noise
        self.hidden_size = self.encoder.config.hidden_size
        self.frozen = cfg.freeze
        if self.frozen:
            self.encoder.requires_grad_(False)

    def train(self, mode: bool = True) -> "TextTower":
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen tower never drops out
        return self

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled embeddings: ``[B, H]`` for ``[B, T]`` token ids, ``[B, W, H]`` for a prompt's windows
        ``[B, W, T]`` (a window past the prompt's end, all padding, is a zero row)."""
        if input_ids.dim() == 3:
            b, w, t = input_ids.shape
            flat_ids, flat_att = input_ids.reshape(b * w, t), attention_mask.reshape(b * w, t)
            used = flat_att[:, 0] > 0
            if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
                e = self.encode(flat_ids, flat_att) * used.unsqueeze(-1).to(torch.float32)
            else:  # eager: the padding windows are not run at all
                e = torch.zeros(b * w, self.hidden_size, device=input_ids.device)
                if used.any():
                    e = e.index_put((used,), self.encode(flat_ids[used], flat_att[used]).to(e.dtype))
            return e.reshape(b, w, -1)
        # a last guard: ids are validated before they get here, but an out-of-range id must never index
        # outside the embedding table (in an exported graph served by a native backend, say)
        input_ids = input_ids.clamp(0, self.encoder.config.vocab_size - 1)
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.pooling == "cls":
            e = h[:, 0]
        else:
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            e = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return nn.functional.normalize(e, dim=-1) if self.normalize else e

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.jitter(self.encode(input_ids, attention_mask))

    def jitter(self, e: torch.Tensor) -> torch.Tensor:
        """In training only, the embedding noise (``text_encoder.embedding_noise``) on a pooled embedding, whether
        this tower just computed it or a :class:`~editguard.model.prompt_cache.PromptCache` kept it."""
        if self.training and self.noise:
            e = e + self.noise * torch.randn_like(e)
            if self.normalize:
                e = nn.functional.normalize(e, dim=-1)
        return e


class FusionHead(nn.Module):
    """Sees both image embeddings, what changed between them, and the prompt.

    Features: ``[out, in, out - in, |out - in|, text, text * (out - in)]``, plus ``[pair,
    text * pair]`` with a pair tower; ablations leave out what they drop. Before generation
    (the pre-check: no output image) they are ``[in, text, text * in]``. Returns logits
    ``[B, num_labels]``.
    """

    def __init__(self, width: int, num_labels: int, use_input: bool, use_prompt: bool, dropout: float,
                 use_pair: bool = False, use_output: bool = True):
        super().__init__()
        self.use_input, self.use_prompt, self.use_pair, self.use_output = use_input, use_prompt, use_pair, use_output
        self.precheck = use_input and not use_output
        if self.precheck:
            n = 1 + 2 * use_prompt
        else:
            n = use_output + 3 * use_input + use_prompt + (use_input and use_prompt) + use_pair * (1 + use_prompt)
        self.mlp = self.new_mlp(n * width, width, num_labels, dropout)

    @staticmethod
    def new_mlp(features: int, width: int, outputs: int, dropout: float) -> nn.Sequential:
        return nn.Sequential(
            nn.LayerNorm(features),
            nn.Linear(features, 2 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
            nn.GELU(),
            nn.Linear(width, outputs),
        )

    def features(self, e_out: torch.Tensor, e_in: torch.Tensor | None, t: torch.Tensor | None,
                 pair: torch.Tensor | None = None) -> torch.Tensor:
        """The fused features ``[B, n * width]`` every head reads."""
        if self.precheck:
            return torch.cat([e_in] + ([t, t * e_in] if self.use_prompt else []), dim=-1)
        feats = [e_out] if self.use_output else []
        if self.use_input:
            d = e_out - e_in
            feats += [e_in, d, d.abs()]
        if self.use_prompt:
            feats.append(t)
            if self.use_input:
                feats.append(t * d)
        if self.use_pair:
            feats += [pair, t * pair] if self.use_prompt else [pair]
        return torch.cat(feats, dim=-1)

    def forward(self, e_out: torch.Tensor, e_in: torch.Tensor | None, t: torch.Tensor | None,
                pair: torch.Tensor | None = None) -> torch.Tensor:
        return self.mlp(self.features(e_out, e_in, t, pair))


class HeadBranch(nn.Module):
    """Categories that ``train --from`` added: an MLP of the main head's shape that scores them, beside the
    main head, so training it never moves the scores of the categories before it.

    A plain branch reads the main head's fused features. With ``towers`` it has its own image tower, pair
    tower and projections too (copies of the parent's when grown), and fuses its own features: it can learn
    to see what the parent's towers never had to, at the cost of one more pass of those towers per request.
    The prompt tower (frozen, or frozen for the growth) is shared.
    """

    def __init__(self, net: "EditGuardNet", outputs: int, towers: bool):
        super().__init__()
        cfg, p = net.cfg, net.cfg.preprocess
        self.towers = towers
        if towers:
            if hasattr(net, "image"):
                image_cfg = dataclasses.replace(cfg.image_encoder, pretrained=False)  # weights: the parent's, or loaded
                self.image = ImageTower(image_cfg, p.mean, p.std, net.use_mask)
                self.image_proj = nn.Linear(self.image.num_features, cfg.fusion_width)
            if net.use_pair:
                self.pair = PairTower(cfg.pair_encoder)
                self.pair_proj = nn.Linear(self.pair.num_features, cfg.fusion_width)
            if cfg.use_prompt:
                self.text_proj = nn.Linear(net.text.hidden_size, cfg.fusion_width)
        self.mlp = FusionHead.new_mlp(net.head.mlp[0].normalized_shape[0], cfg.fusion_width, outputs, cfg.dropout)


@dataclass
class ParamGroup:
    """Trainable parameters of one part of the network (see :meth:`EditGuardNet.param_groups`)."""

    name: str  # "image", "text" or "head"
    params: list[nn.Parameter]
    pretrained: bool  # starts from pretrained weights: training moves it more gently


class EditGuardNet(nn.Module):
    """Scores a (input image, prompt, output image, mask) triple; one logit per category."""

    def __init__(self, cfg: ModelConfig, vocab_size: int | None = None, text_hf_config=None):
        super().__init__()
        if not cfg.labels:
            raise ValueError("the model config lists no labels")
        self.cfg = cfg
        p = cfg.preprocess
        self.use_mask = cfg.use_mask and cfg.use_input_image
        if cfg.use_output_image or cfg.use_input_image:
            self.image = ImageTower(cfg.image_encoder, p.mean, p.std, self.use_mask)
            self.image_proj = nn.Linear(self.image.num_features, cfg.fusion_width)
        self.use_pair = bool(cfg.pair_encoder) and cfg.use_input_image and cfg.use_output_image
        if self.use_pair:
            self.pair = PairTower(cfg.pair_encoder)
            self.pair_proj = nn.Linear(self.pair.num_features, cfg.fusion_width)
        if cfg.use_prompt:
            self.text = TextTower(cfg.text_encoder, text_hf_config, vocab_size, p.max_tokens)
            self.text_proj = nn.Linear(self.text.hidden_size, cfg.fusion_width)
        added = [h["labels"] for h in cfg.label_heads]
        self.head = FusionHead(cfg.fusion_width, len(cfg.labels) - sum(added), cfg.use_input_image, cfg.use_prompt,
                               cfg.dropout, self.use_pair, cfg.use_output_image)
        # the categories added later, one branch per `train --from` run (ModelConfig.label_heads)
        self.branches = nn.ModuleList(HeadBranch(self, h["labels"], h["towers"]) for h in cfg.label_heads)
        self.register_buffer("window_min", torch.tensor([n in cfg.window_min for n in cfg.labels]), persistent=False)

    @property
    def input_names(self) -> list[str]:
        """The forward inputs this configuration actually uses, in ONNX order."""
        names = ["output_image"] if self.cfg.use_output_image else []
        if self.cfg.use_input_image:
            names.insert(0, "input_image")
            if self.use_mask:
                names.append("mask")
        if self.cfg.use_prompt:
            names += ["input_ids", "attention_mask"]
        return names

    @property
    def split_prompt(self) -> bool:
        """A frozen prompt tower is served as its own model (its embedding depends on the prompt alone, so a
        server computes it once per distinct prompt); the classifier then takes ``prompt_embedding``."""
        return self.cfg.use_prompt and self.cfg.text_encoder.freeze

    @property
    def classifier_names(self) -> list[str]:
        """The exported classifier's inputs, in ONNX order: :attr:`input_names`, with ``prompt_embedding`` in
        place of the token ids when the prompt tower is split off."""
        names = self.input_names
        if self.split_prompt:
            names = [n for n in names if n not in ("input_ids", "attention_mask")] + ["prompt_embedding"]
        return names

    def param_groups(self) -> list[ParamGroup]:
        """The trainable parameters by part: the image tower (shared by both images), the text tower, and
        the head (the pair tower, the projections and the fusion head, always trained from scratch)."""
        parts = (("image", self.cfg.image_encoder.pretrained), ("text", self.cfg.text_encoder.pretrained))
        towers = [ParamGroup(name, [p for p in getattr(self, name).parameters() if p.requires_grad], pretrained)
                  for name, pretrained in parts if hasattr(self, name)]
        taken = {id(p) for g in towers for p in g.params}
        head = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        return towers + [ParamGroup("head", head, False)]

    def forward(
        self,
        input_image: torch.Tensor | None = None,
        output_image: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        prompt_embedding: torch.Tensor | None = None,
        pair_output_image: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Shapes: images ``uint8 [B,S,S,3]``, mask ``uint8 [B,S,S]``, ids/attention ``int64 [B,T]``;
        or, in place of the ids, ``prompt_embedding`` ``float32 [B,H]`` from the frozen prompt tower
        (:class:`PromptWrapper`). ``pair_output_image``: the output the pair tower compares with the input,
        when it is not ``output_image`` (explanations ablate the change apart from the output,
        :mod:`~editguard.model.explain`); images may also be float in 0..255, for gradients.

        Returns logits ``float32 [B, num_labels]``: the main head's, then each branch's (a sigmoid gives
        probabilities).
        """
        text, used = self._text(input_ids, attention_mask, prompt_embedding)
        towers = [self._towers(p, input_image, output_image, mask, pair_output_image) for p in self.tower_parts]
        return self._logits(towers, text, used)

    @property
    def tower_parts(self) -> list[nn.Module]:
        """The modules whose towers a forward runs: this network, then each branch with towers of its own."""
        return [self] + [b for b in self.branches if b.towers]

    def image_embedding(self, parts: nn.Module, image: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``parts``' (one of :attr:`tower_parts`) projected image-tower embedding of ``image``: ``[B, width]``."""
        return parts.image_proj(parts.image(image, mask if self.use_mask else None))

    def pair_embedding(self, parts: nn.Module, input_image: torch.Tensor, output_image: torch.Tensor,
                       mask: torch.Tensor | None) -> torch.Tensor:
        """``parts``' projected pair-tower embedding of the change from ``input_image`` to ``output_image``."""
        m = mask if self.use_mask else torch.full_like(input_image[..., 0], 255)  # no mask: all may change
        return parts.pair_proj(parts.pair(parts.image.normalize(input_image), parts.image.normalize(output_image), m))

    def logits_from_towers(self, towers: list[tuple], prompt_embedding: torch.Tensor | None) -> torch.Tensor:
        """:meth:`forward`'s logits from the towers' embeddings computed apart: one ``(e_in, e_out, pair)``
        per entry of :attr:`tower_parts` (``[B, width]`` each, or None where the model has no such input),
        from :meth:`image_embedding` and :meth:`pair_embedding`. Explanations combine a few embeddings
        in many ways (:mod:`~editguard.model.explain`) without running the towers again for each."""
        return self._logits(towers, *self._text(None, None, prompt_embedding))

    def _logits(self, towers: list[tuple], text, used) -> torch.Tensor:
        x = self._fuse(self, *towers[0], text)
        logits = self.head.mlp(x)
        if len(self.branches):
            own = iter(towers[1:])
            logits = torch.cat([logits] + [b.mlp(self._fuse(b, *next(own), text) if b.towers else x)
                                           for b in self.branches], -1)
        return self._pool(logits, used)

    def _pool(self, logits: torch.Tensor, used: torch.Tensor | None, columns: slice = slice(None)) -> torch.Tensor:
        """A prompt read in windows (``[B, W, C]`` to ``[B, C]``): each category's highest logit over the
        prompt's windows, so a harm stated anywhere in a long prompt weighs as much as alone; for the
        categories of ``window_min`` (a change the prompt did not ask for) the lowest, since a change is
        asked for when any part of the prompt asks for it. Those take it over the prompt's own windows only,
        not its clauses alone (``preprocess.clause_windows``): a clause cut from its sentence asks for less
        than the sentence did, and the whole prompt's windows already hold every clause in its context.
        ``columns``: the labels ``logits`` has (a branch's)."""
        if used is None:
            return logits
        info = torch.finfo(logits.dtype)
        unused = ~used.unsqueeze(-1)
        highest = logits.masked_fill(unused, info.min).amax(1)
        if not self.cfg.window_min:
            return highest
        own = used & (torch.arange(used.shape[1], device=used.device) < self.cfg.preprocess.prompt_windows)
        lowest = logits.masked_fill(~own.unsqueeze(-1), info.max).amin(1)
        return torch.where(self.window_min[columns], lowest, highest)

    def features(self, **inputs: torch.Tensor | None) -> torch.Tensor:
        """The fused features the main head reads, from the inputs of :meth:`forward`: ``float32 [B, n *
        fusion_width]``, or ``[B, W, n * fusion_width]`` for a prompt in ``W`` windows."""
        text, _ = self._text(inputs.get("input_ids"), inputs.get("attention_mask"), inputs.get("prompt_embedding"))
        return self._fused(self, inputs.get("input_image"), inputs.get("output_image"), inputs.get("mask"), text)

    def branch_logits(self, i: int, **inputs: torch.Tensor | None) -> torch.Tensor:
        """Branch ``i``'s logits alone (what ``train --from`` trains): the parts it shares with the rest of the
        network run without gradients."""
        b = self.branches[i]
        with torch.no_grad():
            text, used = self._text(inputs.get("input_ids"), inputs.get("attention_mask"),
                                    inputs.get("prompt_embedding"))
            x = None if b.towers else self._fused(self, inputs.get("input_image"), inputs.get("output_image"),
                                                  inputs.get("mask"), text)
        if b.towers:
            x = self._fused(b, inputs.get("input_image"), inputs.get("output_image"), inputs.get("mask"), text)
        start = len(self.cfg.labels) - sum(h["labels"] for h in self.cfg.label_heads[i:])
        return self._pool(b.mlp(x), used, slice(start, start + self.cfg.label_heads[i]["labels"]))

    def _text(self, input_ids, attention_mask, prompt_embedding) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The prompt tower's pooled embedding (or the one given: the exported classifier's input, or a
        :class:`~editguard.model.prompt_cache.PromptCache`'s), before any projection; and for a prompt in
        windows (``[B, W, H]``), which windows hold some of it (``bool [B, W]``; the first always does, and an
        all-zero embedding row is padding)."""
        if not self.cfg.use_prompt:
            return None, None
        if prompt_embedding is None:
            text = self.text.encode(input_ids, attention_mask)
        else:
            text = prompt_embedding
        used = None
        if text.dim() == 3:
            used = text.abs().amax(-1) > 0
            used = torch.cat([torch.ones_like(used[:, :1]), used[:, 1:]], 1)
        return self.text.jitter(text), used

    def _fused(self, parts: nn.Module, input_image, output_image, mask, text, pair_output=None) -> torch.Tensor:
        """The fused features from ``parts``' towers and projections: this network's, or a branch's own."""
        return self._fuse(parts, *self._towers(parts, input_image, output_image, mask, pair_output), text)

    def _towers(self, parts: nn.Module, input_image, output_image, mask, pair_output=None) -> tuple:
        """``(e_in, e_out, pair)``: ``parts``' projected embeddings of the images and of the change (None where
        this configuration has no such input)."""
        if self.cfg.use_input_image and not self.cfg.use_output_image:  # the pre-check: the request only
            e_in, e_out = self.image_embedding(parts, input_image, mask), None
        elif self.cfg.use_input_image:
            # one backbone pass over both images: the tower is shared
            both = torch.cat([input_image, output_image], dim=0)
            m = torch.cat([mask, mask], dim=0) if self.use_mask else None
            e_in, e_out = self.image_embedding(parts, both, m).chunk(2, dim=0)
        elif self.cfg.use_output_image:
            e_in, e_out = None, self.image_embedding(parts, output_image, None)
        else:
            e_in = e_out = None
        pair = None
        if self.use_pair:
            pair = self.pair_embedding(parts, input_image, output_image if pair_output is None else pair_output, mask)
        return e_in, e_out, pair

    def _fuse(self, parts: nn.Module, e_in, e_out, pair, text) -> torch.Tensor:
        """The head's features from the towers' embeddings and the prompt's (before ``parts``' projection)."""
        t = parts.text_proj(text) if text is not None else None
        if t is not None and t.dim() == 3:  # a prompt in windows: the images' features beside each window's
            e_in, e_out, pair = (None if e is None else e.unsqueeze(1).expand(-1, t.shape[1], -1)
                                 for e in (e_in, e_out, pair))
        return self.head.features(e_out, e_in, t, pair)


class ProbabilityWrapper(nn.Module):
    """Export wrapper: returns ``(logits, probabilities)``, positional inputs in ``classifier_names`` order."""

    def __init__(self, net: EditGuardNet):
        super().__init__()
        self.net = net
        self.names = net.classifier_names

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(**dict(zip(self.names, args)))
        return logits, torch.sigmoid(logits)


class PromptWrapper(nn.Module):
    """Export wrapper of a frozen prompt tower: ``(input_ids, attention_mask)`` to ``prompt_embedding``, the
    pooled (and normalised, where the config says so) embedding the classifier takes. No training noise."""

    names = ["input_ids", "attention_mask"]

    def __init__(self, net: EditGuardNet):
        super().__init__()
        self.text = net.text

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.text.encode(input_ids, attention_mask)


def build_network(cfg: ModelConfig, vocab_size: int | None = None, text_hf_config=None) -> EditGuardNet:
    """The network of ``cfg`` as it stands: its preprocessing's mean and std included (a new model takes them
    from timm first: :meth:`ImageTower.input_contract`, in ``create_model``)."""
    return EditGuardNet(cfg, vocab_size=vocab_size, text_hf_config=text_hf_config)
