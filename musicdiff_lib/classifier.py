"""An attribute classifier on mel spectrograms: the evaluation's "ear".

Chapter: ``10_evaluation``. The built-in dataset knows, for every clip, the
lead instrument, texture, tempo, mode, drums, register, dynamics and metre
(:data:`~musicdiff_lib.synth.ATTRIBUTES`). A small CNN trained to read those
back from a mel spectrogram answers two questions about generated music:

* *prompt adherence*: does a clip asked for "fast, with drums" sound fast and
  have drums? (:func:`predict`, :func:`accuracy`);
* *realism and diversity*: its penultimate features (:func:`embed_all`) play
  the role Inception features play for FID/KID on images.

The network::

    mel (B,1,n_mels,T) ─► [conv3×3 stride 2 ─► conv3×3, residual] × len(channels)  (F, T halve each)
      │                     │ each block but the last: mean ‖ max over time per channel × band
      │                     └► last block (B, C·F', T') ─► 2 dilated conv1d ─► mean ‖ max over time
      └► mean ‖ std ‖ max over time per mel band
    all of it ─► BatchNorm ─► linear ─► embed (B, embed_dim) ─► ReLU ─► one linear head per attribute

Pooling over time makes it take any ``T >= MIN_FRAMES``; never pooling over
frequency keeps pitch (register) and timbre (lead), and the dilated time
convolutions see several beats (tempo, metre). The input is never
normalised per clip: dynamics is the absolute level, so training only crops
(no gain, pitch or time-stretch augmentation: each would change an attribute
the labels describe).
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .config import JsonConfig, fsync_dir, write_text_atomic
from .synth import ATTRIBUTES

MIN_FRAMES = 32  # four stride-2 blocks leave at least 2 time steps for the temporal convolutions
CONFIG_FILE, WEIGHTS_FILE, METRICS_FILE = "config.json", "model.safetensors", "metrics.json"
IGNORE = -1  # label of a clip that lacks an attribute (e.g. corpus clips have no register)


@dataclass(frozen=True)
class ClassifierConfig(JsonConfig):
    """Everything that defines an :class:`AttributeClassifier`; round-trips through JSON.

    ``channels[i]``: width of conv block i (each halves frequency and time).
    ``attributes``: name → class names, one output head each (order = label index).
    ``temporal``: width of the two dilated time convolutions after the CNN.
    ``mel``: the :class:`~musicdiff_lib.mel.MelConfig` dict of the training
    cache, so that evaluation can check it encodes audio the same way.
    """

    n_mels: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128)
    embed_dim: int = 64
    attributes: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(ATTRIBUTES))
    temporal: int = 128
    dropout: float = 0.1
    mel: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.channels, (list, tuple)) or not self.channels or \
                not all(isinstance(c, int) and c > 0 for c in self.channels):
            raise ValueError(f"ClassifierConfig.channels={self.channels!r}: expected a list of positive integers")
        object.__setattr__(self, "channels", tuple(self.channels))  # JSON gives lists
        if not isinstance(self.attributes, Mapping) or not self.attributes:
            raise ValueError(f"ClassifierConfig.attributes: expected a non-empty dict name -> class names, "
                             f"got {self.attributes!r}")
        attributes = {}
        for name, classes in self.attributes.items():
            if isinstance(classes, str) or len(classes) < 2:
                raise ValueError(f"ClassifierConfig.attributes[{name!r}]={classes!r}: expected at least 2 class names")
            attributes[str(name)] = tuple(str(c) for c in classes)
        object.__setattr__(self, "attributes", attributes)
        for name in ("n_mels", "embed_dim", "temporal"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                raise ValueError(f"ClassifierConfig.{name}={getattr(self, name)!r}: expected a positive integer")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"ClassifierConfig.dropout={self.dropout!r}: expected 0 <= dropout < 1")


def _conv_out(n: int) -> int:
    """Length after a 3-wide, stride-2, padding-1 convolution."""
    return (n - 1) // 2 + 1


class _Block(nn.Module):
    """conv3×3 stride 2 → BN → ReLU → conv3×3 → BN → ReLU, plus a strided 1×1 shortcut."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Conv2d(cin, cout, 1, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(h)) + self.skip(x))


