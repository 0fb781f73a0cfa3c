"""Training and generation speed of the `cpu` preset, printed as a table (issue 5).

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--steps 40] [--checkpoint checkpoints/book-cpu]

1. Training: the real `Trainer` (Accelerate, AdamW, EMA, min-SNR v-loss) on a cache of rendered
   ten-second clips prepared with the `cpu` mel preset. Samples/s is the median over the logged
   windows after the first (warm-up); peak memory is the training process's max RSS.
2. Generation: `MusicDiffusionPipeline` makes a 10 s clip at 25 DPM-Solver++ steps with guidance 3
   (two U-Net passes per step) plus 32 Griffin-Lim iterations; median of 3 runs. Real-time factor =
   audio seconds / wall seconds (target: above 1, faster than real time). Uses the book's checkpoint
   when present, else randomly initialised weights of the same network (same cost).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _train_child(cache: str, run: str, steps: int, threads: int) -> None:
    """Runs in a fresh process, so that its max RSS is the training's alone."""
    import torch

    torch.set_num_threads(threads)
    from musicdiff_lib.training import train

    train("cpu", cache, run, max_steps=steps, max_minutes=None, progress=False, log_every=5,
          checkpoint_every=0, warmup_steps=5)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # Linux: kB
    print(json.dumps({"peak_gb": peak_gb}))


def bench_training(workdir: Path, steps: int, threads: int) -> dict:
    from musicdiff_lib.data import open_source, prepare
    from musicdiff_lib.mel import MelConfig
    from musicdiff_lib.synth import write_dataset
    from musicdiff_lib.text import TextEncoder

    write_dataset(workdir / "synth", 48, seconds=10.0, sample_rate=16000, progress=False)
    prepare(open_source(workdir / "synth"), workdir / "cache", MelConfig.preset("cpu"), TextEncoder(device="cpu"),
            seconds=10.0, progress=False)
    child = subprocess.run([sys.executable, __file__, "--child", str(workdir / "cache"), str(workdir / "run"),
                            str(steps), str(threads)], capture_output=True, text=True, check=True,
                           env={**os.environ, "TQDM_DISABLE": "1"})
    peak = json.loads(child.stdout.strip().splitlines()[-1])["peak_gb"]
    rows = [json.loads(line) for line in (workdir / "run" / "metrics.jsonl").read_text().splitlines()]
    rates = [r["samples_per_s"] for r in rows[1:]]
    return {"samples_per_s": statistics.median(rates), "peak_gb": peak, "steps": steps,
            "batch": 16, "windows": len(rates)}


def bench_generation(checkpoint: Path | None, workdir: Path, threads: int, repeats: int = 3) -> dict:
    import torch

    torch.set_num_threads(threads)
    from musicdiff_lib.mel import MelConfig
    from musicdiff_lib.pipeline import MusicDiffusionPipeline
    from musicdiff_lib.training import checkpoint_config, save_checkpoint
    from musicdiff_lib.unet import UNet, UNetConfig

    source = "book checkpoint"
    if checkpoint is None or not checkpoint.exists():
        unet = UNet(UNetConfig.preset("cpu"), seed=0)
        config = checkpoint_config(UNetConfig.preset("cpu"), MelConfig.preset("cpu"),
                                   "sentence-transformers/all-MiniLM-L6-v2", 384, prediction_type="v", preset="cpu")
        checkpoint = save_checkpoint(workdir / "random-run", 0, unet, config)
        source = "random weights"
    pipe = MusicDiffusionPipeline.from_checkpoint(checkpoint, device="cpu")
    prompt = "A slow, sad piano melody with soft strings."
    pipe(prompt, steps=2, seconds=10.0, progress=False)  # warm-up
    times, gl_times = [], []
    for seed in range(repeats):
        start = time.perf_counter()
        out = pipe(prompt, steps=25, sampler="dpmpp_2m", guidance_scale=3.0, seed=seed, seconds=10.0, progress=False)
        times.append(time.perf_counter() - start)
        mel = torch.from_numpy(out.mels)
        start = time.perf_counter()
        pipe.codec.to_wave(mel, n_iter=32)
        gl_times.append(time.perf_counter() - start)
    wall = statistics.median(times)
    audio = out.waves.shape[-1] / out.sample_rate
    return {"wall_s": wall, "griffin_lim_s": statistics.median(gl_times), "audio_s": audio,
            "rtf": audio / wall, "source": source, "mel": tuple(out.mels.shape[-2:])}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _train_child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: the whole machine)")
    parser.add_argument("--steps", type=int, default=40, help="training steps to time")
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / "book-cpu")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        training = bench_training(Path(tmp), args.steps, args.threads)
        generation = bench_generation(args.checkpoint, Path(tmp), args.threads)
    load = os.getloadavg()[0]
    rows = [
        ("train cpu preset (1×64×128, batch 16)", f"{training['samples_per_s']:.1f} samples/s",
         f"peak {training['peak_gb']:.2f} GB", "< 4 GB", "met" if training["peak_gb"] < 4 else "TARGET MISSED"),
        (f"generate 10 s, 25 steps DPM-Solver++, w=3 ({generation['source']}, mel {generation['mel']})",
         f"{generation['wall_s']:.2f} s (Griffin-Lim {generation['griffin_lim_s']:.2f} s)",
         f"{generation['rtf']:.1f}× real time", "> 1×", "met" if generation["rtf"] > 1 else "TARGET MISSED"),
    ]
    print(f"\nthreads {args.threads}, {training['steps']} training steps ({training['windows']} timed windows), "
          f"load average at end {load:.2f}\n")
    print("| what | speed | memory / real time | target | |\n|---|---:|---:|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nAt this rate a 30-minute run sees", f"{training['samples_per_s'] * 1800:,.0f} clips",
          f"({training['samples_per_s'] * 1800 / 16:,.0f} steps of 16).")


if __name__ == "__main__":
    main()
