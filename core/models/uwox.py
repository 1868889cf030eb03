"""The ``uwox`` and ``unit`` recipes' model (Wang et al., mixed-data vision-language pretraining).

One transformer encoder, built from ``transformers``' ``BertEncoder`` so that BERT weights map
onto it by name, encodes both modalities with the same weights (``joint.``):

* **text** (``text.``): ``Norm(W x) + Norm(W p)``: token embedding and position embedding, each
  followed by its own LayerNorm, summed. (The ``+ b`` of ``Norm(W x + b)`` is left out: for a
  one-hot ``x`` a bias is the same for every token and is absorbed by the embedding table.)
  The shared encoder, then the UWOX layer (see below), turns them into ``E_txt``.
* **images** (``image.``): ``(B, 1, S, S)`` in ``[0, 1]``, normalised like the other image
  encoders, as a 3-level pyramid (full, 1/2 and 1/4 resolution by area averaging) of
  ``patch x patch`` patches in row-major order. Every patch is embedded as
  ``Norm(W patch + b) + Norm(W pos + b)`` where ``pos`` is its 6-value position
  ``[x_start, y_start, x_end, y_end, x_scale, y_scale]`` in ``[0, 1]`` image coordinates
  (``x_scale``/``y_scale``: the patch's width/height as a fraction of the image, so the value
  also tells the level apart). A level whose side is not a multiple of ``patch`` is padded
  with mean grey to whole patches; the positions of those edge patches describe the real
  pixels only. Each level is encoded by the shared encoder on its own, the three outputs are
  concatenated ``[full, 1/2, 1/4]`` and go through one more shared BERT layer, the *UWOX
  layer* (``joint.uwox``, self-attention over all scales, no cross-modal fusion): ``E_img``.
* **unit** adds one cross-attention fusion layer (``joint.fusion``) used by the matching head:
  ``F_txt = SAM(E_img, E_txt, E_txt)`` (image queries over the report) and
  ``F_img = SAM(E_txt, E_img, E_img)`` (report queries over the image); the correlation matrix
  is then ``F_img @ F_txt^T`` (rows: text positions, columns: image tokens). ``unit`` therefore
  needs both modalities to score a pair at inference; ``uwox`` encodes each on its own.

The text also goes through the UWOX layer (``UWOXConfig.uwox_on_text``): the layer is shared,
so both modalities get the same depth ``layers + 1``.

The fine-tuning sweep takes :meth:`UWOXModel.image_backbone`: the image embedding, the shared
encoder and the UWOX layer on image input, mean-pooled over the tokens of all three levels.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEncoder, BertLayer

from ..config import MODEL_SIZES, ConfigError
from ..layers import SAM, init_bert_style
from ..objectives import Objective, UWOXMatchingObjective, UWOXMIMObjective, UWOXMLMObjective, random_patch_mask
from .image import PIXEL_MEAN, PIXEL_STD

__all__ = [
    "UWOXConfig",
    "UWOXImageEmbedding",
    "UWOXTextEmbedding",
    "UWOXJoint",
    "CrossFusion",
    "UWOXModel",
    "UWOXImageBackbone",
    "UWOXBackboneSource",
    "build_uwox_model",
    "patch_positions",
    "encode_image",
    "UWOX_OBJECTIVES",
    "LEVELS",
]

UWOX_OBJECTIVES = ("mlm", "mim", "matching")
LEVELS = 3  # full, 1/2 and 1/4 resolution


@dataclass(frozen=True)
class UWOXConfig:
    """Sizes of the shared transformer, the patch pyramid and the text embedding."""

    hidden: int = 128
    layers: int = 2  # shared encoder layers (the UWOX layer comes on top)
    heads: int = 2
    intermediate: int = 256
    patch: int = 16
    image_size: int = 64
    max_len: int = 64
    vocab_size: int = 1000
    fusion: bool = False  # True: the ``unit`` recipe's cross-attention fusion layer
    dropout: float = 0.1
    uwox_on_text: bool = True

    def __post_init__(self) -> None:
        if self.hidden % self.heads != 0:
            raise ValueError(f"hidden {self.hidden} is not divisible by heads {self.heads}")
        if self.image_size % 4 != 0 or self.image_size % self.patch != 0:
            raise ConfigError(
                "run_config",
                "image-size",
                f"a multiple of 4 (the pyramid) and of the patch size {self.patch}",
                self.image_size,
            )

    @staticmethod
    def preset(size: str, image_size: int, vocab_size: int, fusion: bool = False) -> "UWOXConfig":
        """``tiny`` (tests, patch 8), ``small`` (CPU demo, patch 16) or ``base`` (BERT-base, patch 16)."""
        if size == "tiny":
            return UWOXConfig(32, 1, 2, 64, 8, image_size, 48, vocab_size, fusion)
        if size == "small":
            return UWOXConfig(128, 2, 2, 256, 16, image_size, 64, vocab_size, fusion)
        if size == "base":
            return UWOXConfig(768, 12, 12, 3072, 16, image_size, 256, vocab_size, fusion)
        raise ConfigError("run_config", "model-size", f"one of {MODEL_SIZES}", size)

    @property
    def level_sides(self) -> tuple[int, ...]:
        """Pixel side of each pyramid level, full resolution first."""
        return tuple(self.image_size // 2**level for level in range(LEVELS))

    @property
    def level_grids(self) -> tuple[int, ...]:
        """Patches per side of each level (a partial edge patch counts)."""
        return tuple(math.ceil(side / self.patch) for side in self.level_sides)

    @property
    def level_tokens(self) -> tuple[int, ...]:
        """Tokens of each level."""
        return tuple(g * g for g in self.level_grids)

    @property
    def full_tokens(self) -> int:
        """Full-resolution patches (what ``mim`` masks and regenerates)."""
        return self.level_tokens[0]

    @property
    def image_tokens(self) -> int:
        """Tokens of the concatenated image encoding."""
        return sum(self.level_tokens)

    def bert_config(self) -> BertConfig:
        """The ``BertConfig`` of the shared layers (SDPA attention, no hub access)."""
        config = BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            intermediate_size=self.intermediate,
            max_position_embeddings=self.max_len,
            hidden_dropout_prob=self.dropout,
            attention_probs_dropout_prob=self.dropout,
        )
        config._attn_implementation = "sdpa"
        return config


def patch_positions(side: int, patch: int) -> torch.Tensor:
    """``(g*g, 6)`` positions ``[x_start, y_start, x_end, y_end, x_scale, y_scale]`` in ``[0, 1]``.

    Row-major over a ``side x side`` level cut into ``patch x patch`` patches; a partial edge
    patch ends at the image border.
    """
    grid = math.ceil(side / patch)
    starts = torch.arange(grid, dtype=torch.float32) * patch
    ends = torch.clamp(starts + patch, max=float(side))
    start, end = starts / side, ends / side
    x0, x1 = start.repeat(grid), end.repeat(grid)  # column index varies fastest
    y0, y1 = start.repeat_interleave(grid), end.repeat_interleave(grid)
    return torch.stack([x0, y0, x1, y1, x1 - x0, y1 - y0], dim=1)


def unpatchify(patches: torch.Tensor, patch: int, side: int) -> torch.Tensor:
    """Inverse of :func:`_patchify` for square images: ``(B, g*g, p*p)`` to ``(B, 1, g*p, g*p)``."""
    grid = side // patch
    b = patches.shape[0]
    return patches.reshape(b, grid, grid, patch, patch).permute(0, 1, 3, 2, 4).reshape(b, 1, grid * patch, grid * patch)


def _patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, 1, H, W)`` to ``(B, gh*gw, patch*patch)`` row-major patches, zero-padded at the edges."""
    pad_h, pad_w = (-x.shape[-2]) % patch, (-x.shape[-1]) % patch
    if pad_h or pad_w:
        x = F.pad(x, (0, pad_w, 0, pad_h))
    batch = x.shape[0]
    tiles = x.unfold(2, patch, patch).unfold(3, patch, patch)  # (B, C, gh, gw, p, p)
    return tiles.permute(0, 2, 3, 1, 4, 5).reshape(batch, tiles.shape[2] * tiles.shape[3], -1)


