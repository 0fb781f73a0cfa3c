"""From a caption to a mel spectrogram and a waveform, with a trained checkpoint.

Chapter: ``08_sampling`` (and ``12_playground``). The pipeline chains what the
earlier chapters built:

    prompt ─TextEncoder─► TextCondition ─sample (U-Net + schedule + CFG)─► mel ─Griffin-Lim─► wave

``MusicDiffusionPipeline.from_checkpoint(path)`` reads everything it needs from
a checkpoint directory (or a run directory, whose ``latest`` file names the
newest checkpoint):

    config.json         {"format": "musicdiff-checkpoint", "version": 1, "step", "unet", "mel",
                         "text_encoder": {"name", "dim"}, "schedule": {"name", "T", "zero_terminal_snr"},
                         "prediction_type", "preset"}
    model.safetensors   "ema.<parameter>" (the averaged weights) and "model.<parameter>" (the raw ones)

Every sample has its own seed, used both for the diffusion noise and for
Griffin-Lim's initial phases, so prompt i with seed s gives the same result
alone or inside any batch.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .config import find_in_parents
from .mel import MelCodec, MelConfig
from .sampling import SAMPLERS, sample, sample_seeds
from .schedules import NoiseSchedule
from .text import TextCondition, TextEncoder
from .unet import UNet, UNetConfig, count_parameters

CHECKPOINT_FORMAT = "musicdiff-checkpoint"
CHECKPOINT_VERSION = 1
CONFIG_FILE, WEIGHTS_FILE, LATEST_FILE = "config.json", "model.safetensors", "latest"
_REQUIRED = {"unet": dict, "mel": dict, "text_encoder": dict, "schedule": dict, "prediction_type": str}


# ---------------------------------------------------------------------------------------------------------------
# Reading a checkpoint (the format shared with musicdiff_lib.training)
# ---------------------------------------------------------------------------------------------------------------

def _checkpoint_dir(path: str | Path) -> Path:
    """A checkpoint directory as given, or the one a run directory's ``latest`` file names."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"{path}: no such checkpoint (expected a run directory with a '{LATEST_FILE}' file, "
                         f"or a checkpoint directory with {CONFIG_FILE} and {WEIGHTS_FILE})")
    if not path.is_dir():
        raise ValueError(f"{path}: expected a checkpoint or run directory, got a file")
    if (path / CONFIG_FILE).exists():
        return path
    latest = path / LATEST_FILE
    if not latest.is_file():
        raise ValueError(f"{path}: not a checkpoint (no {CONFIG_FILE}) nor a run directory (no '{LATEST_FILE}' file)")
    name = latest.read_text().strip()
    target = path / name
    if not name or not (target / CONFIG_FILE).is_file():
        raise ValueError(f"{latest}: names checkpoint {name!r}, but {target / CONFIG_FILE} does not exist")
    return target


def _read_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, torch.Tensor]]:
    """``(checkpoint dir, config, tensors)`` from a checkpoint or run directory; every problem names its file."""
    ckpt = _checkpoint_dir(path)
    config_path, weights_path = ckpt / CONFIG_FILE, ckpt / WEIGHTS_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a readable JSON file ({err})") from None
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"{config_path}: format={found!r}, expected {CHECKPOINT_FORMAT!r}")
    if config.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{config_path}: version={config.get('version')!r}, this library reads version "
                         f"{CHECKPOINT_VERSION}")
    for key, kind in _REQUIRED.items():
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{config_path}: field {key!r} is missing or not a JSON {kind.__name__}")
    for section, keys in (("text_encoder", ("name", "dim")), ("schedule", ("name", "T", "zero_terminal_snr"))):
        missing = [k for k in keys if k not in config[section]]
        if missing:
            raise ValueError(f"{config_path}: field {section!r} lacks {missing}")
    if not weights_path.is_file():
        raise ValueError(f"{weights_path}: missing (a checkpoint holds {CONFIG_FILE} and {WEIGHTS_FILE})")
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({err})") from None
    return ckpt, config, tensors


