"""Speed of musicdiff_lib's audio front end against the reference implementations.

What it measures, each row timed side by side in one run (the two contenders
alternate within every repeat, so background load hits both alike), on real
music rendered by ``musicdiff_lib.synth.demo_clip``:

1. **Mel encode of a 10 s clip**: ``MelCodec(cfg).encode(wave)`` against
   ``librosa.feature.melspectrogram`` + ``librosa.power_to_db`` with the same
   settings, for the report's ``seed128`` preset (10 kHz, n_fft 1024, hop 512,
   128 HTK mels) and a 16 kHz config (n_fft 1024, hop 256, 64 Slaney mels).
   Two rows per config: a new ``MelCodec`` per call (builds the filterbank every
   time, as librosa does) and a codec built once and reused (how the library is
   used). Target: ours no slower than librosa (librosa/ours >= 1.0).
2. **Griffin-Lim, 32 iterations, momentum 0.99**, 10 s at 16 kHz (n_fft 1024,
   hop 256) from the clip's linear magnitude: ``griffinlim.griffin_lim`` against
   ``librosa.griffinlim``; both scored with ``griffinlim.spectral_convergence``.
   Target: ours >= 2x faster and convergence no worse (ours <= librosa * 1.05).
3. **SSIM over 64 pairs of 128x200 mels** (8 rendered seed128 clips, each paired
   with 8 realistic variants: added noise, time shifts of 1 and 8 frames, a
   half-hop sub-frame shift, a 2-bin pitch shift, two other songs, a blurred
   copy; data_range 2): batched ``metrics.ssim`` on (64, 1, 128, 200) against a
   Python loop of ``skimage.metrics.structural_similarity`` (Gaussian weights,
   sigma 1.5, population covariance). Target: batched >= 10x faster.

Each timing is the MEDIAN over ``--repeats`` runs (min also shown), after
warm-up runs (librosa JIT-compiles with numba on first use). Inputs are float32
for every contender. Torch uses ``--threads`` threads (default: what
``torch.get_num_threads()`` reports); librosa and skimage run single-threaded
numpy/scipy code. This is a report, not a test: it always exits 0, and prints a
``TARGET MISSED`` line for every row that misses its target.

On a CPU shared with other busy processes, torch's default OpenMP settings
(one thread per core, threads spin-wait at barriers) can make every torch op
several times slower; the header prints the thread count and OpenMP variables,
so rerun with ``--threads 1`` or ``OMP_WAIT_POLICY=PASSIVE`` to see that effect.

Run from the repository root::

    .venv/bin/python benchmarks/bench_audio.py              # 7 repeats (about a minute)
    .venv/bin/python benchmarks/bench_audio.py --quick      # smoke test
    .venv/bin/python benchmarks/bench_audio.py --repeats 15 --threads 1
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_audio.py
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


@dataclass
class Row:
    name: str
    ours: list[float]
    ref: list[float]
    ref_name: str
    quality: str
    target: str
    met: bool

    @property
    def ratio(self) -> float:
        return statistics.median(self.ref) / statistics.median(self.ours)


def side_by_side(ours: Callable[[], object], ref: Callable[[], object], repeats: int,
                 warmup: int) -> tuple[list[float], list[float]]:
    """Time ``ours`` and ``ref`` alternately (order flipped every repeat); seconds per call."""
    for _ in range(warmup):
        ours()
        ref()
    t_ours, t_ref = [], []
    for i in range(repeats):
        pair = [(ours, t_ours), (ref, t_ref)]
        for fn, out in (pair if i % 2 == 0 else pair[::-1]):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return t_ours, t_ref


def ms(seconds: list[float]) -> tuple[str, str]:
    return f"{statistics.median(seconds) * 1e3:.1f}", f"{min(seconds) * 1e3:.1f}"


# -- 1. mel encode --------------------------------------------------------------------------
def bench_mel(cfg, label: str, repeats: int, warmup: int) -> list[Row]:
    import librosa

    from musicdiff_lib.mel import MelCodec
    from musicdiff_lib.synth import demo_clip

    wave = demo_clip(10.0, cfg.sample_rate, seed=0)
    wave_t = torch.from_numpy(wave)

    def ref():
        with warnings.catch_warnings():  # seed128: "Empty filters detected" (HTK mels narrower than a bin)
            warnings.simplefilter("ignore", UserWarning)
            mel = librosa.feature.melspectrogram(
                y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                win_length=cfg.window_length, window="hann", center=True, pad_mode="constant",
                power=cfg.power, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max,
                htk=cfg.mel_scale == "htk", norm=cfg.norm)
        return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=cfg.top_db)

    def fresh():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return MelCodec(cfg).encode(wave_t)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        codec = MelCodec(cfg)

    def reused():
        return codec.encode(wave_t)

    # Same numbers? Compare dB within the top 80 dB (below that both clamp, differently).
    with torch.no_grad():
        ours_db = 10 * np.log10(np.maximum(codec.mel_power(wave_t)[0].double().numpy(), 1e-10))
    ref_db = ref()
    keep = ref_db > ref_db.max() - cfg.top_db + 1e-3
    diff = np.abs(ours_db[:, : ref_db.shape[1]] - ref_db)[keep].max()
    quality = f"max abs dB diff {diff:.1e}"

    rows = []
    with torch.inference_mode():
        for variant, fn in (("new codec/call", fresh), ("codec reused", reused)):
            t_ours, t_ref = side_by_side(fn, ref, repeats, warmup)
            row = Row(f"mel encode 10 s, {label}, {variant}", t_ours, t_ref, "librosa mel+power_to_db",
                      quality, "librosa/ours >= 1.0", False)
            row.met = row.ratio >= 1.0
            rows.append(row)
    return rows


# -- 2. Griffin-Lim -------------------------------------------------------------------------
def bench_griffin_lim(repeats: int, warmup: int) -> Row:
    import librosa

    from musicdiff_lib.griffinlim import griffin_lim, spectral_convergence
    from musicdiff_lib.mel import MelCodec, MelConfig
    from musicdiff_lib.synth import demo_clip

    cfg = MelConfig(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64)
    wave = demo_clip(10.0, cfg.sample_rate, seed=0)
    with torch.inference_mode():
        mag = MelCodec(cfg).stft(torch.from_numpy(wave)[None]).abs()  # (1, 513, 626) float32
    mag_np = mag[0].numpy()

    def ours():
        return griffin_lim(mag, cfg, n_iter=32, momentum=0.99, generator=torch.Generator().manual_seed(0),
                           length=len(wave))

    def ref():
        return librosa.griffinlim(mag_np, n_iter=32, hop_length=cfg.hop_length, win_length=cfg.n_fft,
                                  n_fft=cfg.n_fft, window="hann", center=True, pad_mode="constant",
                                  momentum=0.99, init="random", random_state=0, length=len(wave))

    with torch.inference_mode():
        t_ours, t_ref = side_by_side(ours, ref, repeats, warmup)
        sc_ours = float(spectral_convergence(mag, ours(), cfg)[0])
        sc_ref = float(spectral_convergence(mag, torch.from_numpy(ref())[None], cfg)[0])
    row = Row("Griffin-Lim 32 it, 10 s @ 16 kHz", t_ours, t_ref, "librosa.griffinlim",
              f"SC ours {sc_ours:.4f} / librosa {sc_ref:.4f}", ">= 2x and SC <= librosa*1.05", False)
    row.met = row.ratio >= 2.0 and sc_ours <= sc_ref * 1.05
    return row


# -- 3. SSIM --------------------------------------------------------------------------------
def ssim_pairs(n_clips: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """64 realistic (a, b) pairs of seed128 mels, (64, 1, 128, 200) each, in [-1, 1]."""
    from musicdiff_lib.mel import MelCodec, MelConfig
    from musicdiff_lib.metrics import gaussian_window
    from musicdiff_lib.synth import demo_clip

    cfg = MelConfig.preset("seed128")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        codec = MelCodec(cfg)
    waves = [demo_clip(10.0, cfg.sample_rate, seed=s, lead_program=(0, 24, 40, 73)[s % 4]) for s in range(n_clips)]
    waves_t = torch.from_numpy(np.stack(waves))
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        mels = codec.encode(waves_t)                                  # (8, 1, 128, 200)
        subframe = codec.encode(waves_t[:, cfg.hop_length // 2:])     # half-hop later
        blur_w = gaussian_window(1.0).float()  # blur along time, same size ('replicate' edges)
        r = blur_w.numel() // 2
        blurred = torch.nn.functional.conv2d(
            torch.nn.functional.pad(mels, (r, r, 0, 0), mode="replicate"), blur_w.view(1, 1, 1, -1))
        a, b = [], []
        for i in range(n_clips):
            m = mels[i]
            shift = lambda x, k, dim: torch.cat([torch.full_like(x.narrow(dim, 0, k), -1.0),  # noqa: E731
                                                 x.narrow(dim, 0, x.shape[dim] - k)], dim)
            variants = [
                (m + 0.05 * torch.randn(m.shape, generator=gen)).clamp(-1, 1),
                (m + 0.2 * torch.randn(m.shape, generator=gen)).clamp(-1, 1),
                shift(m, 1, -1),
                shift(m, 8, -1),
                subframe[i],
                shift(m, 2, -2),
                mels[(i + 1) % n_clips],
                blurred[i],
            ]
            a += [m] * len(variants)
            b += variants
        return torch.stack(a).contiguous(), torch.stack(b).contiguous()


def bench_ssim(repeats: int, warmup: int) -> Row:
    from skimage.metrics import structural_similarity

    from musicdiff_lib.metrics import ssim

    a, b = ssim_pairs()
    a_np, b_np = a[:, 0].numpy(), b[:, 0].numpy()

    def ours():
        return ssim(a, b, 2.0)

    def ref():
        return np.array([structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
                                               use_sample_covariance=False, data_range=2.0)
                         for x, y in zip(a_np, b_np)])

    with torch.inference_mode():
        t_ours, t_ref = side_by_side(ours, ref, repeats, warmup)
        got, want = ours().double().numpy(), ref()
    diff = np.abs(got - want).max()
    row = Row(f"SSIM, {len(a)} pairs of 128x200", t_ours, t_ref, "skimage SSIM loop",
              f"max abs diff {diff:.1e} (SSIM {want.min():.2f}..{want.max():.2f})", ">= 10x", False)
    row.met = row.ratio >= 10.0
    return row


# -- report ---------------------------------------------------------------------------------
HEAD = ["benchmark", "ours med ms", "ours min ms", "reference", "ref med ms", "ref min ms",
        "ref/ours", "check", "target", "met"]


def cells(row: Row) -> list[str]:
    return [row.name, *ms(row.ours), row.ref_name, *ms(row.ref), f"{row.ratio:.2f}x",
            row.quality, row.target, "yes" if row.met else "no"]


def print_table(rows: list[Row]) -> None:
    table = [HEAD] + [cells(r) for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(HEAD))]
    numeric = {1, 2, 4, 5, 6}
    fmt = lambda line: "  ".join(c.rjust(w) if i in numeric else c.ljust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    print(fmt(HEAD))
    print("  ".join("-" * w for w in widths))
    for line in table[1:]:
        print(fmt(line))


def print_markdown(rows: list[Row]) -> None:
    print("| " + " | ".join(HEAD) + " |")
    print("|" + "|".join("---:" if i in {1, 2, 4, 5, 6} else "---" for i in range(len(HEAD))) + "|")
    for r in rows:
        print("| " + " | ".join(cells(r)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per contender (default 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default 2)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 repeats, 1 warm-up")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch intra-op threads (default: torch.get_num_threads())")
    args = parser.parse_args(argv)
    repeats, warmup = (2, 1) if args.quick else (max(1, args.repeats), max(1, args.warmup))
    torch.set_num_threads(args.threads)

    import librosa
    import scipy
    import skimage

    from musicdiff_lib.mel import MelConfig

    print("bench_audio: musicdiff_lib vs librosa / scikit-image")
    print(f"python {platform.python_version()}  numpy {np.__version__}  scipy {scipy.__version__}  "
          f"torch {torch.__version__}  librosa {librosa.__version__}  scikit-image {skimage.__version__}")
    print(f"CPU: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"usable={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}  "
          f"torch threads={torch.get_num_threads()}  load avg={os.getloadavg()[0]:.2f}")
    omp = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS") if k in os.environ}
    print(f"OpenMP env: {omp or 'defaults'}")
    print(f"repeats={repeats} (median and min reported), warm-up runs={warmup}, inputs float32")
    if torch.get_num_threads() > 1 and os.getloadavg()[0] > (os.cpu_count() or 1) - 0.5:
        print("note: the CPUs are already busy, and torch's spinning OpenMP threads then stall each other "
              "(ops can get several times slower); compare with --threads 1 or OMP_WAIT_POLICY=PASSIVE.")
    print()

    rows: list[Row] = []
    steps = [
        lambda: bench_mel(MelConfig.preset("seed128"), "seed128 10 kHz", repeats, warmup),
        lambda: bench_mel(MelConfig(sample_rate=16000, n_fft=1024, hop_length=256, n_mels=64),
                          "16 kHz 64 mels", repeats, warmup),
        lambda: [bench_griffin_lim(repeats, warmup)],
        lambda: [bench_ssim(repeats, warmup)],
    ]
    for step in steps:
        new = step()
        rows += new
        for r in new:
            print(f"  done: {r.name}: ours {ms(r.ours)[0]} ms, ref {ms(r.ref)[0]} ms", flush=True)
    print()
    print_table(rows)
    print()
    missed = [r for r in rows if not r.met]
    for r in missed:
        print(f"TARGET MISSED: {r.name}: {r.ratio:.2f}x ({r.quality}); target {r.target}")
    if not missed:
        print("All targets met.")
    print(f"(load average at end: {os.getloadavg()[0]:.2f}; timings on a shared machine are noisy, "
          "compare the side-by-side ratios)\n")
    print("Markdown:\n")
    print_markdown(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
