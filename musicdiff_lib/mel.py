"""Waveform ↔ normalised log-mel spectrogram, batched on any device.

Chapter: ``01_audio_and_mel``. The forward path is

    wave ─torch.stft─► |X|^power ─mel filterbank─► mel power ─10·log10─► dB ─linear map─► [-1, 1]

and :meth:`MelCodec.decode` walks it back to a linear magnitude spectrogram,
which Griffin-Lim (chapter ``09_griffin_lim``) turns into a waveform.

No torchaudio: its compiled extension fails to import on recent torch, and
this is a few lines over ``torch.stft`` with ``librosa.filters.mel``, tested
against ``librosa.feature.melspectrogram``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from .config import JsonConfig

MEL_SCALES = ("htk", "slaney")


@dataclass(frozen=True)
class MelConfig(JsonConfig):
    """Every number that fixes the spectrogram a model sees.

    ``frames`` is the width the codec pads (with silence) or crops to; ``None``
    keeps however many frames the clip gives. ``ref_db`` is the dB value mapped
    to +1; ``None`` means "a full-scale sine at the filterbank's peak", derived
    from the window and filterbank, so the same config always normalises the
    same way. Values ``top_db`` below it map to -1.
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int | None = None
    n_mels: int = 64
    f_min: float = 0.0
    f_max: float | None = None
    power: float = 2.0
    mel_scale: str = "slaney"
    norm: str | None = "slaney"
    top_db: float = 80.0
    ref_db: float | None = None
    frames: int | None = None

    def __post_init__(self) -> None:
        def bad(field: str, expected: str) -> ValueError:
            return ValueError(f"MelConfig.{field}={getattr(self, field)!r}: expected {expected}")

        if self.sample_rate <= 0:
            raise bad("sample_rate", "a positive integer")
        if self.n_fft <= 0:
            raise bad("n_fft", "a positive integer")
        if self.hop_length <= 0:
            raise bad("hop_length", "a positive integer")
        if self.win_length is not None and not 0 < self.win_length <= self.n_fft:
            raise bad("win_length", f"between 1 and n_fft={self.n_fft}")
        if self.n_mels <= 0:
            raise bad("n_mels", "a positive integer")
        nyquist = self.sample_rate / 2
        if not 0 <= self.f_min < (self.f_max or nyquist):
            raise bad("f_min", "0 <= f_min < f_max")
        if self.f_max is not None and self.f_max > nyquist:
            raise bad("f_max", f"at most the Nyquist frequency {nyquist:g} Hz")
        if self.power not in (1.0, 2.0):
            raise bad("power", "1.0 (magnitude) or 2.0 (power)")
        if self.mel_scale not in MEL_SCALES:
            raise bad("mel_scale", "'htk' or 'slaney'")
        if self.norm not in (None, "slaney"):
            raise bad("norm", "None or 'slaney'")
        if self.top_db <= 0:
            raise bad("top_db", "a positive number of dB")
        if self.frames is not None and self.frames <= 0:
            raise bad("frames", "a positive integer or None")

    @property
    def n_freqs(self) -> int:
        return self.n_fft // 2 + 1

    @property
    def window_length(self) -> int:
        return self.win_length or self.n_fft

    @property
    def num_samples(self) -> int | None:
        """Samples whose centred STFT gives exactly ``frames`` frames (None if frames is None)."""
        return None if self.frames is None else (self.frames - 1) * self.hop_length

    @property
    def seconds_per_frame(self) -> float:
        return self.hop_length / self.sample_rate

    @classmethod
    def preset(cls, name: str) -> "MelConfig":
        """A named setting from :data:`MEL_PRESETS` (e.g. ``seed128``)."""
        try:
            return MEL_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown mel preset {name!r}; expected one of {', '.join(sorted(MEL_PRESETS))}") from None


