"""The original report's claims, re-run at ``cpu`` scale (chapter ``11_experiments``).

Every arm is the ``cpu`` preset trained for the same number of optimiser steps
on the same 4,000 built-in clips; one thing changes per arm. ``train`` runs the
arms one after another (resumable: a finished arm is skipped, a killed one
resumes from its last checkpoint); ``evaluate`` scores each arm with
``musicdiff_lib.report``; the results land in ``experiments/results/``, which
chapter 11 reads.

    export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1
    python experiments/claims.py train --root /work/expdata      # the arms, in ARMS order
    python experiments/claims.py evaluate --root /work/expdata   # each trained arm (run beside train)
    python experiments/claims.py sweeps --root /work/expdata     # sampler × steps, guidance: book model
    python experiments/claims.py book --root /work/expdata       # the book model's full report (ch. 10)

The committed results were made that way: ``train`` in one process and the
evaluations in another, one thread each, on the 2-core machine, about two and
a half hours in all (the 600-step arms took 6 to 18 minutes each). Wall times
in the results are from that shared machine; the metrics do not depend on the
load. ``/work/bookdata`` holds the book model's data (see
``checkpoints/book-cpu/README.md`` for the commands that rebuild it).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

STEPS = 600  # per arm: ~5 min of the cpu preset on 2 cores; the book model had 3,200
REPO = Path(__file__).resolve().parents[1]
BOOKDATA = Path("/work/bookdata")  # the book model's synth folder and 64-mel cache (see checkpoints/book-cpu)

# arm name → (TrainConfig overrides, cache name). "base" is the cpu preset itself:
# cosine schedule, 64 mels, 128 frames (4.06 s).
ARMS: dict[str, tuple[dict, str]] = {  # in order of priority: the second seeds come last
    "cosine-s0": ({"seed": 0}, "cache-cpu"),
    "linear-s0": ({"seed": 0, "schedule": "linear"}, "cache-cpu"),
    "uncond-s0": ({"seed": 0, "cond_drop_prob": 1.0}, "cache-cpu"),
    "clip3s-s0": ({"seed": 0, "frames": 96}, "cache-cpu"),
    "mels128-s0": ({"seed": 0}, "cache-cpu128"),
    "clip10s-s0": ({"seed": 0, "frames": 320}, "cache-cpu"),  # the whole 10 s clip + 7 frames of silence (the U-Net needs multiples of 32)
    "cosine-s1": ({"seed": 1}, "cache-cpu"),
    "linear-s1": ({"seed": 1, "schedule": "linear"}, "cache-cpu"),
}


def prepare_caches(root: Path) -> None:
    """The 128-mel twin of the book cache: the same 4,000 clips and captions."""
    from dataclasses import replace

    from musicdiff_lib.data import open_source, prepare
    from musicdiff_lib.mel import MelConfig

    cache128 = root / "cache-cpu128"
    index = cache128 / "index.json"
    if not index.exists() or len(json.loads(index.read_text())["items"]) < 4000:
        mel = replace(MelConfig.preset("cpu"), n_mels=128)
        prepare(open_source(str(BOOKDATA / "synth")), cache128, mel, "sentence-transformers/all-MiniLM-L6-v2",
                seconds=10.0)


def train_arms(root: Path, names: list[str]) -> None:
    from musicdiff_lib.training import train

    (root / "runs").mkdir(parents=True, exist_ok=True)
    for name in names:
        overrides, cache = ARMS[name]
        out = root / "runs" / name
        done = out / "done.json"
        if done.exists():
            print(f"{name}: done already", flush=True)
            continue
        data = BOOKDATA / cache if cache == "cache-cpu" else root / cache
        if cache != "cache-cpu":
            prepare_caches(root)  # resumable: a no-op once complete
        t0 = time.time()
        summary = train("cpu", data, out, resume=(out / "latest").exists(), max_steps=STEPS,
                        checkpoint_every=200, keep_last=1, progress=False, **overrides)
        summary.pop("trainer", None)
        record = {"arm": name, "overrides": overrides, "cache": str(data), "steps": STEPS,
                  "wall_s": round(time.time() - t0, 1),
                  **{k: v for k, v in summary.items() if isinstance(v, (int, float, str, type(None)))}}
        done.write_text(json.dumps(record, indent=2))
        print(json.dumps(record), flush=True)


# (arm, tag) → evaluate() arguments. Every arm is judged on n held-out captions at one clip length.
BASE_SECONDS = 127 * 512 / 16000  # 4.06 s: the cpu preset's 128 frames
SHORT_SECONDS = 95 * 512 / 16000  # 3.04 s: the 3 s arm's 96 frames; all three length arms are judged at it


def evaluations() -> list[tuple[str, str, dict]]:
    jobs = []
    for arm in ("cosine-s0", "linear-s0", "cosine-s1", "linear-s1"):
        jobs.append((arm, "dpmpp_2m-25", {"steps": 25, "sampler": "dpmpp_2m", "n": 64}))
        jobs.append((arm, "dpmpp_2m-50", {"steps": 50, "sampler": "dpmpp_2m", "n": 64}))
    for arm in ("cosine-s0", "linear-s0"):  # the original's sampler and step count: costly, so fewer clips
        jobs.append((arm, "ddpm-1000", {"steps": 1000, "sampler": "ddpm", "n": 16}))
    jobs.append(("mels128-s0", "dpmpp_2m-25", {"steps": 25, "sampler": "dpmpp_2m", "n": 64}))
    for arm in ("clip3s-s0", "cosine-s0", "clip10s-s0"):
        jobs.append((arm, "dpmpp_2m-25-3s", {"steps": 25, "sampler": "dpmpp_2m", "n": 64, "seconds": SHORT_SECONDS}))
    return jobs


def sweeps() -> list[tuple[str, str, dict]]:
    """Sampler × steps and guidance on the book's model (3,200 steps)."""
    jobs = []
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        for steps in (10, 25, 50):
            jobs.append(("book-cpu", f"{sampler}-{steps}", {"steps": steps, "sampler": sampler, "n": 64}))
    for w in (0.0, 1.0, 2.0, 5.0, 7.0):  # 3.0 is dpmpp_2m-25 above
        jobs.append(("book-cpu", f"dpmpp_2m-25-w{w:g}", {"steps": 25, "sampler": "dpmpp_2m", "n": 64,
                                                          "guidance_scale": w}))
    return jobs


