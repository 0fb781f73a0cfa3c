"""Tests for musicdiff_lib.training (chapter ``07_training``): checkpoints, exact resume, kill -9, NaN.

Everything trains the ``ci`` U-Net for real on a tiny cache of rendered music
with real MiniLM caption embeddings. Run as a script (``python
tests/test_training.py worker CACHE RUN``) this file is the training process
that the kill -9 test starts and kills.
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")

from musicdiff_lib import training  # noqa: E402
from musicdiff_lib.data import MelDataset  # noqa: E402
from musicdiff_lib.mel import MelConfig  # noqa: E402
from musicdiff_lib.training import TrainConfig, Trainer, TrainingDiverged  # noqa: E402
from musicdiff_lib.unet import UNetConfig  # noqa: E402

MEL = MelConfig(sample_rate=16000, n_fft=512, hop_length=256, n_mels=32)
FRAMES = 32  # 1 s gives 63 frames: random 32-frame crops; the ci U-Net needs multiples of 4
REPO = Path(__file__).resolve().parents[1]


def small_config(**changes) -> TrainConfig:
    base = TrainConfig(batch_size=2, grad_accum=2, lr=2e-3, warmup_steps=3, max_steps=12, ema_decay=0.95,
                       cond_drop_prob=0.25, prediction_type="v", min_snr_gamma=5.0, mixed_precision="no",
                       seed=3, log_every=1, checkpoint_every=0, keep_last=0, preview_every=0,
                       preview_prompts=("a fast song with drums", "slow calm piano"), preview_steps=2)
    return replace(base, **changes)


@pytest.fixture(scope="module")
def encoder():
    from musicdiff_lib.text import TextEncoder

    return TextEncoder(device="cpu")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, encoder, one_thread) -> Path:
    from musicdiff_lib import data, synth

    root = tmp_path_factory.mktemp("train")
    synth.write_dataset(root / "src", 8, seconds=1.0, workers=1, progress=False)
    data.prepare(data.open_source(root / "src"), root / "cache", MEL, encoder, 1.0, progress=False, workers=1)
    return root / "cache"


def make_trainer(cache: Path, out: Path, encoder=None, dropout: float = 0.0, **changes) -> Trainer:
    config = small_config(**changes)
    dataset = MelDataset(cache, frames=FRAMES, seed=config.seed)
    unet = replace(UNetConfig.preset("ci"), dropout=dropout)
    return Trainer(config, unet, dataset, out, text_encoder=encoder)


def read_metrics(run: Path) -> list[tuple[int, float, float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"], r["lr"]) for r in rows]


def weights(run: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    model, _ = training.load_model(run, use_ema=use_ema)
    return model.state_dict()


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ----------------------------------------------------------------------------------------------
# Schedules and EMA against their closed forms


def test_lr_schedule_is_linear_warmup_then_cosine():
    warmup, total = 4, 20
    expected = [(s + 1) / warmup if s < warmup else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
                for s in range(total)]
    got = [training.lr_factor(s, warmup, total) for s in range(total)]
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert got[:warmup] == sorted(got[:warmup]) and got[warmup - 1] == 1.0 == got[warmup]
    assert all(a > b for a, b in zip(got[warmup:], got[warmup + 1:]))  # strictly decreasing after warm-up
    assert training.lr_factor(total, warmup, total) == pytest.approx(0.0, abs=1e-15)


def test_ema_update_follows_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = training.EMA(model, decay=0.9, warmup=True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    for step in (1, 2, 50):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        d = ema.update(model, step)
        assert d == min(0.9, (1 + step) / (10 + step))
        for name, e in ema.model.state_dict().items():
            expected = d * start[name] + (1 - d) * model.state_dict()[name]
            torch.testing.assert_close(e, expected, rtol=1e-6, atol=1e-7)
            start[name] = e.clone()
    assert ema.updates == 3
    assert training.ema_decay_at(1, 0.999) == pytest.approx(2 / 11)
    assert training.ema_decay_at(1, 0.999, warmup=False) == 0.999


def test_train_config_round_trips_and_names_bad_fields():
    config = small_config(preview_prompts=["a", "b"])
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="TrainConfig.mixed_precision"):
        small_config(mixed_precision="fp8")
    with pytest.raises(ValueError, match="TrainConfig.prediction_type"):
        small_config(prediction_type="noise")
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        small_config(batch_size=0)
    with pytest.raises(ValueError, match="unknown training preset 'tiny'"):
        TrainConfig.preset_config("tiny")


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_checkpoint_round_trip_keep_last_and_mismatches(cache, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(cache, run, max_steps=6, checkpoint_every=2, keep_last=2)
    result = trainer.fit(progress=False)
    assert result["step"] == 6 and result["stopped"] == "max_steps"
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000004", "checkpoint-000006"]
    assert (run / "latest").read_text().strip() == "checkpoint-000006"

    config = training.load_checkpoint_config(run)
    assert config == training.load_checkpoint_config(run / "checkpoint-000006")
    assert config["format"] == "musicdiff-checkpoint" and config["version"] == 1 and config["step"] == 6
    assert MelConfig.from_dict(config["mel"]) == replace(MEL, frames=FRAMES)
    assert config["text_encoder"] == {"name": trainer.dataset.encoder_name, "dim": 384}
    assert UNetConfig.from_dict(config["unet"]) == replace(UNetConfig.preset("ci"), text_dim=384)
    assert config["prediction_type"] == "v" and config["schedule"]["name"] == "cosine"

    ema, raw = weights(run, True), weights(run, False)
    assert_same_weights(ema, trainer.ema.model.state_dict())
    assert_same_weights(raw, trainer.raw_model.state_dict())
    assert any(not torch.equal(ema[k], raw[k]) for k in ema)  # the average lags the raw weights
    state = torch.load(run / "checkpoint-000006" / "trainer_state.pt", weights_only=True)
    assert state["step"] == 6 and state["ema"]["updates"] == 6 and state["optimizer"]["state"]
    assert training.load_trainer_state(run)["scheduler"]["last_epoch"] == 6

    # What the caller asks for must match what is on disk; the error names the field.
    with pytest.raises(ValueError, match=r"mel\.n_mels=32 but 64"):
        training.load_model(run, mel=replace(MEL, n_mels=64, frames=FRAMES))
    with pytest.raises(ValueError, match=r"text_encoder\.name="):
        training.load_model(run, text_encoder="bert-base-uncased")
    with pytest.raises(ValueError, match=r"unet\.down_channels"):
        training.load_model(run, unet=replace(UNetConfig.preset("ci"), text_dim=384, down_channels=(8, 32)))
    with pytest.raises(ValueError, match="prediction_type='v' but 'epsilon'"):
        training.load_model(run, prediction_type="epsilon")
    # A config.json whose unet does not build the stored tensors: the tensor and both shapes are named.
    other = run / "checkpoint-000004" / "config.json"
    edited = json.loads(other.read_text())
    edited["unet"]["tail_channels"] = 12
    other.write_text(json.dumps(edited))
    with pytest.raises(ValueError, match=r"tensor ema\.\S+ has shape .* but config.json's 'unet' builds"):
        training.load_model(run / "checkpoint-000004")
    # Starting afresh over an existing run is refused rather than mixing two runs.
    with pytest.raises(ValueError, match="already holds checkpoints"):
        make_trainer(cache, run, max_steps=8).fit(progress=False)


def test_a_crash_mid_write_leaves_the_last_good_checkpoint_loadable(cache, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(cache, run, max_steps=2, checkpoint_every=2)
    trainer.fit(progress=False)
    good = weights(run, True)
    # A crash while writing checkpoint 4: a half-written temporary directory ...
    partial = run / ".tmp-checkpoint-4"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"\x00garbage")
    # ... and, worse, a stale `latest` naming a directory that never got renamed into place.
    (run / "latest").write_text("checkpoint-000004\n")
    assert training.load_checkpoint_config(run)["step"] == 2
    assert_same_weights(weights(run, True), good)
    # Resuming removes the leftover and carries on.
    resumed = make_trainer(cache, run, max_steps=4, checkpoint_every=2)
    assert resumed.fit(resume=True, progress=False)["step"] == 4
    assert not partial.exists()
    assert training.load_checkpoint_config(run)["step"] == 4


def test_max_minutes_stops_with_a_checkpoint(cache, tmp_path):
    run = tmp_path / "run"
    result = make_trainer(cache, run, checkpoint_every=0).fit(max_minutes=1e-5, progress=False)
    assert result["stopped"] == "max_minutes" and result["step"] == 1
    assert result["checkpoint"] == run / "checkpoint-000001"
    assert training.load_checkpoint_config(run)["step"] == 1


# ----------------------------------------------------------------------------------------------
# Exact resume


def test_resume_follows_the_uninterrupted_run_bitwise(cache, tmp_path):
    # Dropout draws from the global generator: resume must restore its state too.
    straight = tmp_path / "straight"
    make_trainer(cache, straight, dropout=0.2).fit(progress=False)
    curve = read_metrics(straight)
    assert [s for s, _, _ in curve] == list(range(1, 13))
    losses = [loss for _, loss, _ in curve]
    assert len(set(losses)) == 12 and all(math.isfinite(x) for x in losses)
    # The logged learning rate is the schedule's closed form.
    config = small_config()
    for step, _, lr in curve:
        assert lr == pytest.approx(config.lr * training.lr_factor(step - 1, 3, 12), rel=1e-12)

    # 5 steps (an odd number: mid-epoch, since an epoch is 2 steps of 2 micro-batches), then resume.
    split = tmp_path / "split"
    make_trainer(cache, split, dropout=0.2).fit(max_steps=5, progress=False)  # same config, stopped early
    torch.manual_seed(1234)  # whatever happens in between
    second = make_trainer(cache, split, dropout=0.2, num_workers=2)  # loader processes: same batches
    assert second.fit(resume=True, progress=False)["step"] == 12
    assert read_metrics(split) == curve  # (step, loss, lr) bitwise
    assert_same_weights(weights(split, False), weights(straight, False))
    assert_same_weights(weights(split, True), weights(straight, True))


def test_resume_checks_the_run_and_may_change_the_horizon(cache, tmp_path):
    run = tmp_path / "run"
    make_trainer(cache, run).fit(max_steps=2, progress=False)
    # A shorter max_steps on resume: the cosine continues on the new horizon from the next step.
    make_trainer(cache, run, max_steps=4, lr=1e-3).fit(resume=True, progress=False)
    assert [lr for _, _, lr in read_metrics(run)[2:]] == [1e-3 * training.lr_factor(s, 3, 4) for s in (2, 3)]
    with pytest.raises(ValueError, match=r"train\.seed=3 but 4"):
        make_trainer(cache, run, seed=4).fit(resume=True, progress=False)
    with pytest.raises(ValueError, match="prediction_type='v' but 'epsilon'"):
        make_trainer(cache, run, prediction_type="epsilon").fit(resume=True, progress=False)


def _worker(cache: str, run: str, max_steps: int, delay: float) -> None:
    """The training process of the kill -9 test: the `train` entry point, resuming whatever is there."""
    torch.set_num_threads(1)
    if delay:
        step = Trainer.train_step

        def slow_step(self, batches):
            time.sleep(delay)  # leaves time to kill it between checkpoints; changes no number
            return step(self, batches)

        Trainer.train_step = slow_step
    training.train("ci", cache, run, resume=True, max_steps=max_steps, progress=False,
                   checkpoint_every=2, keep_last=2, seed=5)


def _start_worker(cache: Path, run: Path, max_steps: int, delay: float) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, __file__, "worker", str(cache), str(run), str(max_steps), str(delay)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_kill_9_and_resume_in_a_new_process_follows_the_same_curve(cache, tmp_path):
    steps = 14
    run = tmp_path / "killed"
    process = _start_worker(cache, run, steps, delay=0.15)
    deadline = time.monotonic() + 120

    def logged() -> int:
        path = run / "metrics.jsonl"
        return path.read_text().count("\n") if path.exists() else 0

    # Kill it once step 3 is logged: past the checkpoint of step 2, so the log runs ahead of it.
    while not ((run / "latest").exists() and logged() >= 3):
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    killed_at = training.load_checkpoint_config(run)["step"]
    assert 2 <= killed_at < steps and logged() >= 3

    resumed = _start_worker(cache, run, steps, delay=0.0)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err.decode()[-2000:]

    reference = tmp_path / "reference"  # the uninterrupted run, in this process
    _worker(str(cache), str(reference), steps, 0.0)
    curve = read_metrics(reference)
    assert [s for s, _, _ in curve] == list(range(1, steps + 1))
    assert read_metrics(run) == curve
    assert_same_weights(weights(run, True), weights(reference, True))


def _ddp_worker(cache: str, run: str) -> None:
    """One of two processes under torchrun (gloo): 6 steps of batch 2 each, then compare the replicas."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    result = training.train("ci", cache, run, max_steps=6, progress=False, batch_size=2, checkpoint_every=0, seed=7)
    flat = torch.cat([p.detach().flatten() for p in training.load_model(run, use_ema=False)[0].parameters()])
    mine = torch.cat([p.detach().flatten() for p in result["trainer"].raw_model.parameters()])
    gathered = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    if dist.get_rank() == 0:
        report = {"world": dist.get_world_size(), "step": result["step"],
                  "replicas_equal": all(torch.equal(g, gathered[0]) for g in gathered),
                  "saved_equals_replica": torch.equal(flat, mine)}
        Path(run, "ddp.json").write_text(json.dumps(report))


