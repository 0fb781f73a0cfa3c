"""MelCodec: the mel power is librosa's, the [-1, 1] map inverts, decode re-encodes closely."""
from __future__ import annotations

import json
import warnings

import librosa
import numpy as np
import pytest
import torch

from musicdiff_lib.mel import MEL_PRESETS, MelCodec, MelConfig

CONFIGS = {
    # the report's setting: HTK mels without filter normalisation
    "seed128": MelConfig.preset("seed128"),
    # Slaney mel scale with area normalisation, window shorter than the FFT
    "slaney16k": MelConfig(sample_rate=16000, n_fft=1024, hop_length=256, win_length=800, n_mels=80,
                           f_min=30.0, f_max=7600.0, mel_scale="slaney", norm="slaney"),
    # magnitude (power 1) rather than power
    "htk16k_mag": MelConfig(sample_rate=16000, n_fft=512, hop_length=128, n_mels=64, power=1.0,
                            mel_scale="htk", norm="slaney"),
}


def _librosa_mel(wave: np.ndarray, c: MelConfig) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # empty-filter warning for 128 HTK mels at 10 kHz
        return librosa.feature.melspectrogram(
            y=wave, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
            window="hann", center=True, pad_mode="constant", power=c.power, n_mels=c.n_mels,
            fmin=c.f_min, fmax=c.f_max, htk=c.mel_scale == "htk", norm=c.norm,
        )


def _music_for(config: MelConfig, music_10k, music_16k) -> np.ndarray:
    return music_10k if config.sample_rate == 10000 else music_16k


@pytest.mark.parametrize("name", CONFIGS)
def test_mel_power_matches_librosa_on_real_music(name, music_10k, music_16k):
    config = CONFIGS[name]
    wave = _music_for(config, music_10k, music_16k)
    ours = MelCodec(config).mel_power(torch.from_numpy(wave))[0].double().numpy()
    ref = _librosa_mel(wave, config).astype(np.float64)
    assert ours.shape == ref.shape
    relative = np.linalg.norm(ours - ref) / np.linalg.norm(ref)
    assert relative <= 1e-4, f"relative Frobenius error {relative:.2e}"
    # and bin by bin, wherever there is energy worth talking about (above -80 dB of the peak)
    loud = ref > ref.max() * 1e-8
    assert np.max(np.abs(ours[loud] - ref[loud]) / ref[loud]) <= 1e-2


def test_seed_preset_gives_the_reports_input_shape(music_10k):
    codec = MelCodec(MelConfig.preset("seed128"))
    mel = codec.encode(torch.from_numpy(music_10k))
    assert mel.shape == (1, 1, 128, 200)
    # 10 s at hop 512 gives 196 centred frames; the last four are padding = silence = -1
    assert torch.all(mel[..., 196:] == -1.0)
    assert MelCodec(MelConfig.preset("seed64")).encode(torch.from_numpy(music_10k)).shape == (1, 1, 64, 200)
    assert MelConfig.preset("seed128").num_samples == 199 * 512


def test_encode_is_in_unit_range_and_uses_it(music_16k):
    mel = MelCodec(MelConfig()).encode(torch.from_numpy(music_16k))
    assert mel.min() >= -1.0 and mel.max() <= 1.0
    # real music is neither clipped at the top nor all floor
    assert mel.max() > 0.3 and (mel > -1).float().mean() > 0.5


def test_unit_normalisation_inverts_exactly():
    codec = MelCodec(MelConfig(top_db=80.0))
    db = torch.linspace(codec.ref_db - 80.0, codec.ref_db, 1001, dtype=torch.float64)
    assert torch.allclose(codec.unit_to_db(codec.db_to_unit(db)), db, rtol=0, atol=1e-9)
    unit = torch.linspace(-1, 1, 1001, dtype=torch.float64)
    assert torch.allclose(codec.db_to_unit(codec.unit_to_db(unit)), unit, rtol=0, atol=1e-12)
    # the ends of the range land exactly on -1 and +1; beyond them values clamp
    assert codec.db_to_unit(torch.tensor([codec.ref_db - 80.0, codec.ref_db, codec.ref_db + 10])).tolist() == [-1.0, 1.0, 1.0]