def _same_encoder(a: str, b: str) -> bool:
    """Two encoder names that load the same weights (the packaged MiniLM has several names)."""
    from .text import _resolve

    return a == b or _resolve(a) == _resolve(b)


# ---------------------------------------------------------------------------------------------------------------
# The output
# ---------------------------------------------------------------------------------------------------------------

def _slug(text: str, limit: int = 40) -> str:
    """A file-name-safe prefix of a prompt, cut at a word boundary: "Calm piano, slow" → "calm-piano-slow"."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if len(slug) > limit:
        cut = slug[:limit + 1]
        slug = cut[:cut.rfind("-")] if "-" in cut else slug[:limit]
    return slug or "prompt"


@dataclass
class PipelineOutput:
    """What :class:`MusicDiffusionPipeline` returns for B prompts.

    mels: ``(B, 1, n_mels, frames)`` float32 in [-1, 1]; waves: ``(B, samples)`` float32
    at ``sample_rate``; ``prompts``, ``seeds`` and ``negative_prompts`` one per item.
    """

    mels: np.ndarray
    waves: np.ndarray
    sample_rate: int
    prompts: list[str]
    seeds: list[int]
    mel_config: MelConfig | None = None
    negative_prompts: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    def _paths(self, dir_or_path: str | Path, suffix: str) -> list[Path]:
        """One file per item: ``dir/00-slug-seed0.wav``, or ``x.wav`` (one item) / ``x-0.wav`` … (several)."""
        target = Path(dir_or_path).expanduser()
        if target.suffix.lower() == suffix:
            if len(self) == 1:
                return [target]
            return [target.with_name(f"{target.stem}-{i}{suffix}") for i in range(len(self))]
        return [target / f"{i:02d}-{_slug(p)}-seed{s}{suffix}"
                for i, (p, s) in enumerate(zip(self.prompts, self.seeds))]

    def save_wav(self, dir_or_path: str | Path) -> list[Path]:
        """16-bit wav files (clipped to [-1, 1], written atomically); returns their paths."""
        from .audio import save_wav

        paths = self._paths(dir_or_path, ".wav")
        return [save_wav(path, wave, self.sample_rate) for path, wave in zip(paths, self.waves)]

    def save_png(self, dir_or_path: str | Path, dpi: int = 100) -> list[Path]:
        """One spectrogram picture per item (:func:`~musicdiff_lib.viz.plot_mel`, titled with prompt and seed)."""
        from matplotlib.figure import Figure  # no pyplot: no global figure state, no GUI backend

        from .viz import plot_mel

        if self.mel_config is None:
            raise ValueError("save_png: this output has no mel_config (needed for the time and Hz axes)")
        paths = self._paths(dir_or_path, ".png")
        for path, mel, prompt, seed in zip(paths, self.mels, self.prompts, self.seeds):
            fig = Figure(figsize=(8, 3))
            plot_mel(mel, self.mel_config, ax=fig.subplots(), title=f"{prompt!r} (seed {seed})")
            fig.tight_layout()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            fig.savefig(tmp, dpi=dpi, format="png")
            tmp.replace(path)
        return paths


# ---------------------------------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------------------------------

class MusicDiffusionPipeline:
    """Text → mel → wave with a trained U-Net. Build with :meth:`from_checkpoint`, then call it.

    ``pipe("slow piano ballad", steps=25, guidance_scale=3.0, seed=0)`` → :class:`PipelineOutput`.
    """

    def __init__(self, model: UNet, codec: MelCodec, schedule: NoiseSchedule, encoder: TextEncoder,
                 prediction_type: str, config: dict[str, Any] | None = None, checkpoint: Path | None = None,
                 weights: str = "ema") -> None:
        self.model = model.eval()
        self.codec = codec
        self.schedule = schedule
        self.encoder = encoder
        self.prediction_type = prediction_type
        self.config = config or {}
        self.checkpoint = checkpoint
        self.weights = weights
        self.mel_config: MelConfig = codec.config
        if self.mel_config.frames is None:
            raise ValueError("mel.frames: the pipeline needs a fixed number of frames, got None")
        model.config.check_input_size(self.mel_config.n_mels, self.mel_config.frames)
        if model.config.text_dim != encoder.dim:
            raise ValueError(f"text_encoder.dim: the U-Net takes {model.config.text_dim}-d text, "
                             f"{encoder.name!r} gives {encoder.dim}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, device=None, use_ema: bool = True,
                        encoder: TextEncoder | None = None) -> "MusicDiffusionPipeline":
        """Load a checkpoint directory, or a run directory's newest checkpoint (its ``latest`` file).

        ``use_ema``: the averaged weights (``ema.*``, what to sample with) or the raw ones (``model.*``).
        ``encoder``: reuse a loaded :class:`TextEncoder`; its name and dim must match the checkpoint's.
        ``device``: defaults to the best available (cuda > mps > cpu).
        """
        from .config import default_device

        ckpt, config, tensors = _read_checkpoint(path)
        config_path, weights_path = ckpt / CONFIG_FILE, ckpt / WEIGHTS_FILE
        device = torch.device(device) if device is not None else default_device()
        want = config["text_encoder"]
        if encoder is not None:
            if not _same_encoder(encoder.name, str(want["name"])):
                raise ValueError(f"text_encoder.name: {config_path} was trained with {want['name']!r}, "
                                 f"but the encoder passed is {encoder.name!r}")
            if encoder.dim != want["dim"]:
                raise ValueError(f"text_encoder.dim: {config_path} expects {want['dim']}-d text embeddings, "
                                 f"but the encoder passed gives {encoder.dim}")
        try:
            unet_config = UNetConfig.from_dict(config["unet"])
            mel_config = MelConfig.from_dict(config["mel"])
            schedule_config = config["schedule"]
            schedule = NoiseSchedule.create(schedule_config["name"], int(schedule_config["T"]),
                                            bool(schedule_config["zero_terminal_snr"]))
            if mel_config.frames is None:
                raise ValueError("mel.frames: the pipeline needs a fixed number of frames, got None")
            unet_config.check_input_size(mel_config.n_mels, mel_config.frames)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{config_path}: {err}") from None
        if unet_config.text_dim != want["dim"]:
            raise ValueError(f"{config_path}: unet.text_dim={unet_config.text_dim} but text_encoder.dim={want['dim']}")
        if config["prediction_type"] not in ("epsilon", "v", "x0"):
            raise ValueError(f"{config_path}: prediction_type={config['prediction_type']!r}, expected "
                             f"'epsilon', 'v' or 'x0'")
        prefix = "ema." if use_ema else "model."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{weights_path}: no '{prefix}*' tensors (use_ema={use_ema}); found "
                             f"{sorted({k.split('.')[0] for k in tensors})}")
        model = UNet(unet_config, seed=0)  # a fixed seed leaves the global RNG alone; weights are replaced
        try:
            model.load_state_dict(state, strict=True)  # fp16 weights are cast to the model's float32
        except RuntimeError as err:
            raise ValueError(f"{weights_path}: the '{prefix}*' weights do not fit the U-Net in {CONFIG_FILE}: "
                             f"{' '.join(str(err).split())[:400]}") from None
        if encoder is None:
            encoder = TextEncoder(str(want["name"]), device=device)
            if encoder.dim != want["dim"]:
                raise ValueError(f"text_encoder.dim: {config_path} expects {want['dim']}, {encoder.name!r} gives "
                                 f"{encoder.dim}")
        pipe = cls(model, MelCodec(mel_config), schedule, encoder, config["prediction_type"], config, ckpt,
                   "ema" if use_ema else "raw")
        return pipe.to(device)

    # -- properties ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def sample_rate(self) -> int:
        return self.mel_config.sample_rate

    @property
    def seconds(self) -> float:
        """Length of one generated clip."""
        return self.mel_config.num_samples / self.mel_config.sample_rate

    def to(self, device) -> "MusicDiffusionPipeline":
        """Move the U-Net and the mel codec (captions follow the U-Net; the encoder stays where it is)."""
        self.model.to(device)
        self.codec.to(device)
        return self

    def __repr__(self) -> str:
        m = self.mel_config
        step = self.config.get("step")
        preset = self.config.get("preset")
        return (f"MusicDiffusionPipeline(\n"
                f"  checkpoint={str(self.checkpoint)!r}, step={step}, preset={preset!r},\n"
                f"  unet={count_parameters(self.model) / 1e6:.2f} M parameters ({self.weights} weights), "
                f"prediction={self.prediction_type!r},\n"
                f"  schedule={self.schedule.name!r} T={self.schedule.T},\n"
                f"  mel={m.n_mels}×{m.frames} at {m.sample_rate} Hz ({self.seconds:.2f} s),\n"
                f"  text={self.encoder!r},\n"
                f"  device={self.device})")

    # -- generation ----------------------------------------------------------
    def _encode(self, prompts: Sequence[str]) -> TextCondition:
        """One caption at a time, so an embedding never depends on the other prompts' padding."""
        return TextCondition.cat([self.encoder([p]).to(device=self.device) for p in prompts])

    @staticmethod
    def _prompt_list(value, name: str) -> list[str]:
        items = [value] if isinstance(value, str) else list(value)
        for i, p in enumerate(items):
            if not isinstance(p, str):
                raise TypeError(f"{name}[{i}]: expected a string, got {type(p).__name__}")
        return items

    def __call__(self, prompt: str | Sequence[str], steps: int = 25, sampler: str = "dpmpp_2m",
                 guidance_scale: float = 3.0, seed: int | Sequence[int] = 0,
                 negative_prompt: str | Sequence[str] | None = None, griffin_lim_iters: int = 32,
                 progress: bool = True, clip_x0: float | None = 1.0,
                 seconds: float | None = None) -> PipelineOutput:
        """Generate one clip per prompt.

        ``seed``: one per prompt, or an int s meaning s, s+1, … (as :func:`~musicdiff_lib.sampling.sample`).
        ``negative_prompt``: one for all or one per prompt; it replaces the null condition in
        classifier-free guidance. ``clip_x0``: clamp the predicted clean mel to [−c, c] at every step
        (mels live in [−1, 1]). ``seconds``: generate a clip of this length instead of the trained
        one; the U-Net is convolutional, so it takes any width that is a multiple of its
        ``size_multiple`` (the frames are rounded up to one, the wave cut to ``seconds``).
        Returns a :class:`PipelineOutput` (mels ``(B, 1, n_mels, frames)``, waves ``(B, samples)``).
        """
        # Every check before the first model call
        prompts = self._prompt_list(prompt, "prompt")
        if not prompts:
            raise ValueError("prompt: expected at least one prompt, got an empty list")
        B = len(prompts)
        if isinstance(seed, bool):
            raise TypeError("seed: expected an int or one int per prompt, got a bool")
        try:
            seeds = sample_seeds(seed, B)
        except ValueError:
            raise ValueError(f"seed: expected one seed per prompt ({B}), got {len(list(seed))}") from None
        negatives: list[str | None] = [None] * B
        if negative_prompt is not None:
            negatives = self._prompt_list(negative_prompt, "negative_prompt")
            if len(negatives) == 1:
                negatives = negatives * B
            if len(negatives) != B:
                raise ValueError(f"negative_prompt: expected one for all or one per prompt ({B}), got {len(negatives)}")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")
        if isinstance(griffin_lim_iters, bool) or not isinstance(griffin_lim_iters, int) or griffin_lim_iters < 1:
            raise ValueError(f"griffin_lim_iters={griffin_lim_iters!r}: expected an integer ≥ 1")

        m = self.mel_config
        if seconds is not None:
            if not seconds > 0:
                raise ValueError(f"seconds={seconds!r}: expected a positive length")
            multiple = self.model.config.size_multiple
            frames = math.ceil((math.ceil(seconds * m.sample_rate / m.hop_length) + 1) / multiple) * multiple
            m = replace(m, frames=frames)

        text = self._encode(prompts)
        negative = self._encode(negatives) if negative_prompt is not None else None
        with torch.no_grad():
            mels = sample(self.model, (B, 1, m.n_mels, m.frames), self.schedule, text=text, sampler=sampler,
                          steps=steps, guidance_scale=guidance_scale, prediction_type=self.prediction_type,
                          seeds=seeds, device=self.device, progress=progress, clip_x0=clip_x0,
                          negative_text=negative).clamp(-1.0, 1.0)
            # Griffin-Lim's initial phases from each sample's own seed (not the batch's generator)
            phases = torch.stack([2 * torch.pi * torch.rand(m.n_freqs, m.frames, generator=torch.Generator()
                                                            .manual_seed(s)) for s in seeds])
            waves = self.codec.to_wave(mels, n_iter=griffin_lim_iters, init=phases)
        if seconds is not None:
            waves = waves[:, : round(seconds * m.sample_rate)]
        return PipelineOutput(mels=mels.float().cpu().numpy(), waves=waves.float().cpu().numpy(),
                              sample_rate=m.sample_rate, prompts=prompts, seeds=seeds, mel_config=m,
                              negative_prompts=negatives)