@pytest.mark.slow
def test_two_processes_hold_identical_replicas_and_match_one_process(cache, tmp_path):
    run = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, "ddp", str(cache), str(run)], cwd=REPO, env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    report = json.loads((run / "ddp.json").read_text())
    assert report == {"world": 2, "step": 6, "replicas_equal": True, "saved_equals_replica": True}
    # One process with the same global batch (2 × 2 by accumulation) draws the same clips and noise, so
    # only the order of floating-point sums differs (the gradient all-reduce).
    single = tmp_path / "single"
    training.train("ci", cache, single, max_steps=6, progress=False, batch_size=2, grad_accum=2,
                   checkpoint_every=0, seed=7)
    two, one = read_metrics(run), read_metrics(single)
    assert [s for s, _, _ in two] == [s for s, _, _ in one] == list(range(1, 7))
    assert two[0][1] == pytest.approx(one[0][1], rel=1e-6)  # the same weights, data and noise at step 1
    assert [loss for _, loss, _ in two] == pytest.approx([loss for _, loss, _ in one], rel=1e-4)
    for a, b in zip(weights(run, False).values(), weights(single, False).values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Divergence and previews


def test_a_nan_loss_stops_training_naming_the_step(cache, tmp_path):
    run = tmp_path / "run"
    trainer = make_trainer(cache, run, grad_accum=1, checkpoint_every=2)
    calls = {"n": 0}

    def poison(module, args, output):
        calls["n"] += 1
        return output * float("nan") if calls["n"] == 5 else output

    trainer.raw_model.register_forward_hook(poison)
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5 .*checkpoint-000004"):
        trainer.fit(progress=False)
    assert trainer.step == 4
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-000002", "checkpoint-000004"]
    model, config = training.load_model(run)
    assert config["step"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert training.load_trainer_state(run)["step"] == 4
    assert [s for s, _, _ in read_metrics(run)] == [1, 2, 3, 4]


def test_previews_write_spectrograms_and_audio_without_touching_the_run(cache, tmp_path, encoder):
    import soundfile as sf

    trainer = make_trainer(cache, tmp_path / "run", encoder=encoder, max_steps=1)
    trainer.fit(progress=False)
    rng = torch.get_rng_state()
    folder = trainer.preview()
    assert torch.equal(torch.get_rng_state(), rng)
    assert folder == tmp_path / "run" / "previews" / "step-000001"
    for i in range(2):
        assert (folder / f"{i:02d}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        wave, rate = sf.read(folder / f"{i:02d}.wav")
        assert rate == MEL.sample_rate and len(wave) == (FRAMES - 1) * MEL.hop_length
        assert 0.5 < abs(wave).max() <= 1.0
    assert json.loads((folder / "prompts.json").read_text()) == ["a fast song with drums", "slow calm piano"]


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "worker":
    _worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
elif __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "ddp":
    _ddp_worker(sys.argv[2], sys.argv[3])
