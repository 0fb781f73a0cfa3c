"""Audio I/O: formats, mono, resampling, pad/crop, normalisation, and errors that name the file."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from musicdiff_lib.audio import AudioError, load_audio, pad_or_crop, peak_normalize, resample, save_wav, to_mono


@pytest.mark.parametrize("suffix, subtype", [(".wav", "PCM_16"), (".flac", "PCM_16"), (".ogg", "VORBIS")])
def test_loads_each_format_as_mono_float(tmp_path, music_16k, suffix, subtype):
    stereo = np.stack([music_16k, 0.5 * music_16k], axis=1)  # (samples, 2), as soundfile writes
    path = tmp_path / f"clip{suffix}"
    sf.write(path, stereo, 16000, subtype=subtype)
    wave, rate = load_audio(path)
    assert rate == 16000 and wave.dtype == np.float32 and wave.ndim == 1
    assert len(wave) == len(music_16k)
    tolerance = 0.05 if suffix == ".ogg" else 1e-3  # lossy codec
    assert np.sqrt(np.mean((wave - 0.75 * music_16k) ** 2)) < tolerance
    both, _ = load_audio(path, mono=False)
    assert both.shape == (2, len(music_16k))


def test_resamples_to_the_asked_rate_and_keeps_pitch(tmp_path):
    rate = 22050
    t = np.arange(rate) / rate
    path = save_wav(tmp_path / "a440.wav", 0.5 * np.sin(2 * np.pi * 440 * t), rate)
    wave, new_rate = load_audio(path, sample_rate=10000)
    assert new_rate == 10000 and len(wave) == 10000
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 10000 / len(wave) - 440) <= 1.0


def test_duration_pads_and_crops(tmp_path, music_16k):
    path = save_wav(tmp_path / "clip.wav", music_16k[:16000], 16000)
    padded, _ = load_audio(path, duration=2.5)
    assert len(padded) == 40000 and np.all(padded[16000:] == 0)
    cropped, _ = load_audio(path, duration=0.5, offset=0.25)
    assert len(cropped) == 8000
    np.testing.assert_allclose(cropped, music_16k[4000:12000], atol=1e-4)


def test_helpers():
    assert to_mono(np.array([[1.0, 3.0], [3.0, 5.0]])).tolist() == [2.0, 4.0]
    assert pad_or_crop(np.ones(3), 5).tolist() == [1, 1, 1, 0, 0]
    assert pad_or_crop(np.ones((2, 6)), 4).shape == (2, 4)
    assert np.max(np.abs(peak_normalize(np.array([0.1, -0.4]), peak=0.8))) == pytest.approx(0.8)
    assert peak_normalize(np.zeros(4)).tolist() == [0, 0, 0, 0]
    assert resample(np.ones(100), 1000, 1000).shape == (100,)


def test_save_wav_round_trips_and_leaves_no_temporary(tmp_path, music_16k):
    path = save_wav(tmp_path / "sub" / "out.wav", music_16k, 16000)
    back, rate = load_audio(path)
    assert rate == 16000 and np.max(np.abs(back - music_16k)) < 1e-4
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.wav"]
    with pytest.raises(AudioError, match="NaN"):
        save_wav(tmp_path / "bad.wav", np.array([0.0, np.nan]), 16000)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(AudioError, match=r"nothere\.wav: no such file"):
        load_audio(tmp_path / "nothere.wav")


def test_non_audio_file_is_named(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not samples")
    with pytest.raises(AudioError, match=r"notes\.wav: not readable as audio"):
        load_audio(path)


def test_zero_byte_file_is_named(tmp_path):
    path = tmp_path / "empty.flac"
    path.write_bytes(b"")
    with pytest.raises(AudioError, match=r"empty\.flac: not readable as audio"):
        load_audio(path)


def test_audio_file_without_samples_is_named(tmp_path):
    path = tmp_path / "silent.wav"
    sf.write(path, np.zeros((0, 1)), 16000)
    with pytest.raises(AudioError, match=r"silent\.wav: contains no samples"):
        load_audio(path)


def test_nan_samples_are_named(tmp_path):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.0, np.nan, 0.1], dtype=np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=r"nan\.wav: contains NaN"):
        load_audio(path)


def test_unsupported_suffix_is_named(tmp_path):
    path = tmp_path / "song.mp3"
    path.write_bytes(b"ID3")
    with pytest.raises(AudioError, match=r"song\.mp3: unsupported format '\.mp3'"):
        load_audio(path)
