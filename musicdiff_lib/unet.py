"""The conditional U-Net that predicts the noise (or v, or x0) in a noisy mel spectrogram.

Chapter: ``06_unet``. The layout is the original report's (Ronneberger et al.
2015's U-Net as Ho et al. 2020 and Saharia et al. 2022 use it for diffusion):

    x (B,1,H,W) ─ stem ─► down level 1 ─► ↓ ─► down level 2 ─► ↓ ─► … ─► ↓
                              │ skip            │ skip                    │
    out ◄─ tail ◄─ cat ◄─ ↑ ◄─ up level n ◄─ cat ◄─ ↑ ◄─ … ◄─ up level 1 ◄┘

Every *level* is the report's block: ResBlock → [self-attention] →
[cross-attention to the caption] → ResBlock(s). A down level is followed by a
stride-2 convolution (↓, which also sets the next level's channel count); an
up level by a ``ConvTranspose2d(kernel 4, stride 2)`` to half its channels
(↑), whose output is concatenated with the skip of the matching down level.
With ``down_channels=(64, 128, 256)`` and ``up_channels=(512, 512, 384)``
this is exactly the report's network (plus the text pathway): 256 + 256 = 512,
256 + 128 = 384 and 192 + 64 = 256 channels after each concatenation, then a
256 → 128 convolution and a 1×1 convolution to one channel.

Conditioning, and how it differs from the original code (which took no text):

* The timestep goes through the report's sinusoidal embedding and an MLP
  (:class:`~musicdiff_lib.embeddings.TimestepEmbedding`); the caption's pooled
  embedding is projected and *added* to it (Saharia et al. 2022). Each
  ResBlock projects that sum to its own width and either adds it to its
  features (``time_mode="add"``, Ho et al. 2020) or uses it as a per-channel
  scale and shift after the second GroupNorm (``"scale_shift"``, Nichol &
  Dhariwal 2021). The original added the first C raw sinusoid values instead.
* Text tokens enter by cross-attention (Vaswani et al. 2017), with the padding
  mask. A learned "null" key/value pair is always present, so a caption whose
  tokens are all masked (the null condition of classifier-free guidance)
  attends to it instead of producing 0/0 = NaN, and ``text=None`` is exactly
  the null condition.
* Self-attention has a GroupNorm in front and a residual around it (the
  original had neither).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import flop_counter as _flops

from .config import JsonConfig
from .embeddings import TimestepEmbedding
from .text import TextCondition

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
TIME_MODES = ("add", "scale_shift")


@dataclass(frozen=True)
class UNetConfig(JsonConfig):
    """Everything that defines a :class:`UNet`; round-trips through JSON. Chapter: ``06_unet``.

    ``down_channels[i]`` is the width of down level i (the stem makes the
    first, each stride-2 convolution the next; after the last one comes
    ``up_channels[0]``). ``self_attention`` and ``cross_attention`` hold one
    flag per level, down levels first then up levels, as the original code's
    ``Attentions`` list did. ``res_blocks``: ResBlocks per level, one number
    for all or one per level (same order); attention follows the first.
    ``text_dim=0`` makes an unconditional network.
    ``stem_stride=s > 1`` replaces the 3×3 stem by an s×s "patchify"
    convolution with stride s (and the 1×1 output convolution by its
    transpose), dividing the cost of every later layer by s².
    """

    in_channels: int = 1
    out_channels: int = 1
    down_channels: tuple[int, ...] = (64, 128, 256)
    up_channels: tuple[int, ...] = (512, 512, 384)
    res_blocks: int | tuple[int, ...] = 2
    self_attention: tuple[bool, ...] = (False, True, False, False, False, True)
    cross_attention: tuple[bool, ...] = (False, True, True, True, True, True)
    tail_channels: int = 128
    time_embed_dim: int = 512
    time_mode: str = "add"
    text_dim: int = 384
    heads: int = 8
    dropout: float = 0.1
    groups: int = 32
    activation: str = "relu"
    stem_stride: int = 1

    def __post_init__(self) -> None:
        # JSON gives lists; store tuples so that a loaded config equals the original and stays hashable.
        if isinstance(self.res_blocks, list):
            object.__setattr__(self, "res_blocks", tuple(self.res_blocks))
        for name in ("down_channels", "up_channels", "self_attention", "cross_attention"):
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"UNetConfig.{name}: expected a list, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    def _validate(self) -> None:
        def positive(name: str, value: Any) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"UNetConfig.{name}: expected a positive integer, got {value!r}")

        for name in ("in_channels", "out_channels", "tail_channels", "time_embed_dim", "heads",
                     "groups", "stem_stride"):
            positive(name, getattr(self, name))
        n = len(self.down_channels)
        if n == 0 or len(self.up_channels) != n:
            raise ValueError(f"UNetConfig: down_channels and up_channels need the same non-zero length, got "
                             f"{len(self.down_channels)} and {len(self.up_channels)}")
        for name in ("down_channels", "up_channels"):
            for c in getattr(self, name):
                positive(name, c)
        blocks = self.res_blocks if isinstance(self.res_blocks, tuple) else (self.res_blocks,) * (2 * n)
        if len(blocks) != 2 * n:
            raise ValueError(f"UNetConfig.res_blocks: expected one integer or {2 * n} (down levels, then up levels), "
                             f"got {list(blocks)}")
        for b in blocks:
            positive("res_blocks", b)
        for name in ("self_attention", "cross_attention"):
            flags = getattr(self, name)
            if len(flags) != 2 * n or not all(isinstance(f, bool) for f in flags):
                raise ValueError(f"UNetConfig.{name}: expected {2 * n} true/false flags (down levels, then up "
                                 f"levels), got {list(flags)}")
        if isinstance(self.text_dim, bool) or not isinstance(self.text_dim, int) or self.text_dim < 0:
            raise ValueError(f"UNetConfig.text_dim: expected an integer >= 0 (0 = no text), got {self.text_dim!r}")
        if self.text_dim == 0 and any(self.cross_attention):
            raise ValueError("UNetConfig.cross_attention: needs text_dim > 0 (text_dim=0 is an unconditional network)")
        if self.time_embed_dim % 2:
            raise ValueError(f"UNetConfig.time_embed_dim: must be even (sin/cos pairs), got {self.time_embed_dim}")
        if self.time_mode not in TIME_MODES:
            raise ValueError(f"UNetConfig.time_mode: expected one of {TIME_MODES}, got {self.time_mode!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"UNetConfig.activation: expected one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"UNetConfig.dropout: expected a probability in [0, 1), got {self.dropout!r}")
        for level, (c_in, c) in enumerate(self.level_channels()):
            for width in {c_in, c}:
                if width % self.groups:
                    raise ValueError(f"UNetConfig.groups: {self.groups} groups do not divide the {width} channels "
                                     f"of level {level + 1} (channels are {self.level_channels()})")
            attends = self.self_attention[level] or self.cross_attention[level]
            if attends and c % self.heads:
                raise ValueError(f"UNetConfig.heads: {self.heads} heads do not divide the {c} channels of level "
                                 f"{level + 1}, which has attention")

    @property
    def levels(self) -> int:
        """Number of down levels (= up levels = stride-2 convolutions)."""
        return len(self.down_channels)

    def blocks_at(self, level: int) -> int:
        """ResBlocks in level ``level`` (0-based: down levels, then up levels)."""
        return self.res_blocks[level] if isinstance(self.res_blocks, tuple) else self.res_blocks

    def level_channels(self) -> list[tuple[int, int]]:
        """(input, output) channels of every level, down then up; an up level's input is ↑ + skip."""
        out = list(zip(self.down_channels, self.down_channels))
        c_in = self.up_channels[0]
        for j, c in enumerate(self.up_channels):
            out.append((c_in, c))
            c_in = c // 2 + self.down_channels[-1 - j]
        return out

    @property
    def size_multiple(self) -> int:
        """Input sides must be multiples of this: the stem stride times 2 per down level."""
        return self.stem_stride * 2 ** self.levels

    def check_input_size(self, height: int, width: int) -> None:
        """Raise a ValueError naming sizes that work if (height, width) cannot be halved enough times."""
        m = self.size_multiple
        how = f"{self.levels} halvings" + (f" after a stride-{self.stem_stride} stem" if self.stem_stride > 1 else "")
        for name, side in (("H (mel bins)", height), ("W (frames)", width)):
            if side % m or side <= 0:
                lower, upper = side // m * m, (side // m + 1) * m
                examples = f"{lower} or {upper}" if lower > 0 else f"{upper} or {2 * upper}"
                raise ValueError(f"{name} must be a multiple of {m} ({how}), e.g. {examples}; got {side}. "
                                 f"Pad or crop the spectrogram (audio.pad_or_crop / MelConfig.frames).")

    @classmethod
    def preset(cls, name: str) -> "UNetConfig":
        """A named network from :data:`UNET_PRESETS` (``seed128``, ``seed64``, ``seed3s``, ``cpu``, ``ci``)."""
        try:
            return UNET_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown U-Net preset {name!r}; expected one of {', '.join(sorted(UNET_PRESETS))}") from None