# -- the book's model ----------------------------------------------------------------------------------
BOOK_CHECKPOINT = Path("checkpoints") / "book-cpu"


def find_book_checkpoint(start: str | Path | None = None) -> Path | None:
    """``checkpoints/book-cpu`` in ``start`` (default: the working directory) or any parent, else None.

    Notebooks run from ``notebooks/``, tests and the CLI from the repository root; both find it.
    """
    return find_in_parents(BOOK_CHECKPOINT, start, markers=(CONFIG_FILE, "latest"))


def book_pipeline(device=None, search_from: str | Path | None = None, fallback_dir: str | Path | None = None,
                  fallback_preset: str = "cpu", fallback_steps: int = 300, fallback_clips: int = 200,
                  progress: bool = True) -> MusicDiffusionPipeline:
    """The book's trained model (``checkpoints/book-cpu``), or a small one trained now when it is absent.

    The later chapters call this. Without the committed checkpoint (a Colab session opened from
    GitHub, say) it renders ``fallback_clips`` built-in clips, prepares them and trains
    ``fallback_preset`` for ``fallback_steps`` steps into ``fallback_dir`` (a temporary folder by
    default): minutes on a CPU, and a model that has learnt far less than the book's.
    Chapters: ``07_training`` onwards.
    """
    found = find_book_checkpoint(search_from)
    if found is not None:
        return MusicDiffusionPipeline.from_checkpoint(found, device=device)
    import tempfile

    from .data import open_source, prepare
    from .synth import write_dataset
    from .training import TRAIN_PRESETS, train

    if fallback_preset not in TRAIN_PRESETS:
        raise ValueError(f"fallback_preset={fallback_preset!r}: expected one of {', '.join(sorted(TRAIN_PRESETS))}")
    root = Path(fallback_dir) if fallback_dir else Path(tempfile.mkdtemp(prefix="musicdiff-book-model-"))
    mel = MelConfig.preset(fallback_preset)
    seconds = max(1.0, math.ceil((mel.num_samples + mel.hop_length) / mel.sample_rate))
    print(f"{BOOK_CHECKPOINT} not found: training a small {fallback_preset!r} model in {root} "
          f"({fallback_clips} clips, {fallback_steps} steps)")
    write_dataset(root / "data", fallback_clips, seconds=seconds, sample_rate=mel.sample_rate, progress=progress)
    encoder = TextEncoder(device="cpu")
    prepare(open_source(root / "data"), root / "cache", mel, encoder, seconds=seconds, progress=progress)
    run = root / "run"
    train(fallback_preset, root / "cache", run, resume=True, max_steps=fallback_steps, max_minutes=None,
          progress=progress, warmup_steps=min(100, max(1, fallback_steps // 10)), checkpoint_every=0)
    return MusicDiffusionPipeline.from_checkpoint(run, device=device, encoder=encoder)