class UWOXImageEmbedding(nn.Module):
    """Patch pyramid, patch and position embeddings, and the learned ``mask_token`` (``image.``)."""

    def __init__(self, config: UWOXConfig) -> None:
        super().__init__()
        self.config = config
        self.patch_embed = nn.Linear(config.patch * config.patch, config.hidden)
        self.patch_norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.position_embed = nn.Linear(6, config.hidden)
        self.position_norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.mask_token = nn.Parameter(torch.zeros(config.hidden))
        self.dropout = nn.Dropout(config.dropout)
        for level, side in enumerate(config.level_sides):
            self.register_buffer(f"positions{level}", patch_positions(side, config.patch), persistent=False)
        init_bert_style(self)
        nn.init.normal_(self.mask_token, std=0.02)

    def positions(self, level: int) -> torch.Tensor:
        """``(N_level, 6)`` patch positions of ``level`` (0 = full resolution)."""
        result: torch.Tensor = getattr(self, f"positions{level}")
        return result

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, N_full, patch**2)`` full-resolution patches of ``images`` (the ``mim`` targets)."""
        return _patchify(images, self.config.patch)

    def check(self, images: torch.Tensor) -> None:
        """Reject anything but ``(B, 1, image_size, image_size)``."""
        size = self.config.image_size
        if images.dim() != 4 or tuple(images.shape[1:]) != (1, size, size):
            raise ValueError(
                f"the uwox image embedding expects (B, 1, {size}, {size}) images, got {tuple(images.shape)}"
            )

    def forward(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``(B, 1, S, S)`` images in ``[0, 1]`` to one ``(B, N_level, D)`` token tensor per level.

        ``patch_mask`` ``(B, N_full)`` hides full-resolution patches: their pixels become mean
        grey before the pyramid is built (so no level sees them) and their full-resolution
        patch embedding is replaced by ``mask_token`` (their position embedding stays).
        """
        self.check(images)
        patch = self.config.patch
        x = (images - PIXEL_MEAN) / PIXEL_STD
        if patch_mask is not None:
            grid = self.config.level_grids[0]
            pixels = patch_mask.view(-1, 1, grid, grid).repeat_interleave(patch, 2).repeat_interleave(patch, 3)
            x = x.masked_fill(pixels, 0.0)
        tokens = []
        for level in range(LEVELS):
            scaled = x if level == 0 else F.avg_pool2d(x, 2**level)
            embedded = self.patch_norm(self.patch_embed(_patchify(scaled, patch)))
            if level == 0 and patch_mask is not None:
                embedded = torch.where(patch_mask.unsqueeze(-1), self.mask_token.to(embedded.dtype), embedded)
            position = self.position_norm(self.position_embed(self.positions(level)))
            tokens.append(self.dropout(embedded + position))
        return tokens


