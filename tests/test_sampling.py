"""Samplers against an oracle denoiser whose answer is known in closed form.

The oracle. Let the data be Gaussian, x0 ~ N(μ, diag(s²)) (μ and s vary per
pixel). With x_t = a x0 + σ ε, a = √ᾱ_t, σ = √(1−ᾱ_t), the pair (x_t, ε) is
jointly Gaussian, per pixel:

    E[x_t] = a μ,   Var[x_t] = a² s² + σ² = ᾱ s² + 1 − ᾱ,   Cov[x_t, ε] = σ,

so the best possible ε-prediction (the one the squared-error loss is minimised
by) is the regression of ε on x_t:

    E[ε | x_t] = σ (x_t − a μ) / (ᾱ s² + 1 − ᾱ).

The v and x0 oracles follow with the conversions of ``musicdiff_lib.diffusion``
(they are affine in the prediction given x_t, so they commute with E[· | x_t]).
A conditional oracle shifts the mean by the first entry of the caption's
pooled embedding, μ_c = μ + c, so the null condition (zeros) is the
unconditional model. Because E[ε | x_t] is affine in μ, guidance with scale w
is exactly the oracle of the data shifted by w·c.

Tolerances. Samples are 16 × 1×64×64 = 65,536 pixel values, independent under
the oracle (it acts pixel by pixel). Standardised by the true μ and s, their
mean has standard error 1/√65536 = 0.0039 and their variance 0.0055; every
statistical tolerance is 5 standard errors plus the sampler's known
discretisation bias, which is measured and stated where it is not negligible.
"""
from __future__ import annotations

import pytest
import torch

from musicdiff_lib.diffusion import convert
from musicdiff_lib.sampling import (SampleNoise, ddim_step, dpmpp_2m_step, guided_prediction, sample,
                                    sampling_timesteps)
from musicdiff_lib.schedules import NoiseSchedule
from musicdiff_lib.text import TextCondition

SHAPE = (16, 1, 64, 64)
_g = torch.Generator().manual_seed(1234)
MU = torch.rand(1, 1, 64, 64, generator=_g, dtype=torch.float64) - 0.5  # per-pixel data mean in [-0.5, 0.5]
STD = 0.2 + 0.4 * torch.rand(1, 1, 64, 64, generator=_g, dtype=torch.float64)  # per-pixel data std in [0.2, 0.6]
SE_MEAN, SE_VAR = 1 / 65536**0.5, (2 / 65536) ** 0.5  # 0.0039, 0.0055


pytestmark = pytest.mark.usefixtures("one_thread")


class GaussianOracle:
    """The exact denoiser of N(μ, s²) data (module docstring), predicting ``prediction_type``.

    ε and x0 are the closed forms E[ε | x_t] and E[x0 | x_t] = μ + a s² (x_t − a μ)/(ᾱ s² + 1 − ᾱ); v is
    converted from x0 (v = (a x_t − x0)/σ), which stays finite at a zero-terminal-SNR step where a = 0.
    With a caption, μ is shifted by ``text.pooled[:, 0]``. Inputs smaller than 64×64 use the top-left
    corner of μ and s. Records the batch size of every call.
    """

    def __init__(self, schedule: NoiseSchedule, prediction_type: str = "epsilon", mu=MU, std=STD):
        self.schedule, self.prediction_type, self.mu, self.std = schedule, prediction_type, mu, std
        self.calls: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, text: TextCondition | None) -> torch.Tensor:
        self.calls.append(x.shape[0])
        t = t.cpu()
        if (t == t[0]).all():
            t = t[:1]  # a sampler's batch shares one step: compute the per-pixel coefficients once
        ab = self.schedule.alpha_bar[t].view(-1, 1, 1, 1)
        H, W = x.shape[-2:]
        mu, std = self.mu[..., :H, :W], self.std[..., :H, :W]
        if text is not None:
            mu = mu + text.pooled[:, :1].double().cpu().view(-1, 1, 1, 1)
        var_t = ab * std**2 + 1 - ab  # Var[x_t], per pixel
        mean_t = (ab.sqrt() * mu).to(x)  # E[x_t]
        if self.prediction_type == "epsilon":
            return ((1 - ab).sqrt() / var_t).to(x) * (x - mean_t)
        x0 = mu.to(x) + (ab.sqrt() * std**2 / var_t).to(x) * (x - mean_t)
        t_batch = t.expand(x.shape[0]) if len(t) == 1 else t
        return convert(x0, "x0", self.prediction_type, x, t_batch, self.schedule)


