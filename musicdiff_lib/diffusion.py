"""The forward process, what the network predicts, and the loss it is trained with.

Chapters: ``04_noise_schedules`` (the forward process :func:`q_sample`) and
``07_training`` (prediction targets, the loss, condition dropout). With
a_t = √ᾱ_t and σ_t = √(1 − ᾱ_t), so that a_t² + σ_t² = 1 (Ho et al. 2020):

    x_t = a_t · x0 + σ_t · ε,   ε ~ N(0, I).

The network sees (x_t, t, text) and predicts one of three equivalent targets
(``PREDICTION_TYPES``):

    "epsilon":  ε                      (Ho et al. 2020)
    "v":        v = a_t · ε − σ_t · x0  (Salimans & Ho 2022)
    "x0":       x0

Given x_t, each determines the other two (:func:`convert`):

    x0 = (x_t − σ_t ε) / a_t        ε = (x_t − a_t x0) / σ_t
    x0 = a_t x_t − σ_t v            ε = σ_t x_t + a_t v
    v  = a_t ε − σ_t x0

Step indices t are integers 0 … T−1, as in :class:`~musicdiff_lib.schedules.NoiseSchedule`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch

from .schedules import NoiseSchedule
from .text import TextCondition

PREDICTION_TYPES = ("epsilon", "v", "x0")

Model = Callable[[torch.Tensor, torch.Tensor, "TextCondition | None"], torch.Tensor]


def check_prediction_type(prediction_type: str) -> str:
    """Return ``prediction_type`` if it is one of ``PREDICTION_TYPES``, else raise a clear ValueError."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}: expected one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def _check_steps(t: torch.Tensor, schedule: NoiseSchedule, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.ndim == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t: expected integer steps of shape ({batch},), got {tuple(t.shape)}")
    if t.is_floating_point() or t.is_complex():
        raise ValueError(f"t: expected integer steps 0 … {schedule.T - 1}, got dtype {t.dtype}")
    if len(t) and (int(t.min()) < 0 or int(t.max()) >= schedule.T):
        raise ValueError(f"t: steps must lie in 0 … {schedule.T - 1} (T={schedule.T}), "
                         f"got {int(t.min())} … {int(t.max())}")
    return t


def schedule_coefficients(t: torch.Tensor, schedule: NoiseSchedule,
                          like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_t, σ_t) = (√ᾱ_t, √(1−ᾱ_t)) at integer steps ``t`` (B,), shaped ``(B, 1, …, 1)`` to broadcast
    against ``like`` and in its dtype and device (looked up in float64, then cast)."""
    t = _check_steps(t, schedule, like.shape[0]).to("cpu").long()
    shape = (like.shape[0],) + (1,) * (like.ndim - 1)
    a = schedule.sqrt_alpha_bar[t].reshape(shape).to(device=like.device, dtype=like.dtype)
    sigma = schedule.sqrt_one_minus_alpha_bar[t].reshape(shape).to(device=like.device, dtype=like.dtype)
    return a, sigma


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """The forward process in one jump: x_t = √ᾱ_t · x0 + √(1−ᾱ_t) · ε.

    x0, noise: ``(B, …)``; t: ``(B,)`` integer steps. Returns x_t in x0's
    dtype and device. Chapter: ``04_noise_schedules``.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise: expected the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}")
    a, sigma = schedule_coefficients(t, schedule, x0)
    return a * x0 + sigma * noise.to(device=x0.device, dtype=x0.dtype)


def target(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule,
           prediction_type: str = "epsilon") -> torch.Tensor:
    """What the network should output for (x0, ε, t): ε, v = √ᾱ ε − √(1−ᾱ) x0, or x0. Shape of x0.

    Chapter: ``07_training``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "x0":
        return x0
    a, sigma = schedule_coefficients(t, schedule, x0)
    return a * noise - sigma * x0


def to_x0(pred: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor,
          schedule: NoiseSchedule) -> torch.Tensor:
    """The clean-data estimate x̂0 implied by a prediction of type ``prediction_type`` at (x_t, t).

    ε: x0 = (x_t − σ ε)/a (undefined where a = 0, e.g. a zero-terminal-SNR last
    step: use v there); v: x0 = a x_t − σ v; x0: itself. Chapter: ``07_training``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "x0":
        return pred
    a, sigma = schedule_coefficients(t, schedule, x_t)
    if prediction_type == "epsilon":
        return (x_t - sigma * pred) / a
    return a * x_t - sigma * pred