# The report's network plus text: input 1×128×200, self-attention in the 128- and 384-channel
# levels (both at 64×100), cross-attention everywhere below full resolution (cheap: a caption
# has tens of tokens). The original was trained unconditionally with these layers.
_SEED = UNetConfig()

UNET_PRESETS: dict[str, UNetConfig] = {
    "seed128": _SEED,
    # The network is convolutional: the same layout takes 1×64×200 and 1×128×72 (72 = 8·9).
    "seed64": _SEED,
    "seed3s": _SEED,
    # A 2-core CPU (DESIGN.md: most of the time went to full-resolution convolutions, so cut the
    # cost per sample first): a 2×2 patchify stem, narrow high-resolution levels, the width at the
    # bottom where it is cheap, self-attention only at the lowest resolutions, one ResBlock per
    # level except the two lowest. Sides must be multiples of 32; on 1×64×128 the levels run at
    # 32×64, 16×32, 8×16, 4×8 and the bottom at 2×4. About 0.35 GFLOP per sample forward.
    "cpu": UNetConfig(down_channels=(16, 32, 64, 128), up_channels=(256, 128, 64, 32),
                      res_blocks=(1, 1, 1, 2, 2, 1, 1, 1),
                      self_attention=(False, False, True, True, True, True, False, False),
                      cross_attention=(False, True, True, True, True, True, True, True),
                      tail_channels=16, time_embed_dim=256, time_mode="scale_shift", heads=4,
                      dropout=0.0, groups=8, activation="silu", stem_stride=2),
    # Tests and the ci profile: about 0.1 M parameters, every kind of layer present.
    "ci": UNetConfig(down_channels=(8, 16), up_channels=(32, 24), res_blocks=2,
                     self_attention=(False, True, True, False), cross_attention=(False, True, True, True),
                     tail_channels=8, time_embed_dim=16, time_mode="scale_shift", text_dim=12, heads=2,
                     dropout=0.0, groups=4, activation="silu", stem_stride=1),
}


