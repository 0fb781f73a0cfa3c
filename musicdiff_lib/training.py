"""Training: the ``Trainer`` (Hugging Face Accelerate), EMA, checkpoints, exact resume, logs, previews.

Chapter: ``07_training``. One optimiser step is

    for each of ``grad_accum`` micro-batches:  loss = diffusion_loss(model, mel, text, …) / grad_accum
                                                backward
    clip the gradient norm → AdamW step → learning rate (warm-up, then cosine) → EMA update

and everything random in it comes from a seed and the step number: the order
of the clips is a permutation seeded by (seed, epoch), the (t, ε, dropped
captions) of a micro-batch come from a ``torch.Generator`` seeded by (seed,
its slot in the global order), and dropout's global generator is saved with
each checkpoint. So a run resumed from a checkpoint follows the run that was
never interrupted bit for bit (on the CPU), even after ``kill -9``; and N
processes see the clips and noise that one process with ``grad_accum × N``
sees (equal up to the order of floating-point sums).

A checkpoint is a directory (the contract shared with ``pipeline``)::

    RUN/checkpoint-000500/
        model.safetensors   "ema.<param>" and "model.<param>" tensors
        config.json         format, version, step, unet, mel (frames set), text_encoder,
                            schedule, prediction_type, preset (+ train: the TrainConfig)
        trainer_state.pt    optimiser, LR schedule, EMA, RNG states, step
                            (plain tensors/dicts: torch.load(..., weights_only=True))
    RUN/latest              text file naming the newest checkpoint directory
    RUN/metrics.jsonl       {"step", "loss", "lr", "samples_per_s", "elapsed"} per log line
    RUN/previews/step-000500/NN.png, NN.wav

It is written under ``RUN/.tmp-checkpoint-N``, synced to disk, then renamed;
``latest`` is replaced after that, so a crash at any moment leaves the last
good checkpoint loadable. Threads: the trainer leaves ``torch.set_num_threads``
to the caller (on a shared 2-core machine, 1 or 2 threads is usually fastest).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import re
import shutil
import time
from dataclasses import dataclass, replace
from dataclasses import fields as dataclasses_fields
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .config import JsonConfig, fsync_dir, write_text_atomic
from .diffusion import check_prediction_type, diffusion_loss
from .mel import MelConfig
from .schedules import SCHEDULES, NoiseSchedule
from .unet import UNet, UNetConfig

CHECKPOINT_FORMAT = "musicdiff-checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TMP_PREFIX = ".tmp-checkpoint-"
MIXED_PRECISION = ("no", "bf16", "fp16", "auto")
DEFAULT_PREVIEW_PROMPTS = (
    "a fast rock song with loud drums and electric guitar",
    "a slow calm piano piece without drums",
    "a cheerful flute melody over strings",
    "deep bass synthesizer with a steady electronic beat",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the last good checkpoint."""