class AttributeClassifier(nn.Module):
    """Mel ``(B, 1, n_mels, T)`` in [-1, 1], any ``T >= 32`` → logits per attribute.

    ``forward(mel)`` → ``{name: (B, K_name)}``; ``embed(mel)`` → ``(B, embed_dim)``,
    the shared features every head reads (used for Fréchet distance / KID).
    """

    def __init__(self, config: ClassifierConfig | None = None):
        super().__init__()
        self.config = config = config or ClassifierConfig()
        widths = (1,) + config.channels
        self.blocks = nn.ModuleList([_Block(a, b) for a, b in zip(widths[:-1], widths[1:])])
        bands = [config.n_mels]
        for _ in config.channels:
            bands.append(_conv_out(bands[-1]))
        self.bands = bands[-1]
        flat = config.channels[-1] * self.bands  # frequency bands become channels: pitch survives the time pooling
        # Two dilated time convolutions on the last block: several beats of context for tempo and metre.
        self.temporal = nn.Sequential(
            nn.Conv1d(flat, config.temporal, 3, padding=1, bias=False), nn.BatchNorm1d(config.temporal), nn.ReLU(),
            nn.Conv1d(config.temporal, config.temporal, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm1d(config.temporal), nn.ReLU(),
        )
        # What gets pooled over time: the input's bands (mean, std, max), every earlier block's
        # channels × bands (mean, max) and the temporal branch (mean, max). The early, finely
        # resolved maps are what lead (timbre) and register (pitch) need: pooling only the last,
        # 4-band map learnt them far more slowly (measured: lead 0.20 vs 0.44 after 200 steps).
        pooled = 3 * config.n_mels + sum(2 * c * b for c, b in zip(config.channels[:-1], bands[1:-1]))
        self.features = pooled + 2 * config.temporal
        self.norm = nn.BatchNorm1d(self.features)  # the pooled statistics live on very different scales
        self.project = nn.Linear(self.features, config.embed_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.heads = nn.ModuleDict({name: nn.Linear(config.embed_dim, len(classes))
                                    for name, classes in config.attributes.items()})

    def check(self, mel: torch.Tensor) -> None:
        """A ``ValueError`` naming the problem unless ``mel`` is ``(B, 1, n_mels, T >= 32)``."""
        if mel.ndim != 4 or mel.shape[1] != 1:
            raise ValueError(f"mel: expected shape (B, 1, n_mels, frames), got {tuple(mel.shape)}")
        if mel.shape[2] != self.config.n_mels:
            raise ValueError(f"mel has {mel.shape[2]} mel bands but this classifier was trained on "
                             f"{self.config.n_mels}: encode the audio with its mel config")
        if mel.shape[3] < MIN_FRAMES:
            raise ValueError(f"mel has {mel.shape[3]} frames; the classifier needs at least {MIN_FRAMES}")

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, 1, n_mels, T)`` → ``(B, embed_dim)`` (before the ReLU the heads apply)."""
        self.check(mel)
        x = mel[:, 0]
        stats = [x.mean(-1), x.std(-1), x.amax(-1)]  # (B, n_mels) each: spectrum envelope and level
        h = mel
        for k, block in enumerate(self.blocks):
            h = block(h)  # (B, C_k, F_k, T_k)
            if k < len(self.blocks) - 1:
                flat = h.flatten(1, 2)
                stats += [flat.mean(-1), flat.amax(-1)]
        t = self.temporal(h.flatten(1, 2))  # (B, temporal, T')
        stats += [t.mean(-1), t.amax(-1)]
        return self.project(self.norm(torch.cat(stats, dim=1)))

    def forward(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.dropout(F.relu(self.embed(mel)))
        return {name: head(h) for name, head in self.heads.items()}


# ---------------------------------------------------------------------------
# Labels, prediction, accuracy
# ---------------------------------------------------------------------------
def _classes(names: Mapping[str, Sequence[str]] | Sequence[str] | None) -> dict[str, tuple[str, ...]]:
    if names is None:
        return dict(ATTRIBUTES)
    if isinstance(names, Mapping):
        return {k: tuple(v) for k, v in names.items()}
    unknown = [n for n in names if n not in ATTRIBUTES]
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; pass a dict name -> class names or some of "
                         f"{list(ATTRIBUTES)}")
    return {n: ATTRIBUTES[n] for n in names}


def labels(attributes: Sequence[Mapping[str, Any]],
           names: Mapping[str, Sequence[str]] | Sequence[str] | None = None,
           strict: bool = True) -> dict[str, np.ndarray]:
    """Class indices ``{name: (N,) int64}`` of each clip's attributes; -1 where a clip lacks one.

    ``names``: a dict name → class names (e.g. ``model.config.attributes``), a
    list of :data:`~musicdiff_lib.synth.ATTRIBUTES` names, or None for all of
    them. Other keys of the dicts (``bpm``, ``key`` …) are ignored. A value
    that is not one of the classes is a ``ValueError`` naming it, or -1 with
    ``strict=False`` (training: a corpus clip's metre may be "6/8").
    """
    classes = _classes(names)
    out = {name: np.full(len(attributes), IGNORE, dtype=np.int64) for name in classes}
    for row, attrs in enumerate(attributes):
        for name, values in classes.items():
            value = attrs.get(name)
            if value is None:
                continue
            if value not in values:
                if not strict:
                    continue
                raise ValueError(f"clip {row}: attribute {name!r} is {value!r}; expected one of {values}")
            out[name][row] = values.index(value)
    return out


def _as_tensor(mels) -> torch.Tensor:
    return mels if isinstance(mels, torch.Tensor) else torch.from_numpy(np.asarray(mels))


@torch.no_grad()
def _batched(model: AttributeClassifier, mels, batch_size: int, fn) -> list:
    mels = _as_tensor(mels)
    model.check(mels[:1] if len(mels) else mels)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # BatchNorm running statistics, no dropout
    try:
        return [fn(mels[i : i + batch_size].to(device, torch.float32)) for i in range(0, len(mels), batch_size)]
    finally:
        model.train(was_training)


def predict(model: AttributeClassifier, mels, batch_size: int = 64) -> dict[str, np.ndarray]:
    """Predicted class indices ``{name: (N,) int64}`` for mels ``(N, 1, n_mels, T)`` (tensor or array)."""
    outs = _batched(model, mels, batch_size, lambda m: {k: v.argmax(1).cpu() for k, v in model(m).items()})
    names = model.config.attributes
    return {name: torch.cat([o[name] for o in outs]).numpy() if outs else np.zeros(0, np.int64) for name in names}


def embed_all(model: AttributeClassifier, mels, batch_size: int = 64) -> np.ndarray:
    """Embeddings ``(N, embed_dim)`` float64 of mels ``(N, 1, n_mels, T)``."""
    outs = _batched(model, mels, batch_size, lambda m: model.embed(m).double().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, model.config.embed_dim))


def prediction_accuracy(predicted: Mapping[str, np.ndarray], attributes: Sequence[Mapping[str, Any]],
                        names: Mapping[str, Sequence[str]] | Sequence[str] | None = None) -> dict[str, float]:
    """Share of clips whose predicted class index (``{name: (N,)}``, as :func:`predict` returns) matches
    ``attributes`` (a dict per clip), per attribute; ``names`` as in :func:`labels` (default: the keys of
    ``predicted``). Clips lacking an attribute (or with a value outside its classes, like a corpus
    clip's "6/8") do not count for it; NaN where no clip has it.
    """
    truth = labels(attributes, list(predicted) if names is None else names, strict=False)
    out = {}
    for name, y in truth.items():
        if len(predicted[name]) != len(y):
            raise ValueError(f"accuracy: {len(predicted[name])} predictions of {name!r} but {len(y)} attribute dicts")
        keep = y != IGNORE
        out[name] = float((np.asarray(predicted[name])[keep] == y[keep]).mean()) if keep.any() else float("nan")
    return out


def accuracy(model: AttributeClassifier, mels, attributes: Sequence[Mapping[str, Any]],
             batch_size: int = 64) -> dict[str, float]:
    """:func:`prediction_accuracy` of the model's predictions for mels ``(N, 1, n_mels, T)``."""
    if len(attributes) != len(mels):
        raise ValueError(f"accuracy: {len(mels)} mels but {len(attributes)} attribute dicts")
    return prediction_accuracy(predict(model, mels, batch_size), attributes, model.config.attributes)


# ---------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------
def save_classifier(model: AttributeClassifier, out: str | Path, metrics: dict | None = None,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write ``model.safetensors``, ``config.json`` (and ``metrics.json``) into ``out``, each atomically.

    Floating-point tensors are stored as ``dtype`` (float16 by default: half
    the size, and the classifier's accuracy does not change); loading gives
    float32 back.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
               for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "musicdiff-attribute-classifier"})
    os.replace(tmp, out / WEIGHTS_FILE)
    fsync_dir(out)
    write_text_atomic(out / CONFIG_FILE, model.config.to_json() + "\n")
    if metrics is not None:
        write_text_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return out


def load_classifier(path: str | Path, device=None) -> AttributeClassifier:
    """The classifier saved in folder ``path`` (``config.json`` + ``model.safetensors``), in eval mode.

    A missing folder or file is a ``FileNotFoundError`` naming it; a config
    or weights file that does not describe a classifier is a ``ValueError``
    naming the file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if path.is_file() and path.name in (CONFIG_FILE, WEIGHTS_FILE):
        path = path.parent
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing; a classifier folder holds {CONFIG_FILE} and "
                                    f"{WEIGHTS_FILE} (written by train_classifier)")
    try:
        config = ClassifierConfig.from_json(path / CONFIG_FILE)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{path / CONFIG_FILE}: not a classifier config ({err})") from None
    try:
        tensors = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path / WEIGHTS_FILE}: not a readable safetensors file ({err})") from None
    model = AttributeClassifier(config)
    expected = model.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    bad = [k for k in expected if k in tensors and tensors[k].shape != expected[k].shape]
    if missing or extra or bad:
        raise ValueError(f"{path / WEIGHTS_FILE}: does not match {CONFIG_FILE} (missing {missing[:3]}, "
                         f"unexpected {extra[:3]}, wrong shape {bad[:3]})")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})  # float16 → float32
    if device is not None:
        model.to(device)
    return model.eval()


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------
def _load_cache(cache_dir: str | Path) -> tuple[torch.Tensor, list[dict], dict]:
    """Every clip of a cache: mels ``(N, n_mels, frames)`` float16 in RAM, attribute dicts, mel config dict."""
    from .data import MelDataset

    dataset = MelDataset(cache_dir, frames=None, random_crop=False)
    if len(dataset) == 0:
        raise ValueError(f"cache {cache_dir} holds no clips")
    mels = torch.stack([dataset[i]["mel"][0].to(torch.float16) for i in range(len(dataset))])
    attributes = [dict(entry["attributes"]) for entry in dataset.items]
    return mels, attributes, dict(dataset.index["mel"])


def _centre(mels: torch.Tensor, frames: int) -> torch.Tensor:
    """Centre crops ``(N, 1, n_mels, frames)`` float32 of ``(N, n_mels, T)`` clips (T >= frames)."""
    start = (mels.shape[-1] - frames) // 2
    return mels[:, None, :, start : start + frames].float()


def train_classifier(cache_dir: str | Path, out: str | Path, frames: int = 128, steps: int = 1000,
                     batch_size: int = 32, lr: float = 3e-3, seed: int = 0, eval_cache: str | Path | None = None,
                     progress: bool = True, config: ClassifierConfig | None = None,
                     weight_decay: float = 1e-4) -> dict:
    """Train an :class:`AttributeClassifier` on random ``frames``-wide crops of a prepared cache.

    The whole cache is read into RAM (float16; 4,000 clips of 64×313 are
    160 MB) and crops are cut there: much faster than a ``DataLoader``. AdamW
    with a one-cycle schedule; the loss is the mean cross-entropy over
    attributes (clips lacking one do not count for it). Held-out accuracy is
    measured on centre crops of ``eval_cache`` (None: the last 10% of the
    cache's clips, which are then left out of training). Writes
    ``out/model.safetensors``, ``out/config.json`` and ``out/metrics.json``
    (atomically) and returns the metrics, plus ``losses`` (every step).
    Deterministic for a ``seed`` (on one device and thread count).
    """
    from tqdm.auto import tqdm

    if frames < MIN_FRAMES:
        raise ValueError(f"frames={frames}: the classifier needs at least {MIN_FRAMES}")
    if steps <= 0 or batch_size <= 0 or not lr > 0:
        raise ValueError(f"steps, batch_size and lr must be positive, got {steps}, {batch_size}, {lr}")
    start_time = time.perf_counter()
    mels, attributes, mel_dict = _load_cache(cache_dir)
    if mels.shape[-1] < frames:
        raise ValueError(f"cache {cache_dir} holds {mels.shape[-1]} frames per clip, fewer than frames={frames}")
    if eval_cache is None:
        n_eval = max(1, len(mels) // 10)
        if n_eval >= len(mels):
            raise ValueError(f"cache {cache_dir} holds {len(mels)} clips: too few to hold out 10% and train")
        eval_mels, eval_attrs = mels[-n_eval:], attributes[-n_eval:]
        mels, attributes = mels[:-n_eval], attributes[:-n_eval]
        eval_source = f"last {n_eval} clips of {cache_dir}"
    else:
        eval_mels, eval_attrs, eval_mel_dict = _load_cache(eval_cache)
        differing = sorted(k for k in mel_dict if mel_dict[k] != eval_mel_dict.get(k))
        if differing:
            raise ValueError(f"eval cache {eval_cache} was made with another mel config than {cache_dir} "
                             f"(fields {differing})")
        if eval_mels.shape[-1] < frames:
            raise ValueError(f"eval cache {eval_cache} holds {eval_mels.shape[-1]} frames per clip, "
                             f"fewer than frames={frames}")
        eval_source = str(eval_cache)

    base = config or ClassifierConfig()
    config = dataclasses.replace(base, n_mels=int(mels.shape[1]), mel=mel_dict)
    y = labels(attributes, config.attributes, strict=False)
    targets = torch.from_numpy(np.stack([y[name] for name in config.attributes], axis=1))  # (N, A)
    n, stored = mels.shape[0], mels.shape[-1]

    with torch.random.fork_rng(devices=[]):  # weights and dropout from `seed`, the caller's RNG untouched
        torch.manual_seed(seed)
        model = AttributeClassifier(config)
        # channels_last: ~25% faster convolutions on CPU (measured, one thread); the saved weights are the same.
        model.to(memory_format=torch.channels_last)
        gen = torch.Generator().manual_seed(seed)  # batches and crops
        decay = [p for p in model.parameters() if p.ndim > 1]
        other = [p for p in model.parameters() if p.ndim <= 1]
        optimiser = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                       {"params": other, "weight_decay": 0.0}], lr=lr)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps, pct_start=0.15)
        model.train()
        losses: list[float] = []
        order = torch.randperm(n, generator=gen)
        cursor = 0
        train_start = time.perf_counter()
        bar = tqdm(range(steps), desc="classifier", unit="step", **({} if progress else {"disable": True}))
        for _ in bar:
            if cursor + batch_size > n:  # a new epoch: a new shuffle
                order, cursor = torch.randperm(n, generator=gen), 0
            idx = order[cursor : cursor + batch_size]
            cursor += batch_size
            offsets = torch.randint(0, stored - frames + 1, (len(idx),), generator=gen)
            window = offsets[:, None] + torch.arange(frames)  # (B, frames)
            batch = torch.gather(mels[idx], 2, window[:, None, :].expand(-1, mels.shape[1], -1))
            logits = model(batch[:, None].float().contiguous(memory_format=torch.channels_last))
            target = targets[idx]
            per_attr = []
            for k, name in enumerate(config.attributes):
                if (target[:, k] != IGNORE).any():
                    per_attr.append(F.cross_entropy(logits[name], target[:, k], ignore_index=IGNORE))
            loss = torch.stack(per_attr).mean()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(loss.item())
            if progress and len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        train_seconds = time.perf_counter() - train_start
    model.to(memory_format=torch.contiguous_format).eval()  # as load_classifier returns it
    with torch.no_grad():  # round to what the file stores, so that the metrics describe the saved model
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.to(torch.float16))
    held_out = accuracy(model, _centre(eval_mels, frames), eval_attrs)
    stride = max(1, len(losses) // 200)
    metrics = {
        "accuracy": held_out,
        "eval": {"source": eval_source, "clips": len(eval_mels), "crop": f"centre {frames} frames"},
        "train_clips": n, "steps": steps, "batch_size": batch_size, "lr": lr, "frames": frames, "seed": seed,
        "params": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - start_time, 1),
        "samples_per_second": round(steps * batch_size / max(train_seconds, 1e-9), 1),
        "threads": torch.get_num_threads(),
        "loss_first": float(np.mean(losses[: min(20, len(losses))])),
        "loss_last": float(np.mean(losses[-min(20, len(losses)):])),
        "loss_curve": {"every": stride, "values": [round(v, 4) for v in losses[::stride]]},
    }
    save_classifier(model, out, metrics)
    return {**metrics, "losses": losses}
