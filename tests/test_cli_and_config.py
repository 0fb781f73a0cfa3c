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


def test_data_synth_then_prepare_builds_a_cache_and_resumes(tmp_path):
    """The two data commands end to end, as a user runs them: real renders, the real encoder, real shards."""
    import json

    from musicdiff_lib.data import MelDataset

    out, cache = tmp_path / "synth", tmp_path / "cache"
    synth = ["data", "synth", "--n", "4", "--out", str(out), "--seconds", "2", "--workers", "1"]
    result = _musicdiff(*synth)
    assert result.returncode == 0, result.stderr
    assert "4 clips (4 written, 0 already there)" in result.stdout
    (out / "clips" / "000002.wav").unlink()  # as if killed before this clip was written
    result = _musicdiff(*synth[:3], "5", *synth[4:])
    assert result.returncode == 0, result.stderr
    assert "5 clips (2 written, 3 already there)" in result.stdout
    records = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2, 3, 4]

    prepare = ["data", "prepare", str(out), "--out", str(cache), "--seconds", "2", "--shard-size", "2"]
    result = _musicdiff(*prepare)
    assert result.returncode == 0, result.stderr
    assert "kept 5, skipped 0" in result.stdout
    again = _musicdiff(*prepare)
    assert again.returncode == 0 and "kept 5 (0 new, 5 already cached)" in again.stdout
    dataset = MelDataset(cache)
    assert len(dataset) == 5 and dataset[4]["caption"] == records[4]["caption"]
    assert dataset[0]["mel"].shape == (1, 64, 126)  # 2 s at 16 kHz, hop 256: 1 + 32000 // 256 frames

    wrong = _musicdiff(*prepare, "--preset", "seed128")
    assert wrong.returncode == 2 and "mel.sample_rate=16000 but 10000" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1 and "Traceback" not in wrong.stderr


def test_train_info_generate_from_the_command_line(tmp_path):
    """A dataset folder → train (prepared on the fly) → resume → info → generate a wav and a PNG."""
    import json

    out, run = tmp_path / "synth", tmp_path / "run"
    assert _musicdiff("data", "synth", "--n", "6", "--out", str(out), "--seconds", "1", "--workers", "1").returncode == 0
    train = ["train", "--preset", "ci", "--data", str(out), "--out", str(run), "--seconds", "1"]
    result = _musicdiff(*train, "--max-steps", "4")
    assert result.returncode == 0, result.stderr
    assert "kept 6, skipped 0" in result.stdout and "stopped at step 4 (max steps)" in result.stdout
    again = _musicdiff(*train, "--max-steps", "6")
    assert again.returncode == 2 and "already holds checkpoints" in again.stderr and "Traceback" not in again.stderr
    resumed = _musicdiff(*train, "--max-steps", "6", "--resume")
    assert resumed.returncode == 0 and "stopped at step 6" in resumed.stdout, resumed.stderr
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # one row per step (log_every 1), none repeated by the resume

    info = _musicdiff("info", str(run))
    assert info.returncode == 0 and "step" in info.stdout and "6" in info.stdout
    assert "sentence-transformers/all-MiniLM-L6-v2 (384-d)" in info.stdout
    stored = json.loads(_musicdiff("info", str(run), "--json").stdout)
    assert stored["step"] == 6 and stored["preset"] == "ci" and stored["mel"]["n_mels"] == 16

    wav, png = tmp_path / "song.wav", tmp_path / "song.png"
    made = _musicdiff("generate", "a fast rock beat", "--checkpoint", str(run), "--out", str(wav), "--steps", "3",
                      "--png", str(png), "--seed", "2")
    assert made.returncode == 0, made.stderr
    wave, rate = load_audio(wav)
    assert rate == 8000 and len(wave) > 0 and png.stat().st_size > 1000

    from safetensors import safe_open

    exported = _musicdiff("export", str(run), "--out", str(tmp_path / "release"))
    assert exported.returncode == 0 and "EMA weights in fp16" in exported.stdout, exported.stderr
    release = tmp_path / "release" / "checkpoint-000006"
    with safe_open(str(release / "model.safetensors"), "pt") as f:
        assert all(k.startswith("ema.") for k in f.keys()) and f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    assert not (release / "trainer_state.pt").exists() and (tmp_path / "release" / "metrics.jsonl").exists()
    again = _musicdiff("generate", "a fast rock beat", "--checkpoint", str(tmp_path / "release"),
                       "--out", str(tmp_path / "again.wav"), "--steps", "3", "--seed", "2")
    assert again.returncode == 0, again.stderr


@pytest.mark.parametrize("args, words", [
    (["generate", "a tune", "--checkpoint", "no-such-run", "--out", "x.wav"], "no-such-run"),
    (["generate", " ", "--checkpoint", "no-such-run", "--out", "x.wav"], "the prompt is empty"),
    (["info", "no-such-run"], "no-such-run"),
    (["train", "--preset", "huge", "--data", ".", "--out", "r"], "unknown preset 'huge'"),
    (["train", "--preset", "ci", "--data", ".", "--out", "r"], "neither a cache"),
    (["train", "--preset", "ci", "--data", ".", "--out", "r", "--max-minutes", "0"], "--max-minutes must be positive"),
    (["data"], "which one: synth or prepare?"),
    (["data", "synth", "--n", "0", "--out", "x"], "--n must be a positive number"),
    (["data", "synth", "--n", "2"], "the following arguments are required: --out"),
    (["data", "prepare", "no-such-folder", "--out", "c"], "no-such-folder"),
    (["data", "prepare", "musiccaps:no-such-folder", "--out", "c"], "no-such-folder"),
])
def test_data_commands_reject_bad_input_in_one_line(tmp_path, args, words):
    result = subprocess.run([shutil.which("musicdiff", path=os.path.dirname(sys.executable)), *args],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert words in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_help_shows_an_example():
    for args in (["--help"], ["roundtrip", "--help"], ["data", "--help"], ["data", "synth", "--help"],
                 ["data", "prepare", "--help"], ["train", "--help"], ["generate", "--help"], ["export", "--help"],
                 ["info", "--help"]):
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
