"""Evaluation tools: Fréchet distance and KID against closed forms and references, hand-crafted
features, the tempo and drum detectors on unseen renders, Griffin-Lim curves on real music."""
from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import soundfile as sf
import torch

from musicdiff_lib import evaluation as ev
from musicdiff_lib import synth
from musicdiff_lib.mel import MelConfig

SR = 16000


# == Fréchet distance ==========================================================================

def _naive_frechet(x, y):
    """The textbook formula with scipy's sqrtm of the non-symmetric product."""
    mu = x.mean(0) - y.mean(0)
    cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    root = scipy.linalg.sqrtm(cx @ cy)
    return float(mu @ mu + np.trace(cx + cy - 2 * np.real(root)))


def _exactly_diagonal(rng, n, mean, std):
    """n points whose *sample* covariance is exactly diag(std²) and sample mean exactly ``mean``."""
    a = rng.normal(size=(n, len(std)))
    q, _ = np.linalg.qr(a - a.mean(0))  # orthonormal columns, each still zero-mean
    return mean + np.sqrt(n - 1) * q * std


def test_frechet_1d_closed_form_with_sample_statistics():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 2.0, 300), rng.normal(-0.5, 0.7, 200)
    expected = (x.mean() - y.mean()) ** 2 + (x.std(ddof=1) - y.std(ddof=1)) ** 2
    assert ev.frechet_distance(x[:, None], y[:, None]) == pytest.approx(expected, abs=1e-8)
    assert ev.frechet_distance(x, y) == pytest.approx(expected, abs=1e-8)  # 1-D arrays: one feature


def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(1)
    sx, sy = np.array([0.5, 1.0, 2.0, 3.0, 0.1]), np.array([1.5, 1.0, 0.2, 3.5, 0.1])
    mx, my = rng.normal(size=5), rng.normal(size=5)
    x, y = _exactly_diagonal(rng, 64, mx, sx), _exactly_diagonal(rng, 90, my, sy)
    np.testing.assert_allclose(np.cov(x, rowvar=False), np.diag(sx**2), atol=1e-12)  # the premise
    expected = np.sum((mx - my) ** 2) + np.sum((sx - sy) ** 2)
    assert ev.frechet_distance(x, y) == pytest.approx(expected, abs=1e-8)


