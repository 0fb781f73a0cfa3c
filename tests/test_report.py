"""``musicdiff evaluate`` end to end on a real (tiny) trained model, real renders and the committed classifier."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from musicdiff_lib.data import MelDataset, open_source, prepare
from musicdiff_lib.mel import MelConfig
from musicdiff_lib.classifier import prediction_accuracy
from musicdiff_lib.report import evaluate, find_classifier, headline, nearest_training, summarize
from musicdiff_lib.synth import ATTRIBUTES, write_dataset
from musicdiff_lib.training import train

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
CLASSIFIER = find_classifier(ROOT)
needs_classifier = pytest.mark.skipif(CLASSIFIER is None, reason="checkpoints/classifier-cpu is not in this checkout")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    """A ci-preset model trained for a few steps on 24 rendered 2-s clips, and its cache."""
    root = tmp_path_factory.mktemp("evaluate")
    write_dataset(root / "synth", 24, seed=0, seconds=2.0, sample_rate=8000, workers=1, progress=False)
    prepare(open_source(root / "synth"), root / "cache", MelConfig.preset("ci"),
            "sentence-transformers/all-MiniLM-L6-v2", seconds=2.0, progress=False)
    train("ci", root / "cache", root / "run", max_steps=4, progress=False, frames=96)
    train("ci", root / "cache", root / "uncond", max_steps=4, progress=False, frames=96, cond_drop_prob=1.0)
    return {"root": root, "run": root / "run", "uncond": root / "uncond", "cache": root / "cache"}


@needs_classifier
def test_evaluate_writes_a_deterministic_resumable_report(trained):
    root = trained["root"]
    kwargs = dict(n=8, seed=3, steps=2, diversity=4, classifier=CLASSIFIER, train_data=trained["cache"],
                  baselines={"unconditional": trained["uncond"]}, heldout_dir=root / "heldout", progress=False)
    first = evaluate(trained["run"], root / "eval-a", **kwargs)
    for name in ("report.json", "report.md", "adherence.png", "similarity.png", "griffin_lim.png", "examples.png",
                 "samples/00-generated.wav", "samples/00-real.wav"):
        assert (root / "eval-a" / name).stat().st_size > 0, name

    # The real clips' scores (HPSS, features, Griffin-Lim) are kept beside the held-out clips, once.
    assert len(list((root / "heldout").glob("real-scores-*.npz"))) == 1

    # Same arguments, another folder: byte-identical report (the second one reads the real scores back).
    evaluate(trained["run"], root / "eval-b", **kwargs)
    assert (root / "eval-a" / "report.json").read_bytes() == (root / "eval-b" / "report.json").read_bytes()

    # Resume: the samples on disk are reused, not drawn again.
    cached = {p: p.stat().st_mtime_ns for p in (root / "eval-a" / "cache").iterdir()}
    assert len(cached) == 3  # generate, diversity, baseline: one chunk each
    (root / "eval-a" / "report.json").unlink()
    evaluate(trained["run"], root / "eval-a", **kwargs)
    assert {p: p.stat().st_mtime_ns for p in (root / "eval-a" / "cache").iterdir()} == cached
    assert json.loads((root / "eval-a" / "report.json").read_text()) == json.loads(
        (root / "eval-b" / "report.json").read_text())

    # What the report holds.
    report = json.loads((root / "eval-a" / "report.json").read_text())
    assert set(report["adherence"]) == {"generated", "real", "real via vocoder", "unconditional"}
    for name, accs in report["adherence"].items():
        assert set(ATTRIBUTES) <= set(accs), name
        assert all(v is None or 0.0 <= v <= 1.0 for v in accs.values())
    assert report["similarity"]["generated vs real (same caption)"]["ssim"]["n"] == 8
    assert report["similarity"]["generated vs generated (same caption)"]["mse"]["n"] == 4
    assert report["similarity"]["generated vs nearest training crop"]["mse"]["n"] == 8
    for space in ("classifier embedding", "hand-crafted features"):
        assert report["distance"][space]["generated"]["fd"] >= 0
        assert report["distance"][space]["generated"]["fd_real_vs_real"] >= 0
    assert first["settings"]["n"] == 8
    # Only attributes the classifier gets right on >= 90% of real held-out renders judge the samples.
    held = json.loads((CLASSIFIER / "metrics.json").read_text())["accuracy"]
    used = [a for a, v in held.items() if v >= 0.90]
    assert report["classifier"]["used_attributes"] == used and 0 < len(used) < len(held)
    for name, accs in report["adherence"].items():  # report.json rounds to 6 decimals
        assert accs["mean over used attributes"] == pytest.approx(np.mean([accs[a] for a in used]), abs=2e-6)
    top = headline(report)
    assert top["adherence"] == report["adherence"]["generated"]["mean over used attributes"]
    assert headline(report, "real")["fd_embed"] is None  # the reference set is not compared with itself
    md = (root / "eval-a" / "report.md").read_text()
    for heading in ("Does the music follow the caption?", "Spectrogram similarity", "generated distribution",
                    "Griffin-Lim"):
        assert heading in md


def test_nearest_training_finds_a_planted_copy(trained):
    """The memorisation check must find a training crop that is fed back as a 'sample'."""
    data = MelDataset(trained["cache"], frames=16, random_crop=False)
    stored = data[5]["mel"]  # frames 0..15 of clip 5
    wide = MelDataset(trained["cache"])[11]["mel"]  # clip 11 at full width
    planted = torch.stack([stored, wide[..., 8:24]])  # the second starts at frame 8, a multiple of the stride
    found = nearest_training(planted, trained["cache"], stride=8, progress=False)
    assert found["index"].tolist() == [5, 11]
    assert found["start"].tolist() == [0, 8]
    np.testing.assert_allclose(found["mse"], 0.0, atol=1e-12)
    np.testing.assert_allclose(found["ssim"], 1.0, atol=1e-6)


def test_prediction_accuracy_counts_by_hand():
    attributes = [{"drums": "none"}, {"drums": "rock"}, {"drums": "dance"}, {"drums": "rock"}]
    predicted = {"drums": np.array([0, 1, 1, 0])}  # right, right, wrong, wrong
    assert prediction_accuracy(predicted, attributes) == {"drums": 0.5}
    s = summarize([1.0, 2.0, 3.0, 4.0])
    assert s["median"] == 2.5 and s["n"] == 4 and abs(s["std"] - np.std([1, 2, 3, 4], ddof=1)) < 1e-12


@pytest.mark.parametrize("args, message", [
    (["--n", "7"], "--n must be an even number"),
    (["--baseline", "runs/x"], "expected NAME=CHECKPOINT"),
    (["--steps", "0"], "--steps must be a positive number"),
])
def test_cli_evaluate_rejects_bad_arguments_in_one_line(tmp_path, args, message):
    result = subprocess.run([sys.executable, "-m", "musicdiff_lib.cli", "evaluate", "--checkpoint", str(tmp_path),
                             "--out", str(tmp_path / "out"), *args], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def test_cli_evaluate_names_a_missing_checkpoint(tmp_path):
    result = subprocess.run([sys.executable, "-m", "musicdiff_lib.cli", "evaluate", "--checkpoint",
                             str(tmp_path / "nope"), "--out", str(tmp_path / "out"), "--n", "8"],
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2
    assert "nope" in result.stderr and "Traceback" not in result.stderr
