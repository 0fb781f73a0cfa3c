"""Samplers: from noise x_T ~ N(0, I) to a mel spectrogram, written as the equations of their papers.

Chapter: ``08_sampling``. Notation (as in :mod:`musicdiff_lib.diffusion`):
ᾱ_t from the schedule, a_t = √ᾱ_t, σ_t = √(1 − ᾱ_t), λ_t = log(a_t/σ_t) (half
the log-SNR). Every sampler walks a decreasing list of integer steps
t_0 > t_1 > … > t_{N−1} (:func:`sampling_timesteps`) and then to clean data
("step −1", ᾱ = 1). One model evaluation per listed step. At each step the
model's prediction (ε, v or x0, guided with :func:`guided_prediction`) is
converted to the pair (x̂0, ε̂) and the sampler moves from t to the next step s:

- ``"ddpm"``  Ho et al. (2020), Algorithm 2, as the posterior q(x_s | x_t, x̂0);
  with fewer steps than T, the respaced chain of Nichol & Dhariwal (2021).
- ``"ddim"``  Song et al. (2021), eq. 12, with stochasticity η (η = 0: deterministic).
- ``"dpmpp_2m"`` Lu et al. (2022), DPM-Solver++(2M), data-prediction form.

Every sample has its own seed (:class:`SampleNoise`, after NVlabs/edm's
``StackedRandomGenerator``): its initial noise and every noise it draws on the
way come from its own generator, so sample i is the same whatever batch it is in.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .diffusion import Model, check_prediction_type, convert
from .schedules import NoiseSchedule
from .text import TextCondition

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
DDPM_VARIANCES = ("beta_tilde", "beta")
SPACINGS = ("linear", "log_snr")


# ---------------------------------------------------------------------------------------------------------------
# Steps and seeds
# ---------------------------------------------------------------------------------------------------------------

def sampling_timesteps(schedule: NoiseSchedule, steps: int | Sequence[int], spacing: str = "linear") -> list[int]:
    """The decreasing list of integer steps a sampler visits.

    ``steps=N`` (1 ≤ N ≤ T) picks N distinct steps from T−1 down to 0:

    - ``spacing="linear"``: evenly spaced in t, rounded (N = T gives every step T−1 … 0);
    - ``spacing="log_snr"``: evenly spaced in λ = ½ log SNR (Lu et al. 2022), the
      nearest steps, nudged apart where several would round to the same one.

    An explicit list must be strictly decreasing integers in 0 … T−1 and is
    used as given (its first step should be noisy enough, ᾱ ≈ 0, for
    x ~ N(0, I) to be a fair start). Chapter: ``08_sampling``.
    """
    T = schedule.T
    if spacing not in SPACINGS:
        raise ValueError(f"spacing={spacing!r}: expected one of {', '.join(SPACINGS)}")
    if isinstance(steps, int) and not isinstance(steps, bool):
        if not 1 <= steps <= T:
            raise ValueError(f"steps={steps}: expected 1 … T={T} (the schedule has only {T} steps)")
        if spacing == "linear" or steps < 3:
            return [int(v) for v in torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()]
        return _log_snr_timesteps(schedule, steps)
    try:
        values = [int(v) for v in steps]
    except TypeError:
        raise ValueError(f"steps: expected an int or a list of ints, got {type(steps).__name__}") from None
    if not values:
        raise ValueError("steps: the list of steps is empty")
    if any(v != float(w) for v, w in zip(values, steps)):
        raise ValueError(f"steps: expected integer steps, got {list(steps)}")
    if min(values) < 0 or max(values) >= T:
        raise ValueError(f"steps: every step must lie in 0 … {T - 1} (T={T}), got {min(values)} … {max(values)}")
    if any(b >= a for a, b in zip(values, values[1:])):
        raise ValueError(f"steps: expected a strictly decreasing list (noisy → clean), got {values}")
    return values


def _log_snr_timesteps(schedule: NoiseSchedule, n: int) -> list[int]:
    """n distinct steps T−1 … 0 whose λ are as close as possible to an even grid in λ."""
    T = schedule.T
    lam = 0.5 * schedule.log_snr  # decreasing in t; −inf possible at a zero-terminal-SNR last step
    lo = lam[torch.isfinite(lam)].min()
    grid = torch.linspace(float(lo), float(lam[0]), n, dtype=torch.float64)  # noisy → clean
    idx = [int((lam - v).abs().argmin()) for v in grid]
    idx[0] = T - 1
    for i in range(1, n):  # strictly decreasing …
        idx[i] = min(idx[i], idx[i - 1] - 1)
    idx[-1] = 0
    for i in range(n - 2, -1, -1):  # … down to step 0
        idx[i] = max(idx[i], idx[i + 1] + 1)
    return idx


def sample_seeds(seeds: int | Sequence[int], batch: int) -> list[int]:
    """One seed per sample: an int s expands to s, s+1, …, s+batch−1; a list must have ``batch`` entries."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        return [seeds + i for i in range(batch)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != batch:
        raise ValueError(f"seeds: expected one seed per sample ({batch}), got {len(seeds)}")
    return seeds