@pytest.mark.parametrize("name", ["seed128", "slaney16k"])
def test_decode_then_reencode_stays_close(name, music_10k, music_16k):
    # Measured: max |Δ| 0.0035 (seed128) and 0.003 (16 kHz) in [-1, 1] units, i.e. < 0.15 dB at top_db 80.
    config = CONFIGS[name]
    codec = MelCodec(config)
    mel = codec.encode(torch.from_numpy(_music_for(config, music_10k, music_16k)))
    magnitude = codec.decode(mel)
    assert magnitude.shape == (1, config.n_freqs, mel.shape[-1])
    assert torch.all(magnitude >= 0) and torch.isfinite(magnitude).all()
    again = codec.fit_frames(codec.power_to_unit(codec.filterbank @ magnitude.pow(config.power)).unsqueeze(1))
    error = (again - mel).abs()
    assert error.max() <= 0.01, f"max re-encoding error {error.max():.4f}"
    assert error.mean() <= 1e-3, f"mean re-encoding error {error.mean():.5f}"


def test_full_round_trip_through_griffin_lim_keeps_the_music(music_16k):
    codec = MelCodec(MelConfig())
    mel = codec.encode(torch.from_numpy(music_16k))
    wave = codec.to_wave(mel, n_iter=32, generator=torch.Generator().manual_seed(0))
    assert wave.shape[-1] == (mel.shape[-1] - 1) * codec.config.hop_length
    again = codec.encode(wave)
    # Phase is invented, so not exact; measured mean |Δ| about 0.03 in [-1, 1] units.
    assert (again - mel).abs().mean() < 0.06


def test_batch_equals_items(music_batch_16k):
    codec = MelCodec(MelConfig())
    batch = codec.encode(torch.from_numpy(music_batch_16k))
    assert batch.shape[:2] == (3, 1)
    for i, wave in enumerate(music_batch_16k):
        assert torch.allclose(batch[i], codec.encode(torch.from_numpy(wave))[0], atol=1e-6)
    magnitudes = codec.decode(batch)
    assert torch.allclose(magnitudes[1], codec.decode(batch[1:2])[0], rtol=1e-5, atol=1e-7)


def test_encode_is_differentiable(music_batch_16k):
    codec = MelCodec(MelConfig())
    wave = torch.from_numpy(music_batch_16k[:1].copy()).requires_grad_(True)
    codec.encode(wave).mean().backward()
    assert wave.grad is not None and torch.isfinite(wave.grad).all() and wave.grad.abs().sum() > 0


def test_float64_and_numpy_inputs(music_16k):
    codec = MelCodec(MelConfig())
    from_numpy = codec.encode(music_16k)
    from_double = codec.encode(torch.from_numpy(music_16k).double())
    assert from_double.dtype == torch.float64
    assert torch.allclose(from_numpy.double(), from_double, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda(music_16k):  # pragma: no cover - no GPU on CI
    codec = MelCodec(MelConfig()).to("cuda")
    mel = codec.encode(torch.from_numpy(music_16k).cuda())
    assert mel.device.type == "cuda"
    cpu = MelCodec(MelConfig()).encode(torch.from_numpy(music_16k))
    assert torch.allclose(mel.cpu(), cpu, atol=1e-4)


def test_config_round_trips_through_json(tmp_path):
    for config in list(MEL_PRESETS.values()) + list(CONFIGS.values()):
        assert MelConfig.from_json(config.to_json()) == config
    path = tmp_path / "mel.json"
    MEL_PRESETS["seed64"].to_json(path)
    assert MelConfig.from_json(path) == MEL_PRESETS["seed64"]
    assert json.loads(path.read_text())["n_mels"] == 64


@pytest.mark.parametrize("field, value, words", [
    ("mel_scale", "bark", "mel_scale"),
    ("f_max", 9000.0, "Nyquist"),
    ("win_length", 4096, "win_length"),
    ("power", 3.0, "power"),
    ("frames", 0, "frames"),
])
def test_bad_config_names_the_field(field, value, words):
    with pytest.raises(ValueError, match=words):
        MelConfig(sample_rate=16000, **{field: value})


def test_unknown_json_field_and_preset_are_named():
    with pytest.raises(ValueError, match="n_mel"):
        MelConfig.from_json('{"n_mel": 80}')
    with pytest.raises(ValueError, match="seed256"):
        MelConfig.preset("seed256")


def test_bad_shapes_are_explained():
    codec = MelCodec(MelConfig())
    with pytest.raises(ValueError, match=r"\(B, samples\)"):
        codec.encode(torch.zeros(2, 2, 2, 100))
    with pytest.raises(ValueError, match=r"\(B, 1, 64, frames\)"):
        codec.decode(torch.zeros(1, 1, 80, 10))