# The original report: 10 kHz, n_fft 1024, hop 512, HTK mels without filter
# normalisation, f_max 5 kHz. 10.1 s gives 198 frames, padded to 200; the 3 s
# variant cut 66-frame chunks padded to 72 (see shared/seed/original-code.md).
_SEED = MelConfig(
    sample_rate=10000, n_fft=1024, hop_length=512, win_length=1024, n_mels=128,
    f_min=0.0, f_max=5000.0, power=2.0, mel_scale="htk", norm=None, frames=200,
)
MEL_PRESETS: dict[str, MelConfig] = {
    "seed128": _SEED,
    "seed64": replace(_SEED, n_mels=64),
    "seed3s": replace(_SEED, frames=72),
    # A Colab GPU trains the report's layout at full size.
    "gpu": _SEED,
    # A 2-core CPU (issue 5, measured): 16 kHz, 64 Slaney mels to 8 kHz, 32 ms hops, 128 frames = 4.1 s.
    # The cpu U-Net takes 1×64×128 at about 24 training samples/s on one core.
    "cpu": MelConfig(sample_rate=16000, n_fft=1024, hop_length=512, n_mels=64, f_max=8000.0, frames=128),
    # Tests and the ci profile: seconds, not music.
    "ci": MelConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, frames=32),
}


def mel_filterbank(config: MelConfig) -> torch.Tensor:
    """The ``(n_mels, n_fft//2+1)`` filterbank, exactly ``librosa.filters.mel``'s."""
    import librosa  # lazily: numba import is slow and only needed here

    fb = librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.f_min,
        fmax=config.f_max, htk=config.mel_scale == "htk", norm=config.norm, dtype=np.float64,
    )
    return torch.from_numpy(fb)


