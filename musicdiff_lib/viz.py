"""Pictures and sound for the chapters: spectrogram plots and audio players.

Chapter: used everywhere; introduced in ``01_audio_and_mel``. Plot functions
take an optional matplotlib ``ax`` and return it, so chapters can lay out grids.
"""
from __future__ import annotations

import numpy as np
import torch

from .mel import MelConfig


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def plot_mel(mel, config: MelConfig, ax=None, title: str | None = None, colorbar: bool = True,
             vmin: float = -1.0, vmax: float = 1.0, cmap="magma", interpolation: str = "nearest"):
    """Show a normalised mel ``(1, n_mels, frames)`` or ``(n_mels, frames)`` with time and Hz axes.

    Nearest-neighbour interpolation by default: it shows the real bins and
    keeps the PNGs (and so the committed notebooks) small.
    """
    import librosa
    import matplotlib.pyplot as plt

    image = _numpy(mel)
    while image.ndim > 2:
        image = image[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3))
    seconds = image.shape[-1] * config.seconds_per_frame
    im = ax.imshow(image, origin="lower", aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax,
                   interpolation=interpolation, extent=(0, seconds, 0, image.shape[0]))
    f_max = config.f_max or config.sample_rate / 2
    hz = librosa.mel_frequencies(config.n_mels, fmin=config.f_min, fmax=f_max, htk=config.mel_scale == "htk")
    ticks = np.linspace(0, config.n_mels - 1, 5).astype(int)
    ax.set_yticks(ticks + 0.5)
    ax.set_yticklabels([f"{hz[i]:.0f}" for i in ticks])
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel band centre (Hz)")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, label="normalised log-mel")
    return ax


def plot_wave(wave, sample_rate: int, ax=None, title: str | None = None):
    """Waveform against time in seconds."""
    import matplotlib.pyplot as plt

    y = _numpy(wave).reshape(-1)
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 2))
    ax.plot(np.arange(len(y)) / sample_rate, y, linewidth=0.5)
    ax.set_xlim(0, len(y) / sample_rate)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude")
    if title:
        ax.set_title(title)
    return ax


def audio_player(wave, sample_rate: int, normalize: bool = True):
    """An HTML ``<audio>`` player for a mono wave (rendered as such in the built book)."""
    from IPython.display import Audio

    return Audio(_numpy(wave).reshape(-1), rate=sample_rate, normalize=normalize)


def labelled_players(clips: dict[str, object], sample_rate: int, normalize: bool = True):
    """Several players in one output, each under its label (``{label: wave}``).

    ``normalize=False`` keeps true levels, to hear loudness differences
    (the waves must then lie in [-1, 1]).
    """
    from IPython.display import HTML

    rows = []
    for label, wave in clips.items():
        player = audio_player(wave, sample_rate, normalize=normalize)._repr_html_()
        rows.append(f"<div><b>{label}</b><br>{player}</div>")
    return HTML("".join(rows))
