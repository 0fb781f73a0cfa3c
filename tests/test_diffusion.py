"""The forward process, the three prediction targets, the loss and condition dropout, against closed forms.

Notation: a = √ᾱ_t, σ = √(1 − ᾱ_t), x_t = a x0 + σ ε; v = a ε − σ x0 (Salimans & Ho 2022).
"""
from __future__ import annotations

import itertools

import pytest
import torch

from musicdiff_lib.diffusion import (PREDICTION_TYPES, LossOutput, convert, diffusion_loss, drop_condition,
                                     min_snr_weight, q_sample, target, to_epsilon, to_v, to_x0)
from musicdiff_lib.schedules import NoiseSchedule
from musicdiff_lib.text import TextCondition

LINEAR = NoiseSchedule.create("linear", 1000)
COSINE = NoiseSchedule.create("cosine", 1000)


pytestmark = pytest.mark.usefixtures("one_thread")


def batch(seed: int = 0, B: int = 6, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(B, 1, 8, 8, generator=g, dtype=dtype) * 2 - 1
    noise = torch.randn(B, 1, 8, 8, generator=g, dtype=dtype)
    t = torch.tensor([0, 1, 250, 500, 998, 999])[:B]
    return x0, noise, t


def captions(B: int, D: int = 8, L: int = 3, seed: int = 0) -> TextCondition:
    g = torch.Generator().manual_seed(seed)
    return TextCondition(torch.randn(B, L, D, generator=g) + 5, torch.ones(B, L, dtype=torch.bool),
                         torch.randn(B, D, generator=g) + 5)


# --- the forward process ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_q_sample_matches_its_closed_form(schedule):
    x0, noise, t = batch()
    x_t = q_sample(x0, t, noise, schedule)
    for i, step in enumerate(t.tolist()):
        ab = schedule.alpha_bar[step].item()
        assert torch.allclose(x_t[i], ab**0.5 * x0[i] + (1 - ab) ** 0.5 * noise[i], atol=1e-12)


def test_q_sample_keeps_dtype_and_has_the_forward_marginal():
    """x0 ~ N(μ, s²) → x_t ~ N(√ᾱ μ, ᾱ s² + 1 − ᾱ): 200,000 draws, tolerance 5 standard errors."""
    g = torch.Generator().manual_seed(1)
    n, mu, s, step = 200_000, 0.7, 0.3, 300
    x0 = (mu + s * torch.randn(n, 1, 1, 1, generator=g)).float()
    x_t = q_sample(x0, torch.full((n,), step), torch.randn(n, 1, 1, 1, generator=g), COSINE)
    assert x_t.dtype == torch.float32 and x_t.shape == x0.shape
    ab = COSINE.alpha_bar[step].item()
    var = ab * s**2 + 1 - ab
    assert abs(x_t.mean().item() - ab**0.5 * mu) < 5 * (var / n) ** 0.5
    assert abs(x_t.var().item() - var) < 5 * var * (2 / n) ** 0.5


def test_q_sample_rejects_bad_steps_and_shapes():
    x0, noise, t = batch()
    with pytest.raises(ValueError, match=r"0 … 999"):
        q_sample(x0, torch.full((6,), 1000), noise, LINEAR)
    with pytest.raises(ValueError, match=r"\(6,\)"):
        q_sample(x0, torch.tensor([1, 2]), noise, LINEAR)
    with pytest.raises(ValueError, match="integer steps"):
        q_sample(x0, torch.full((6,), 0.5), noise, LINEAR)
    with pytest.raises(ValueError, match="noise"):
        q_sample(x0, t, noise[:, :, :4], LINEAR)


# --- targets and conversions -----------------------------------------------------------------------------------

def test_targets_are_their_definitions():
    x0, noise, t = batch()
    a, sigma = LINEAR.sqrt_alpha_bar[t].view(-1, 1, 1, 1), LINEAR.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
    assert torch.equal(target(x0, noise, t, LINEAR, "epsilon"), noise)
    assert torch.equal(target(x0, noise, t, LINEAR, "x0"), x0)
    assert torch.allclose(target(x0, noise, t, LINEAR, "v"), a * noise - sigma * x0, atol=1e-12)


@pytest.mark.parametrize("schedule", [LINEAR, COSINE], ids=["linear", "cosine"])
def test_every_target_converts_to_the_true_others(schedule):
    """Given x_t, the true ε, v and x0 determine each other (the closed forms in diffusion.py)."""
    x0, noise, t = batch()
    x_t = q_sample(x0, t, noise, schedule)
    truth = {p: target(x0, noise, t, schedule, p) for p in PREDICTION_TYPES}
    for source, dest in itertools.product(PREDICTION_TYPES, repeat=2):
        got = convert(truth[source], source, dest, x_t, t, schedule)
        # x0 from ε divides by a = √ᾱ, which is 0.0064 at t = 999 (linear): 1e-9 is float64 round-off × 1/a
        assert torch.allclose(got, truth[dest], atol=1e-9), (source, dest)


def test_v_closed_forms():
    """x0 = a x_t − σ v and ε = σ x_t + a v (Salimans & Ho 2022, appendix)."""
    x0, noise, t = batch()
    a, sigma = COSINE.sqrt_alpha_bar[t].view(-1, 1, 1, 1), COSINE.sqrt_one_minus_alpha_bar[t].view(-1, 1, 1, 1)
    x_t = a * x0 + sigma * noise
    v = a * noise - sigma * x0
    assert torch.allclose(to_x0(v, "v", x_t, t, COSINE), a * x_t - sigma * v, atol=1e-12)
    assert torch.allclose(to_epsilon(v, "v", x_t, t, COSINE), sigma * x_t + a * v, atol=1e-12)
    assert torch.allclose(to_v(noise, "epsilon", x_t, t, COSINE), v, atol=1e-9)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_conversions_round_trip(dtype, atol):
    """Any prediction, true or not, survives from → to → from. float32 loses up to ~1e-3 through x0 at t = 999
    (the 1/a = 156 amplification of round-off), hence the looser float32 tolerance."""
    g = torch.Generator().manual_seed(3)
    _, _, t = batch()
    x_t = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    pred = torch.randn(6, 1, 8, 8, generator=g, dtype=torch.float64).to(dtype)
    for source, dest in itertools.product(PREDICTION_TYPES, repeat=2):
        back = convert(convert(pred, source, dest, x_t, t, LINEAR), dest, source, x_t, t, LINEAR)
        assert back.dtype == dtype
        assert torch.allclose(back, pred, atol=atol), (source, dest, (back - pred).abs().max().item())


def test_conversions_are_affine_so_averages_commute():
    """What makes classifier-free guidance the same in every prediction space."""
    g = torch.Generator().manual_seed(4)
    _, _, t = batch()
    x_t, p, q = (torch.randn(6, 1, 4, 4, generator=g, dtype=torch.float64) for _ in range(3))
    w = 3.5
    for source, dest in itertools.product(PREDICTION_TYPES, repeat=2):
        mixed = convert(q + w * (p - q), source, dest, x_t, t, COSINE)
        pc, qc = convert(p, source, dest, x_t, t, COSINE), convert(q, source, dest, x_t, t, COSINE)
        assert torch.allclose(mixed, qc + w * (pc - qc), atol=1e-8)


def test_bad_prediction_types_are_rejected():
    x0, noise, t = batch()
    with pytest.raises(ValueError, match="prediction_type='score'.*epsilon, v, x0"):
        target(x0, noise, t, LINEAR, "score")
    with pytest.raises(ValueError, match="prediction_type='eps'"):
        convert(x0, "eps", "v", x0, t, LINEAR)
    with pytest.raises(ValueError, match="prediction_type='sample'"):
        diffusion_loss(lambda x, t, c: x, x0, None, LINEAR, prediction_type="sample")


# --- min-SNR-γ weighting ---------------------------------------------------------------------------------------

def test_min_snr_weights_match_the_formulas():
    """Hang et al. (2023): ε: min(SNR, γ)/SNR, v: min(SNR, γ)/(SNR + 1), x0: min(SNR, γ)."""
    t = torch.arange(0, 1000, 7)
    snr = LINEAR.alpha_bar[t] / (1 - LINEAR.alpha_bar[t])
    gamma = 5.0
    clipped = torch.minimum(snr, torch.tensor(gamma, dtype=torch.float64))
    assert torch.allclose(min_snr_weight(t, LINEAR, gamma, "epsilon"), clipped / snr, rtol=1e-12)
    assert torch.allclose(min_snr_weight(t, LINEAR, gamma, "v"), clipped / (snr + 1), rtol=1e-12)
    assert torch.allclose(min_snr_weight(t, LINEAR, gamma, "x0"), clipped, rtol=1e-12)
    low_noise = t[snr > gamma]  # where SNR > γ, ε-prediction is down-weighted to γ/SNR; elsewhere 1
    assert torch.allclose(min_snr_weight(low_noise, LINEAR, gamma, "epsilon"), gamma / snr[snr > gamma])
    assert (min_snr_weight(t[snr <= gamma], LINEAR, gamma, "epsilon") == 1).all()
    with pytest.raises(ValueError, match="positive"):
        min_snr_weight(t, LINEAR, 0.0)


def test_min_snr_weighting_is_the_same_objective_in_every_parametrisation():
    """The weighted errors of one x̂0, expressed as ε, v or x0 predictions, are equal: w_t · ‖Δtarget‖² =
    min(SNR, γ) · ‖Δx0‖² for each target."""
    x0, noise, t = batch()
    x_t = q_sample(x0, t, noise, COSINE)
    x0_hat = x0 + 0.1 * torch.randn(x0.shape, generator=torch.Generator().manual_seed(5), dtype=x0.dtype)
    errors = {}
    for p in PREDICTION_TYPES:
        pred = convert(x0_hat, "x0", p, x_t, t, COSINE)
        sq = (pred - target(x0, noise, t, COSINE, p)).pow(2).flatten(1).mean(1)
        errors[p] = min_snr_weight(t, COSINE, 5.0, p) * sq
    assert torch.allclose(errors["epsilon"], errors["x0"], rtol=1e-6)
    assert torch.allclose(errors["v"], errors["x0"], rtol=1e-6)


# --- condition dropout -----------------------------------------------------------------------------------------

def test_drop_condition_extremes():
    text = captions(5)
    assert drop_condition(text, 0.0) is text
    dropped = drop_condition(text, 1.0, torch.Generator().manual_seed(0))
    assert (dropped.tokens == 0).all() and not dropped.mask.any() and (dropped.pooled == 0).all()
    assert drop_condition(None, 0.5) is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        drop_condition(text, 1.5)


def test_drop_condition_rate_is_p():
    """20,000 captions at p = 0.1: the dropped fraction has standard error √(p(1−p)/n) = 0.0021;
    tolerance 5 SE = 0.011. Kept captions are untouched; dropped ones are exactly the null condition."""
    n, p = 20_000, 0.1
    text = captions(n, D=4, L=2)
    out = drop_condition(text, p, torch.Generator().manual_seed(0))
    dropped = ~out.mask.any(dim=1)
    assert abs(dropped.float().mean().item() - p) < 5 * (p * (1 - p) / n) ** 0.5
    assert torch.equal(out.tokens[~dropped], text.tokens[~dropped])
    assert torch.equal(out.pooled[~dropped], text.pooled[~dropped])
    assert (out.tokens[dropped] == 0).all() and (out.pooled[dropped] == 0).all()
    again = drop_condition(text, p, torch.Generator().manual_seed(0))
    assert torch.equal(again.mask, out.mask)  # the generator fixes the draw


# --- the loss --------------------------------------------------------------------------------------------------

class PointOracle:
    """The perfect denoiser for data that is one point c: x0 = c, so E[ε | x_t] = (x_t − a c)/σ exactly."""

    def __init__(self, c: torch.Tensor, schedule: NoiseSchedule, prediction_type: str):
        self.c, self.schedule, self.prediction_type = c, schedule, prediction_type
        self.texts = []

    def __call__(self, x_t, t, text):
        self.texts.append(text)
        x0 = self.c.expand_as(x_t)
        return convert(x0, "x0", self.prediction_type, x_t, t, self.schedule)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_loss_of_the_perfect_denoiser_is_zero(prediction_type):
    c = torch.linspace(-1, 1, 64, dtype=torch.float64).view(1, 1, 8, 8)
    x0 = c.expand(16, 1, 8, 8).clone()
    for gamma in (None, 5.0):
        loss = diffusion_loss(PointOracle(c, LINEAR, prediction_type), x0, None, LINEAR, prediction_type,
                              min_snr_gamma=gamma, generator=torch.Generator().manual_seed(0))
        assert loss.item() < 1e-12


def test_loss_of_the_gaussian_oracle_is_the_posterior_variance():
    """x0 ~ N(0, s²): the best ε-prediction leaves E‖ε − E[ε|x_t]‖² = ᾱ s²/(ᾱ s² + 1 − ᾱ) per pixel,
    the irreducible loss. 4096 pixels per sample: each per-sample loss is within 5 SE of its t's
    value."""
    s, B, n = 0.5, 32, 4096
    g = torch.Generator().manual_seed(2)
    x0 = s * torch.randn(B, 1, 64, 64, generator=g, dtype=torch.float64)

    def oracle(x_t, t, text):
        ab = COSINE.alpha_bar[t].view(-1, 1, 1, 1)
        return (1 - ab).sqrt() * x_t / (ab * s**2 + 1 - ab)

    out = diffusion_loss(oracle, x0, None, COSINE, generator=torch.Generator().manual_seed(3), return_details=True)
    assert isinstance(out, LossOutput) and out.per_sample.shape == (B,) and out.t.shape == (B,)
    ab = COSINE.alpha_bar[out.t]
    expected = ab * s**2 / (ab * s**2 + 1 - ab)  # the residual ε − E[ε|x_t] is Gaussian: SE = expected·√(2/n)
    assert ((out.per_sample - expected).abs() < 5 * expected * (2 / n) ** 0.5 + 1e-12).all()
    assert torch.isclose(out.loss, out.per_sample.mean())


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_loss_applies_the_min_snr_weights(prediction_type):
    """Same generator → same t and ε, so the weighted per-sample losses are the plain ones times w_t."""
    x0 = torch.rand(8, 1, 4, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    plain = diffusion_loss(zero, x0, None, COSINE, prediction_type, generator=torch.Generator().manual_seed(1),
                           return_details=True)
    weighted = diffusion_loss(zero, x0, None, COSINE, prediction_type, min_snr_gamma=5.0,
                              generator=torch.Generator().manual_seed(1), return_details=True)
    assert torch.equal(plain.t, weighted.t)
    w = min_snr_weight(plain.t, COSINE, 5.0, prediction_type).float()
    assert torch.allclose(weighted.per_sample, plain.per_sample * w, rtol=1e-5)


def test_loss_drops_conditions_and_is_reproducible():
    x0 = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    text = captions(64)
    model = PointOracle(torch.zeros(1, 1, 4, 4), LINEAR, "epsilon")
    first = diffusion_loss(model, x0, text, LINEAR, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(9))
    second = diffusion_loss(model, x0, text, LINEAR, cond_drop_prob=0.5, generator=torch.Generator().manual_seed(9))
    assert torch.equal(first, second)
    seen = model.texts[0]
    assert torch.equal(seen.mask, model.texts[1].mask) and 10 < (~seen.mask.any(1)).sum() < 54
    diffusion_loss(model, x0, text, LINEAR, cond_drop_prob=0.0, generator=torch.Generator().manual_seed(9))
    assert model.texts[-1] is text
    diffusion_loss(model, x0, text, LINEAR, cond_drop_prob=1.0, generator=torch.Generator().manual_seed(9))
    assert not model.texts[-1].mask.any()
    diffusion_loss(model, x0, None, LINEAR, generator=torch.Generator().manual_seed(9))
    assert model.texts[-1] is None  # an unconditional model stays unconditional


def test_loss_trains_a_network():
    """The loss is differentiable and one gradient step on a tiny network lowers it on the same batch."""
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    model = lambda x, t, c: net(x)  # noqa: E731
    x0 = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    losses = []
    for _ in range(2):
        loss = diffusion_loss(model, x0, None, COSINE, "v", generator=torch.Generator().manual_seed(1))
        net.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain gradient descent (torch.optim's first import costs seconds)
            for p in net.parameters():
                p -= 0.1 * p.grad
        losses.append(loss.item())
    assert losses[1] < losses[0]
    with pytest.raises(ValueError, match="model output"):
        diffusion_loss(lambda x, t, c: x[:, :, :4], x0, None, COSINE)