# ----------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """Everything that defines a training run except the network and the data. Chapter: ``07_training``.

    ``batch_size`` is per process and per micro-batch: one optimiser step sees
    ``batch_size × grad_accum × processes`` clips. The learning rate warms up
    linearly over ``warmup_steps`` and then follows a half cosine to 0 at
    ``max_steps``. ``max_minutes`` bounds the wall time of one ``fit()`` call
    (None: no bound); the run then saves a checkpoint and stops. EMA decay at
    optimiser step n is ``min(ema_decay, (1 + n)/(10 + n))`` with
    ``ema_warmup``, else ``ema_decay``. ``frames``: the crop width the
    :func:`train` entry point asks the dataset for (None: the cache's clips,
    cut down to a multiple the U-Net accepts). ``preview_every = 0`` and
    ``checkpoint_every = 0`` turn those off (a checkpoint is still written at
    the end); ``keep_last = 0`` keeps every checkpoint.
    """

    preset: str | None = None
    batch_size: int = 16
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    max_steps: int = 10_000
    max_minutes: float | None = None
    grad_accum: int = 1
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cond_drop_prob: float = 0.1
    prediction_type: str = "v"
    min_snr_gamma: float | None = 5.0
    schedule: str = "cosine"
    schedule_T: int = 1000
    zero_terminal_snr: bool = False
    mixed_precision: str = "auto"
    seed: int = 0
    frames: int | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    keep_last: int = 3
    preview_every: int = 0
    preview_prompts: tuple[str, ...] = DEFAULT_PREVIEW_PROMPTS
    preview_steps: int = 25
    preview_guidance: float = 3.0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.preview_prompts, (list, tuple)):
            object.__setattr__(self, "preview_prompts", tuple(str(p) for p in self.preview_prompts))
        else:
            raise ValueError(f"TrainConfig.preview_prompts: expected a list of captions, got {self.preview_prompts!r}")

        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"TrainConfig.{name}={getattr(self, name)!r}: expected {expected}")

        def is_int(v: Any) -> bool:
            return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

        for name in ("batch_size", "max_steps", "grad_accum", "schedule_T", "log_every", "preview_steps"):
            if not is_int(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "a positive integer")
        for name in ("warmup_steps", "checkpoint_every", "keep_last", "preview_every", "num_workers", "seed"):
            if not is_int(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "an integer >= 0")
        if not self.lr > 0:
            raise bad("lr", "a positive number")
        if not self.weight_decay >= 0:
            raise bad("weight_decay", "a number >= 0")
        if self.max_minutes is not None and not self.max_minutes > 0:
            raise bad("max_minutes", "a positive number of minutes or None")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad("grad_clip", "a positive gradient norm or None")
        if not 0.0 <= self.ema_decay < 1.0:
            raise bad("ema_decay", "a number in [0, 1)")
        if not 0.0 <= self.cond_drop_prob <= 1.0:
            raise bad("cond_drop_prob", "a probability in [0, 1]")
        if self.min_snr_gamma is not None and not self.min_snr_gamma > 0:
            raise bad("min_snr_gamma", "a positive number or None")
        try:
            check_prediction_type(self.prediction_type)
        except ValueError:
            raise bad("prediction_type", "'epsilon', 'v' or 'x0'") from None
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {', '.join(SCHEDULES)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise bad("mixed_precision", f"one of {', '.join(MIXED_PRECISION)}")
        if self.frames is not None and (not is_int(self.frames) or self.frames <= 0):
            raise bad("frames", "a positive integer or None")
        if self.preview_every and not self.preview_prompts:
            raise bad("preview_prompts", "at least one caption when preview_every > 0")

    def noise_schedule(self) -> NoiseSchedule:
        return NoiseSchedule.create(self.schedule, self.schedule_T, self.zero_terminal_snr)

    @classmethod
    def preset_config(cls, name: str) -> "TrainConfig":
        """The training settings of a named preset (:data:`TRAIN_PRESETS`)."""
        try:
            return TRAIN_PRESETS[name][0]
        except KeyError:
            raise ValueError(f"unknown training preset {name!r}; expected one of "
                             f"{', '.join(sorted(TRAIN_PRESETS))}") from None


# name → (TrainConfig, U-Net preset). The mel settings of each are MelConfig.preset(name).
TRAIN_PRESETS: dict[str, tuple[TrainConfig, str]] = {
    "ci": (TrainConfig(preset="ci", batch_size=4, lr=1e-3, warmup_steps=2, max_steps=20, ema_decay=0.99,
                       mixed_precision="no", frames=32, log_every=1, checkpoint_every=10, keep_last=2,
                       preview_prompts=DEFAULT_PREVIEW_PROMPTS[:2], preview_steps=5), "ci"),
    # Measured on the 2-core machine (benchmarks/bench_train.py): the real Trainer on 1×64×128 mels runs
    # at about 31 samples/s with 2 threads (20 with 1), so 3,200 steps of 16 take about 28 minutes and
    # the cosine decay ends inside the 30-minute budget; max_minutes is the guard.
    "cpu": (TrainConfig(preset="cpu", batch_size=16, lr=1e-3, warmup_steps=100, max_steps=3200,
                        max_minutes=30.0, ema_decay=0.995, mixed_precision="no", frames=128, log_every=10,
                        checkpoint_every=200, keep_last=2, preview_every=0), "cpu"),
    "seed128": (TrainConfig(preset="seed128", batch_size=16, lr=2e-4, warmup_steps=500, max_steps=50_000,
                            frames=200, checkpoint_every=1000, preview_every=2000), "seed128"),
    "seed64": (TrainConfig(preset="seed64", batch_size=16, lr=2e-4, warmup_steps=500, max_steps=50_000,
                           frames=200, checkpoint_every=1000, preview_every=2000), "seed64"),
    "seed3s": (TrainConfig(preset="seed3s", batch_size=32, lr=2e-4, warmup_steps=500, max_steps=50_000,
                           frames=72, checkpoint_every=1000, preview_every=2000), "seed3s"),
    "gpu": (TrainConfig(preset="gpu", batch_size=32, lr=2e-4, warmup_steps=1000, max_steps=100_000,
                        frames=200, checkpoint_every=2000, preview_every=5000, num_workers=2), "seed128"),
}


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the base learning rate for optimiser step ``step`` (0-based).

    Linear warm-up ``(step + 1)/warmup_steps`` for the first ``warmup_steps``
    steps, then ``½(1 + cos(π · p))`` with p = (step − warmup)/(max_steps −
    warmup) going from 0 to 1. Chapter: ``07_training``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def ema_decay_at(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay after optimiser step ``step`` (1-based): ``min(decay, (1 + step)/(10 + step))`` with warm-up.

    The warm-up lets the average forget the random initial weights quickly
    (0.18 after step 1, 0.5 after step 8). Chapter: ``07_training``.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, stream, step, …): independent streams, same numbers every time."""
    state = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint32)
    return (int(state[0]) << 31 | int(state[1])) & ((1 << 63) - 1)


# stream tags for derive_seed
_DATA, _LOSS, _GLOBAL = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# EMA


