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


MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


def _mp3_player_html(wave: np.ndarray, sample_rate: int, normalize: bool) -> str:
    """``<audio>`` with the wave as an embedded MP3: about a tenth of a WAV's size."""
    import base64
    import io

    import soundfile as sf

    if sample_rate not in MP3_RATES:  # e.g. the report's 10 kHz: MP3 has no such rate
        from .audio import resample
        target = min(r for r in MP3_RATES if r >= sample_rate) if sample_rate <= 48000 else 48000
        wave, sample_rate = resample(wave, sample_rate, target), target
    peak = float(np.max(np.abs(wave))) if wave.size else 0.0
    wave = wave * (0.95 / peak) if normalize and peak > 0 else np.clip(wave, -1.0, 1.0)
    buffer = io.BytesIO()
    sf.write(buffer, wave.astype(np.float32), sample_rate, format="MP3", subtype="MPEG_LAYER_III")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f'<audio controls preload="none"><source src="data:audio/mpeg;base64,{data}" '
            f'type="audio/mpeg">Your browser does not support the audio element.</audio>')


def audio_player(wave, sample_rate: int, normalize: bool = True, format: str = "wav"):
    """An HTML ``<audio>`` player for a mono wave (rendered as such in the built book).

    ``format="mp3"`` embeds a compressed copy, for chapters with many clips (a
    notebook stays under 3 MB); keep ``"wav"`` where artefacts are the topic.
    """
    from IPython.display import HTML, Audio

    wave = _numpy(wave).reshape(-1)
    if format == "wav":
        return Audio(wave, rate=sample_rate, normalize=normalize)
    if format == "mp3":
        return HTML(_mp3_player_html(wave.astype(np.float64), sample_rate, normalize))
    raise ValueError(f"audio_player: format must be 'wav' or 'mp3', got {format!r}")


def labelled_players(clips: dict[str, object], sample_rate: int, normalize: bool = True, format: str = "wav"):
    """Several players in one output, each under its label (``{label: wave}``).

    ``normalize=False`` keeps true levels, to hear loudness differences
    (the waves must then lie in [-1, 1]). ``format`` as in :func:`audio_player`.
    """
    from html import escape

    from IPython.display import HTML

    rows = []
    for label, wave in clips.items():
        label = escape(str(label))  # captions are text, not markup
        player = audio_player(wave, sample_rate, normalize=normalize, format=format)._repr_html_()
        rows.append(f"<div><b>{label}</b><br>{player}</div>")
    return HTML("".join(rows))


class Playground:
    """The chapter-12 controls: caption, steps, guidance, seed and sampler → a spectrogram and a player.

    ``Playground(pipe).widget`` is an ipywidgets box (JupyterLab, Colab, VS Code);
    :meth:`generate` is what its button runs, callable without a front end
    (tests, the static book). ``last`` holds the latest
    :class:`~musicdiff_lib.pipeline.PipelineOutput`.
    """

    SAMPLERS = ("dpmpp_2m", "ddim", "ddpm")

    def __init__(self, pipe, caption: str = "A slow piano melody in a minor key, played softly, with no drums.",
                 steps: int = 25, guidance: float = 3.0, seed: int = 0, sampler: str = "dpmpp_2m"):
        import ipywidgets as w

        self.pipe = pipe
        self.last = None
        self.caption = w.Textarea(value=caption, description="caption", layout=w.Layout(width="95%", height="4em"))
        self.steps = w.IntSlider(value=steps, min=2, max=100, description="steps")
        self.guidance = w.FloatSlider(value=guidance, min=0.0, max=9.0, step=0.5, description="guidance")
        self.seed = w.IntText(value=seed, description="seed")
        self.sampler = w.Dropdown(options=self.SAMPLERS, value=sampler, description="sampler")
        self.button = w.Button(description="Generate", button_style="primary", icon="music")
        self.status = w.Label()
        self.output = w.Output()
        self.button.on_click(lambda _: self.generate())
        self.widget = w.VBox([self.caption, w.HBox([self.steps, self.guidance]),
                              w.HBox([self.seed, self.sampler, self.button]), self.status, self.output])

    def generate(self):
        """Run the pipeline with the current settings and show the result in the output area."""
        import time

        import matplotlib.pyplot as plt
        from IPython.display import display

        text = self.caption.value.strip()
        if not text:
            self.status.value = "Type a caption first."
            return None
        self.status.value = "generating …"
        start = time.perf_counter()
        out = self.pipe(text, steps=self.steps.value, sampler=self.sampler.value,
                        guidance_scale=self.guidance.value, seed=self.seed.value, progress=False)
        self.last = out
        self.status.value = f"{out.waves.shape[-1] / out.sample_rate:.1f} s of music in {time.perf_counter() - start:.1f} s"
        self.output.clear_output(wait=True)
        with self.output:
            fig, ax = plt.subplots(figsize=(8, 2.6))
            plot_mel(out.mels[0], out.mel_config, ax=ax, title=text[:90])
            plt.tight_layout()
            plt.show()
            display(audio_player(out.waves[0], out.sample_rate))
        return out
