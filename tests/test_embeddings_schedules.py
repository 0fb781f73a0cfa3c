"""Sinusoidal embeddings and noise schedules against the closed forms of their papers."""
from __future__ import annotations

import math

import pytest
import torch

from musicdiff_lib.embeddings import TimestepEmbedding, interleaved_to_concatenated, sinusoidal_embedding
from musicdiff_lib.schedules import NoiseSchedule, cosine_alpha_bar, linear_betas


def test_embedding_is_the_reports_formula():
    d = 16
    t = torch.tensor([0, 1, 7, 250, 999])
    emb = sinusoidal_embedding(t, d)
    assert emb.shape == (5, d) and emb.dtype == torch.float32
    for row, step in enumerate(t.tolist()):
        for i in range(d // 2):
            angle = step / 10000 ** (2 * i / d)
            assert emb[row, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert emb[row, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_embedding_accepts_real_timesteps_and_scalars():
    real = sinusoidal_embedding(torch.tensor([0.5, 2.25], dtype=torch.float64), 8)
    assert real.dtype == torch.float64
    assert real[1, 0].item() == pytest.approx(math.sin(2.25), abs=1e-12)
    assert sinusoidal_embedding(3, 4).shape == (1, 4)


def test_odd_width_is_rejected_clearly():
    with pytest.raises(ValueError, match="even"):
        sinusoidal_embedding(torch.tensor([1]), 7)
    with pytest.raises(ValueError, match="even"):
        TimestepEmbedding(5, 32)


def test_interleaved_and_concatenated_layouts_differ_by_a_permutation():
    d = 10
    t = torch.arange(0, 1000, 37)
    i = torch.arange(d // 2, dtype=torch.float64)
    angles = t.double()[:, None] / 10000 ** (2 * i / d)
    concatenated = torch.cat([angles.sin(), angles.cos()], dim=1).float()
    assert torch.allclose(sinusoidal_embedding(t, d)[:, interleaved_to_concatenated(d)], concatenated, atol=1e-6)


def test_timestep_mlp_projects_to_the_unet_width():
    mlp = TimestepEmbedding(64, 256)
    out = mlp(torch.tensor([0, 10, 999]))
    assert out.shape == (3, 256) and torch.isfinite(out).all()


def test_linear_schedule_matches_ho_et_al():
    s = NoiseSchedule.create("linear", 1000)
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    assert torch.allclose(s.alpha_bar, expected, rtol=1e-12)
    assert linear_betas(500)[-1].item() == pytest.approx(0.04)


def test_cosine_schedule_matches_nichol_and_dhariwal():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule.create("cosine", T)
    f = lambda t: math.cos(((t / T + s_) / (1 + s_)) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 100, 500, 900):
        # ᾱ after step index t is ᾱ(t+1) of the continuous form (index 0 is the first noising step)
        assert sched.alpha_bar[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    assert sched.betas.max().item() <= 0.999
    assert cosine_alpha_bar(torch.tensor(0.0), T).item() == 1.0


@pytest.mark.parametrize("name", ["linear", "cosine", "sigmoid"])
@pytest.mark.parametrize("T", [10, 250, 1000])
def test_every_schedule_is_a_valid_forward_process(name, T):
    s = NoiseSchedule.create(name, T)
    ab = s.alpha_bar
    assert ab.shape == (T,) and torch.all(ab[1:] < ab[:-1]), "ᾱ must strictly decrease"
    assert 0 < ab[-1] < ab[0] < 1
    assert torch.allclose(s.sqrt_alpha_bar**2 + s.sqrt_one_minus_alpha_bar**2, torch.ones(T, dtype=torch.float64))
    assert torch.allclose(s.log_snr, torch.log(s.snr))
    assert torch.all(s.log_snr[1:] < s.log_snr[:-1])


def test_zero_terminal_snr_rescaling():
    plain = NoiseSchedule.create("linear", 1000)
    zero = NoiseSchedule.create("linear", 1000, zero_terminal_snr=True)
    assert zero.alpha_bar[-1].item() == 0.0 and zero.log_snr[-1].item() == -math.inf
    assert zero.alpha_bar[0].item() == pytest.approx(plain.alpha_bar[0].item(), rel=1e-12)
    assert torch.all(zero.alpha_bar[1:] < zero.alpha_bar[:-1])


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match="quadratic"):
        NoiseSchedule.create("quadratic")
