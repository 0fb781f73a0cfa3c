"""Training-step speed and memory of musicdiff's U-Nets, against diffusers at the same architecture.

What it measures, for the ``cpu`` preset on 1×64×128 mels and the report's
``seed128`` on 1×128×200 (batch 8 by default, a 16-token caption with padding):

1. **Training-step throughput**: forward + MSE loss + backward + ``AdamW.step``,
   samples per second, median over the timed steps (one warm-up step first).
2. **Achieved GFLOP/s**: forward + backward FLOPs counted once with
   ``musicdiff_lib.unet.flop_counter`` (torch's ``FlopCounterMode`` plus the CPU
   flash-attention kernel, which torch does not count; the optimiser's few
   FLOPs are not counted) divided by the median step time, and its share of the fp32
   matmul peak (best of ten 2048×2048 matmuls at the same thread count,
   measured at the start and the end of this run; the larger is used).
3. **Peak memory**: the peak resident set size (``ru_maxrss``) of a fresh
   subprocess that builds the model and runs the steps; every model runs in
   its own subprocess.
4. **diffusers**, where ``diffusers`` imports (a benchmarks-only extra, never a
   dependency of the library): ``UNet2DConditionModel`` configured to the same
   channels, resolutions, attention placement and parameter count (±10%), and
   the ratio ours/diffusers in samples per second. Target: >= 1.0. The mapping
   (diffusers cannot express every detail of ours):

   * ``cpu``: our 2×2 patchify stem is matched by feeding diffusers the
     pixel-unshuffled input (4 channels at 32×64) and pixel-shuffling its 4-channel
     output back. Channels 16/32/64/128 at 32×64 … 4×8, transformer blocks
     (self-attention, cross-attention, feed-forward) at 8×16 and 4×8 on both
     paths and in the mid block; diffusers has no 2×4 level (ours: 256 channels),
     its 4×8 mid block plays that role. ``layers_per_block=(1, 1, 1, 2)``,
     SiLU, scale-shift, GroupNorm(8), 4 heads.
   * ``seed128``: channels 64/128/256/512, attention only at 64×100 (the
     128-channel levels; ours also has the report's 384-channel level there,
     diffusers' up path is symmetric), no attention at 16×25,
     ``layers_per_block=(2, 2, 2, 1)`` and a one-ResBlock mid block, ReLU,
     additive timestep, GroupNorm(32), 8 heads, dropout 0.1. Ours adds cheap
     cross-attention at every lower level; diffusers cannot without also
     adding self-attention there.

The two contenders run back to back, in alternating order over ``--rounds``
rounds, so background load hits both alike; each round is a new subprocess
with its own warm-up step. The machine has 2 cores, often shared: torch uses
``--threads`` threads (default 1, which is the more stable under load; the
header prints it and the OpenMP variables). This is a report, not a test: it
always exits 0 and prints ``TARGET MISSED`` for a row that misses its target.

Run from the repository root::

    .venv/bin/python benchmarks/bench_unet.py --quick                   # cpu preset only, a minute
    .venv/bin/python benchmarks/bench_unet.py                           # cpu and seed128 (~30 min on 1 thread)
    PYTHONPATH=/tmp/diffusers-extra .venv/bin/python benchmarks/bench_unet.py --threads 2

(``pip install --target /tmp/diffusers-extra --no-deps diffusers huggingface-hub …``
keeps diffusers out of the project's environment.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

# What each model is benchmarked on: (mel bins, frames).
SIZES = {"cpu": (64, 128), "seed128": (128, 200)}
TOKENS = 16  # caption length in tokens (MiniLM gives 10-30 for a MusicCaps caption)


# ---- models ----------------------------------------------------------------------------------------


def diffusers_model(name: str):
    """``UNet2DConditionModel`` matched to our preset ``name`` (see the module docstring)."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import logging

    logging.set_verbosity_error()
    D, CD, U, CU = "DownBlock2D", "CrossAttnDownBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"
    if name == "cpu":
        return UNet2DConditionModel(
            sample_size=None, in_channels=4, out_channels=4, block_out_channels=(16, 32, 64, 128),
            layers_per_block=(1, 1, 1, 2), down_block_types=(D, D, CD, CD), up_block_types=(CU, CU, U, U),
            mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=384, attention_head_dim=4,
            norm_num_groups=8, act_fn="silu", resnet_time_scale_shift="scale_shift", dropout=0.0)
    if name == "seed128":
        return UNet2DConditionModel(
            sample_size=None, in_channels=1, out_channels=1, block_out_channels=(64, 128, 256, 512),
            layers_per_block=(2, 2, 2, 1), down_block_types=(D, CD, D, D), up_block_types=(U, U, CU, U),
            mid_block_type="UNetMidBlock2D", cross_attention_dim=384, attention_head_dim=8,
            norm_num_groups=32, act_fn="relu", resnet_time_scale_shift="default", dropout=0.1)
    raise ValueError(f"no diffusers counterpart for {name!r}")