class SampleNoise:
    """A stack of ``torch.Generator`` s, one per sample (NVlabs/edm's ``StackedRandomGenerator``).

    ``randn(shape)`` draws row i from generator i, on the CPU in float32 (so the
    numbers do not depend on the device or dtype), then moves them. Sample i's
    noise therefore depends only on its seed and on how many draws it has made.
    """

    def __init__(self, seeds: Sequence[int]):
        self.seeds = [int(s) for s in seeds]
        self.generators = [torch.Generator().manual_seed(s) for s in self.seeds]

    def randn(self, shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"SampleNoise: {len(self.generators)} generators cannot draw a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g) for g in self.generators]
        return torch.stack(rows).to(device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------------------------
# Classifier-free guidance
# ---------------------------------------------------------------------------------------------------------------

def guided_prediction(model: Model, x: torch.Tensor, t: torch.Tensor, text: TextCondition | None,
                      guidance_scale: float = 1.0, negative: TextCondition | None = None) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans 2022): ε̂ = ε_u + w · (ε_c − ε_u).

    ε_c = model(x, t, text), ε_u = model(x, t, null condition), both from ONE
    forward pass on the doubled batch [conditional; unconditional]. Special
    cases are exact: w = 1 → ε_c (one pass, no unconditional half), w = 0 → ε_u,
    ``text=None`` → the unconditional prediction whatever w. The combination
    is done in the model's output space (ε, v or x0): the conversions between
    them are affine with weights summing to one, so the result is the same.

    ``negative``: a *negative prompt* (B captions) takes the place of the null
    condition, ε̂ = ε_neg + w · (ε_c − ε_neg): guidance then pushes away from
    what the negative caption describes rather than from "no caption" (the
    negative prompts of Stable Diffusion). None: the null condition, as above.
    x: ``(B, C, H, W)``, t: ``(B,)``. Chapter: ``08_sampling``.
    """
    w = float(guidance_scale)
    if text is None:
        if negative is not None:
            raise ValueError("negative: a negative prompt needs a caption (text is None)")
        return model(x, t, None)
    if negative is not None and len(negative) != len(text):
        raise ValueError(f"negative: expected {len(text)} negative captions (one per caption), got {len(negative)}")
    uncond = text.null_like() if negative is None else negative.to(device=text.tokens.device, dtype=text.tokens.dtype)
    if w == 1.0:
        return model(x, t, text)
    if w == 0.0:
        return model(x, t, uncond)
    both = model(torch.cat([x, x]), torch.cat([t, t]), TextCondition.cat([text, uncond]))
    eps_c, eps_u = both.chunk(2)
    return eps_u + w * (eps_c - eps_u)


# ---------------------------------------------------------------------------------------------------------------
# One step of each sampler: from x_t (ᾱ_t) to x_s (ᾱ_s), s after t; ᾱ_s = 1 for the final, clean step
# ---------------------------------------------------------------------------------------------------------------

Randn = Callable[[], torch.Tensor]


def ddpm_step(x: torch.Tensor, x0_hat: torch.Tensor, alpha_bar_t: float, alpha_bar_s: float, randn: Randn,
              variance: str = "beta_tilde") -> torch.Tensor:
    """Ancestral step of Ho et al. (2020): x_s ~ N(μ̃(x_t, x̂0), σ² I), the posterior of the forward process.

    With α = ᾱ_t/ᾱ_s and β = 1 − α (β_t itself when s = t − 1; respaced otherwise),

        μ̃ = √ᾱ_s β / (1 − ᾱ_t) · x̂0 + √α (1 − ᾱ_s) / (1 − ᾱ_t) · x_t           (eq. 7)
        σ² = β̃ = (1 − ᾱ_s)/(1 − ᾱ_t) · β   or   σ² = β                          (§3.2)

    which, with x̂0 = (x_t − √(1−ᾱ_t) ε̂)/√ᾱ_t, is Algorithm 2's
    x_{t−1} = (x_t − β_t/√(1−ᾱ_t) · ε̂)/√α_t + σ_t z. No noise on the final step.
    """
    if variance not in DDPM_VARIANCES:
        raise ValueError(f"variance={variance!r}: expected one of {', '.join(DDPM_VARIANCES)}")
    alpha = alpha_bar_t / alpha_bar_s
    beta = 1.0 - alpha
    # Posterior mean (eq. 7)
    mean = (math.sqrt(alpha_bar_s) * beta / (1 - alpha_bar_t)) * x0_hat \
        + (math.sqrt(alpha) * (1 - alpha_bar_s) / (1 - alpha_bar_t)) * x
    # Posterior variance β̃ or the forward variance β; z = 0 on the last step (Algorithm 2, "if t > 1")
    if alpha_bar_s == 1.0:
        return mean
    var = (1 - alpha_bar_s) / (1 - alpha_bar_t) * beta if variance == "beta_tilde" else beta
    return mean + math.sqrt(var) * randn()


def ddim_step(x: torch.Tensor, x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: float, alpha_bar_s: float,
              randn: Randn, eta: float = 0.0) -> torch.Tensor:
    """DDIM step, Song et al. (2021) eq. 12:

        x_s = √ᾱ_s · x̂0  +  √(1 − ᾱ_s − σ²) · ε̂  +  σ z,
        σ = η · √((1 − ᾱ_s)/(1 − ᾱ_t)) · √(1 − ᾱ_t/ᾱ_s)                        (eq. 16)

    η = 0: deterministic (the probability-flow ODE, first order); η = 1 with
    every step: DDPM with the posterior variance β̃.
    """
    sigma = eta * math.sqrt((1 - alpha_bar_s) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_s))
    # "predicted x0" + "direction pointing to x_t" (eq. 12)
    x_s = math.sqrt(alpha_bar_s) * x0_hat + math.sqrt(max(1 - alpha_bar_s - sigma**2, 0.0)) * eps_hat
    # "random noise"
    return x_s + sigma * randn() if sigma > 0 else x_s


def half_log_snr(alpha_bar: float) -> float:
    """λ = log(√ᾱ / √(1−ᾱ)) = ½ log SNR, ±inf at ᾱ = 1 (clean) and ᾱ = 0 (pure noise)."""
    if alpha_bar >= 1.0:
        return math.inf
    if alpha_bar <= 0.0:
        return -math.inf
    return 0.5 * (math.log(alpha_bar) - math.log1p(-alpha_bar))


def dpmpp_2m_step(x: torch.Tensor, x0_hat: torch.Tensor, alpha_bar_t: float, alpha_bar_s: float,
                  x0_prev: torch.Tensor | None = None, alpha_bar_prev: float | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), Lu et al. (2022) Algorithm 2 (data prediction, multistep):

        h = λ_s − λ_t,   r = h_prev / h     (h_prev = λ_t − λ_prev, the previous step)
        D = (1 + 1/(2r)) · x̂0_t − 1/(2r) · x̂0_prev       (first order: D = x̂0_t)
        x_s = (σ_s/σ_t) · x_t − a_s · (e^{−h} − 1) · D

    First order (``x0_prev=None``: the first step, and the final step to clean
    data where h = ∞) is exactly DDIM with η = 0.
    """
    a_s, sigma_s, sigma_t = math.sqrt(alpha_bar_s), math.sqrt(1 - alpha_bar_s), math.sqrt(1 - alpha_bar_t)
    lam_t, lam_s = half_log_snr(alpha_bar_t), half_log_snr(alpha_bar_s)
    h = lam_s - lam_t
    if x0_prev is None or math.isinf(h):
        d = x0_hat  # first order
    else:
        # Linear extrapolation in λ from the previous data prediction
        r = (lam_t - half_log_snr(alpha_bar_prev)) / h
        d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev
    # Exponential integrator step (eq. for x̃_{t_i} in Algorithm 2); e^{−h} = 0 when s is clean
    return (sigma_s / sigma_t) * x - a_s * (math.exp(-h) - 1) * d


# ---------------------------------------------------------------------------------------------------------------
# The sampling loop
# ---------------------------------------------------------------------------------------------------------------

def _model_device(model) -> torch.device | None:
    if isinstance(model, torch.nn.Module):
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            return tensor.device
    return None


def sample(model: Model, shape: Sequence[int], schedule: NoiseSchedule, text: TextCondition | None = None,
           sampler: str = "ddim", steps: int | Sequence[int] = 50, guidance_scale: float = 1.0, eta: float = 0.0,
           prediction_type: str = "epsilon", seeds: int | Sequence[int] = 0, device=None, progress: bool = True,
           clip_x0: float | None = None, ddpm_variance: str = "beta_tilde", dtype: torch.dtype = torch.float32,
           spacing: str | None = None, negative_text: TextCondition | None = None,
           callback: Callable[[int, int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Generate a batch ``shape = (B, C, H, W)`` from noise with any model ``model(x_t, t, text) → prediction``.

    - ``sampler``: ``"ddim"`` (stochasticity ``eta``), ``"ddpm"`` (variance ``ddpm_variance``:
      ``"beta_tilde"`` = β̃_t or ``"beta"`` = β_t) or ``"dpmpp_2m"``.
    - ``steps``: a count or an explicit decreasing list (:func:`sampling_timesteps`); a count is
      spread by ``spacing``: ``"linear"`` (even in t, the default for DDPM and DDIM) or ``"log_snr"``
      (even in λ, the default for DPM-Solver++ as Lu et al. recommend: at 20 steps more than 10×
      closer to the exact ODE solution than even-in-t on the book's Gaussian oracle).
    - ``text``: B captions, or 1 used for every sample, or None (unconditional);
      ``guidance_scale``: the w of :func:`guided_prediction`; ``negative_text``: B negative
      captions (or 1 for all) that replace the null condition in guidance (needs ``text``).
    - ``prediction_type``: what the model outputs, ``"epsilon"``, ``"v"`` or ``"x0"``.
    - ``seeds``: one per sample (an int s means s, s+1, …); sample i's initial noise and every
      later draw come from its own generator (:class:`SampleNoise`), so it does not depend on the batch.
    - ``clip_x0``: clamp x̂0 to [−c, c] at every step (mels live in [−1, 1]); None: no clipping.
    - ``device``: defaults to the model's parameters' device, else the caption's, else the CPU;
      ``dtype``: of the samples (the model's output is cast to it).
    - ``progress``: a tqdm bar (``TQDM_DISABLE=1`` also silences it); ``callback(i, t, x_t, x0_hat)``
      is called at each step, before the update.

    Returns the samples, ``(B, C, H, W)``. Chapter: ``08_sampling``.
    """
    # Check everything before the first model call
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: expected one of {', '.join(SAMPLERS)}")
    check_prediction_type(prediction_type)
    if ddpm_variance not in DDPM_VARIANCES:
        raise ValueError(f"ddpm_variance={ddpm_variance!r}: expected one of {', '.join(DDPM_VARIANCES)}")
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    if clip_x0 is not None and not clip_x0 > 0:
        raise ValueError(f"clip_x0 must be positive or None, got {clip_x0}")
    shape = tuple(int(n) for n in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape: expected (B, C, H, W) with positive sizes, got {shape}")
    B = shape[0]
    if spacing is None:
        spacing = "log_snr" if sampler == "dpmpp_2m" else "linear"
    timesteps = sampling_timesteps(schedule, steps, spacing)
    noise = SampleNoise(sample_seeds(seeds, B))
    if device is None:
        device = _model_device(model) or (text.tokens.device if text is not None else torch.device("cpu"))
    alpha_bar = schedule.alpha_bar.tolist()
    if prediction_type == "epsilon" and alpha_bar[timesteps[0]] == 0.0:
        raise ValueError("prediction_type='epsilon' cannot give x0 where ᾱ = 0 (a zero-terminal-SNR last step): "
                         "train with 'v' prediction, or start at a later step")
    if text is not None:
        if len(text) == 1 and B > 1:
            text = text.repeat(B)
        if len(text) != B:
            raise ValueError(f"text: expected {B} captions (or 1 for all), got {len(text)}")
        text = text.to(device=device)
    if negative_text is not None:
        if text is None:
            raise ValueError("negative_text: a negative prompt needs a caption (text is None)")
        if len(negative_text) == 1 and B > 1:
            negative_text = negative_text.repeat(B)
        if len(negative_text) != B:
            raise ValueError(f"negative_text: expected {B} negative captions (or 1 for all), got {len(negative_text)}")
        negative_text = negative_text.to(device=device)

    def denoise(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂) at step t from the (guided) prediction."""
        t_batch = torch.full((B,), t, dtype=torch.long, device=device)
        pred = guided_prediction(model, x, t_batch, text, guidance_scale, negative_text).to(x.dtype)
        x0_hat = convert(pred, prediction_type, "x0", x, t_batch, schedule)
        if clip_x0 is not None:
            x0_hat = x0_hat.clamp(-clip_x0, clip_x0)
            eps_hat = convert(x0_hat, "x0", "epsilon", x, t_batch, schedule)
        else:
            eps_hat = convert(pred, prediction_type, "epsilon", x, t_batch, schedule)
        return x0_hat, eps_hat

    def randn() -> torch.Tensor:
        return noise.randn(shape, device=device, dtype=dtype)

    bar = tqdm(timesteps, desc=sampler, leave=False, **({} if progress else {"disable": True}))
    with torch.no_grad():
        x = randn()  # x_T ~ N(0, I)
        x0_prev, t_prev = None, None
        for i, t in enumerate(bar):
            s = timesteps[i + 1] if i + 1 < len(timesteps) else -1  # -1: clean data, ᾱ = 1
            ab_t, ab_s = alpha_bar[t], (alpha_bar[s] if s >= 0 else 1.0)
            x0_hat, eps_hat = denoise(x, t)
            if callback is not None:
                callback(i, t, x, x0_hat)
            if sampler == "ddpm":
                x = ddpm_step(x, x0_hat, ab_t, ab_s, randn, ddpm_variance)
            elif sampler == "ddim":
                x = ddim_step(x, x0_hat, eps_hat, ab_t, ab_s, randn, eta)
            else:
                second_order = x0_prev is not None and s >= 0
                x = dpmpp_2m_step(x, x0_hat, ab_t, ab_s, x0_prev if second_order else None,
                                  alpha_bar[t_prev] if second_order else None)
            x0_prev, t_prev = x0_hat, t
    bar.close()
    return x
