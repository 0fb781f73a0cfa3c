"""Fast Griffin-Lim: at least as good as librosa's at 32 iterations; momentum helps; seeded."""
from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from musicdiff_lib.griffinlim import griffin_lim, spectral_convergence
from musicdiff_lib.mel import MelCodec, MelConfig

CONFIG = MelConfig(sample_rate=16000, n_fft=1024, hop_length=256)


@pytest.fixture(scope="module")
def target(music_16k):
    """Linear magnitude (1, 513, frames) of 10 s of real music, and its length."""
    wave = torch.from_numpy(music_16k)
    return MelCodec(CONFIG).stft(wave[None]).abs(), len(music_16k)


def _ours(magnitude, length, n_iter=32, momentum=0.99, seed=0, init="random"):
    return griffin_lim(magnitude, CONFIG, n_iter=n_iter, momentum=momentum, init=init,
                       generator=torch.Generator().manual_seed(seed), length=length)


def test_no_worse_than_librosa_at_32_iterations(target):
    magnitude, length = target
    ours = spectral_convergence(magnitude, _ours(magnitude, length), CONFIG).item()
    ref_wave = librosa.griffinlim(magnitude[0].numpy(), n_iter=32, hop_length=CONFIG.hop_length,
                                  n_fft=CONFIG.n_fft, momentum=0.99, length=length, random_state=0)
    theirs = spectral_convergence(magnitude, torch.from_numpy(ref_wave)[None], CONFIG).item()
    assert ours <= 1.05 * theirs, f"ours {ours:.4f} vs librosa {theirs:.4f}"


def test_momentum_beats_plain_griffin_lim(target):
    magnitude, length = target
    fast = spectral_convergence(magnitude, _ours(magnitude, length, momentum=0.99), CONFIG).item()
    plain = spectral_convergence(magnitude, _ours(magnitude, length, momentum=0.0), CONFIG).item()
    assert fast < 0.8 * plain, f"momentum 0.99: {fast:.4f}, momentum 0: {plain:.4f}"


def test_more_iterations_converge_further(target):
    magnitude, length = target
    scores = [spectral_convergence(magnitude, _ours(magnitude, length, n_iter=n), CONFIG).item() for n in (4, 16, 64)]
    assert scores[0] > scores[1] > scores[2]


def test_same_seed_same_wave_other_seed_other_wave(target):
    magnitude, length = target
    a, b, c = _ours(magnitude, length, 4, seed=7), _ours(magnitude, length, 4, seed=7), _ours(magnitude, length, 4, seed=8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_zero_initial_phase_is_deterministic_and_converges(target):
    magnitude, length = target
    a = _ours(magnitude, length, 32, init="zeros", seed=1)
    b = _ours(magnitude, length, 32, init="zeros", seed=2)
    assert torch.equal(a, b)
    assert spectral_convergence(magnitude, a, CONFIG).item() < 0.3


def test_batch_equals_items(music_batch_16k):
    codec = MelCodec(CONFIG)
    magnitude = codec.stft(torch.from_numpy(music_batch_16k)).abs()
    batch = griffin_lim(magnitude, CONFIG, n_iter=8, init="zeros")
    assert batch.shape == (3, (magnitude.shape[-1] - 1) * CONFIG.hop_length)
    single = griffin_lim(magnitude[2:3], CONFIG, n_iter=8, init="zeros")
    assert torch.allclose(batch[2], single[0], atol=1e-5)


def test_spectral_convergence_is_zero_for_the_true_wave(target, music_16k):
    magnitude, _ = target
    assert spectral_convergence(magnitude, torch.from_numpy(music_16k), CONFIG).item() < 1e-5


def test_bad_arguments_are_explained(target):
    magnitude, length = target
    with pytest.raises(ValueError, match="513"):
        griffin_lim(magnitude[:, :100], CONFIG)
    with pytest.raises(ValueError, match="momentum"):
        griffin_lim(magnitude, CONFIG, momentum=1.5)
    with pytest.raises(ValueError, match="init"):
        griffin_lim(magnitude, CONFIG, init="noise")


def test_equals_librosa_from_the_same_start(target):
    # librosa's update, rebuilt − α/(1+α)·previous, is ours, c + α(c − previous), divided
    # by (1+α): the same phase. From the same (zero) start, in float64, the waves agree.
    magnitude, length = target
    magnitude = magnitude[..., :200].double()
    length = 199 * CONFIG.hop_length
    ours = griffin_lim(magnitude, CONFIG, n_iter=8, momentum=0.99, init="zeros", length=length)[0].numpy()
    theirs = librosa.griffinlim(magnitude[0].numpy(), n_iter=8, hop_length=CONFIG.hop_length, n_fft=CONFIG.n_fft,
                                momentum=0.99, init=None, length=length)
    assert np.max(np.abs(ours - theirs)) <= 1e-8 * np.max(np.abs(theirs))


def test_initial_phase_can_be_given(target):
    magnitude, length = target
    phase = 2 * torch.pi * torch.rand(magnitude.shape, generator=torch.Generator().manual_seed(3))
    a = griffin_lim(magnitude, CONFIG, n_iter=2, init=phase, length=length)
    b = _ours(magnitude, length, n_iter=2, seed=3)
    assert torch.equal(a, b)  # "random" draws exactly these phases from the seeded generator
    with pytest.raises(ValueError, match="shape"):
        griffin_lim(magnitude, CONFIG, init=phase[..., :10])


@pytest.mark.filterwarnings("ignore:The length of signal is shorter")  # torch.istft padding the reference
@pytest.mark.parametrize("config", [
    CONFIG,
    MelConfig(sample_rate=16000, n_fft=1024, hop_length=256, win_length=800),  # short window, fast path
    MelConfig(sample_rate=16000, n_fft=1024, hop_length=300),  # hop does not divide n_fft: torch.istft path
], ids=["hop256", "win800", "hop300"])
def test_inverse_stft_equals_torch_istft(config, music_16k):
    from musicdiff_lib.griffinlim import InverseSTFT

    wave = torch.from_numpy(music_16k[:40000])[None].double()
    window = torch.hann_window(config.window_length, periodic=True, dtype=torch.float64)
    spec = torch.stft(wave, config.n_fft, config.hop_length, config.window_length, window=window,
                      center=True, pad_mode="constant", return_complex=True)
    spec = spec * torch.exp(1j * torch.linspace(0, 3, spec.shape[-1], dtype=torch.float64))  # inconsistent
    # past the last frame a short window leaves no overlap at all, which torch.istft refuses
    lengths = (40000, 39000) if config.window_length < config.n_fft else (40000, 39000, 41000)
    for length in lengths:
        ours = InverseSTFT(config, window, spec.shape[-1], length)(spec)
        ref = torch.istft(spec, config.n_fft, config.hop_length, config.window_length, window=window,
                          center=True, length=length)
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-10), (ours - ref).abs().max()
