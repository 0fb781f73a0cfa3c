"""Noise schedules: β_t, α_t, ᾱ_t and the signal-to-noise ratio, for any T.

Chapter: ``04_noise_schedules``. A schedule fixes how much noise the forward
process has added by step t (Ho et al. 2020):

    x_t = √ᾱ_t · x_0 + √(1 − ᾱ_t) · ε,   ᾱ_t = ∏_{s≤t} α_s,   α_t = 1 − β_t,

with steps indexed t = 0 … T−1 (step 0 is the first noising step). SNR_t =
ᾱ_t / (1 − ᾱ_t).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

SCHEDULES = ("linear", "cosine", "sigmoid")


def linear_betas(T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """Ho et al. (2020): β rises linearly from ``beta_start`` to ``beta_end`` (scaled for T ≠ 1000).

    The endpoints are given for T = 1000; for other T they are scaled by 1000/T
    so the total noise added stays comparable (as in Nichol & Dhariwal 2021),
    and clipped at 0.999 so that very short schedules stay valid.
    """
    scale = 1000.0 / T
    return torch.linspace(scale * beta_start, scale * beta_end, T, dtype=torch.float64).clamp(max=0.999)


def cosine_alpha_bar(t: torch.Tensor, T: int, s: float = 0.008) -> torch.Tensor:
    """Nichol & Dhariwal (2021): ᾱ(t) = f(t)/f(0), f(t) = cos²(((t/T + s)/(1 + s)) · π/2), t ∈ [0, T]."""
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(torch.as_tensor(t, dtype=torch.float64)) / f(torch.zeros((), dtype=torch.float64))


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """β_t = 1 − ᾱ(t+1)/ᾱ(t) of the cosine schedule, clipped at ``max_beta`` (0.999)."""
    t = torch.arange(T + 1, dtype=torch.float64)
    alpha_bar = cosine_alpha_bar(t, T, s)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


def sigmoid_betas(T: int = 1000, start: float = -3.0, end: float = 3.0, tau: float = 1.0) -> torch.Tensor:
    """Sigmoid schedule (Jabri et al. 2022): ᾱ(t) follows a rescaled sigmoid of t/T; β clipped at 0.999."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    v_start, v_end = torch.sigmoid(torch.tensor(start / tau)), torch.sigmoid(torch.tensor(end / tau))
    alpha_bar = (-torch.sigmoid((t * (end - start) + start) / tau) + v_end) / (v_end - v_start)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(0, 0.999)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024): shift and scale √ᾱ so the last step is pure noise (SNR_T = 0), first unchanged."""
    sqrt_ab = torch.cumprod(1 - betas, 0).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    alpha_bar = sqrt_ab**2
    alphas = torch.cat([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


@dataclass(frozen=True)
class NoiseSchedule:
    """All the per-step quantities of one schedule, float64 tensors of shape ``(T,)``.

    Derived quantities are computed once, on first use (treat them as read-only).

    Build with :meth:`NoiseSchedule.create` (``"linear"``, ``"cosine"``,
    ``"sigmoid"``). Index with integer steps 0 … T−1.
    """

    name: str
    betas: torch.Tensor

    @classmethod
    def create(cls, name: str = "cosine", T: int = 1000, zero_terminal_snr: bool = False) -> "NoiseSchedule":
        if T < 2:
            raise ValueError(f"a schedule needs at least 2 steps, got T={T}")
        makers = {"linear": linear_betas, "cosine": cosine_betas, "sigmoid": sigmoid_betas}
        if name not in makers:
            raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULES)}")
        betas = makers[name](T)
        if zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(name, betas)

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @cached_property
    def alphas(self) -> torch.Tensor:
        return 1 - self.betas

    @cached_property
    def alpha_bar(self) -> torch.Tensor:
        return torch.cumprod(self.alphas, 0)

    @cached_property
    def sqrt_alpha_bar(self) -> torch.Tensor:
        return self.alpha_bar.sqrt()

    @cached_property
    def sqrt_one_minus_alpha_bar(self) -> torch.Tensor:
        return (1 - self.alpha_bar).sqrt()

    @cached_property
    def snr(self) -> torch.Tensor:
        return self.alpha_bar / (1 - self.alpha_bar)

    @cached_property
    def log_snr(self) -> torch.Tensor:
        """log(ᾱ/(1−ᾱ)); −inf at a zero-terminal-SNR last step."""
        return torch.log(self.alpha_bar) - torch.log1p(-self.alpha_bar)
