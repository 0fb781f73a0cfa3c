"""The musicdiff command and the profile/device helpers."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from musicdiff_lib.audio import load_audio, save_wav
from musicdiff_lib.config import default_device, profile


def _musicdiff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("musicdiff", path=os.path.dirname(sys.executable)) or shutil.which("musicdiff")
    assert exe, "the console script `musicdiff` is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=300)


def test_roundtrip_command_writes_audio(tmp_path, music_10k):
    source = save_wav(tmp_path / "in.wav", music_10k, 10000)
    result = _musicdiff("roundtrip", str(source), "--out", str(tmp_path / "out.wav"), "--preset", "seed128", "--n-iter", "8")
    assert result.returncode == 0, result.stderr
    assert "spectral convergence" in result.stdout
    wave, rate = load_audio(tmp_path / "out.wav")
    assert rate == 10000 and len(wave) == len(music_10k) and np.abs(wave).max() > 0.1


@pytest.mark.parametrize("args, words", [
    (["roundtrip", "missing.wav", "--out", "x.wav"], "missing.wav: no such file"),
    (["roundtrip", "{notes}", "--out", "x.wav"], "not readable as audio"),
    (["roundtrip", "{notes}", "--out", "x.wav", "--preset", "seed9"], "unknown mel preset 'seed9'"),
    (["roundtrip", "{notes}", "--out", "x.wav", "--n-iter", "many"], "invalid int value"),
])
def test_bad_input_is_one_line_and_status_2(tmp_path, args, words):
    notes = tmp_path / "notes.wav"
    notes.write_text("not audio")
    result = _musicdiff(*[a.replace("{notes}", str(notes)) for a in args])
    assert result.returncode == 2
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_shows_an_example():
    for args in (["--help"], ["roundtrip", "--help"]):
        result = _musicdiff(*args)
        assert result.returncode == 0 and "example:" in result.stdout


def test_profile_reads_the_environment(monkeypatch):
    monkeypatch.setenv("MUSICDIFF_PROFILE", "ci")
    assert profile() == "ci"
    monkeypatch.setenv("MUSICDIFF_PROFILE", "BOOK")
    assert profile() == "book"
    monkeypatch.delenv("MUSICDIFF_PROFILE")
    assert profile() == ("gpu" if torch.cuda.is_available() else "book")
    monkeypatch.setenv("MUSICDIFF_PROFILE", "fast")
    with pytest.raises(ValueError, match="MUSICDIFF_PROFILE='fast'"):
        profile()


def test_default_device_prefers_accelerators():
    device = default_device()
    assert device.type == ("cuda" if torch.cuda.is_available() else device.type)
    assert torch.zeros(1, device=device).device.type == device.type
