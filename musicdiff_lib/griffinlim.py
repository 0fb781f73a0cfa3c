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

from .mel import MelConfig, hann_window, stft


class InverseSTFT:
    """``torch.istft`` for one fixed (config, frames, length), fast inside the Griffin-Lim loop.

    ``torch.istft`` recomputes the window envelope on every call; here it is
    computed once, and when the hop divides n_fft the overlap-add is n_fft/hop
    shifted block additions. Otherwise it falls back to ``torch.istft``.
    ``(B, n_fft//2+1, frames)`` complex → ``(B, length)``.
    """

    def __init__(self, config: MelConfig, window: torch.Tensor, frames: int, length: int):
        self.config, self.frames, self.length = config, frames, length
        n_fft, hop = config.n_fft, config.hop_length
        left = (n_fft - window.shape[0]) // 2  # torch centres a short window inside n_fft
        self.window = torch.nn.functional.pad(window, (left, n_fft - window.shape[0] - left))
        self.short_window = window
        self.fast = n_fft % hop == 0
        if self.fast:
            envelope = self._overlap_add(self.window.pow(2)[None, :, None].expand(1, n_fft, frames))[0]
            self.inverse_envelope = torch.where(envelope > 1e-11, 1.0 / envelope, torch.zeros_like(envelope))

    def _overlap_add(self, frames: torch.Tensor) -> torch.Tensor:
        """Sum windowed frames ``(B, n_fft, T)`` at their hops, drop the centring pad → ``(B, length)``."""
        n_fft, hop = self.config.n_fft, self.config.hop_length
        r = n_fft // hop
        batch, _, count = frames.shape
        blocks = frames.reshape(batch, r, hop, count).transpose(2, 3)  # (B, r, T, hop)
        out = torch.zeros(batch, count + r - 1, hop, dtype=frames.dtype, device=frames.device)
        for q in range(r):
            out[:, q:q + count] += blocks[:, q]
        out = out.reshape(batch, -1)[:, n_fft // 2:n_fft // 2 + self.length]
        if out.shape[-1] < self.length:
            out = torch.nn.functional.pad(out, (0, self.length - out.shape[-1]))
        return out

    def __call__(self, spec: torch.Tensor) -> torch.Tensor:
        c = self.config
        if not self.fast:
            return torch.istft(spec, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.window_length,
                               window=self.short_window, center=True, length=self.length)
        frames = torch.fft.irfft(spec, n=c.n_fft, dim=1) * self.window[:, None]
        return self._overlap_add(frames) * self.inverse_envelope


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
        window = hann_window(config, magnitude.dtype, magnitude.device)  # built in float64 for float64 input
    window = window.to(device=magnitude.device, dtype=magnitude.dtype)
    length = length or (magnitude.shape[-1] - 1) * config.hop_length
    istft = InverseSTFT(config, window, magnitude.shape[-1], length)

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
        rebuilt = stft(istft(magnitude * angles), config, window)
        # Accelerate: extrapolate along the last step (Perraudin et al. 2013, eq. 6).
        # t_n = c_n + α(c_n − c_{n−1}), written as one lerp pass (it is the hot loop).
        estimate = rebuilt if previous is None else torch.lerp(previous, rebuilt, 1.0 + momentum)
        previous = rebuilt
        angles = torch.sgn(estimate)  # e^{i·phase}; 0 where the estimate is 0
    return istft(magnitude * angles)


def spectral_convergence(target_magnitude: torch.Tensor, wave: torch.Tensor, config: MelConfig) -> torch.Tensor:
    """``‖S − |STFT(x)|‖_F / ‖S‖_F`` per item: ``(B, F, T)``, ``(B, samples)`` → ``(B,)``.

    0 means the waveform has exactly the target magnitude; lower is better.
    """
    if target_magnitude.ndim == 2:
        target_magnitude = target_magnitude.unsqueeze(0)
    if wave.ndim == 1:
        wave = wave.unsqueeze(0)
    magnitude = stft(wave, config).abs()
    frames = min(magnitude.shape[-1], target_magnitude.shape[-1])
    diff = target_magnitude[..., :frames] - magnitude[..., :frames]
    return diff.flatten(1).norm(dim=1) / target_magnitude[..., :frames].flatten(1).norm(dim=1).clamp_min(1e-12)