# ----------------------------------------------------------------------------------------------
# Blocks


class ResBlock(nn.Module):
    """GroupNorm → act → 3×3 conv, + embedding, GroupNorm → act → dropout → 3×3 conv, + input.

    ``(B, c_in, H, W), (B, emb_dim) → (B, c_out, H, W)``. The input passes a 1×1
    convolution when c_in ≠ c_out, so the sum is defined. ``time_mode``: "add"
    adds a per-channel projection of the embedding after the first convolution
    (Ho et al. 2020); "scale_shift" multiplies the normalised features by
    1 + scale and adds shift (FiLM, Nichol & Dhariwal 2021). Chapter: ``06_unet``.
    """

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, activation: str = "silu",
                 dropout: float = 0.0, time_mode: str = "scale_shift"):
        super().__init__()
        self.time_mode = time_mode
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out if time_mode == "scale_shift" else c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.act = ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        e = self.emb(emb)[:, :, None, None]  # one value (or scale/shift pair) per channel, the same at every pixel
        if self.time_mode == "scale_shift":
            scale, shift = e.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift  # 1 + scale: a zero embedding leaves the features alone
        else:
            h = self.norm2(h + e)
        h = self.conv2(self.dropout(self.act(h)))
        return self.skip(x) + h


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) → (B, heads, N, C/heads): each head attends in its own C/heads-dimensional subspace."""
    B, N, C = x.shape
    return x.view(B, N, heads, C // heads).transpose(1, 2)


def _merge_heads_and_add(out: nn.Linear, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, heads, HW, d) attention output → output projection → back to ``x``'s (B, C, H, W), plus ``x``."""
    a = a.transpose(1, 2).flatten(2)  # (B, HW, C)
    return x + out(a).transpose(1, 2).reshape(x.shape)