def caption(shift: float | list[float], batch: int | None = None) -> TextCondition:
    """A toy caption whose pooled embedding's first entry is the mean shift (the oracle's condition)."""
    shifts = torch.as_tensor(shift, dtype=torch.float32).reshape(-1)
    if batch is not None:
        shifts = shifts.expand(batch)
    B = len(shifts)
    pooled = torch.zeros(B, 4)
    pooled[:, 0] = shifts
    return TextCondition(pooled[:, None, :].clone(), torch.ones(B, 1, dtype=torch.bool), pooled)


def standardised(x: torch.Tensor) -> torch.Tensor:
    return (x.double() - MU) / STD


def exact_ode_solution(x_T: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Where the probability-flow ODE takes x_T (step T−1) at step 0 for Gaussian data, followed by the
    samplers' common last step x̂0 = E[x0 | x_0]. The ODE keeps (x_t − aμ)/√Var[x_t] fixed: for Gaussian
    marginals it is the monotone map between them."""
    ab_T, ab_0 = schedule.alpha_bar[-1], schedule.alpha_bar[0]
    var_T, var_0 = ab_T * STD**2 + 1 - ab_T, ab_0 * STD**2 + 1 - ab_0
    x_ode = ab_0.sqrt() * MU + var_0.sqrt() * (x_T.double() - ab_T.sqrt() * MU) / var_T.sqrt()
    return MU + ab_0.sqrt() * STD**2 * (x_ode - ab_0.sqrt() * MU) / var_0


@pytest.fixture(scope="module", params=["linear", "cosine"])
def schedule(request) -> NoiseSchedule:
    return NoiseSchedule.create(request.param, 1000)


# --- the samplers recover the data distribution --------------------------------------------------------------

@pytest.mark.parametrize("schedule_name, variance, bias",
                         [("linear", "beta_tilde", 0.03), ("cosine", "beta_tilde", 0.03), ("linear", "beta", 0.01)])
def test_ddpm_recovers_the_gaussian_mean_and_variance(schedule_name, variance, bias):
    """Ho et al. Algorithm 2, all 1000 steps. With the posterior variance β̃ the chain is slightly
    under-dispersed even with a perfect model (each step leaves out Var[x0 | x_t]); propagating the
    per-pixel variance through the chain exactly gives −2.1 % (linear) and −1.1 % (cosine) on these
    data: tolerance 5 SE + 3 %. With σ² = β: +0.5 % / +0.25 %, tolerance 5 SE + 1 %. The mean is unbiased.
    Measured on the seeds below: variance −3.0 % (β̃ linear), −1.3 % (β̃ cosine), −0.5 % (β linear)."""
    schedule = NoiseSchedule.create(schedule_name, 1000)
    x = sample(GaussianOracle(schedule), SHAPE, schedule, sampler="ddpm", steps=1000, seeds=0,
               ddpm_variance=variance, progress=False)
    z = standardised(x)
    assert abs(z.mean().item()) < 5 * SE_MEAN
    assert abs(z.var().item() - 1) < 5 * SE_VAR + bias


def test_ddim_recovers_the_gaussian_mean_and_variance(schedule):
    """Deterministic DDIM (η = 0), every step: each first-order ODE step shrinks the spread a little
    (exactly −0.8 % linear, −0.4 % cosine over 1000 steps on these data): tolerance 5 SE + 1.5 %.
    The mean is unbiased. Measured: variance −0.95 % (linear), −0.56 % (cosine)."""
    x = sample(GaussianOracle(schedule), SHAPE, schedule, sampler="ddim", steps=1000, seeds=0, progress=False)
    z = standardised(x)
    assert abs(z.mean().item()) < 5 * SE_MEAN
    assert abs(z.var().item() - 1) < 5 * SE_VAR + 0.015


def test_ddim_with_eta_zero_is_deterministic():
    schedule = NoiseSchedule.create("cosine", 1000)
    a = sample(GaussianOracle(schedule), (4, 1, 8, 8), schedule, sampler="ddim", steps=25, seeds=[3, 1, 4, 1],
               progress=False)
    b = sample(GaussianOracle(schedule), (4, 1, 8, 8), schedule, sampler="ddim", steps=25, seeds=[3, 1, 4, 1],
               progress=False)
    assert torch.equal(a, b)
    assert torch.equal(a[1], a[3])  # the same seed gives the same sample
    c = sample(GaussianOracle(schedule), (4, 1, 8, 8), schedule, sampler="ddim", steps=25, seeds=[3, 1, 4, 2],
               progress=False)
    assert not torch.equal(a[3], c[3])


def test_ddim_with_eta_one_at_every_step_is_ddpm():
    """Song et al. (2021): η = 1 makes σ_t the DDPM posterior standard deviation √β̃_t."""
    schedule = NoiseSchedule.create("linear", 100)
    kwargs = dict(shape=(4, 1, 8, 8), schedule=schedule, steps=100, seeds=7, progress=False, dtype=torch.float64)
    ddim = sample(GaussianOracle(schedule), sampler="ddim", eta=1.0, **kwargs)
    ddpm = sample(GaussianOracle(schedule), sampler="ddpm", **kwargs)
    assert torch.allclose(ddim, ddpm, atol=1e-10)


def test_dpmpp_2m_at_20_steps_lands_near_ddim_at_200_steps(schedule):
    """Same seeds, so the same x_T. Measured: linear max 0.065, RMS 0.013; cosine max 0.089, RMS 0.016:
    tolerance max 0.12, RMS 0.025 (the data span about ±1.5). Against the exact ODE solution
    (``exact_ode_solution``) DPM-Solver++-20 is at max 0.035 / 0.072 (linear / cosine), DDIM-200 at
    0.030 / 0.017 and DDIM-20 at 0.30 / 0.17: test that DPM-Solver++-20 beats DDIM-20 at least 2×."""
    oracle = GaussianOracle(schedule)
    fast = sample(oracle, SHAPE, schedule, sampler="dpmpp_2m", steps=20, seeds=0, progress=False)
    slow = sample(oracle, SHAPE, schedule, sampler="ddim", steps=200, seeds=0, progress=False)
    assert len(oracle.calls) == 220  # one model evaluation per step
    gap = (fast - slow).abs()
    assert gap.max().item() < 0.12 and gap.pow(2).mean().sqrt().item() < 0.025
    exact = exact_ode_solution(SampleNoise(range(SHAPE[0])).randn(SHAPE, dtype=torch.float64), schedule)
    ddim20 = sample(oracle, SHAPE, schedule, sampler="ddim", steps=20, seeds=0, progress=False)
    assert (fast - exact).abs().max() < 0.5 * (ddim20 - exact).abs().max()


def test_dpmpp_2m_first_order_step_is_ddim():
    x, x0_hat = torch.randn(3, 1, 4, 4, dtype=torch.float64), torch.randn(3, 1, 4, 4, dtype=torch.float64)
    ab_t, ab_s = 0.3, 0.6
    eps_hat = (x - ab_t**0.5 * x0_hat) / (1 - ab_t) ** 0.5
    ddim = ddim_step(x, x0_hat, eps_hat, ab_t, ab_s, randn=None, eta=0.0)
    assert torch.allclose(dpmpp_2m_step(x, x0_hat, ab_t, ab_s), ddim, atol=1e-12)
    assert torch.allclose(dpmpp_2m_step(x, x0_hat, ab_t, 1.0), x0_hat, atol=1e-12)  # last step: x̂0


def test_dpmpp_2m_is_second_order():
    """Doubling the steps divides the RMS error against the exact ODE solution by about 4 (2nd order):
    measured 3.9 (25 → 50 steps) and 4.1 (50 → 100); test > 3."""
    schedule = NoiseSchedule.create("linear", 1000)
    shape = (4, 1, 64, 64)
    exact = exact_ode_solution(SampleNoise(range(4)).randn(shape, dtype=torch.float64), schedule)
    errors = [(sample(GaussianOracle(schedule), shape, schedule, sampler="dpmpp_2m", steps=n, seeds=0,
                      progress=False, dtype=torch.float64) - exact).pow(2).mean().sqrt().item() for n in (25, 50, 100)]
    assert errors[1] < errors[0] / 3 and errors[2] < errors[1] / 3, errors


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_every_sampler_handles_epsilon_v_and_x0_models(sampler):
    schedule = NoiseSchedule.create("cosine", 1000)
    outputs = [sample(GaussianOracle(schedule, p), (3, 1, 8, 8), schedule, sampler=sampler, steps=30, eta=0.5,
                      prediction_type=p, seeds=11, progress=False, dtype=torch.float64) for p in ("epsilon", "v", "x0")]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-9) and torch.allclose(outputs[0], outputs[2], atol=1e-9)


def test_zero_terminal_snr_needs_v_prediction():
    schedule = NoiseSchedule.create("linear", 1000, zero_terminal_snr=True)
    with pytest.raises(ValueError, match="'v'"):
        sample(GaussianOracle(schedule), (2, 1, 4, 4), schedule, steps=10, progress=False)
    x = sample(GaussianOracle(schedule, "v"), (2, 1, 4, 4), schedule, steps=10, prediction_type="v", progress=False)
    assert torch.isfinite(x).all()


# --- classifier-free guidance ------------------------------------------------------------------------------------

def test_guidance_identities_hold():
    schedule = NoiseSchedule.create("cosine", 1000)
    oracle = GaussianOracle(schedule)
    x = torch.randn(3, 1, 64, 64)
    t = torch.tensor([10, 500, 900])
    text = caption([0.5, -1.0, 2.0])
    conditional, unconditional = oracle(x, t, text), oracle(x, t, text.null_like())
    oracle.calls.clear()
    assert torch.equal(guided_prediction(oracle, x, t, text, 1.0), conditional)  # w = 1: exactly conditional
    assert torch.equal(guided_prediction(oracle, x, t, text, 0.0), unconditional)  # w = 0: exactly unconditional
    assert oracle.calls == [3, 3]  # one pass each, no wasted half
    assert torch.equal(guided_prediction(oracle, x, t, None, 7.5), oracle(x, t, None))  # no caption: unconditional
    oracle.calls.clear()
    for w in (-1.0, 0.5, 3.0, 7.5):
        guided = guided_prediction(oracle, x, t, text, w)
        assert torch.allclose(guided, unconditional + w * (conditional - unconditional), atol=1e-5)
    assert oracle.calls == [6] * 4  # one batched forward pass on [conditional; unconditional]


def test_guided_samples_move_the_mean_by_w_times_the_condition():
    """ε is affine in μ, so guidance w on a shift c is the oracle of data shifted by w·c."""
    schedule = NoiseSchedule.create("cosine", 1000)
    for w in (0.0, 1.0, 2.5):
        x = sample(GaussianOracle(schedule), SHAPE, schedule, text=caption(0.3), guidance_scale=w, steps=50,
                   seeds=0, progress=False)
        assert abs(((x.double() - MU - w * 0.3) / STD).mean().item()) < 5 * SE_MEAN, w


def test_a_negative_prompt_replaces_the_null_condition_in_guidance():
    """ε̂ = ε_neg + w (ε_c − ε_neg). The oracle is affine in its caption's pooled[:, 0] (the mean shift), so
    the guided prediction is exactly the oracle of the shift n + w (c − n), in one batched pass."""
    schedule = NoiseSchedule.create("cosine", 1000)
    oracle = GaussianOracle(schedule)
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(7))
    t = torch.tensor([10, 500, 900])
    c, n = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([-0.25, 0.75, 0.1])
    text, negative = caption(c.tolist()), caption(n.tolist())
    for w in (-1.0, 0.5, 3.0, 7.5):
        oracle.calls.clear()
        guided = guided_prediction(oracle, x, t, text, w, negative=negative)
        assert oracle.calls == [6]  # one forward pass on [caption; negative caption]
        closed_form = oracle(x, t, caption((n + w * (c - n)).tolist()))
        assert torch.allclose(guided, closed_form, atol=1e-5), w
        assert not torch.allclose(guided, guided_prediction(oracle, x, t, text, w), atol=1e-3)  # it matters
    assert torch.equal(guided_prediction(oracle, x, t, text, 1.0, negative), oracle(x, t, text))  # w = 1: caption only
    assert torch.equal(guided_prediction(oracle, x, t, text, 0.0, negative), oracle(x, t, negative))  # w = 0: negative


def test_no_negative_prompt_is_bitwise_the_null_condition():
    schedule = NoiseSchedule.create("cosine", 1000)
    oracle = GaussianOracle(schedule)
    x = torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(8))
    t = torch.tensor([10, 500, 900])
    text = caption([0.5, -1.0, 2.0])
    eps_c, eps_u = oracle(torch.cat([x, x]), torch.cat([t, t]), TextCondition.cat([text, text.null_like()])).chunk(2)
    assert torch.equal(guided_prediction(oracle, x, t, text, 3.0, negative=None), eps_u + 3.0 * (eps_c - eps_u))
    kwargs = dict(text=caption([0.3, -0.2]), guidance_scale=2.5, steps=10, seeds=[4, 5], progress=False)
    for sampler in ("ddpm", "dpmpp_2m"):
        a = sample(oracle, (2, 1, 16, 16), schedule, sampler=sampler, **kwargs)
        assert torch.equal(a, sample(oracle, (2, 1, 16, 16), schedule, sampler=sampler, negative_text=None, **kwargs))


def test_negative_prompt_samples_move_the_mean_by_n_plus_w_times_c_minus_n():
    """Sampling with a caption c and one negative caption n for all: the data mean moves by n + w (c − n)."""
    schedule = NoiseSchedule.create("cosine", 1000)
    c, n, w = 0.3, -0.2, 2.5
    x = sample(GaussianOracle(schedule), SHAPE, schedule, text=caption(c), negative_text=caption(n),
               guidance_scale=w, steps=50, seeds=0, progress=False)
    assert abs(((x.double() - MU - (n + w * (c - n))) / STD).mean().item()) < 5 * SE_MEAN
    oracle = GaussianOracle(schedule)
    with pytest.raises(ValueError, match="negative_text: expected 3 negative captions"):
        sample(oracle, (3, 1, 4, 4), schedule, text=caption(0.1), negative_text=caption([0.1, 0.2]))
    with pytest.raises(ValueError, match="negative_text: a negative prompt needs a caption"):
        sample(oracle, (1, 1, 4, 4), schedule, negative_text=caption(0.1))
    with pytest.raises(ValueError, match="negative: expected 2 negative captions"):
        guided_prediction(oracle, torch.zeros(2, 1, 4, 4), torch.tensor([1, 1]), caption([0.1, 0.2]), 2.0,
                          caption([0.1, 0.2, 0.3]))
    assert oracle.calls == []


def test_guidance_works_in_any_prediction_space():
    schedule = NoiseSchedule.create("linear", 1000)
    outs = [sample(GaussianOracle(schedule, p), (2, 1, 8, 8), schedule, text=caption([0.4, -0.2]), guidance_scale=3.0,
                   steps=20, prediction_type=p, seeds=5, progress=False, dtype=torch.float64) for p in ("epsilon", "v")]
    assert torch.allclose(outs[0], outs[1], atol=1e-9)


# --- seeds, batches, models, progress, errors ---------------------------------------------------------------------

class TinyConvModel(torch.nn.Module):
    """An untrained network with the U-Net's signature, to show any callable works."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.text = torch.nn.Linear(4, 1)

    def forward(self, x, t, text):
        out = self.conv(x) * (t.float().view(-1, 1, 1, 1) / 1000)
        return out if text is None else out + self.text(text.pooled).view(-1, 1, 1, 1)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_a_sample_does_not_depend_on_its_batch(sampler):
    schedule = NoiseSchedule.create("cosine", 1000)
    for model in (GaussianOracle(schedule), TinyConvModel()):
        kwargs = dict(schedule=schedule, sampler=sampler, steps=20, eta=0.7, guidance_scale=2.0, progress=False)
        batch = sample(model, (3, 1, 8, 8), text=caption([0.1, 0.2, 0.3]), seeds=[5, 6, 7], **kwargs)
        for i, seed in enumerate([5, 6, 7]):
            alone = sample(model, (1, 1, 8, 8), text=caption([0.1, 0.2, 0.3][i]), seeds=[seed], **kwargs)
            assert torch.allclose(batch[i], alone[0], atol=1e-5), (type(model).__name__, i)
    assert torch.equal(SampleNoise([6]).randn((1, 2)), SampleNoise([5, 6]).randn((2, 2))[1:])


def test_an_int_seed_means_consecutive_seeds():
    schedule = NoiseSchedule.create("linear", 1000)
    a = sample(GaussianOracle(schedule), (3, 1, 4, 4), schedule, steps=5, seeds=10, progress=False)
    b = sample(GaussianOracle(schedule), (3, 1, 4, 4), schedule, steps=5, seeds=[10, 11, 12], progress=False)
    assert torch.equal(a, b)


def test_a_single_caption_is_used_for_every_sample():
    schedule = NoiseSchedule.create("linear", 1000)
    one = sample(GaussianOracle(schedule), (3, 1, 4, 4), schedule, text=caption(0.5), steps=5, progress=False)
    three = sample(GaussianOracle(schedule), (3, 1, 4, 4), schedule, text=caption(0.5, 3), steps=5, progress=False)
    assert torch.equal(one, three)


def test_progress_bar_shows_and_can_be_silenced(capsys, monkeypatch):
    """progress=False passes disable=True; progress=True leaves the default, so TQDM_DISABLE=1 still silences it
    (tqdm reads TQDM_* variables when it is imported, and an explicit disable=False would override them)."""
    import musicdiff_lib.sampling as sampling

    bars = []

    class RecordingBar(list):
        def __init__(self, iterable, **kwargs):
            super().__init__(iterable)
            bars.append(kwargs)

        def close(self):
            pass

    schedule = NoiseSchedule.create("linear", 1000)
    sample(GaussianOracle(schedule), (1, 1, 4, 4), schedule, steps=5, progress=False)
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(sampling, "tqdm", RecordingBar)
    sample(GaussianOracle(schedule), (1, 1, 4, 4), schedule, steps=5, progress=True)
    sample(GaussianOracle(schedule), (1, 1, 4, 4), schedule, steps=5, progress=False)
    assert "disable" not in bars[0] and bars[1]["disable"] is True


def test_callback_sees_every_step():
    schedule = NoiseSchedule.create("linear", 1000)
    seen = []
    sample(GaussianOracle(schedule), (1, 1, 4, 4), schedule, steps=[900, 500, 100], progress=False,
           callback=lambda i, t, x, x0: seen.append((i, t, tuple(x0.shape))))
    assert seen == [(0, 900, (1, 1, 4, 4)), (1, 500, (1, 1, 4, 4)), (2, 100, (1, 1, 4, 4))]


def test_timesteps_are_evenly_spaced_and_decreasing():
    schedule = NoiseSchedule.create("cosine", 1000)
    assert sampling_timesteps(schedule, 1000) == list(range(999, -1, -1))
    assert sampling_timesteps(schedule, 4) == [999, 666, 333, 0]
    assert sampling_timesteps(schedule, [900, 10]) == [900, 10]
    for n in (3, 20, 500, 1000):
        steps = sampling_timesteps(schedule, n, "log_snr")
        assert len(steps) == n and steps[0] == 999 and steps[-1] == 0
        assert all(b < a for a, b in zip(steps, steps[1:]))
    lam = (0.5 * NoiseSchedule.create("linear").log_snr)[sampling_timesteps(NoiseSchedule.create("linear"), 10,
                                                                               "log_snr")]
    assert (lam.diff() - lam.diff().mean()).abs().max() < 0.1  # even in λ up to rounding to integer steps


def test_bad_arguments_give_clear_errors():
    schedule = NoiseSchedule.create("linear", 1000)
    oracle = GaussianOracle(schedule)
    with pytest.raises(ValueError, match="sampler='euler'.*ddpm, ddim, dpmpp_2m"):
        sample(oracle, (1, 1, 4, 4), schedule, sampler="euler")
    with pytest.raises(ValueError, match="steps=2000.*T=1000"):
        sample(oracle, (1, 1, 4, 4), schedule, steps=2000)
    with pytest.raises(ValueError, match="steps=0"):
        sample(oracle, (1, 1, 4, 4), schedule, steps=0)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(oracle, (1, 1, 4, 4), schedule, steps=[10, 500])
    with pytest.raises(ValueError, match=r"0 … 999"):
        sample(oracle, (1, 1, 4, 4), schedule, steps=[1000, 5])
    with pytest.raises(ValueError, match="prediction_type='score'.*epsilon, v, x0"):
        sample(oracle, (1, 1, 4, 4), schedule, prediction_type="score")
    with pytest.raises(ValueError, match="one seed per sample"):
        sample(oracle, (3, 1, 4, 4), schedule, seeds=[1, 2])
    with pytest.raises(ValueError, match="text: expected 3 captions"):
        sample(oracle, (3, 1, 4, 4), schedule, text=caption([0.1, 0.2]))
    with pytest.raises(ValueError, match="ddpm_variance"):
        sample(oracle, (1, 1, 4, 4), schedule, sampler="ddpm", ddpm_variance="large")
    with pytest.raises(ValueError, match="spacing"):
        sample(oracle, (1, 1, 4, 4), schedule, spacing="karras")
    assert oracle.calls == []  # every check happens before the first model call
