"""SSIM equals scikit-image's Gaussian SSIM; MSE and PSNR equal their formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from musicdiff_lib.mel import MelCodec, MelConfig
from musicdiff_lib.metrics import gaussian_window, mse, psnr, ssim
from musicdiff_lib.synth import demo_clip


@pytest.fixture(scope="module")
def mel_pairs():
    """Six pairs of 128×200 seed-preset mels of real music: related and unrelated renders."""
    codec = MelCodec(MelConfig.preset("seed128"))
    clips = [demo_clip(10.0, 10000, seed=s, lead_program=p, drums=d)
             for s, p, d in [(0, 0, True), (0, 40, True), (1, 0, False), (2, 56, True)]]
    mels = codec.encode(torch.from_numpy(np.stack(clips)))
    shifted = torch.roll(mels, shifts=3, dims=-1)
    a = torch.cat([mels, mels[:2]])
    b = torch.cat([shifted, mels[2:]])
    return a, b


def _skimage(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.array([structural_similarity(x[0].double().numpy(), y[0].double().numpy(), gaussian_weights=True,
                                           sigma=1.5, use_sample_covariance=False, data_range=2.0)
                     for x, y in zip(a, b)])


def test_ssim_matches_scikit_image_on_real_mels(mel_pairs):
    a, b = mel_pairs
    assert a.shape[-2:] == (128, 200)
    ours = ssim(a, b, data_range=2.0).double().numpy()
    np.testing.assert_allclose(ours, _skimage(a, b), rtol=0, atol=1e-4)
    assert len(set(np.round(ours, 3))) > 3  # the pairs really differ


def test_ssim_matches_scikit_image_on_noise():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 1, 128, 200, generator=g) * 2 - 1
    b = (a + 0.5 * torch.randn(5, 1, 128, 200, generator=g)).clamp(-1, 1)
    np.testing.assert_allclose(ssim(a, b, 2.0).double().numpy(), _skimage(a, b), rtol=0, atol=1e-4)


def test_ssim_of_an_image_with_itself_is_one_and_symmetric(mel_pairs):
    a, b = mel_pairs
    assert torch.allclose(ssim(a, a, 2.0), torch.ones(len(a)), atol=1e-6)
    assert torch.allclose(ssim(a, b, 2.0), ssim(b, a, 2.0), atol=1e-6)


def test_ssim_accepts_single_images_and_channel_free_batches(mel_pairs):
    a, b = mel_pairs
    batch = ssim(a, b, 2.0)
    assert batch.shape == (len(a),)
    assert torch.allclose(ssim(a[:, 0], b[:, 0], 2.0), batch)
    single = ssim(a[0, 0], b[0, 0], 2.0)
    assert single.ndim == 0 and torch.isclose(single, batch[0])


def test_gaussian_window_is_the_11_tap_filter_of_wang_et_al():
    w = gaussian_window(1.5)
    assert w.numel() == 11
    assert torch.isclose(w.sum(), torch.tensor(1.0, dtype=w.dtype))
    x = torch.arange(-5, 6, dtype=torch.float64)
    expected = torch.exp(-x**2 / (2 * 1.5**2))
    assert torch.allclose(w, expected / expected.sum())


def test_mse_and_psnr_match_scikit_image(mel_pairs):
    a, b = mel_pairs
    for x, y, m, p in zip(a, b, mse(a, b), psnr(a, b, 2.0)):
        xs, ys = x.double().numpy(), y.double().numpy()
        assert m.item() == pytest.approx(mean_squared_error(xs, ys), rel=1e-5)
        assert p.item() == pytest.approx(peak_signal_noise_ratio(xs, ys, data_range=2.0), rel=1e-5)
    assert torch.isinf(psnr(a, a, 2.0)).all()


def test_bad_inputs_are_explained():
    with pytest.raises(ValueError, match="same shape"):
        ssim(torch.zeros(1, 1, 20, 20), torch.zeros(1, 1, 20, 21), 2.0)
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.zeros(1, 1, 8, 50), torch.zeros(1, 1, 8, 50), 2.0)
    with pytest.raises(ValueError, match="data_range"):
        ssim(torch.zeros(1, 1, 20, 20), torch.zeros(1, 1, 20, 20), 0.0)


def test_ssim_does_not_depend_on_how_the_batch_is_chunked(mel_pairs):
    a, b = mel_pairs
    whole = ssim(a, b, 2.0, chunk=len(a))
    for chunk in (1, 3, None):
        assert torch.allclose(ssim(a, b, 2.0, chunk=chunk), whole, atol=1e-6)