def evaluate_jobs(root: Path, jobs: list[tuple[str, str, dict]], only: list[str] | None) -> None:
    from musicdiff_lib.report import evaluate

    results = Path(__file__).parent / "results"
    for arm, tag, kwargs in jobs:
        if only and arm not in only:
            continue
        target = results / arm / f"{tag}.json"
        if target.exists():
            print(f"{arm} {tag}: done already", flush=True)
            continue
        checkpoint = REPO / "checkpoints" / "book-cpu" if arm == "book-cpu" else root / "runs" / arm
        if arm != "book-cpu" and not (checkpoint / "done.json").exists():
            print(f"{arm} {tag}: not trained yet, skipped", flush=True)
            continue
        seconds = kwargs.get("seconds")
        heldout = root / ("heldout-3s" if seconds else "heldout-4s")
        t0 = time.time()
        report = evaluate(checkpoint, root / "eval" / arm / tag, diversity=0, gl_curve=False, plots=False,
                          heldout_dir=heldout, progress=False, **kwargs)
        report["wall_s"] = round(time.time() - t0, 1)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=1))
        print(f"{arm} {tag}: {report['wall_s']} s", flush=True)
    for arm in ARMS:  # the training curves, for loss stability
        log = root / "runs" / arm / "metrics.jsonl"
        if (root / "runs" / arm / "done.json").exists():
            (results / arm).mkdir(parents=True, exist_ok=True)
            (results / arm / "metrics.jsonl").write_text(log.read_text())
            (results / arm / "train.json").write_text((root / "runs" / arm / "done.json").read_text())


def evaluate_book(root: Path) -> None:
    """The book model's full report: 128 captions, diversity, memorisation over all 4,000 training clips."""
    from musicdiff_lib.report import evaluate

    out = Path(__file__).parent / "results" / "book-cpu" / "full"
    evaluate(REPO / "checkpoints" / "book-cpu", root / "eval" / "book-cpu" / "full", n=128, diversity=64,
             train_data=BOOKDATA / "cache-cpu", baselines={"unconditional": root / "runs" / "uncond-s0"},
             heldout_dir=root / "heldout-4s-128", progress=True)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "report.md", "adherence.png", "similarity.png", "griffin_lim.png", "examples.png"):
        (out / name).write_bytes((root / "eval" / "book-cpu" / "full" / name).read_bytes())


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=("train", "evaluate", "sweeps", "book"))
    p.add_argument("--root", default="/work/expdata")
    p.add_argument("--arms", nargs="*", default=list(ARMS), help="train: which arms, in this order")
    p.add_argument("--only", nargs="*", default=None, help="evaluate: only these arms")
    args = p.parse_args(argv)
    root = Path(args.root)
    if args.command == "train":
        train_arms(root, args.arms)
    elif args.command == "evaluate":
        evaluate_jobs(root, evaluations(), args.only)
    elif args.command == "sweeps":
        evaluate_jobs(root, sweeps(), None)
    else:
        evaluate_book(root)


if __name__ == "__main__":
    main()