def to_epsilon(pred: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor,
               schedule: NoiseSchedule) -> torch.Tensor:
    """The noise estimate ε̂ implied by a prediction at (x_t, t).

    x0: ε = (x_t − a x0)/σ; v: ε = σ x_t + a v; ε: itself. Chapter: ``07_training``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return pred
    a, sigma = schedule_coefficients(t, schedule, x_t)
    if prediction_type == "x0":
        return (x_t - a * pred) / sigma
    return sigma * x_t + a * pred


def to_v(pred: torch.Tensor, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor,
         schedule: NoiseSchedule) -> torch.Tensor:
    """The velocity v = a ε − σ x0 implied by a prediction at (x_t, t).

    ε: v = (ε − σ x_t)/a; x0: v = (a x_t − x0)/σ; v: itself. Chapter: ``07_training``.
    """
    check_prediction_type(prediction_type)
    if prediction_type == "v":
        return pred
    a, sigma = schedule_coefficients(t, schedule, x_t)
    if prediction_type == "epsilon":
        # v = a ε − σ x0 with x0 = (x_t − σ ε)/a  →  v = (ε − σ x_t)/a   (a² + σ² = 1)
        return (pred - sigma * x_t) / a
    # v = a ε − σ x0 with ε = (x_t − a x0)/σ  →  v = (a x_t − x0)/σ
    return (a * x_t - pred) / sigma


def convert(pred: torch.Tensor, from_type: str, to_type: str, x_t: torch.Tensor, t: torch.Tensor,
            schedule: NoiseSchedule) -> torch.Tensor:
    """Re-express a prediction of type ``from_type`` as ``to_type`` ("epsilon", "v" or "x0") given x_t.

    All conversions are affine in ``pred`` with coefficients that depend only on
    t, so an average of predictions (e.g. classifier-free guidance) converts to
    the same average of the converted ones. Chapter: ``07_training``.
    """
    check_prediction_type(from_type)
    check_prediction_type(to_type)
    if from_type == to_type:
        return pred
    return {"x0": to_x0, "epsilon": to_epsilon, "v": to_v}[to_type](pred, from_type, x_t, t, schedule)


def min_snr_weight(t: torch.Tensor, schedule: NoiseSchedule, gamma: float,
                   prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-γ loss weights (Hang et al. 2023), float64 ``(B,)``.

    Hang et al. weight the *x0* error by min(SNR_t, γ). Since, at fixed x_t,
    ‖ε − ε̂‖² = SNR · ‖x0 − x̂0‖² and ‖v − v̂‖² = (SNR + 1) · ‖x0 − x̂0‖², the
    same weighting on the other targets is

        ε-prediction:  w_t = min(SNR_t, γ) / SNR_t
        v-prediction:  w_t = min(SNR_t, γ) / (SNR_t + 1)
        x0-prediction: w_t = min(SNR_t, γ)

    with SNR_t = ᾱ_t / (1 − ᾱ_t). Chapter: ``07_training``.
    """
    check_prediction_type(prediction_type)
    if not gamma > 0:
        raise ValueError(f"min_snr_gamma must be positive, got {gamma}")
    t = torch.as_tensor(t).reshape(-1)
    t = _check_steps(t, schedule, len(t)).to("cpu").long()
    snr = schedule.snr[t]
    clipped = snr.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v":
        return clipped / (snr + 1)
    return clipped


def drop_condition(text: TextCondition | None, p: float = 0.1,
                   generator: torch.Generator | None = None) -> TextCondition | None:
    """Replace each caption by the null condition with probability ``p`` (classifier-free guidance training).

    Ho & Salimans (2022): one network learns the conditional and the
    unconditional model at once if a fraction p of its training captions is
    dropped. p = 0 returns the batch unchanged, p = 1 all null. ``text=None``
    (an unconditional model) stays None. Chapter: ``07_training``.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"condition dropout probability must lie in [0, 1], got {p}")
    if text is None or p == 0.0:
        return text
    device = generator.device if generator is not None else text.tokens.device
    keep = torch.rand(len(text), generator=generator, device=device) >= p  # U[0,1) ≥ 1 never: p = 1 drops all
    return text.where(keep.to(text.tokens.device), text.null_like())


class LossOutput(NamedTuple):
    """:func:`diffusion_loss` with ``return_details=True``: the mean loss, the (B,) per-sample losses
    (weights applied) and the (B,) steps they were drawn at."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor


def diffusion_loss(model: Model, x0: torch.Tensor, text: TextCondition | None, schedule: NoiseSchedule,
                   prediction_type: str = "epsilon", min_snr_gamma: float | None = None,
                   cond_drop_prob: float = 0.1, generator: torch.Generator | None = None,
                   return_details: bool = False) -> torch.Tensor | LossOutput:
    """The denoising loss on one batch: E_{t, ε} [ w_t · mean ‖target − model(x_t, t, text)‖² ].

    In order, from ``generator`` (so a seed fixes everything): t ~ U{0 … T−1}
    per sample, ε ~ N(0, I) of x0's shape, then the condition dropout
    (:func:`drop_condition` with ``cond_drop_prob``). x_t = :func:`q_sample`;
    the target is ε, v or x0 (:func:`target`). w_t = 1, or the min-SNR-γ weight
    (:func:`min_snr_weight`) when ``min_snr_gamma`` is given.

    x0: ``(B, C, H, W)``. Returns the scalar mean over the batch, or a
    :class:`LossOutput` (loss, per-sample losses, t) with ``return_details``.
    Chapter: ``07_training``.
    """
    check_prediction_type(prediction_type)
    B = x0.shape[0]
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(0, schedule.T, (B,), generator=generator, device=gen_device)
    noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=x0.dtype).to(x0.device)
    text = drop_condition(text, cond_drop_prob, generator)
    t = t.to(x0.device)
    x_t = q_sample(x0, t, noise, schedule)
    pred = model(x_t, t, text)
    if pred.shape != x0.shape:
        raise ValueError(f"model output: expected the input's shape {tuple(x0.shape)}, got {tuple(pred.shape)}")
    per_sample = (pred.float() - target(x0, noise, t, schedule, prediction_type).float()).pow(2)
    per_sample = per_sample.reshape(B, -1).mean(dim=1)
    if min_snr_gamma is not None:
        per_sample = per_sample * min_snr_weight(t, schedule, min_snr_gamma, prediction_type).to(per_sample)
    loss = per_sample.mean()
    return LossOutput(loss, per_sample, t) if return_details else loss
