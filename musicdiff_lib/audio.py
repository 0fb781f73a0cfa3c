"""Waveform input and output: load, mono, resample, pad/crop, normalise, save.

Chapter: ``01_audio_and_mel``. Waveforms are float32 numpy arrays in [-1, 1],
shape ``(samples,)`` for mono; the mel codec turns them into tensors.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SUPPORTED_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioError(ValueError):
    """A file that cannot be used as audio; the message names the path and the reason."""


def load_audio(
    path: str | Path,
    sample_rate: int | None = None,
    mono: bool = True,
    duration: float | None = None,
    offset: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Read wav/flac/ogg with soundfile → ``(wave, sample_rate)``.

    ``wave`` is float32, ``(samples,)`` when ``mono`` else ``(channels, samples)``.
    ``sample_rate`` resamples (soxr, via librosa); ``duration`` pads with silence or
    crops to exactly that many seconds. Raises :class:`AudioError` naming the path
    for a missing, unreadable, empty, non-finite or unsupported file.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise AudioError(f"{path}: unsupported format {path.suffix or '(no suffix)'!r}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    try:
        with sf.SoundFile(str(path)) as f:
            native_rate = f.samplerate
            f.seek(int(round(offset * native_rate)))
            frames = -1 if duration is None else int(round(duration * native_rate))
            data = f.read(frames=frames, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as err:
        raise AudioError(f"{path}: not readable as audio ({err})") from None
    if data.shape[0] == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(data).all():
        raise AudioError(f"{path}: contains NaN or infinite samples")
    wave = data.T  # (channels, samples)
    if mono:
        wave = to_mono(wave)
    if sample_rate is not None and sample_rate != native_rate:
        wave = resample(wave, native_rate, sample_rate)
    rate = sample_rate or native_rate
    if duration is not None:
        wave = pad_or_crop(wave, int(round(duration * rate)))
    return np.ascontiguousarray(wave, dtype=np.float32), rate


def to_mono(wave: np.ndarray) -> np.ndarray:
    """Average channels: ``(channels, samples)`` → ``(samples,)``; mono passes through."""
    wave = np.asarray(wave, dtype=np.float32)
    return wave if wave.ndim == 1 else wave.mean(axis=0)


def resample(wave: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling along the last axis (soxr high quality)."""
    if orig_rate == target_rate:
        return np.asarray(wave, dtype=np.float32)
    import librosa  # imported lazily: it pulls numba, which is slow to import

    return librosa.resample(np.asarray(wave, dtype=np.float32), orig_sr=orig_rate, target_sr=target_rate).astype(np.float32)


def pad_or_crop(wave: np.ndarray, num_samples: int) -> np.ndarray:
    """Zero-pad at the end or crop to exactly ``num_samples`` along the last axis."""
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    length = wave.shape[-1]
    if length >= num_samples:
        return wave[..., :num_samples]
    pad = [(0, 0)] * (wave.ndim - 1) + [(0, num_samples - length)]
    return np.pad(wave, pad)


def peak_normalize(wave: np.ndarray, peak: float = 0.95) -> np.ndarray:
    """Scale so that the largest absolute sample is ``peak``; silence stays silence."""
    wave = np.asarray(wave, dtype=np.float32)
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave if top == 0.0 else wave * (peak / top)


def save_wav(path: str | Path, wave: np.ndarray, sample_rate: int) -> Path:
    """Write 16-bit PCM wav; ``wave`` is ``(samples,)`` or ``(channels, samples)``.

    Written to a temporary name and renamed, so a crash never leaves half a file.
    """
    path = Path(path)
    if hasattr(wave, "detach"):  # a torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if not np.isfinite(wave).all():
        raise AudioError(f"{path}: refusing to write NaN or infinite samples")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), np.clip(wave, -1.0, 1.0).T, sample_rate, subtype="PCM_16", format="WAV")
    tmp.replace(path)
    return path
