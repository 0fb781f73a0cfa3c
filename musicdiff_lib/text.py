"""Text conditioning: what a caption becomes before it reaches the U-Net.

Chapter: ``02_text_conditioning`` (the encoder arrives with the data issue);
the container below is what the U-Net, the diffusion loss and the samplers
exchange. The *null condition* (no caption) is all zeros with an empty mask;
the U-Net gives it a learned "no text" key so attention is always defined.
"""
from __future__ import annotations

from dataclasses import dataclass

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