class SelfAttention(nn.Module):
    """Every pixel attends to every pixel: GroupNorm → multi-head attention → + input.

    ``(B, C, H, W) → (B, C, H, W)``. Cost grows with (H·W)², so it belongs at
    low resolutions. Chapter: ``06_unet``.
    """

    def __init__(self, channels: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C): pixels become tokens
        q, k, v = (_heads(part, self.heads) for part in self.qkv(h).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q kᵀ / √d) v, without storing the HW×HW matrix
        return _merge_heads_and_add(self.out, a, x)


class CrossAttention(nn.Module):
    """Every pixel attends to the caption's tokens: queries from the image, keys/values from the text.

    ``(B, C, H, W), tokens (B, L, D), mask (B, L) → (B, C, H, W)``. Padding
    tokens (mask False) get zero attention weight and are zeroed before the
    projection, so their values cannot matter. A learned null key/value pair is
    prepended to every caption: an all-masked caption (no text) attends only to
    it, which gives a learned "no caption" output instead of NaN. Chapter: ``06_unet``.
    """

    def __init__(self, channels: int, text_dim: int, heads: int, groups: int):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(text_dim, 2 * channels)
        self.null_kv = nn.Parameter(torch.randn(1, 1, 2 * channels) * channels ** -0.5)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        q = _heads(self.q(self.norm(x).flatten(2).transpose(1, 2)), self.heads)
        tokens = torch.where(mask[..., None], tokens, torch.zeros((), dtype=tokens.dtype, device=tokens.device))
        kv = torch.cat([self.null_kv.expand(B, 1, -1), self.kv(tokens)], dim=1)  # (B, 1 + L, 2C)
        k, v = (_heads(part.contiguous(), self.heads) for part in kv.chunk(2, dim=-1))
        keep = F.pad(mask, (1, 0), value=True)[:, None, None, :]  # (B, 1, 1, 1 + L): null slot always kept
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return _merge_heads_and_add(self.out, a, x)


class Downsample(nn.Sequential):
    """Stride-2 3×3 convolution: ``(B, c_in, H, W) → (B, c_out, H/2, W/2)``. Chapter: ``06_unet``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))


class Upsample(nn.Sequential):
    """Transposed 4×4 convolution, stride 2: ``(B, c_in, H, W) → (B, c_out, 2H, 2W)``. Chapter: ``06_unet``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))