def hann_window(config: MelConfig, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """The periodic Hann window of ``config.window_length`` samples (librosa's ``"hann"``)."""
    return torch.hann_window(config.window_length, periodic=True, dtype=dtype, device=device)


def stft(wave: torch.Tensor, config: MelConfig, window: torch.Tensor | None = None) -> torch.Tensor:
    """Complex STFT ``(B, samples)`` → ``(B, n_fft//2+1, frames)``, centred with zero padding like librosa.

    ``window`` defaults to :func:`hann_window` in the wave's dtype and device.
    """
    if window is None:
        window = hann_window(config, wave.dtype, wave.device)
    return torch.stft(wave, n_fft=config.n_fft, hop_length=config.hop_length, win_length=config.window_length,
                      window=window, center=True, pad_mode="constant", return_complex=True)


class MelCodec(torch.nn.Module):
    """Waveform ↔ normalised log-mel, following one :class:`MelConfig`.

    ``encode``: ``(B, samples)`` → ``(B, 1, n_mels, frames)`` in [-1, 1];
    ``decode``: that → linear magnitude ``(B, n_fft//2+1, frames)``;
    ``to_wave``: that → ``(B, samples)`` through Griffin-Lim.
    A ``torch.nn.Module`` only so that ``.to(device)`` moves its buffers; it has
    no trainable parameters and every step is differentiable.
    """

    def __init__(self, config: MelConfig | None = None):
        super().__init__()
        self.config = config or MelConfig()
        c = self.config
        fb = mel_filterbank(c)
        self.register_buffer("filterbank", fb.float(), persistent=False)
        if c.ref_db is None:
            # dB of a full-scale sine centred on the strongest mel filter:
            # its STFT peak is sum(window)/2 in magnitude.
            amplitude = float(hann_window(c, torch.float64).sum()) / 2
            peak = float(fb.max()) * amplitude ** c.power
            self.ref_db = 10.0 * math.log10(peak)
        else:
            self.ref_db = float(c.ref_db)

    @property
    def window(self) -> torch.Tensor:
        """The periodic Hann analysis window, float32, on the codec's device."""
        return hann_window(self.config, device=self.filterbank.device)

    # -- forward path ---------------------------------------------------------
    def stft(self, wave: torch.Tensor) -> torch.Tensor:
        """Complex STFT ``(B, n_fft//2+1, frames)``, centred with zero padding like librosa (:func:`stft`)."""
        return stft(wave, self.config)

    def mel_power(self, wave: torch.Tensor) -> torch.Tensor:
        """``(B, samples)`` → mel spectrogram ``(B, n_mels, frames)``, as ``librosa.feature.melspectrogram``."""
        wave = self._as_batch(wave)
        spec = self.stft(wave).abs().pow(self.config.power)
        return torch.matmul(self.filterbank.to(spec.dtype), spec)

    def power_to_unit(self, mel_power: torch.Tensor) -> torch.Tensor:
        """Mel power → dB → clamp to ``[ref_db - top_db, ref_db]`` → linear map to [-1, 1]."""
        db = 10.0 * torch.log10(mel_power.clamp_min(1e-10))
        return self.db_to_unit(db)

    def db_to_unit(self, db: torch.Tensor) -> torch.Tensor:
        floor = self.ref_db - self.config.top_db
        return ((db - floor) / self.config.top_db * 2.0 - 1.0).clamp(-1.0, 1.0)

    def unit_to_db(self, unit: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`db_to_unit` (exact for dB values inside the range)."""
        floor = self.ref_db - self.config.top_db
        return (unit + 1.0) / 2.0 * self.config.top_db + floor

    def encode(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``(samples,)`` or ``(B, samples)`` → ``(B, 1, n_mels, frames)`` in [-1, 1].

        With ``config.frames`` set, the result is padded with silence (-1) or
        cropped to exactly that many frames.
        """
        unit = self.power_to_unit(self.mel_power(wave)).unsqueeze(1)
        return self.fit_frames(unit)

    def fit_frames(self, mel: torch.Tensor) -> torch.Tensor:
        """Pad with -1 (silence) or crop the last axis to ``config.frames``."""
        frames = self.config.frames
        if frames is None or mel.shape[-1] == frames:
            return mel
        if mel.shape[-1] > frames:
            return mel[..., :frames]
        return torch.nn.functional.pad(mel, (0, frames - mel.shape[-1]), value=-1.0)

    # -- inverse path ---------------------------------------------------------
    def decode(self, mel: torch.Tensor, n_iter: int = 50) -> torch.Tensor:
        """``(B, 1, n_mels, frames)`` in [-1, 1] → linear magnitude ``(B, n_fft//2+1, frames)``.

        The mel filterbank ``M`` is wide, so many spectra share one mel power
        ``P``. This finds a non-negative spectrum ``X`` with ``M X ≈ P`` under
        the Itakura-Saito divergence, which weighs every dB alike (quiet bins
        matter as much as loud ones): start from the back-projection of ``P``,
        then ``n_iter`` multiplicative updates (Févotte et al. 2009)

            X ← X · Mᵀ(P / (MX)²) / Mᵀ(1 / (MX)).

        FFT bins that no filter covers (above ``f_max``) come out as zero.
        """
        mel = self._check_mel(mel)
        target = torch.pow(10.0, self.unit_to_db(mel[:, 0]) / 10.0)  # mel power (B, n_mels, frames)
        fb = self.filterbank.to(target.dtype)
        tiny = torch.finfo(target.dtype).tiny ** 0.25  # (M X)² must stay representable
        spec = torch.matmul(fb.T, target) / (fb.sum(0)[:, None] + tiny)
        for _ in range(n_iter):
            approx = torch.matmul(fb, spec).clamp_min(tiny)
            spec = spec * torch.matmul(fb.T, target / approx**2) / (torch.matmul(fb.T, 1.0 / approx) + tiny)
        return spec.pow(1.0 / self.config.power)

    def to_wave(self, mel: torch.Tensor, n_iter: int = 32, momentum: float = 0.99,
                init: str | torch.Tensor = "random", generator: torch.Generator | None = None,
                length: int | None = None) -> torch.Tensor:
        """``(B, 1, n_mels, frames)`` → waveform ``(B, samples)`` via :func:`griffinlim.griffin_lim`."""
        from .griffinlim import griffin_lim

        magnitude = self.decode(mel)
        return griffin_lim(magnitude, self.config, n_iter=n_iter, momentum=momentum,
                           init=init, generator=generator, length=length)

    # -- helpers --------------------------------------------------------------
    def _as_batch(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        if not isinstance(wave, torch.Tensor):
            wave = torch.as_tensor(np.asarray(wave, dtype=np.float32))
        wave = wave.to(self.filterbank.device)
        if wave.ndim == 3 and wave.shape[1] == 1:
            wave = wave[:, 0]
        if wave.ndim == 1:
            wave = wave.unsqueeze(0)
        if wave.ndim != 2:
            raise ValueError(f"expected a waveform of shape (samples,) or (B, samples), got {tuple(wave.shape)}")
        if not wave.is_floating_point():
            raise ValueError(f"expected a floating-point waveform, got {wave.dtype}")
        return wave

    def _check_mel(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.ndim == 3:
            mel = mel.unsqueeze(1)
        if mel.ndim != 4 or mel.shape[1] != 1 or mel.shape[2] != self.config.n_mels:
            raise ValueError(f"expected a mel of shape (B, 1, {self.config.n_mels}, frames), got {tuple(mel.shape)}")
        return mel.to(self.filterbank.device)