class UWOXTextEmbedding(nn.Module):
    """``Norm(W x) + Norm(W p)``: token and position embeddings, each with its LayerNorm (``text.``)."""

    def __init__(self, config: UWOXConfig) -> None:
        super().__init__()
        self.config = config
        self.token = nn.Embedding(config.vocab_size, config.hidden)
        self.token_norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.position = nn.Embedding(config.max_len, config.hidden)
        self.position_norm = nn.LayerNorm(config.hidden, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        init_bert_style(self)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` token ids to ``(B, L, D)`` embeddings (``L <= max_len``)."""
        length = input_ids.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"reports of {length} tokens are longer than max_len {self.config.max_len}")
        positions = torch.arange(length, device=input_ids.device)
        result: torch.Tensor = self.dropout(
            self.token_norm(self.token(input_ids)) + self.position_norm(self.position(positions))
        )
        return result


class CrossFusion(nn.Module):
    """``unit``'s fusion layer: ``F_txt = SAM(E_img, E_txt, E_txt)``, ``F_img = SAM(E_txt, E_img, E_img)``."""

    def __init__(self, config: UWOXConfig) -> None:
        super().__init__()
        self.f_txt = SAM(config.hidden, config.heads, config.intermediate, config.dropout)
        self.f_img = SAM(config.hidden, config.heads, config.intermediate, config.dropout)
        init_bert_style(self)

    def forward(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F_img (B, L, D), F_txt (B, N, D))``: report-query states, image-query states."""
        f_txt = self.f_txt(image, text, text, key_mask=text_mask)
        f_img = self.f_img(text, image, image)
        return f_img, f_txt


def _key_mask(mask: torch.Tensor | None) -> torch.Tensor | None:
    """A ``(B, L)`` 1/0 padding mask as the ``(B, 1, 1, L)`` boolean mask of SDPA (True: attend)."""
    return None if mask is None else mask[:, None, None, :].bool()


class UWOXJoint(nn.Module):
    """The shared encoder (``BertEncoder``), the UWOX layer (``BertLayer``) and ``unit``'s fusion.

    Passing ``encoder`` / ``uwox`` reuses existing modules (the image backbone shares them).
    """

    def __init__(
        self,
        config: UWOXConfig,
        encoder: BertEncoder | None = None,
        uwox: BertLayer | None = None,
        with_fusion: bool | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        bert = config.bert_config()
        self.encoder = encoder if encoder is not None else BertEncoder(bert)
        self.uwox = uwox if uwox is not None else BertLayer(bert)
        if encoder is None:
            init_bert_style(self.encoder)
        if uwox is None:
            init_bert_style(self.uwox)
        fusion = config.fusion if with_fusion is None else with_fusion
        self.fusion = CrossFusion(config) if fusion else None

    def shared(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The shared encoder on ``(B, L, D)`` embeddings with an optional ``(B, L)`` padding mask."""
        result: torch.Tensor = self.encoder(hidden, _key_mask(mask)).last_hidden_state
        return result

    def top(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The UWOX layer."""
        result: torch.Tensor = self.uwox(hidden, _key_mask(mask))
        return result

    def encode_levels(self, levels: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Each level through the shared encoder, concatenated, then the UWOX layer.

        Returns
        -------
        dict
            ``tokens`` ``(B, N, D)`` (all levels, full resolution first), ``levels`` (the same
            split back per level), ``shared`` (per level, before the UWOX layer).
        """
        shared = tuple(self.shared(tokens) for tokens in levels)
        joint = self.top(torch.cat(shared, dim=1))
        split = joint.split([t.shape[1] for t in levels], dim=1)
        return {"tokens": joint, "levels": tuple(split), "shared": shared}

    def encode_text(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Report embeddings through the shared encoder (and the UWOX layer)."""
        states = self.shared(hidden, mask)
        return self.top(states, mask) if self.config.uwox_on_text else states


def encode_image(
    embedding: UWOXImageEmbedding, joint: UWOXJoint, images: torch.Tensor, patch_mask: torch.Tensor | None = None
) -> dict[str, Any]:
    """``encode_levels`` of the embedded pyramid, plus ``patch_mask``."""
    out = joint.encode_levels(embedding(images, patch_mask))
    out["patch_mask"] = patch_mask
    return out


class UWOXImageBackbone(nn.Module):
    """Images ``(B, 1, S, S)`` in ``[0, 1]`` to ``(B, hidden)``: the mean of all encoded image tokens.

    Its state-dict keys (``image.…``, ``joint.encoder.…``, ``joint.uwox.…``) are a subset of
    the full model's, so a pretrained checkpoint loads after dropping the other groups.
    """

    def __init__(
        self, config: UWOXConfig, image: UWOXImageEmbedding | None = None, joint: UWOXJoint | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.image = image if image is not None else UWOXImageEmbedding(config)
        self.joint = joint if joint is not None else UWOXJoint(config, with_fusion=False)
        self.out_dim = config.hidden

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = encode_image(self.image, self.joint, images)["tokens"].mean(dim=1)
        return result


@dataclass(frozen=True)
class UWOXBackboneSource:
    """A picklable factory of randomly initialised :class:`UWOXImageBackbone` (for the sweep)."""

    config: UWOXConfig

    def __call__(self) -> UWOXImageBackbone:
        return UWOXImageBackbone(self.config)

    @property
    def description(self) -> dict[str, Any]:
        """``{"encoder": "uwox", **config}``."""
        return {"encoder": "uwox", **dataclasses.asdict(self.config)}


class UWOXModel(nn.Module):
    """``image``, ``text``, ``joint`` and ``head[<objective>]``; attribute names are the groups."""

    def __init__(self, config: UWOXConfig, objectives: Mapping[str, Objective]) -> None:
        super().__init__()
        self.config = config
        self.image = UWOXImageEmbedding(config)
        self.text = UWOXTextEmbedding(config)
        self.joint = UWOXJoint(config)
        self.head = nn.ModuleDict(dict(objectives))
        self.max_text_len = config.max_len

    @property
    def objectives(self) -> list[Objective]:
        """The active objectives, in a fixed order."""
        return [self.head[name] for name in self.head]  # type: ignore[misc]

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` ids and padding mask to ``(B, L, D)`` states ``E_txt``."""
        return self.joint.encode_text(self.text(input_ids), attention_mask)

    def encode_image(self, images: torch.Tensor, patch_mask: torch.Tensor | None = None) -> dict[str, Any]:
        """``(B, 1, S, S)`` images to ``E_img``.

        Returns
        -------
        dict
            ``tokens`` ``(B, N, D)``: all levels after the UWOX layer, ``[full, 1/2, 1/4]``;
            ``levels``: the same split per level (``F_up``, ``F_mid``, ``F_down`` of the ``mim``
            decoder); ``shared``: per level before the UWOX layer; ``patch_mask``.
        """
        return encode_image(self.image, self.joint, images, patch_mask)

    def pair_states(
        self, text: torch.Tensor, text_mask: torch.Tensor, image: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The states the matching head correlates: ``(E_txt, E_img)``, or ``(F_img, F_txt)`` with fusion."""
        if self.joint.fusion is None:
            return text, image
        result: tuple[torch.Tensor, torch.Tensor] = self.joint.fusion(text, text_mask, image)
        return result

    def supports_retrieval(self) -> bool:
        """No: the shared transformer has no head that embeds both modalities into one space."""
        return False

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Not supported (:meth:`supports_retrieval`)."""
        raise ValueError("the uwox / unit model has no shared image-text embedding space")

    def embed_texts(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Not supported (:meth:`supports_retrieval`)."""
        raise ValueError("the uwox / unit model has no shared image-text embedding space")

    def supports_regeneration(self) -> bool:
        """Whether the ``mim`` head is active."""
        return "mim" in self.head

    def regenerate_masked(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-resolution patches hidden as in pretraining, the multi-scale decoder's pixels put back in place."""
        head = cast(UWOXMIMObjective, self.head["mim"])
        side = images.shape[-1]
        tokens = random_patch_mask(images.shape[0], self.config.full_tokens, head.ratio, images.device)
        encoded = self.encode_image(images, tokens)
        prediction = unpatchify(head.decoder(*encoded["levels"]).float(), head.patch, side).clamp(0.0, 1.0)
        ones = torch.ones(images.shape[0], tokens.shape[1], head.patch * head.patch, device=images.device)
        mask = unpatchify(ones * tokens[..., None], head.patch, side) > 0.5
        return mask, prediction

    def image_backbone(self) -> UWOXImageBackbone:
        """The module the fine-tuning sweep trains; it shares this model's parameters."""
        joint = UWOXJoint(self.config, self.joint.encoder, self.joint.uwox, with_fusion=False)
        return UWOXImageBackbone(self.config, self.image, joint)

    def init_shared_from(self, bert_state: Mapping[str, torch.Tensor], embeddings: bool = True) -> dict[str, str]:
        """Copy a ``transformers.BertModel`` state dict into the shared layers.

        ``encoder.layer.i`` goes to ``joint.encoder.layer.i`` (same ``BertLayer`` names) for
        ``i < layers``; when BERT has another layer, ``encoder.layer.<layers>`` goes to the
        UWOX layer. With ``embeddings``, ``embeddings.word_embeddings`` goes to ``text.token``
        (same vocabulary size only) and the first ``max_len`` rows of
        ``embeddings.position_embeddings`` to ``text.position``; BERT's single embedding
        LayerNorm has no counterpart in ``Norm(Wx) + Norm(Wp)`` and is not copied. Keys may
        carry a prefix (``bert.``, ``text.bert.``).

        Returns
        -------
        dict
            Our parameter name -> the BERT key it was copied from.

        Raises
        ------
        ValueError
            BERT has fewer layers than the shared encoder, or another width.
        """
        prefix = next((k[: k.index("encoder.layer.")] for k in bert_state if "encoder.layer." in k), None)
        if prefix is None:
            raise ValueError("the state dict has no 'encoder.layer.' keys (expected a BertModel's state dict)")
        state = {k[len(prefix) :]: v for k, v in bert_state.items() if k.startswith(prefix)}
        available = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")}
        layers = self.config.layers
        if not set(range(layers)) <= available:
            raise ValueError(f"BERT has {len(available)} layers; the shared encoder needs {layers}")
        mapping: dict[str, str] = {}
        for i in range(layers):
            for name in self.joint.encoder.layer[i].state_dict():
                mapping[f"joint.encoder.layer.{i}.{name}"] = f"encoder.layer.{i}.{name}"
        if layers in available:
            for name in self.joint.uwox.state_dict():
                mapping[f"joint.uwox.{name}"] = f"encoder.layer.{layers}.{name}"
        ours = self.state_dict()
        rows: dict[str, slice | None] = {}
        if embeddings:
            word, position = (
                state.get("embeddings.word_embeddings.weight"),
                state.get("embeddings.position_embeddings.weight"),
            )
            if word is not None and word.shape == ours["text.token.weight"].shape:
                mapping["text.token.weight"] = "embeddings.word_embeddings.weight"
            if (
                position is not None
                and position.shape[0] >= self.config.max_len
                and position.shape[1] == self.config.hidden
            ):
                mapping["text.position.weight"] = "embeddings.position_embeddings.weight"
                rows["text.position.weight"] = slice(0, self.config.max_len)
        values = {}
        for target, source in mapping.items():  # check every shape before copying anything
            value = state[source][rows[target]] if target in rows else state[source]
            if value.shape != ours[target].shape:
                raise ValueError(
                    f"BERT '{prefix + source}' has shape {tuple(value.shape)}; '{target}' needs "
                    f"{tuple(ours[target].shape)}"
                )
            values[target] = value
        with torch.no_grad():
            for target, value in values.items():
                ours[target].copy_(value)
        return {target: prefix + source for target, source in mapping.items()}


def build_uwox_model(
    config: UWOXConfig,
    special_ids: Sequence[int],
    mask_id: int,
    mask_ratio: float,
    weights: Mapping[str, float],
) -> UWOXModel:
    """The ``uwox`` (``config.fusion=False``) or ``unit`` (``True``) model with random weights.

    Only objectives with weight > 0 get a head (``mlm``, ``mim``, ``matching``). Seed the
    global RNG first for a reproducible initialisation.

    Raises
    ------
    ValueError
        When another objective (e.g. ``contrastive``) has a positive weight.
    """
    unknown = sorted(name for name, weight in weights.items() if weight > 0 and name not in UWOX_OBJECTIVES)
    if unknown:
        raise ValueError(f"the uwox model has no objective {unknown}; it trains {UWOX_OBJECTIVES}")
    objectives: dict[str, Objective] = {}
    if weights.get("mlm", 0.0) > 0:
        objectives["mlm"] = UWOXMLMObjective(config.hidden, config.vocab_size, list(special_ids), mask_id, mask_ratio)
    if weights.get("mim", 0.0) > 0:
        objectives["mim"] = UWOXMIMObjective(
            config.hidden, config.heads, config.intermediate, config.patch, mask_ratio, config.dropout
        )
    if weights.get("matching", 0.0) > 0:
        objectives["matching"] = UWOXMatchingObjective(config.max_len, config.image_tokens)
    return UWOXModel(config, objectives)
