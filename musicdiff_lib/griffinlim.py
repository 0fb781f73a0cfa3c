"""Phase reconstruction: fast Griffin-Lim with momentum, and how to score it.

Chapter: ``09_griffin_lim``. Griffin & Lim (1984) alternate two projections:
onto spectrograms with the target magnitude, and onto spectrograms that some
signal actually has (STFT of the inverse STFT). Perraudin, Balazs & Søndergaard
(2013) add momentum to the second, which converges much faster:

    c_n = STFT(ISTFT(S · t_{n-1} / |t_{n-1}|))     # project
    t_n = c_n + α (c_n − c_{n−1})                  # accelerate (α = momentum)
"""
from __future__ import annotations

import math

import torch

from .mel import MelConfig


def _stft(wave: torch.Tensor, config: MelConfig, window: torch.Tensor) -> torch.Tensor:
    return torch.stft(wave, n_fft=config.n_fft, hop_length=config.hop_length,
                      win_length=config.window_length, window=window, center=True,
                      pad_mode="constant", return_complex=True)


def _istft(spec: torch.Tensor, config: MelConfig, window: torch.Tensor, length: int) -> torch.Tensor:
    return torch.istft(spec, n_fft=config.n_fft, hop_length=config.hop_length,
                       win_length=config.window_length, window=window, center=True, length=length)


def griffin_lim(
    magnitude: torch.Tensor,
    config: MelConfig,
    n_iter: int = 32,
    momentum: float = 0.99,
    init: str | torch.Tensor = "random",
    generator: torch.Generator | None = None,
    length: int | None = None,
    window: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear magnitude ``(B, n_fft//2+1, frames)`` → waveform ``(B, samples)``.

    ``init`` is ``"random"`` (uniform phase from ``generator``), ``"zeros"``
    (zero phase) or a tensor of initial phases in radians, shaped like
    ``magnitude`` (to start two implementations from the same point).
    ``momentum`` is α above; 0 gives the original algorithm. ``length``
    defaults to ``(frames - 1) * hop_length``; ``window`` to a periodic Hann
    window in the magnitude's dtype.
    """
    if magnitude.ndim == 2:
        magnitude = magnitude.unsqueeze(0)
    if magnitude.ndim != 3 or magnitude.shape[1] != config.n_freqs:
        raise ValueError(f"expected magnitude of shape (B, {config.n_freqs}, frames), got {tuple(magnitude.shape)}")
    if n_iter < 1:
        raise ValueError(f"n_iter must be at least 1, got {n_iter}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if window is None:
        window = torch.hann_window(config.window_length, periodic=True, dtype=magnitude.dtype)
    window = window.to(device=magnitude.device, dtype=magnitude.dtype)
    length = length or (magnitude.shape[-1] - 1) * config.hop_length

    if isinstance(init, torch.Tensor):
        if init.shape != magnitude.shape:
            raise ValueError(f"initial phase must have the magnitude's shape {tuple(magnitude.shape)}, got {tuple(init.shape)}")
        phase = init.to(device=magnitude.device, dtype=magnitude.dtype)
    elif init == "random":
        phase = 2 * math.pi * torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype,
                                         device="cpu" if generator is None else generator.device)
    elif init == "zeros":
        phase = torch.zeros_like(magnitude)
    else:
        raise ValueError(f"init must be 'random', 'zeros' or a tensor of phases, got {init!r}")
    angles = torch.polar(torch.ones_like(magnitude), phase.to(magnitude.device))

    previous = None
    for _ in range(n_iter):
        # Project onto consistent spectrograms: keep the phase, impose the magnitude.
        rebuilt = _stft(_istft(magnitude * angles, config, window, length), config, window)
        # Accelerate: extrapolate along the last step (Perraudin et al. 2013, eq. 6).
        estimate = rebuilt if previous is None else rebuilt + momentum * (rebuilt - previous)
        previous = rebuilt
        angles = estimate / (estimate.abs() + 1e-16)
    return _istft(magnitude * angles, config, window, length)


def spectral_convergence(target_magnitude: torch.Tensor, wave: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """``‖S − |STFT(x)|‖_F / ‖S‖_F`` per item: ``(B, F, T)``, ``(B, samples)`` → ``(B,)``.

    0 means the waveform has exactly the target magnitude; lower is better.
    """
    if target_magnitude.ndim == 2:
        target_magnitude = target_magnitude.unsqueeze(0)
    if wave.ndim == 1:
        wave = wave.unsqueeze(0)
    window = torch.hann_window(config.window_length, periodic=True, dtype=wave.dtype, device=wave.device)
    magnitude = _stft(wave, config, window).abs()
    frames = min(magnitude.shape[-1], target_magnitude.shape[-1])
    diff = target_magnitude[..., :frames] - magnitude[..., :frames]
    return diff.flatten(1).norm(dim=1) / target_magnitude[..., :frames].flatten(1).norm(dim=1).clamp_min(1e-12)