class EMA:
    """An exponential moving average of a model's parameters, itself a model (for previews and saving).

    ``update(model, step)``: ema ← d·ema + (1 − d)·θ with d = :func:`ema_decay_at`;
    buffers are copied. Chapter: ``07_training``.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = True):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        d = ema_decay_at(step, self.decay, self.warmup)
        ema_params = list(self.model.parameters())
        params = [p.detach().to(e.dtype) for p, e in zip(model.parameters(), ema_params)]
        torch._foreach_lerp_(ema_params, params, 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)
        self.updates += 1
        return d

    def state_dict(self) -> dict[str, Any]:
        """The bookkeeping (the weights themselves are the ``ema.*`` tensors of model.safetensors)."""
        return {"decay": self.decay, "warmup": self.warmup, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.warmup, self.updates = float(state["decay"]), bool(state["warmup"]), int(state["updates"])


# ----------------------------------------------------------------------------------------------
# Checkpoints


def checkpoint_config(unet: UNetConfig, mel: MelConfig, text_encoder: str, text_dim: int,
                      schedule: dict[str, Any] | None = None, prediction_type: str = "v",
                      preset: str | None = None, **extra: Any) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint, minus ``step`` (filled in by :func:`save_checkpoint`)."""
    return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "unet": unet.to_dict(), "mel": mel.to_dict(),
            "text_encoder": {"name": str(text_encoder), "dim": int(text_dim)},
            "schedule": schedule or {"name": "cosine", "T": 1000, "zero_terminal_snr": False},
            "prediction_type": check_prediction_type(prediction_type), "preset": preset, **extra}


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _state_tensors(module_or_state: nn.Module | dict[str, torch.Tensor], prefix: str,
                   dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().to("cpu")
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[prefix + name] = tensor.contiguous()
    return out


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run (config.json and model.safetensors present), oldest first."""
    run_dir = Path(run_dir)
    found = []
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            m = CHECKPOINT_RE.match(child.name)
            if m and (child / "config.json").is_file() and (child / "model.safetensors").is_file():
                found.append((int(m.group(1)), child))
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | Path, step: int, model: nn.Module | dict[str, torch.Tensor],
                    config: dict[str, Any], ema: nn.Module | dict[str, torch.Tensor] | None = None,
                    trainer_state: dict[str, Any] | None = None, keep_last: int = 3,
                    weights_dtype: torch.dtype | None = None, include_raw: bool = True) -> Path:
    """Write ``run_dir/checkpoint-{step:06d}`` atomically, point ``run_dir/latest`` at it, keep the last K.

    ``model``/``ema``: modules or state dicts (``ema=None`` stores the model's
    weights as the EMA too). ``config``: from :func:`checkpoint_config`; its
    ``step`` is set here. ``trainer_state``: what :meth:`Trainer.state_dict`
    returns (omitted: a weights-only checkpoint, which can generate but not
    resume). ``weights_dtype=torch.float16`` halves the file (for committing);
    ``include_raw=False`` stores only the EMA weights. ``keep_last = 0`` keeps
    every checkpoint. Returns the checkpoint directory. Chapter: ``07_training``.
    """
    from safetensors.torch import save_file

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{int(step):06d}"
    final = run_dir / name
    tmp = run_dir / f"{TMP_PREFIX}{int(step)}"
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash mid-write
    tmp.mkdir()
    tensors = _state_tensors(ema if ema is not None else model, "ema.", weights_dtype)
    if include_raw:
        tensors.update(_state_tensors(model, "model.", weights_dtype))
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": CHECKPOINT_FORMAT, "step": str(step)})
    config = {**config, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "step": int(step)}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    if trainer_state is not None:
        torch.save(trainer_state, tmp / "trainer_state.pt")
    for child in tmp.iterdir():
        _fsync_file(child)
    fsync_dir(tmp)
    if final.exists():  # the same step saved again (e.g. a resumed run): swap, then drop the old copy
        old = run_dir / f"{TMP_PREFIX}{int(step)}-old"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    fsync_dir(run_dir)
    write_text_atomic(run_dir / "latest", name + "\n")
    if keep_last:
        for old in list_checkpoints(run_dir)[:-keep_last]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def export_checkpoint(source: str | Path, dest: str | Path, weights_dtype: torch.dtype = torch.float16) -> Path:
    """A release copy of a checkpoint: the EMA weights only, in ``weights_dtype``, no trainer state.

    ``source``: a run or checkpoint folder; ``dest``: a run folder that gets
    ``checkpoint-NNNNNN`` and ``latest``, loadable by the pipeline and the CLI
    (not resumable). The metrics log of the source run is copied beside it.
    For the book's model, fp16 EMA weights of the ``cpu`` U-Net are 13.5 MB.
    """
    from safetensors.torch import load_file

    checkpoint = resolve_checkpoint(source)
    config = load_checkpoint_config(checkpoint)
    tensors = load_file(str(checkpoint / "model.safetensors"))
    ema = {k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")}
    if not ema:
        raise ValueError(f"{checkpoint / 'model.safetensors'}: no 'ema.*' weights to export")
    config = {k: v for k, v in config.items() if k != "step"}
    out = save_checkpoint(dest, config_step(checkpoint), ema, config, trainer_state=None, keep_last=1,
                          weights_dtype=weights_dtype, include_raw=False)
    metrics = checkpoint.parent / "metrics.jsonl"
    if metrics.exists():
        shutil.copyfile(metrics, Path(dest) / "metrics.jsonl")
    return out


def config_step(checkpoint: str | Path) -> int:
    """The training step stored in a checkpoint's config."""
    return int(load_checkpoint_config(checkpoint)["step"])


def clean_partial_checkpoints(run_dir: str | Path) -> list[Path]:
    """Remove ``.tmp-checkpoint-*`` directories a crash left behind; returns what was removed."""
    removed = []
    run_dir = Path(run_dir)
    if run_dir.is_dir():
        for child in run_dir.iterdir():
            if child.name.startswith(TMP_PREFIX) and child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory ``path`` names: itself if it holds config.json, else the newest in a run dir.

    A run dir's ``latest`` file is followed when it names a complete
    checkpoint; otherwise the highest-numbered complete one is used.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        return path
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint or run directory")
    latest = path / "latest"
    if latest.is_file():
        candidate = path / latest.read_text(encoding="utf-8").strip()
        if (candidate / "config.json").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    found = list_checkpoints(path)
    if not found:
        raise ValueError(f"{path}: no checkpoint here (expected a run directory with checkpoint-NNNNNN/ "
                         "folders, or a checkpoint folder with config.json)")
    return found[-1]


def load_checkpoint_config(path: str | Path) -> dict[str, Any]:
    """The ``config.json`` of a checkpoint (``path``: a checkpoint directory, or a run directory → newest).

    Raises ``ValueError`` naming the file when it is not a musicdiff checkpoint
    of a version this code reads. Chapter: ``07_training``.
    """
    directory = resolve_checkpoint(path)
    file = directory / "config.json"
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{file}: not valid JSON ({err.msg})") from None
    found = config.get("format") if isinstance(config, dict) else None
    if found != CHECKPOINT_FORMAT:
        raise ValueError(f"{file}: not a musicdiff checkpoint (format {found!r}, expected {CHECKPOINT_FORMAT!r})")
    if config.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{file}: checkpoint version {config.get('version')!r}; this code reads version "
                         f"{CHECKPOINT_VERSION}")
    for key in ("step", "unet", "mel", "text_encoder", "schedule", "prediction_type"):
        if key not in config:
            raise ValueError(f"{file}: missing field {key!r}")
    return config