def test_frechet_matches_sqrtm_reference_on_full_rank_data():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 12)) @ rng.normal(size=(12, 12))
    y = rng.normal(size=(250, 12)) @ rng.normal(size=(12, 12)) + 0.3
    ours, ref = ev.frechet_distance(x, y), _naive_frechet(x, y)
    assert ours == pytest.approx(ref, rel=1e-6)
    assert ev.frechet_distance(y, x) == pytest.approx(ours, rel=1e-9)  # symmetric
    assert ev.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_rank_deficient_covariance():
    """10 points in 32 dimensions plus a constant feature: a shift costs exactly its squared length."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(10, 33))
    x[:, -1] = 4.0
    shift = rng.normal(size=33)
    value = ev.frechet_distance(x, x + shift)
    assert np.isfinite(value) and value == pytest.approx(shift @ shift, rel=1e-8)
    assert ev.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_needs_two_points_and_same_width():
    with pytest.raises(ValueError, match="N=1 and M=5"):
        ev.frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same D"):
        ev.frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))


# == KID =======================================================================================

def _mmd_loop(x, y):
    """Unbiased MMD² with k(a, b) = (a·b/D + 1)³, one pair at a time."""
    d = x.shape[1]

    def k(a, b):
        return (sum(float(p) * float(q) for p, q in zip(a, b)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_matches_loop_reference():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(15, 4)), rng.normal(0.4, 1.2, size=(15, 4))
    mean, std = ev.kernel_inception_distance(x, y)  # 15 = N = M: one subset covers everything
    assert mean == pytest.approx(_mmd_loop(x, y), abs=1e-10) and std == 0.0
    # Subsets drawn as documented: each from Generator(seed), x's indices then y's.
    x2 = rng.normal(size=(25, 4))
    mean, std = ev.kernel_inception_distance(x2, y, subset_size=8, subsets=4, seed=7)
    g = np.random.default_rng(7)
    ref = [_mmd_loop(x2[g.choice(25, 8, replace=False)], y[g.choice(15, 8, replace=False)]) for _ in range(4)]
    assert mean == pytest.approx(np.mean(ref), abs=1e-10) and std == pytest.approx(np.std(ref), abs=1e-10)


def test_kid_near_zero_for_one_distribution_positive_for_shifted():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same, same_std = ev.kernel_inception_distance(x, y, subset_size=100)
    shifted, shifted_std = ev.kernel_inception_distance(x, y + 0.5, subset_size=100)
    scaled, scaled_std = ev.kernel_inception_distance(x, 1.5 * y, subset_size=100)
    assert abs(same) < same_std, (same, same_std)
    assert shifted > 5 * shifted_std and shifted > 20 * abs(same), (shifted, shifted_std, same)
    assert scaled > 3 * scaled_std, (scaled, scaled_std)


def test_kid_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(60, 8)), rng.normal(size=(50, 8))
    a = ev.kernel_inception_distance(x, y, subset_size=20, seed=3)
    assert a == ev.kernel_inception_distance(x, y, subset_size=20, seed=3)
    assert a != ev.kernel_inception_distance(x, y, subset_size=20, seed=4)


# == Hand-crafted features and standardisation =================================================

def _tone(freq, seconds=2.0, amplitude=0.5):
    t = np.arange(int(seconds * SR)) / SR
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_handcrafted_features_columns_mean_what_their_names_say(music_batch_16k):
    clicks = np.zeros(2 * SR, np.float32)
    clicks[SR // 8::SR // 4] = 0.9  # 8 clicks in 2 s: 4 per second
    noise = np.random.default_rng(0).normal(0, 0.1, 2 * SR).astype(np.float32)
    clips = np.stack([_tone(110.0), _tone(440.0), _tone(440.0, amplitude=0.05), clicks, noise, _tone(3000.0)])
    f = ev.handcrafted_features(clips, SR)
    assert f.shape == (6, len(ev.HANDCRAFTED_FEATURES)) == (6, 66) and f.dtype == np.float64
    col = {name: f[:, i] for i, name in enumerate(ev.HANDCRAFTED_FEATURES)}
    low, a440, quiet, click, white, high = range(6)
    groups = np.stack([col[f"mel_db_mean_{g}"] for g in range(8)], 1)
    # Band groups by centre frequency: 0 below 418 Hz, 1 from 418 Hz to 789 Hz, ..., 5 from 2537 Hz to 3720 Hz.
    assert (groups[low].argmax(), groups[a440].argmax(), groups[high].argmax()) == (0, 1, 5)
    assert col["mel_db_std_3"][click] > 5 * col["mel_db_std_3"][white]      # clicks come and go, noise stays
    chroma = np.stack([col[name] for name in ev.HANDCRAFTED_FEATURES if name.startswith("chroma_mean_")], 1)
    assert chroma[a440].argmax() == chroma[low].argmax() == 9              # A
    assert ev.HANDCRAFTED_FEATURES.index("chroma_mean_A") - ev.HANDCRAFTED_FEATURES.index("chroma_mean_C") == 9
    assert col["rms_db_mean"][a440] - col["rms_db_mean"][quiet] == pytest.approx(20.0, abs=0.5)
    assert col["onset_rate"][click] == pytest.approx(4.0, abs=0.6)
    assert col["onset_rate"][a440] < 1.0
    assert col["flatness_mean"][white] > 0.3 > 0.01 > col["flatness_mean"][a440]
    assert col["contrast_mean_0"][a440] >= 0 and np.isfinite(f).all()
    music = ev.handcrafted_features(music_batch_16k, SR)
    assert np.isfinite(music).all() and (music.std(0) > 0).sum() > 60      # three clips differ almost everywhere


def test_handcrafted_features_of_silence_are_finite():
    f = ev.handcrafted_features(np.zeros((2, 4 * SR), np.float32), SR)
    assert np.isfinite(f).all()
    assert f[0, ev.HANDCRAFTED_FEATURES.index("rms_db_mean")] == pytest.approx(-100.0)
    assert f[0, ev.HANDCRAFTED_FEATURES.index("onset_rate")] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        ev.handcrafted_features(np.full((1, 4096), np.nan, np.float32), SR)


def test_standardize_uses_the_reference_statistics():
    rng = np.random.default_rng(7)
    ref = np.column_stack([rng.normal(100, 20, 50), np.full(50, 3.0), rng.normal(0, 1e-3, 50)])
    other = ref[:10] + np.array([40.0, 1.0, 0.0])
    ref_z, other_z = ev.standardize(ref, other)
    np.testing.assert_allclose(ref_z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(ref_z.std(0), [1, 0, 1], atol=1e-12)      # the constant column is only centred
    np.testing.assert_allclose(other_z - ref_z[:10], [[40 / ref[:, 0].std(), 1.0, 0.0]] * 10, atol=1e-12)
    with pytest.raises(ValueError, match="array 1"):
        ev.standardize(ref, np.zeros((3, 2)))


# == Detectors on renders the threshold never saw =============================================

@pytest.fixture(scope="module")
def unseen_renders(tmp_path_factory):
    """48 built-in clips of seed 2 (DRUM_THRESHOLD was fitted on seed 0): waves (48, 64000) and attributes."""
    out = tmp_path_factory.mktemp("renders")
    synth.write_dataset(out, 48, seed=2, seconds=4.0, sample_rate=SR, workers=1, progress=False)
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    waves = np.stack([sf.read(out / r["file_name"], dtype="float32")[0] for r in records])
    return waves, [r["attributes"] for r in records]


def test_drum_detector_on_unseen_renders(unseen_renders):
    # Measured on these 48 clips: accuracy 0.90, balanced 0.80 (on 200 clips of seed 2: 0.905 / 0.87).
    waves, attributes = unseen_renders
    ratios = np.array([ev.percussive_ratio(w, SR) for w in waves])
    truth = np.array([a["drums"] != "none" for a in attributes])
    assert 0 < truth.sum() < len(truth)
    predicted = np.array([ev.drums_present(r) for r in ratios])
    accuracy = (predicted == truth).mean()
    balanced = 0.5 * (predicted[truth].mean() + (~predicted[~truth]).mean())
    assert accuracy >= 0.85 and balanced >= 0.75, (accuracy, balanced)
    assert np.median(ratios[truth]) > 3 * np.median(ratios[~truth])


def test_tempo_class_on_unseen_renders(unseen_renders):
    # Measured on these 48 clips: 0.92 (0.865 on 200 clips of seed 2; errors are mostly slow heard as double time).
    waves, attributes = unseen_renders
    predicted = [ev.tempo_class(ev.estimate_tempo(w, SR)) for w in waves]
    accuracy = np.mean([p == a["tempo"] for p, a in zip(predicted, attributes)])
    assert accuracy >= 0.80, accuracy
    bpm_close = np.mean([abs(ev.estimate_tempo(w, SR) / a["bpm"] - 1) < 0.08 for w, a in zip(waves[:16], attributes)])
    assert bpm_close >= 0.75, bpm_close


def test_tempo_class_boundaries_cover_synth_ranges():
    for name, (lo, hi) in synth.TEMPO_BPM.items():
        assert ev.tempo_class(lo) == ev.tempo_class(hi) == name
    assert ev.TEMPO_CLASSES == synth.ATTRIBUTES["tempo"]


def test_detectors_on_silence():
    silence = np.zeros(2 * SR, np.float32)
    assert ev.percussive_ratio(silence, SR) == 0.0 and not ev.drums_present(0.0)
    assert ev.estimate_tempo(silence, SR) == 0.0


def test_fit_threshold_maximises_balanced_accuracy():
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.normal(0, 1, 90), rng.normal(1.5, 1, 30)])
    labels = np.arange(120) >= 90

    def balanced(t):
        p = values > t
        return 0.5 * (p[labels].mean() + (~p[~labels]).mean())

    t = ev.fit_threshold(values, labels)
    assert balanced(t) == pytest.approx(max(balanced(v) for v in np.concatenate([values, values - 1e-9])))
    assert ev.fit_threshold([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="both True and False"):
        ev.fit_threshold([0.1, 0.2], [True, True])


# == Griffin-Lim curves ========================================================================

def _lsd_numpy(s, e, eps):
    out = []
    for a, b in zip(s, e):
        db = 10 * np.log10((a**2 + eps) / (b**2 + eps))
        out.append(np.mean([np.sqrt(np.mean(db[:, t] ** 2)) for t in range(db.shape[1])]))
    return np.array(out)


def test_spectral_distances_against_numpy():
    rng = np.random.default_rng(9)
    s, e = rng.exponential(size=(3, 65, 20)), rng.exponential(size=(3, 65, 20))
    s[0, :5] = 0.0  # silent bins: ε keeps them finite
    for eps in (ev.LSD_EPS, 1e-3):
        ours = ev.log_spectral_distance(torch.from_numpy(s), torch.from_numpy(e), eps=eps).numpy()
        np.testing.assert_allclose(ours, _lsd_numpy(s, e, eps), rtol=0, atol=1e-10)
    sc = ev.spectral_convergence(torch.from_numpy(s), torch.from_numpy(e)).numpy()
    ref = [np.linalg.norm(a - b) / np.linalg.norm(a) for a, b in zip(s, e)]
    np.testing.assert_allclose(sc, ref, rtol=1e-12)
    same = torch.from_numpy(s)
    assert ev.log_spectral_distance(same, same).abs().max() == 0 and ev.spectral_convergence(same, same).max() == 0


def test_griffin_lim_curve_on_real_music(music_batch_16k, one_thread):
    waves = torch.from_numpy(music_batch_16k[:2])
    curve = ev.griffin_lim_curve(waves, MelConfig.preset("cpu"), iterations=(1, 2, 4, 8, 16, 32))
    assert list(curve) == [1, 2, 4, 8, 16, 32]
    assert set(curve[1]) == {"sc", "lsd", "oracle_sc", "oracle_lsd", "decoded_sc", "decoded_lsd"}
    for key in ("sc", "oracle_sc"):
        values = [curve[k][key] for k in curve]
        assert all(b <= a + 2e-3 for a, b in zip(values, values[1:])), (key, values)
        assert values[-1] < values[0] - 0.05, (key, values)
    # From the true magnitude Griffin-Lim gets close; from the mel, the mel's own loss dominates.
    assert curve[32]["oracle_sc"] < 0.15 and curve[32]["oracle_lsd"] < curve[1]["oracle_lsd"]
    assert curve[32]["oracle_sc"] < curve[32]["sc"] and curve[32]["decoded_sc"] > 0.1
    # Same seed, same numbers.
    again = ev.griffin_lim_curve(waves, MelConfig.preset("cpu"), iterations=(4,), oracle=False)
    assert again[4]["sc"] == curve[4]["sc"] and "oracle_sc" not in again[4]