class Level(nn.Module):
    """The report's block: ResBlock → [self-attention] → [cross-attention] → ResBlock(s), one resolution.

    ``(B, c_in, H, W) → (B, c, H, W)``. Chapter: ``06_unet``.
    """

    def __init__(self, c_in: int, c: int, cfg: UNetConfig, level: int):
        super().__init__()
        block = dict(emb_dim=cfg.time_embed_dim, groups=cfg.groups, activation=cfg.activation,
                     dropout=cfg.dropout, time_mode=cfg.time_mode)
        self.first = ResBlock(c_in, c, **block)
        self.self_attention = SelfAttention(c, cfg.heads, cfg.groups) if cfg.self_attention[level] else None
        self.cross_attention = (CrossAttention(c, cfg.text_dim, cfg.heads, cfg.groups) if cfg.cross_attention[level]
                                else None)
        self.rest = nn.ModuleList(ResBlock(c, c, **block) for _ in range(cfg.blocks_at(level) - 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor, text: TextCondition | None) -> torch.Tensor:
        x = self.first(x, emb)
        if self.self_attention is not None:
            x = self.self_attention(x)
        if self.cross_attention is not None:
            x = self.cross_attention(x, text.tokens, text.mask)
        for block in self.rest:
            x = block(x, emb)
        return x


# ----------------------------------------------------------------------------------------------
# The network


class UNet(nn.Module):
    """The conditional U-Net: ``model(x (B,C,H,W), t (B,), text: TextCondition | None) → (B,C,H,W)``.

    ``t`` holds integer or real timesteps (a scalar is used for the whole batch).
    ``text=None`` is the null condition. ``seed`` makes the initial weights
    reproducible without touching the global random state. Chapter: ``06_unet``.
    """

    def __init__(self, config: UNetConfig | None = None, seed: int | None = None):
        super().__init__()
        self.config = cfg = config if config is not None else UNetConfig()
        if seed is None:
            self._build(cfg)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self._build(cfg)

    def _build(self, cfg: UNetConfig) -> None:
        E, s, n = cfg.time_embed_dim, cfg.stem_stride, cfg.levels
        self.time_embedding = TimestepEmbedding(E, E)
        self.text_pool = nn.Linear(cfg.text_dim, E) if cfg.text_dim else None
        self.act = ACTIVATIONS[cfg.activation]()
        kernel, padding = (3, 1) if s == 1 else (s, 0)  # s > 1: non-overlapping s×s patches
        self.stem = nn.Conv2d(cfg.in_channels, cfg.down_channels[0], kernel, stride=s, padding=padding)
        channels = cfg.level_channels()
        self.down = nn.ModuleList(Level(*channels[i], cfg, i) for i in range(n))
        after = list(cfg.down_channels[1:]) + [cfg.up_channels[0]]
        self.downsample = nn.ModuleList(Downsample(c, c_next) for c, c_next in zip(cfg.down_channels, after))
        self.up = nn.ModuleList(Level(*channels[n + j], cfg, n + j) for j in range(n))
        self.upsample = nn.ModuleList(Upsample(c, c // 2) for c in cfg.up_channels)
        self.tail = nn.Conv2d(cfg.up_channels[-1] // 2 + cfg.down_channels[0], cfg.tail_channels, 3, padding=1)
        self.out = (nn.Conv2d(cfg.tail_channels, cfg.out_channels, 1) if s == 1
                    else nn.ConvTranspose2d(cfg.tail_channels, cfg.out_channels, s, stride=s))  # un-patchify

    def embed(self, t: torch.Tensor, text: TextCondition | None) -> torch.Tensor:
        """Timestep embedding + projected pooled caption, after the activation: ``(B, time_embed_dim)``."""
        emb = self.time_embedding(t)
        if self.text_pool is not None:
            emb = emb + self.text_pool(text.pooled)
        return self.act(emb)

    def _inputs(self, x: torch.Tensor, t: Any, text: TextCondition | None) -> tuple[torch.Tensor, TextCondition | None]:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"UNet: expected x of shape (B, {cfg.in_channels}, H, W), got {tuple(x.shape)}")
        cfg.check_input_size(x.shape[2], x.shape[3])
        B = x.shape[0]
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"UNet: expected t of shape ({B},) or a scalar, got {tuple(t.shape)}")
        if cfg.text_dim == 0:
            if text is not None:
                raise ValueError("UNet: this network is unconditional (text_dim=0) but got a TextCondition")
            return t, None
        if text is None:
            text = TextCondition.null(B, cfg.text_dim, device=x.device, dtype=x.dtype)
        if len(text) != B or text.dim != cfg.text_dim:
            raise ValueError(f"UNet: expected a TextCondition for {B} items of width {cfg.text_dim}, "
                             f"got {len(text)} of width {text.dim}")
        return t, text.to(device=x.device, dtype=x.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int | float,
                text: TextCondition | None = None) -> torch.Tensor:
        t, text = self._inputs(x, t, text)
        emb = self.embed(t, text)
        h = self.stem(x)
        skips = []
        for level, down in zip(self.down, self.downsample):
            h = level(h, emb, text)
            skips.append(h)
            h = down(h)
        for level, up in zip(self.up, self.upsample):
            h = level(h, emb, text)
            h = torch.cat([up(h), skips.pop()], dim=1)  # decoder features next to the encoder's, same resolution
        return self.out(self.act(self.tail(h)))


# ----------------------------------------------------------------------------------------------
# Inspection


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) in ``module``. Chapter: ``06_unet``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def flop_counter(**kwargs) -> _flops.FlopCounterMode:
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts attention run by the CPU flash kernel.

    torch (checked: 2.13) has no FLOP formula for ``aten._scaled_dot_product_flash_attention_for_cpu``, the
    kernel ``scaled_dot_product_attention`` uses on a CPU, so the plain counter silently leaves attention out
    (84 of seed128's 269 GFLOP per forward pass). Use as ``with flop_counter(display=False) as c: …``.
    Chapter: ``06_unet``.
    """
    aten = torch.ops.aten

    def forward(q, k, v, *args, out_shape=None, **kw):
        return _flops.sdpa_flop_count(q, k, v)

    def backward(grad_out, q, k, v, *args, out_shape=None, **kw):
        return _flops.sdpa_backward_flop_count(grad_out, q, k, v)

    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
    mapping.update(kwargs.pop("custom_mapping", None) or {})
    return _flops.FlopCounterMode(custom_mapping=mapping, **kwargs)


def stages(model: UNet, height: int | None = None, width: int | None = None) -> list[dict[str, Any]]:
    """One row per stage in execution order: ``name``, ``module``, ``params`` and, given an input size,
    the output ``shape`` (C, H, W) worked out from the config (no forward pass). Chapter: ``06_unet``."""
    cfg, n = model.config, model.config.levels
    if height is not None:
        cfg.check_input_size(height, width)
    rows: list[dict[str, Any]] = []

    def add(name: str, module: nn.Module | None, shape: tuple[int, int, int] | None) -> None:
        if module is not None:
            rows.append({"name": name, "module": module, "params": count_parameters(module),
                         "shape": shape if height is not None else None})

    def at(level: int, c: int) -> tuple[int, int, int]:
        f = cfg.stem_stride * 2 ** level
        return (c, (height or 0) // f, (width or 0) // f)

    add("time embedding (MLP)", model.time_embedding, None)
    add("pooled text → embedding", model.text_pool, None)
    add("stem", model.stem, at(0, cfg.down_channels[0]))
    for i in range(n):
        add(f"down {i + 1}", model.down[i], at(i, cfg.down_channels[i]))
        add(f"downsample {i + 1}", model.downsample[i], at(i + 1, model.downsample[i][0].out_channels))
    for j in range(n):
        level = n - j  # the first up level runs at the lowest resolution
        add(f"up {j + 1}", model.up[j], at(level, cfg.up_channels[j]))
        add(f"upsample {j + 1}", model.upsample[j], at(level - 1, cfg.up_channels[j] // 2))  # then + skip
    add("tail", model.tail, at(0, cfg.tail_channels))
    add("out", model.out, (cfg.out_channels, height or 0, width or 0))
    return rows


def describe(model: UNet, height: int | None = None, width: int | None = None) -> str:
    """A printable table of :func:`stages`: parameters per stage and, given an input size, output shapes."""
    rows = stages(model, height, width)
    total = count_parameters(model)
    lines = [f"{'stage':<26}{'output (C, H, W)':>20}{'parameters':>14}{'share':>8}"]
    for r in rows:
        shape = "" if r["shape"] is None else "×".join(str(v) for v in r["shape"])
        lines.append(f"{r['name']:<26}{shape:>20}{r['params']:>14,}{r['params'] / total:>8.1%}")
    lines.append(f"{'total':<26}{'':>20}{total:>14,}{1:>8.0%}")
    return "\n".join(lines)