def check_checkpoint_config(config: dict[str, Any], where: str | Path = "checkpoint", *,
                            mel: MelConfig | None = None, text_encoder: str | None = None,
                            text_dim: int | None = None, unet: UNetConfig | None = None,
                            prediction_type: str | None = None, schedule: dict[str, Any] | None = None,
                            ignore_frames: bool = False) -> None:
    """``ValueError`` naming the first field (``mel.n_mels``, ``text_encoder.name``, ``unet.up_channels`` …)
    where a checkpoint's config differs from what the caller asks for."""
    def differ(name: str, have: Any, want: Any) -> ValueError:
        return ValueError(f"{where} was trained with {name}={have!r} but {want!r} was asked for")

    def compare(prefix: str, stored: dict[str, Any], wanted: dict[str, Any], skip: tuple[str, ...] = ()) -> None:
        for key, want in wanted.items():
            have = stored.get(key)
            if key in skip:
                continue
            if isinstance(want, tuple):
                want = list(want)
            if isinstance(have, tuple):
                have = list(have)
            if have != want:
                raise differ(f"{prefix}.{key}", have, want)

    if mel is not None:
        compare("mel", config["mel"], mel.to_dict(), ("frames",) if ignore_frames else ())
    if text_encoder is not None and config["text_encoder"]["name"] != text_encoder:
        raise differ("text_encoder.name", config["text_encoder"]["name"], text_encoder)
    if text_dim is not None and int(config["text_encoder"]["dim"]) != int(text_dim):
        raise differ("text_encoder.dim", config["text_encoder"]["dim"], text_dim)
    if unet is not None:
        compare("unet", config["unet"], unet.to_dict())
    if prediction_type is not None and config["prediction_type"] != prediction_type:
        raise differ("prediction_type", config["prediction_type"], prediction_type)
    if schedule is not None:
        compare("schedule", config["schedule"], schedule)


def load_model(path: str | Path, use_ema: bool = True, device=None, *, mel: MelConfig | None = None,
               text_encoder: str | None = None, text_dim: int | None = None, unet: UNetConfig | None = None,
               prediction_type: str | None = None) -> tuple[UNet, dict[str, Any]]:
    """``(UNet in eval mode, config dict)`` from a checkpoint or run directory (newest checkpoint).

    ``use_ema``: the averaged weights (what to sample with) or the raw ones.
    The keyword arguments are what the caller expects; a checkpoint made
    otherwise is a ``ValueError`` naming the field (see
    :func:`check_checkpoint_config`), and so are tensors whose shapes do not
    fit the stored ``unet`` config. Weights stored in float16 are loaded into
    a float32 network. Chapter: ``07_training``.
    """
    from safetensors.torch import load_file

    directory = resolve_checkpoint(path)
    config = load_checkpoint_config(directory)
    check_checkpoint_config(config, directory, mel=mel, text_encoder=text_encoder, text_dim=text_dim,
                            unet=unet, prediction_type=prediction_type)
    try:
        unet_config = UNetConfig.from_dict(config["unet"])
    except (TypeError, ValueError) as err:
        raise ValueError(f"{directory / 'config.json'}: field 'unet': {err}") from None
    prefix = "ema." if use_ema else "model."
    tensors = load_file(str(directory / "model.safetensors"))
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    if not state:
        kinds = sorted({k.split(".", 1)[0] for k in tensors})
        raise ValueError(f"{directory / 'model.safetensors'}: no {prefix}* tensors (has {kinds}); "
                         f"use_ema={not use_ema} loads the other kind")
    model = UNet(unet_config, seed=0)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{directory / 'model.safetensors'}: does not match config.json's 'unet' "
                         f"(missing {missing[:3]}{'…' if len(missing) > 3 else ''}, "
                         f"unexpected {unexpected[:3]}{'…' if len(unexpected) > 3 else ''})")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise ValueError(f"{directory / 'model.safetensors'}: tensor {prefix}{name} has shape "
                             f"{tuple(tensor.shape)} but config.json's 'unet' builds {tuple(expected[name].shape)}")
    model.load_state_dict(state)
    if device is not None:
        model.to(device)
    return model.eval(), config


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    """``trainer_state.pt`` of a checkpoint, loaded with ``torch.load(weights_only=True)`` onto the CPU."""
    directory = resolve_checkpoint(path)
    file = directory / "trainer_state.pt"
    if not file.is_file():
        raise ValueError(f"{directory}: no trainer_state.pt (a weights-only checkpoint cannot resume training)")
    return torch.load(file, map_location="cpu", weights_only=True)