def build(name: str, impl: str):
    """(model, forward(x, t, text) -> prediction) for one contender."""
    if impl == "ours":
        from musicdiff_lib.unet import UNet, UNetConfig

        model = UNet(UNetConfig.preset(name), seed=0)
        return model, model
    model = diffusers_model(name)
    patch = 2 if name == "cpu" else 1

    def forward(x, t, text):
        if patch > 1:
            x = torch.nn.functional.pixel_unshuffle(x, patch)
        out = model(x, t, encoder_hidden_states=text.tokens, encoder_attention_mask=text.mask).sample
        return torch.nn.functional.pixel_shuffle(out, patch) if patch > 1 else out

    return model, forward


def worker(name: str, impl: str, batch: int, steps: int, threads: int) -> dict:
    """Build one model in this (fresh) process, warm up while counting FLOPs, time ``steps`` steps."""
    from musicdiff_lib.text import TextCondition
    from musicdiff_lib.unet import flop_counter

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model, forward = build(name, impl)
    model.train()
    rss_built = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, *SIZES[name], generator=g)
    t = torch.randint(0, 1000, (batch,), generator=g)
    lengths = torch.randint(4, TOKENS + 1, (batch,), generator=g)
    text = TextCondition(torch.randn(batch, TOKENS, 384, generator=g), torch.arange(TOKENS)[None] < lengths[:, None],
                         torch.randn(batch, 384, generator=g))
    noise = torch.randn(x.shape, generator=g)

    def step():
        loss = torch.nn.functional.mse_loss(forward(x, t, text), noise)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    with flop_counter(display=False) as counter:
        step()  # warm-up, and the FLOP count of forward + backward
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"params": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops(),
            "times": times, "rss_built_mb": rss_built / 1024,
            "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# ---- driver ----------------------------------------------------------------------------------------


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """Best fp32 matmul GFLOP/s at this thread count."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best / 1e9


def run_worker(name: str, impl: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, impl, "--batch", str(args.batch),
           "--steps", str(args.steps if name == "cpu" else args.big_steps), "--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name}/{impl} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def diffusers_version() -> str | None:
    try:
        import diffusers
    except Exception:  # not installed, or a missing dependency of it
        return None
    return diffusers.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="cpu,seed128", help="comma-separated presets (cpu, seed128)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round for the cpu preset")
    parser.add_argument("--big-steps", type=int, default=2, help="timed steps per round for seed128")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (a fresh process each)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="cpu preset only, one round")
    parser.add_argument("--no-diffusers", action="store_true")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.steps, args.threads)))
        return
    if args.quick:
        args.models, args.rounds = "cpu", 1
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    version = None if args.no_diffusers else diffusers_version()
    why_not = "--no-diffusers" if args.no_diffusers else "diffusers is not importable (see the module docstring)"

    print(f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
          f"torch threads {args.threads}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '-')}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}")
    print(f"diffusers: {version or why_not + '; its rows are skipped'}")
    print(f"batch {args.batch}, {args.rounds} round(s); timed steps per round: cpu {args.steps}, "
          f"seed128 {args.big_steps}; medians over all timed steps\n", flush=True)
    peak = matmul_peak(args.threads)

    results: dict[tuple[str, str], list[dict]] = {}
    for name in models:
        impls = ["ours"] + (["diffusers"] if version else [])
        for r in range(args.rounds):
            for impl in (impls if r % 2 == 0 else impls[::-1]):
                print(f"  running {name}/{impl}, round {r + 1} …", file=sys.stderr, flush=True)
                results.setdefault((name, impl), []).append(run_worker(name, impl, args))
    peak = max(peak, matmul_peak(args.threads))

    header = (f"{'model':<9}{'impl':<11}{'params':>12}{'GFLOP/step':>12}{'step s':>9}{'samples/s':>11}"
              f"{'GFLOP/s':>9}{'% peak':>8}{'peak RSS MB':>13}{'ours/diffusers':>16}")
    print(f"fp32 matmul peak at {args.threads} thread(s): {peak:.1f} GFLOP/s\n")
    print(header)
    print("-" * len(header))
    missed = []
    for name in models:
        speed = {}
        for impl in ("ours", "diffusers"):
            runs = results.get((name, impl))
            if not runs:
                continue
            step = statistics.median([s for run in runs for s in run["times"]])
            speed[impl] = args.batch / step
            gflop = runs[0]["flops"] / 1e9
            ratio = ""
            if impl == "diffusers":
                ratio = f"{speed['ours'] / speed['diffusers']:.2f}"
                if speed["ours"] < speed["diffusers"]:
                    missed.append(f"TARGET MISSED: {name}: ours {speed['ours']:.2f} samples/s < diffusers "
                                  f"{speed['diffusers']:.2f}")
                ours_params = results[(name, "ours")][0]["params"]
                if abs(runs[0]["params"] / ours_params - 1) > 0.10:
                    missed.append(f"NOTE: {name}: diffusers has {runs[0]['params']:,} parameters, more than 10% "
                                  f"from ours ({ours_params:,})")
            print(f"{name:<9}{impl:<11}{runs[0]['params']:>12,}{gflop:>12.1f}{step:>9.3f}{speed[impl]:>11.3g}"
                  f"{gflop / step:>9.1f}{gflop / step / peak:>8.0%}{max(r['rss_peak_mb'] for r in runs):>13.0f}"
                  f"{ratio:>16}")
        if "diffusers" not in speed:
            print(f"{name:<9}{'diffusers':<11}  skipped: {why_not}")
    print()
    for line in missed:
        print(line)


if __name__ == "__main__":
    main()
