"""Sinusoidal timestep embeddings, as the report writes them, and the MLP that projects them.

Chapter: ``03_sinusoidal_embeddings``. The report's formula (after Vaswani et
al. 2017), for an even width d and i = 0 … d/2 − 1:

    Embedding(t)[2i]   = sin(t / 10000^(2i/d))
    Embedding(t)[2i+1] = cos(t / 10000^(2i/d))

Sines and cosines are *interleaved*. Many codebases (DDPM, diffusers) instead
concatenate all sines then all cosines; the two differ only by a fixed
permutation of the channels (:func:`interleaved_to_concatenated`), so a
network learns equally well from either.
"""
from __future__ import annotations

import torch
from torch import nn


def sinusoidal_embedding(t: torch.Tensor | float | int, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """The report's embedding: ``(B,)`` integer or real timesteps → ``(B, dim)``, interleaved sin/cos.

    Computed in float64 and returned as float32 (float64 input stays float64),
    so large t keep their precision.
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"embedding width must be a positive even number (sin/cos pairs), got {dim}")
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t[None]
    if t.ndim != 1:
        raise ValueError(f"expected timesteps of shape (B,), got {tuple(t.shape)}")
    out_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    i = torch.arange(dim // 2, dtype=torch.float64, device=t.device)
    frequencies = max_period ** (-2.0 * i / dim)  # 1 / 10000^(2i/d)
    angles = t.to(torch.float64)[:, None] * frequencies[None, :]
    emb = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(t.shape[0], dim)  # sin, cos, sin, cos, …
    return emb.to(out_dtype)


def interleaved_to_concatenated(dim: int) -> torch.Tensor:
    """Index permutation p with ``interleaved[:, p] == concatenated`` ([sin…, cos…] layout)."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"embedding width must be a positive even number (sin/cos pairs), got {dim}")
    return torch.cat([torch.arange(0, dim, 2), torch.arange(1, dim, 2)])


class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of width ``dim`` → MLP (Linear, SiLU, Linear) → ``(B, out_dim)``.

    The U-Net adds the result (plus the pooled caption embedding) into every
    residual block. Chapter: ``03_sinusoidal_embeddings``.
    """

    def __init__(self, dim: int, out_dim: int, max_period: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"embedding width must be a positive even number (sin/cos pairs), got {dim}")
        self.dim, self.max_period = dim, max_period
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = sinusoidal_embedding(t, self.dim, self.max_period).to(self.mlp[0].weight.dtype)
        return self.mlp(emb.to(self.mlp[0].weight.device))