# ----------------------------------------------------------------------------------------------
# RNG state as plain tensors (weights_only-loadable)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "python": [int(x) for x in random.getstate()[1]],
             "python_gauss": random.getstate()[2],
             "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
             "numpy_pos": int(np_state[2]), "numpy_has_gauss": int(np_state[3]), "numpy_gauss": float(np_state[4])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# The trainer


def make_accelerator(mixed_precision: str = "auto"):
    """An ``accelerate.Accelerator`` with ``mixed_precision`` ("auto": bf16 on GPUs that have it, else fp16
    with loss scaling on a GPU, fp32 on the CPU).

    Accelerate keeps one process-wide state; in a single process (a notebook
    trying two settings) it is reset rather than refusing the new setting.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    from .config import default_device

    precision = _resolve_precision(mixed_precision)
    # Without a GPU, Accelerate only treats a torchrun/`accelerate launch` job as distributed (gloo)
    # when told it runs on the CPU; otherwise every process would train alone as rank 0.
    cpu = default_device().type == "cpu"
    try:
        return Accelerator(mixed_precision=precision, cpu=cpu)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise
        AcceleratorState._reset_state()
        return Accelerator(mixed_precision=precision, cpu=cpu)


def _resolve_precision(name: str) -> str:
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class Trainer:
    """Train a :class:`~musicdiff_lib.unet.UNet` on a :class:`~musicdiff_lib.data.MelDataset`.

    ``Trainer(train_config, unet_config, dataset, out_dir, accelerator=None)``;
    :meth:`fit` runs until ``max_steps`` or ``max_minutes``. ``unet_config``'s
    ``text_dim`` is set to the dataset's caption-embedding width (the encoder
    decides it). The same code runs on one CPU, one GPU and under
    ``accelerate launch`` / ``torchrun`` (every process reads its own slice of
    each global batch). Chapter: ``07_training``.
    """

    def __init__(self, train_config: TrainConfig, unet_config: UNetConfig, dataset, out_dir: str | Path,
                 accelerator=None, text_encoder=None):
        self.config = train_config
        self.dataset = dataset
        self.out_dir = Path(out_dir)
        if unet_config.text_dim != dataset.text_dim:
            unet_config = replace(unet_config, text_dim=dataset.text_dim)
        self.unet_config = unet_config
        self.mel_config: MelConfig = dataset.mel_config
        unet_config.check_input_size(self.mel_config.n_mels, dataset.frames)
        if accelerator is None:
            accelerator = make_accelerator(train_config.mixed_precision)
        self.accelerator = accelerator
        self.device = accelerator.device
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.global_batch = train_config.batch_size * self.world
        self.batches_per_epoch = len(dataset) // self.global_batch
        if self.batches_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} clips, fewer than one global batch of "
                             f"{self.global_batch} (batch_size {train_config.batch_size} × {self.world} processes)")
        self.schedule = train_config.noise_schedule()
        self.text_encoder = text_encoder  # for previews; loaded on first use when None

        model = UNet(unet_config, seed=derive_seed(train_config.seed, _GLOBAL, 0) % (2**31))
        self.ema = EMA(model, train_config.ema_decay, train_config.ema_warmup)
        self.ema.model.to(self.device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr,
                                      weight_decay=train_config.weight_decay)
        # The LR scheduler stays outside accelerator.prepare: a prepared one steps once per process.
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer.optimizer if hasattr(self.optimizer, "optimizer") else self.optimizer,
            lambda s: lr_factor(s, train_config.warmup_steps, train_config.max_steps))
        self.step = 0
        self.elapsed = 0.0  # seconds of training over all runs
        self._window = [0.0, 0]  # loss sum and steps since the last log line (saved: resume logs the same)
        self.last_checkpoint: Path | None = None
        self._preview_text = None
        self.last_lr = float("nan")

    # -- properties -------------------------------------------------------------------------
    @property
    def raw_model(self) -> UNet:
        return self.accelerator.unwrap_model(self.model)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def checkpoint_config(self) -> dict[str, Any]:
        c = self.config
        return checkpoint_config(self.unet_config, self.mel_config, self.dataset.encoder_name, self.dataset.text_dim,
                                 {"name": c.schedule, "T": c.schedule_T, "zero_terminal_snr": c.zero_terminal_snr},
                                 c.prediction_type, c.preset, train=c.to_dict())

    # -- data order -------------------------------------------------------------------------
    def batch_indices(self, micro: int) -> list[int]:
        """Dataset indices of this process's micro-batch number ``micro`` (0-based over the whole run).

        Epoch e = micro // batches_per_epoch visits the clips in the order of a
        permutation seeded by (seed, e); the last incomplete global batch of an
        epoch is dropped. So the data order is a function of the step alone.
        """
        epoch, j = divmod(micro, self.batches_per_epoch)
        return self._slice(self.epoch_order(epoch), j)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The permutation of the dataset that epoch ``epoch`` follows (the same on every process)."""
        generator = torch.Generator().manual_seed(derive_seed(self.config.seed, _DATA, epoch))
        return torch.randperm(len(self.dataset), generator=generator)

    def _slice(self, order: torch.Tensor, j: int) -> list[int]:
        start = j * self.global_batch + self.rank * self.config.batch_size
        return order[start : start + self.config.batch_size].tolist()

    def _batches(self, first_micro: int) -> Iterator[dict[str, Any]]:
        from .data import collate

        micro = first_micro
        while True:
            epoch, j = divmod(micro, self.batches_per_epoch)
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
            order = self.epoch_order(epoch)
            sampler = [self._slice(order, i) for i in range(j, self.batches_per_epoch)]
            if self.config.num_workers:
                # Its own generator: a loader draws its workers' base seed, which must not shift the
                # global stream that dropout uses (a resumed run creates one loader more than a straight one).
                generator = torch.Generator().manual_seed(derive_seed(self.config.seed, _DATA, epoch, micro))
                loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=sampler, collate_fn=collate,
                                                     num_workers=self.config.num_workers, generator=generator)
                yield from loader
            else:
                for indices in sampler:
                    yield collate([self.dataset[i] for i in indices])
            micro = (epoch + 1) * self.batches_per_epoch

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """trainer_state.pt: plain tensors and containers only (``torch.load(weights_only=True)``)."""
        from accelerate.utils import gather_object

        rng = gather_object([_rng_state()]) if self.world > 1 else [_rng_state()]
        state = {"step": self.step, "elapsed": self.elapsed, "log_window": list(self._window),
                 "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "ema": self.ema.state_dict(), "rng": rng, "world_size": self.world,
                 "mixed_precision": self.accelerator.mixed_precision}
        if self.accelerator.scaler is not None:
            state["scaler"] = self.accelerator.scaler.state_dict()
        return state

    def save(self) -> Path:
        """Write a checkpoint of the current step (collective: every process must call it)."""
        state = self.state_dict()
        self.accelerator.wait_for_everyone()
        path = self.out_dir / f"checkpoint-{self.step:06d}"
        if self.is_main:
            path = save_checkpoint(self.out_dir, self.step, self.raw_model, self.checkpoint_config(),
                                   ema=self.ema.model, trainer_state=state, keep_last=self.config.keep_last)
        self.accelerator.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def load(self, path: str | Path) -> None:
        """Restore model, EMA, optimiser, LR schedule, RNG states and step from a checkpoint or run dir.

        The model, mel, encoder, prediction type and schedule must match, and so
        must seed, batch_size and grad_accum (``ValueError`` naming the field).
        lr, warm-up and max_steps may change: the schedule then continues on
        the new curve. With another number of processes the data order differs.
        """
        from safetensors.torch import load_file

        directory = resolve_checkpoint(path)
        config = load_checkpoint_config(directory)
        check_checkpoint_config(config, directory, mel=self.mel_config, text_encoder=self.dataset.encoder_name,
                                text_dim=self.dataset.text_dim, unet=self.unet_config,
                                prediction_type=self.config.prediction_type,
                                schedule={"name": self.config.schedule, "T": self.config.schedule_T,
                                          "zero_terminal_snr": self.config.zero_terminal_snr})
        stored = config.get("train") or {}
        for key in ("seed", "batch_size", "grad_accum"):  # what fixes the data order and noise draws
            if key in stored and stored[key] != getattr(self.config, key):
                raise ValueError(f"{directory} was trained with train.{key}={stored[key]!r} but "
                                 f"{getattr(self.config, key)!r} was asked for; resuming would not continue that run")
        state = load_trainer_state(directory)
        tensors = load_file(str(directory / "model.safetensors"))
        self.raw_model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema.model.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        rng = state["rng"]
        _set_rng_state(rng[self.rank] if len(rng) == self.world else rng[0])
        self.step = int(state["step"])
        # The rate of the next step from the closed form (the same expression LambdaLR evaluates), so a
        # resume with another max_steps or warm-up follows the new schedule from its first step.
        self.scheduler.base_lrs = [self.config.lr for _ in self.optimizer.param_groups]
        for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            group["initial_lr"] = base
            group["lr"] = base * lr_factor(self.step, self.config.warmup_steps, self.config.max_steps)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.elapsed = float(state["elapsed"])
        self._window = [float(state["log_window"][0]), int(state["log_window"][1])]
        self.last_checkpoint = directory

    # -- logging ----------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _truncate_metrics(self) -> None:
        """Keep the log lines up to the current step: a killed run may have logged past its checkpoint."""
        path = self.metrics_path
        if not self.is_main or not path.exists():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if isinstance(row, dict) and row.get("step", 0) <= self.step:
                kept.append(line)
        write_text_atomic(path, "".join(k + "\n" for k in kept))

    def _log(self, row: dict[str, Any]) -> None:
        if self.is_main:
            with open(self.metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    # -- one step ---------------------------------------------------------------------------
    def train_step(self, batches: Iterator[dict[str, Any]]) -> float:
        """One optimiser step over ``grad_accum`` micro-batches; returns the mean loss over all processes."""
        c, acc = self.config, self.accelerator
        self.model.train()
        total = torch.zeros((), device=self.device)
        for k in range(c.grad_accum):
            batch = next(batches)
            mel = batch["mel"].to(self.device)
            text = batch["text"].to(self.device)
            # Seeded by the micro-batch's slot in the global order (the slot also picks its clips), so
            # N processes draw what one process with N× the accumulation draws: same data, same noise.
            slot = (self.step * c.grad_accum + k) * self.world + self.rank
            generator = torch.Generator().manual_seed(derive_seed(c.seed, _LOSS, slot))
            sync = k == c.grad_accum - 1
            context = acc.no_sync(self.model) if not sync and self.world > 1 else contextlib.nullcontext()
            with context:
                with acc.autocast():  # bf16/fp16 forward; diffusion_loss computes the loss itself in fp32
                    loss = diffusion_loss(self.model, mel, text, self.schedule, c.prediction_type,
                                          c.min_snr_gamma, c.cond_drop_prob, generator)
                acc.backward(loss / c.grad_accum)  # scales the loss under fp16
            total += loss.detach().float() / c.grad_accum
        mean = acc.reduce(total, reduction="mean") if self.world > 1 else total
        value = float(mean)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            return value
        self.last_lr = float(self.optimizer.param_groups[0]["lr"])  # the rate this step uses (logged)
        if c.grad_clip is not None:
            acc.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        self.optimizer.step()
        self.scheduler.step()  # also after an fp16 overflow skipped the update: the schedule follows the step count
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.ema.update(self.raw_model, self.step)
        return value

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, resume: bool = False, max_steps: int | None = None, max_minutes: float | None = None,
            progress: bool = True) -> dict[str, Any]:
        """Train until ``max_steps`` (default: the config's) or ``max_minutes`` of this call.

        ``resume=True`` continues from the newest checkpoint in ``out_dir`` (a
        fresh start when there is none); without it, an ``out_dir`` that
        already holds checkpoints is a ``ValueError``. Checkpoints every
        ``checkpoint_every`` steps and at the end. A NaN/infinite loss raises
        :class:`TrainingDiverged` without writing a checkpoint. Returns
        ``{"step", "loss", "elapsed", "checkpoint", "stopped"}``.
        """
        from tqdm.auto import tqdm

        c = self.config
        max_steps = c.max_steps if max_steps is None else int(max_steps)
        max_minutes = c.max_minutes if max_minutes is None else max_minutes
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            clean_partial_checkpoints(self.out_dir)
        self.accelerator.wait_for_everyone()
        existing = list_checkpoints(self.out_dir)
        saved_at = -1
        if resume and existing:
            self.load(self.out_dir)
            saved_at = self.step
        elif existing and self.step == 0:
            raise ValueError(f"{self.out_dir} already holds checkpoints ({existing[-1].name}); pass resume=True "
                             "to continue that run, or choose another output directory")
        elif self.step == 0:
            # Dropout and anything else drawing from the global generators: seeded per process.
            torch.manual_seed(derive_seed(c.seed, _GLOBAL, 1, self.rank) % (2**63))
        self._truncate_metrics()

        start_time = time.perf_counter()
        elapsed_before = self.elapsed
        batches = self._batches(self.step * c.grad_accum)
        samples_per_step = self.global_batch * c.grad_accum
        bar = tqdm(total=max_steps, initial=self.step, desc=f"train {self.out_dir.name}", unit="step",
                   **({} if progress and self.is_main else {"disable": True}))  # {}: TQDM_DISABLE still works
        last_log_time, last_log_step = start_time, self.step
        loss = float("nan")
        stopped = "max_steps"
        try:
            while self.step < max_steps:
                loss = self.train_step(batches)
                if not math.isfinite(loss):
                    good = self.last_checkpoint or (list_checkpoints(self.out_dir) or [None])[-1]
                    raise TrainingDiverged(
                        f"training diverged: the loss is {loss} at step {self.step + 1} "
                        f"(learning rate {self.optimizer.param_groups[0]['lr']:.3g}); nothing was saved for this step. "
                        f"Last good checkpoint: {good if good else 'none'}. Try a lower lr, a grad_clip, "
                        f"or mixed_precision='no'.")
                now = time.perf_counter()
                self.elapsed = elapsed_before + (now - start_time)
                self._window[0] += loss
                self._window[1] += 1
                bar.update(1)
                # Only at fixed steps (not where a call stops early), so a resumed run logs the same lines.
                if self.step % c.log_every == 0 or self.step == c.max_steps:
                    rate = (self.step - last_log_step) * samples_per_step / max(now - last_log_time, 1e-9)
                    row = {"step": self.step, "loss": self._window[0] / self._window[1], "lr": self.last_lr,
                           "samples_per_s": rate, "elapsed": self.elapsed}
                    self._log(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", samples_s=f"{rate:.1f}")
                    self._window = [0.0, 0]
                    last_log_time, last_log_step = now, self.step
                pause = time.perf_counter()
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save()
                    saved_at = self.step
                if c.preview_every and self.step % c.preview_every == 0:
                    self.preview()
                last_log_time += time.perf_counter() - pause  # samples/s counts training only
                if max_minutes is not None:
                    over = torch.tensor(float(now - start_time > 60.0 * max_minutes), device=self.device)
                    if self.world > 1:
                        over = self.accelerator.reduce(over, reduction="sum")
                    if float(over) > 0:
                        stopped = "max_minutes"
                        break
        finally:
            bar.close()
        if saved_at != self.step:
            self.save()
        return {"step": self.step, "loss": loss, "elapsed": self.elapsed, "checkpoint": self.last_checkpoint,
                "stopped": stopped}

    # -- previews ---------------------------------------------------------------------------
    @torch.no_grad()
    def preview(self, steps: int | None = None) -> Path | None:
        """Sample the fixed prompts with the EMA model: ``RUN/previews/step-N/NN.png`` and ``NN.wav``.

        Uses its own seeded generators, so it does not change the training run.
        Only the main process writes; returns the folder (None elsewhere).
        """
        if not self.is_main:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from .audio import save_wav
        from .mel import MelCodec
        from .sampling import sample
        from .viz import plot_mel

        c = self.config
        if self._preview_text is None:
            if self.text_encoder is None:
                from .text import TextEncoder

                self.text_encoder = TextEncoder(self.dataset.encoder_name, device="cpu")
            self._preview_text = self.text_encoder(list(c.preview_prompts)).to("cpu")
        out = self.out_dir / "previews" / f"step-{self.step:06d}"
        out.mkdir(parents=True, exist_ok=True)
        model = self.ema.model
        shape = (len(c.preview_prompts), 1, self.mel_config.n_mels, self.dataset.frames)
        mels = sample(model, shape, self.schedule, self._preview_text.to(self.device), sampler="ddim",
                      steps=steps or c.preview_steps, guidance_scale=c.preview_guidance,
                      prediction_type=c.prediction_type, seeds=c.seed, device=self.device, progress=False,
                      clip_x0=1.0).float().cpu()
        codec = MelCodec(replace(self.mel_config, frames=None))
        waves = codec.to_wave(mels, generator=torch.Generator().manual_seed(c.seed))
        for i, (prompt, mel, wave) in enumerate(zip(c.preview_prompts, mels, waves)):
            fig, ax = plt.subplots(figsize=(6, 2.5))
            plot_mel(mel, self.mel_config, ax=ax, title=f"step {self.step}: {prompt}"[:90])
            fig.tight_layout()
            fig.savefig(out / f"{i:02d}.png", dpi=80)
            plt.close(fig)
            peak = float(wave.abs().max())
            save_wav(out / f"{i:02d}.wav", (wave / peak * 0.9 if peak > 0 else wave).numpy(),
                     self.mel_config.sample_rate)
        (out / "prompts.json").write_text(json.dumps(list(c.preview_prompts), indent=1) + "\n", encoding="utf-8")
        return out


def lr_at_step(config: TrainConfig, step: int) -> float:
    """The learning rate optimiser step ``step`` (1-based, as logged) used: ``lr · lr_factor(step − 1)``."""
    return config.lr * lr_factor(step - 1, config.warmup_steps, config.max_steps)


# ----------------------------------------------------------------------------------------------
# Entry point (the CLI's `musicdiff train`; runs under `accelerate launch` and `torchrun` as well)


def train(preset: str, data_dir: str | Path, out: str | Path, resume: bool = False,
          max_minutes: float | None = None, max_steps: int | None = None, progress: bool = True,
          **overrides: Any) -> dict[str, Any]:
    """Train preset ``preset`` (:data:`TRAIN_PRESETS`) on the prepared cache ``data_dir`` into run dir ``out``.

    ``overrides`` replace :class:`TrainConfig` fields (e.g. ``batch_size=8``).
    Every process of a distributed launch calls this; Accelerate reads the
    launcher's environment: ``torchrun --nproc_per_node N script.py`` or
    ``accelerate launch --multi_gpu --num_processes N script.py`` (also on a
    machine without GPUs, where the processes talk over gloo; ``accelerate
    launch --cpu`` starts a single process). Returns what :meth:`Trainer.fit` returns, plus
    ``"trainer"``: the :class:`Trainer` (its model, EMA and accelerator).
    Chapter: ``07_training``.
    """
    from .data import MelDataset, load_index

    config = TrainConfig.preset_config(preset)
    if max_minutes is not None:
        overrides["max_minutes"] = max_minutes
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    if overrides:
        names = {f.name for f in dataclasses_fields(TrainConfig)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field(s) {unknown}; expected some of {sorted(names)}")
        config = replace(config, **overrides)
    unet_config = UNetConfig.preset(TRAIN_PRESETS[preset][1])
    frames = config.frames
    if frames is None:
        stored = int(load_index(data_dir)["frames"])
        frames = stored // unet_config.size_multiple * unet_config.size_multiple
    dataset = MelDataset(data_dir, frames=frames, seed=config.seed)
    trainer = Trainer(config, unet_config, dataset, out)
    return {**trainer.fit(resume=resume, progress=progress), "trainer": trainer}
