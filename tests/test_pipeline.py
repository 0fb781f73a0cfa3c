"""MusicDiffusionPipeline: real checkpoints on disk, the real MiniLM encoder, a tiny U-Net with random weights.

The checkpoints are written here by hand, following the format of ``musicdiff_lib.pipeline`` (config.json +
model.safetensors with "ema." and "model." tensors, a run directory's ``latest`` file), so these tests do not
depend on the trainer. The U-Net is the ``ci`` preset widened to MiniLM's 384-d text; its random weights give
mels that depend on the caption and the seed, which is all the pipeline's plumbing needs.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

from musicdiff_lib.mel import MelConfig
from musicdiff_lib.pipeline import MusicDiffusionPipeline, PipelineOutput
from musicdiff_lib.sampling import sample
from musicdiff_lib.text import TextEncoder
from musicdiff_lib.unet import UNet, UNetConfig

pytestmark = pytest.mark.usefixtures("one_thread")

MEL = MelConfig(sample_rate=8000, n_fft=256, hop_length=128, n_mels=16, frames=32)  # 0.5 s, sides multiples of 4
FAST = dict(steps=3, progress=False, griffin_lim_iters=8)
PROMPTS = ["calm solo piano, slow, no drums", "fast rock with loud drums and electric guitar", "a bright flute melody"]


def write_checkpoint(ckpt: Path, unet: UNetConfig, encoder_name: str, encoder_dim: int, seed: int = 1,
                     dtype: torch.dtype = torch.float32, prefixes: tuple[str, ...] = ("ema.", "model.")) -> dict:
    """A checkpoint directory per the shared format: EMA weights from ``seed``, raw weights from ``seed + 1``."""
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, prefix in enumerate(prefixes):
        state = UNet(unet, seed=seed + i).state_dict()
        tensors.update({prefix + k: v.to(dtype).contiguous() for k, v in state.items()})
    save_file(tensors, str(ckpt / "model.safetensors"))
    config = {"format": "musicdiff-checkpoint", "version": 1, "step": 3, "unet": unet.to_dict(), "mel": MEL.to_dict(),
              "text_encoder": {"name": encoder_name, "dim": encoder_dim},
              "schedule": {"name": "cosine", "T": 1000, "zero_terminal_snr": False},
              "prediction_type": "v", "preset": "ci"}
    (ckpt / "config.json").write_text(json.dumps(config, indent=2))
    return tensors


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(device="cpu")


@pytest.fixture(scope="module")
def unet_config(encoder) -> UNetConfig:
    return dataclasses.replace(UNetConfig.preset("ci"), text_dim=encoder.dim)


@pytest.fixture(scope="module")
def run(tmp_path_factory, encoder, unet_config) -> Path:
    """A run directory: an older checkpoint, the newest one, and ``latest`` naming it."""
    run = tmp_path_factory.mktemp("run")
    write_checkpoint(run / "checkpoint-000001", unet_config, encoder.name, encoder.dim, seed=10)
    write_checkpoint(run / "checkpoint-000003", unet_config, encoder.name, encoder.dim, seed=1)
    (run / "latest").write_text("checkpoint-000003\n")
    return run


@pytest.fixture(scope="module")
def pipe(run, encoder) -> MusicDiffusionPipeline:
    return MusicDiffusionPipeline.from_checkpoint(run, device="cpu", encoder=encoder)


# --- loading ---------------------------------------------------------------------------------------------------

def test_a_run_directory_loads_its_latest_checkpoint_with_ema_or_raw_weights(run, encoder, pipe):
    saved = load_file(str(run / "checkpoint-000003" / "model.safetensors"))
    assert pipe.checkpoint == run / "checkpoint-000003"
    for name, value in pipe.model.state_dict().items():
        assert torch.equal(value, saved["ema." + name]), name
    raw = MusicDiffusionPipeline.from_checkpoint(run / "checkpoint-000003", device="cpu", use_ema=False,
                                                 encoder=encoder)
    for name, value in raw.model.state_dict().items():
        assert torch.equal(value, saved["model." + name]), name
    assert not torch.equal(raw.model.stem.weight, pipe.model.stem.weight)
    assert pipe.prediction_type == "v" and pipe.schedule.name == "cosine" and pipe.schedule.T == 1000
    assert pipe.mel_config == MEL and pipe.sample_rate == 8000 and pipe.device == torch.device("cpu")
    assert pipe.to("cpu") is pipe
    text = repr(pipe)
    for part in ("checkpoint-000003", "step=3", "ema weights", "16×32 at 8000 Hz", "0.50 s", "'v'", "MiniLM"):
        assert part in text, part


def test_without_an_encoder_the_checkpoints_encoder_is_loaded(run, pipe):
    own = MusicDiffusionPipeline.from_checkpoint(run, device="cpu")
    assert own.encoder is not pipe.encoder and own.encoder.name == pipe.encoder.name
    a, b = own(PROMPTS[0], seed=4, **FAST), pipe(PROMPTS[0], seed=4, **FAST)
    assert np.array_equal(a.mels, b.mels)


def test_fp16_weights_load_into_a_float32_model(tmp_path, encoder, unet_config):
    tensors = write_checkpoint(tmp_path / "ckpt", unet_config, encoder.name, encoder.dim, dtype=torch.float16)
    pipe = MusicDiffusionPipeline.from_checkpoint(tmp_path / "ckpt", device="cpu", encoder=encoder)
    weight = pipe.model.stem.weight
    assert weight.dtype == torch.float32 and torch.equal(weight, tensors["ema.stem.weight"].float())
    assert np.isfinite(pipe(PROMPTS[0], **FAST).waves).all()


# --- generation ------------------------------------------------------------------------------------------------

def test_shapes_ranges_and_sample_rate(pipe):
    out = pipe(PROMPTS, seed=[1, 2, 3], **FAST)
    assert isinstance(out, PipelineOutput) and len(out) == 3
    assert out.mels.shape == (3, 1, 16, 32) and out.mels.dtype == np.float32
    assert out.waves.shape == (3, MEL.num_samples) and out.waves.dtype == np.float32
    assert out.sample_rate == 8000 and out.prompts == PROMPTS and out.seeds == [1, 2, 3]
    assert out.mels.min() >= -1 and out.mels.max() <= 1 and np.isfinite(out.waves).all()
    assert out.mels.std() > 0.01 and np.abs(out.waves).max() > 1e-4  # not silence
    assert not np.allclose(out.mels[0], out.mels[1], atol=1e-3)  # different captions and seeds
    single = pipe("one prompt", seed=7, **FAST)
    assert single.mels.shape == (1, 1, 16, 32) and single.prompts == ["one prompt"] and single.seeds == [7]
    assert pipe(PROMPTS[:2], seed=5, **FAST).seeds == [5, 6]  # an int seed s means s, s+1, … as in sample()


def test_longer_clips_than_trained(pipe):
    """The U-Net is convolutional: ``seconds`` widens the mel to a multiple the network takes."""
    multiple = pipe.model.config.size_multiple
    out = pipe("one prompt", seed=3, seconds=0.9, **FAST)  # 0.9 s at 8 kHz, hop 128: 1 + ⌈56.25⌉ = 58 frames
    assert out.mels.shape[-1] == -(-58 // multiple) * multiple and out.mels.shape[-1] > 32
    assert out.waves.shape == (1, 7200) and np.abs(out.waves).max() > 1e-4
    with pytest.raises(ValueError, match="seconds=0"):
        pipe("one prompt", seconds=0, **FAST)


def test_generation_is_deterministic_and_a_prompt_does_not_depend_on_its_batch(pipe):
    """Prompt i with seed s gives the same clip alone or in a batch. Not bitwise: the U-Net's convolutions
    round differently at another batch size (measured: 7e-7 on the mels, 1.5e-4 on the waves after
    Griffin-Lim, whose 8 iterations amplify it)."""
    batch = pipe(PROMPTS, seed=[11, 12, 13], **FAST)
    again = pipe(PROMPTS, seed=[11, 12, 13], **FAST)
    assert np.array_equal(batch.mels, again.mels) and np.array_equal(batch.waves, again.waves)
    alone = pipe(PROMPTS[1], seed=12, **FAST)
    assert np.allclose(alone.mels[0], batch.mels[1], atol=1e-5)
    assert np.abs(alone.waves[0] - batch.waves[1]).max() < 1e-2 * np.abs(batch.waves[1]).max()
    other_seed = pipe(PROMPTS[1], seed=99, **FAST)
    assert np.abs(other_seed.mels[0] - alone.mels[0]).max() > 1e-2
    reordered = pipe([PROMPTS[2], PROMPTS[1]], seed=[13, 12], **FAST)
    assert np.allclose(reordered.mels[1], batch.mels[1], atol=1e-5)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_2m"])
def test_every_sampler_runs(pipe, sampler):
    out = pipe(PROMPTS[0], sampler=sampler, seed=3, **FAST)
    assert out.mels.shape == (1, 1, 16, 32) and np.isfinite(out.waves).all()


def test_a_negative_prompt_changes_the_output_and_is_manual_cfg(pipe, encoder):
    prompt, negative, w = PROMPTS[0], "loud drums", 3.0
    plain = pipe(prompt, seed=21, guidance_scale=w, **FAST)
    guided = pipe(prompt, seed=21, guidance_scale=w, negative_prompt=negative, **FAST)
    assert guided.negative_prompts == [negative]
    assert np.abs(guided.mels - plain.mels).max() > 1e-2

    # By hand: ε̂ = ε_neg + w (ε_c − ε_neg) inside a model that the sampler calls without guidance (w = 1).
    text, neg = encoder([prompt]), encoder([negative])

    def manual_cfg(x, t, _text):
        eps_neg = pipe.model(x, t, neg)
        return eps_neg + w * (pipe.model(x, t, text) - eps_neg)

    by_hand = sample(manual_cfg, (1, 1, 16, 32), pipe.schedule, text=text, sampler="dpmpp_2m", steps=3,
                     guidance_scale=1.0, prediction_type="v", seeds=21, progress=False, clip_x0=1.0)
    assert np.allclose(guided.mels, by_hand.clamp(-1, 1).numpy(), atol=1e-5)
    # One negative prompt for the whole batch, or one per prompt
    both = pipe([prompt, PROMPTS[1]], seed=[21, 22], guidance_scale=w, negative_prompt=negative, **FAST)
    assert np.allclose(both.mels[0], guided.mels[0], atol=1e-5)
    each = pipe([prompt, PROMPTS[1]], seed=[21, 22], guidance_scale=w, negative_prompt=[negative, ""], **FAST)
    assert np.allclose(each.mels[0], guided.mels[0], atol=1e-5) and each.negative_prompts == [negative, ""]


# --- saving ----------------------------------------------------------------------------------------------------

def test_saved_wavs_read_back_at_the_sample_rate(pipe, tmp_path):
    out = pipe(PROMPTS[:2], seed=[1, 2], **FAST)
    paths = out.save_wav(tmp_path / "wavs")
    assert [p.name for p in paths] == ["00-calm-solo-piano-slow-no-drums-seed1.wav",
                                       "01-fast-rock-with-loud-drums-and-electric-seed2.wav"]
    for path, wave in zip(paths, out.waves):
        data, rate = sf.read(path, dtype="float32")
        assert rate == 8000 and data.shape == wave.shape
        assert np.abs(data - np.clip(wave, -1, 1)).max() <= 1.5 / 32767  # 16-bit PCM
    assert out.save_wav(tmp_path / "song.wav") == [tmp_path / "song-0.wav", tmp_path / "song-1.wav"]
    single = pipe(PROMPTS[0], **FAST)
    assert single.save_wav(tmp_path / "one.wav") == [tmp_path / "one.wav"]
    assert sf.info(str(tmp_path / "one.wav")).frames == MEL.num_samples
    assert not list(tmp_path.rglob("*.tmp"))


def test_saved_pngs_are_spectrogram_pictures(pipe, tmp_path):
    import matplotlib.image

    out = pipe(PROMPTS[:2], seed=[1, 2], **FAST)
    paths = out.save_png(tmp_path / "pngs")
    assert len(paths) == 2 and all(p.suffix == ".png" for p in paths)
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(path)
        assert image.shape[:2] == (300, 800) and image[..., :3].std() > 0.05  # 8×3 in at 100 dpi, not blank
    assert pipe(PROMPTS[0], **FAST).save_png(tmp_path / "one.png") == [tmp_path / "one.png"]


# --- errors ----------------------------------------------------------------------------------------------------

def test_bad_arguments_fail_before_any_model_call(pipe):
    calls = []
    hook = pipe.model.register_forward_hook(lambda *args: calls.append(1))
    try:
        with pytest.raises(ValueError, match="prompt: expected at least one prompt"):
            pipe([], **FAST)
        with pytest.raises(ValueError, match=r"seed: expected one seed per prompt \(3\), got 2"):
            pipe(PROMPTS, seed=[1, 2], **FAST)
        with pytest.raises(ValueError, match="sampler='euler'.*ddpm, ddim, dpmpp_2m"):
            pipe(PROMPTS[0], sampler="euler", **FAST)
        with pytest.raises(ValueError, match=r"negative_prompt: expected one for all or one per prompt \(3\), got 2"):
            pipe(PROMPTS, negative_prompt=["a", "b"], **FAST)
        with pytest.raises(TypeError, match=r"prompt\[1\]: expected a string"):
            pipe(["ok", 3], **FAST)
        with pytest.raises(ValueError, match="griffin_lim_iters=0"):
            pipe(PROMPTS[0], steps=3, griffin_lim_iters=0, progress=False)
        with pytest.raises(ValueError, match="steps=5000"):
            pipe(PROMPTS[0], steps=5000, progress=False)
    finally:
        hook.remove()
    assert calls == []


def test_an_encoder_that_does_not_match_the_checkpoint_is_refused(tmp_path, encoder, unet_config):
    write_checkpoint(tmp_path / "t5", unet_config, "google/flan-t5-small", encoder.dim)
    with pytest.raises(ValueError, match="text_encoder.name: .*'google/flan-t5-small'.*all-MiniLM-L6-v2"):
        MusicDiffusionPipeline.from_checkpoint(tmp_path / "t5", device="cpu", encoder=encoder)
    wide = dataclasses.replace(unet_config, text_dim=512)
    write_checkpoint(tmp_path / "wide", wide, encoder.name, 512)
    with pytest.raises(ValueError, match="text_encoder.dim: .*expects 512.*gives 384"):
        MusicDiffusionPipeline.from_checkpoint(tmp_path / "wide", device="cpu", encoder=encoder)


def _copy(run: Path, tmp_path: Path) -> Path:
    ckpt = tmp_path / "checkpoint-000003"
    shutil.copytree(run / "checkpoint-000003", ckpt)
    return ckpt


def _refused(path: Path, *words: str, **kwargs) -> None:
    with pytest.raises(ValueError) as info:
        MusicDiffusionPipeline.from_checkpoint(path, device="cpu", **kwargs)
    message = str(info.value)
    for word in words:
        assert word in message, (word, message)
    assert "\n" not in message  # one line, ready for the CLI


def test_missing_or_garbled_checkpoints_give_errors_naming_the_file(run, tmp_path, encoder, unet_config):
    _refused(tmp_path / "nowhere", str(tmp_path / "nowhere"), "no such checkpoint")
    (tmp_path / "empty").mkdir()
    _refused(tmp_path / "empty", str(tmp_path / "empty"), "no config.json", "no 'latest' file")
    (tmp_path / "empty" / "latest").write_text("checkpoint-000500\n")
    _refused(tmp_path / "empty", str(tmp_path / "empty" / "latest"), "checkpoint-000500", "does not exist")
    _refused(run / "latest", str(run / "latest"), "got a file")

    ckpt = _copy(run, tmp_path)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text('{"format": "musicdiff-checkpoint", "version": 1, "unet": {')
    _refused(ckpt, str(ckpt / "config.json"), "JSON")
    (ckpt / "config.json").write_text(json.dumps({**config, "format": "diffusers"}))
    _refused(ckpt, str(ckpt / "config.json"), "format='diffusers'")
    (ckpt / "config.json").write_text(json.dumps({**config, "version": 2}))
    _refused(ckpt, str(ckpt / "config.json"), "version=2")
    (ckpt / "config.json").write_text(json.dumps({k: v for k, v in config.items() if k != "mel"}))
    _refused(ckpt, str(ckpt / "config.json"), "'mel'")
    (ckpt / "config.json").write_text(json.dumps({**config, "mel": {**config["mel"], "n_mel": 16}}))
    _refused(ckpt, str(ckpt / "config.json"), "unknown field", "n_mel")
    (ckpt / "config.json").write_text(json.dumps({**config, "mel": {**config["mel"], "frames": 30}}))
    _refused(ckpt, str(ckpt / "config.json"), "multiple of 4", encoder=encoder)  # the U-Net cannot take 30 frames
    (ckpt / "config.json").write_text(json.dumps(config))

    weights = (ckpt / "model.safetensors").read_bytes()
    (ckpt / "model.safetensors").write_bytes(weights[: len(weights) // 2])  # a truncated copy
    _refused(ckpt, str(ckpt / "model.safetensors"), "safetensors")
    (ckpt / "model.safetensors").write_bytes(b"not a safetensors file at all")
    _refused(ckpt, str(ckpt / "model.safetensors"), "safetensors")
    (ckpt / "model.safetensors").unlink()
    _refused(ckpt, str(ckpt / "model.safetensors"), "missing")

    write_checkpoint(ckpt, unet_config, encoder.name, encoder.dim, prefixes=("model.",))  # raw weights only
    _refused(ckpt, str(ckpt / "model.safetensors"), "no 'ema.*' tensors", encoder=encoder)
    assert MusicDiffusionPipeline.from_checkpoint(ckpt, device="cpu", use_ema=False, encoder=encoder)
    smaller = dataclasses.replace(unet_config, down_channels=(8, 8))
    write_checkpoint(ckpt, smaller, encoder.name, encoder.dim)
    (ckpt / "config.json").write_text(json.dumps(config))  # weights of another shape than config.json says
    _refused(ckpt, str(ckpt / "model.safetensors"), "do not fit the U-Net", "size mismatch", encoder=encoder)


def test_the_book_model_is_found_from_a_subfolder_or_trained_when_absent(tmp_path, encoder):
    """Chapters run in notebooks/ and find ../checkpoints/book-cpu; without it a small model is trained."""
    from musicdiff_lib.pipeline import book_pipeline, find_book_checkpoint

    assert find_book_checkpoint(tmp_path) is None
    pipe = book_pipeline(device="cpu", search_from=tmp_path, fallback_dir=tmp_path / "fallback",
                         fallback_preset="ci", fallback_steps=3, fallback_clips=4, progress=False)
    assert pipe.config["step"] == 3 and pipe.config["preset"] == "ci"
    out = pipe("a waltz", steps=2, progress=False)
    assert np.isfinite(out.waves).all() and out.mels.shape[-2:] == (16, 32)

    from musicdiff_lib.training import export_checkpoint

    export_checkpoint(tmp_path / "fallback" / "run", tmp_path / "repo" / "checkpoints" / "book-cpu")
    (tmp_path / "repo" / "notebooks").mkdir()
    assert find_book_checkpoint(tmp_path / "repo" / "notebooks") == tmp_path / "repo" / "checkpoints" / "book-cpu"
    found = book_pipeline(device="cpu", search_from=tmp_path / "repo" / "notebooks")
    assert found.config["step"] == 3 and found.weights == "ema"
