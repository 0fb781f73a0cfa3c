"""Speed of the built-in dataset: how many captioned ten-second clips per second ``write_dataset`` renders.

What it measures, on this machine, into a temporary folder that is deleted afterwards:

1. **Where one clip's time goes** (one process, ``--profile`` clips, median per
   clip): drawing attributes + composing the MIDI, rendering it with
   tinysoundfont (with the per-thread cached SoundFont, and with a fresh
   ``.sf2`` load per clip as ``render_midi(cache=False)`` does), the caption,
   and writing the 16-bit wav. Music21 corpus clips: parsing the score,
   analysing its key, rendering.
2. **``write_dataset`` end to end** on ``--workers`` processes (default 2):
   ``--n`` procedural clips and ``--corpus-n`` corpus clips, ``--seconds`` long
   (default 10 s) at ``--sample-rate`` (default 16 kHz), progress bar off.
   Reported: clips per second (wall clock, pool start-up included) and the
   realtime factor (seconds of audio written per second). Target: at least
   20 ten-second procedural clips per second on 2 workers (the issue's
   figure for the 2-core machine). Corpus clips are slower (parsing a score
   costs ~0.1-0.5 s) and have no target.

This is a report, not a test: it always exits 0 and prints ``TARGET MISSED``
when procedural rendering is below the target. On a CPU shared with other busy
processes the wall-clock rate drops; the header prints the load average.

Run from the repository root::

    .venv/bin/python benchmarks/bench_data.py               # 200 + 200 clips (about a minute)
    .venv/bin/python benchmarks/bench_data.py --quick       # 40 + 20 clips
    .venv/bin/python benchmarks/bench_data.py --n 1000 --workers 2 --seconds 4
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET = 20.0  # ten-second procedural clips per second on 2 workers


def per_clip_ms(times: list[float]) -> str:
    return f"{statistics.median(times) * 1e3:.1f}"


def profile(n: int, seconds: float, sample_rate: int, tmp: Path) -> list[tuple[str, str]]:
    """Median milliseconds per clip of each stage, in this process."""
    from musicdiff_lib import synth
    from musicdiff_lib.audio import save_wav

    stages: dict[str, list[float]] = {k: [] for k in ("compose", "render", "render_fresh", "caption", "wav")}
    synth.render_midi(synth.demo_song(1.0), sample_rate, duration=1.0)  # load the SoundFont once, untimed
    for i in range(n):
        t0 = time.perf_counter()
        attributes = synth.sample_attributes(0, i)
        midi = synth.compose(attributes, seconds, seed=[0, i, 1])
        t1 = time.perf_counter()
        wave = synth.render_midi(midi, sample_rate, duration=seconds)
        t2 = time.perf_counter()
        fresh = synth.render_midi(midi, sample_rate, duration=seconds, cache=False)
        t3 = time.perf_counter()
        text = synth.caption(attributes, seed=[0, i, 2])
        t4 = time.perf_counter()
        save_wav(tmp / "profile.wav", synth._level(wave), sample_rate)
        t5 = time.perf_counter()
        assert np.array_equal(wave, fresh) and text
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[key].append(dt)
    notes = np.mean([sum(len(inst.notes) for inst in synth.compose(synth.sample_attributes(0, i), seconds,
                                                                    seed=[0, i, 1]).instruments) for i in range(n)])
    total = sum(statistics.median(v) for k, v in stages.items() if k != "render_fresh")
    return [("attributes + compose (pretty_midi)", per_clip_ms(stages["compose"])),
            (f"render, cached SoundFont (tinysoundfont, {notes:.0f} notes/clip)", per_clip_ms(stages["render"])),
            ("render, .sf2 loaded per clip (cache=False)", per_clip_ms(stages["render_fresh"])),
            ("caption", per_clip_ms(stages["caption"])),
            ("write 16-bit wav (save_wav)", per_clip_ms(stages["wav"])),
            ("one procedural clip, one process (sum of medians)", f"{total * 1e3:.1f}")]


def profile_corpus(n: int, seconds: float, sample_rate: int) -> list[tuple[str, str]]:
    """Median milliseconds of a corpus clip, and of its score parse + key analysis alone."""
    from music21 import corpus

    from musicdiff_lib import synth

    synth.corpus_pieces()
    clip_times, parse_times = [], []
    for i in range(n):
        t0 = time.perf_counter()
        clip = synth.corpus_clip(i, 0, seconds, sample_rate)
        t1 = time.perf_counter()
        a = clip.attributes
        score = corpus.parse(a["path"], number=a["number"]) if a["number"] else corpus.parse(a["path"])
        score.analyze("key")
        t2 = time.perf_counter()
        clip_times.append(t1 - t0)
        parse_times.append(t2 - t1)
    return [("corpus clip, one process (parse + key + render)", per_clip_ms(clip_times)),
            ("  of which music21 parse + analyze('key')", per_clip_ms(parse_times))]


def run(source: str, n: int, args, tmp: Path) -> dict:
    from musicdiff_lib import synth

    return synth.write_dataset(tmp / source, n, seed=0, seconds=args.seconds, sample_rate=args.sample_rate,
                               source=source, workers=args.workers, progress=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200, help="procedural clips (default 200)")
    parser.add_argument("--corpus-n", type=int, default=200, help="music21 corpus clips (default 200)")
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    parser.add_argument("--profile", type=int, default=20, help="clips for the per-stage profile (default 20)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 40 procedural, 20 corpus clips")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.corpus_n, args.profile = 40, 20, 5
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import music21
    import pretty_midi
    import tinysoundfont  # noqa: F401

    print("bench_data: musicdiff_lib.synth.write_dataset")
    print(f"python {platform.python_version()}  numpy {np.__version__}  pretty_midi {pretty_midi.__version__}  "
          f"music21 {music21.__version__}")
    print(f"CPU: {platform.processor() or platform.machine()}, os.cpu_count()={os.cpu_count()}, "
          f"usable={len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'}  "
          f"load avg={os.getloadavg()[0]:.2f}")
    print(f"clips: {args.seconds:g} s at {args.sample_rate} Hz; workers={args.workers}; "
          f"procedural n={args.n}, corpus n={args.corpus_n}")
    print()

    with tempfile.TemporaryDirectory(prefix="bench_data_") as name:
        tmp = Path(name)
        print(f"1. per clip, median ms over {args.profile} clips, one process:")
        rows = profile(args.profile, args.seconds, args.sample_rate, tmp)
        rows += profile_corpus(max(1, args.profile // 2), args.seconds, args.sample_rate)
        width = max(len(r[0]) for r in rows)
        for label, value in rows:
            print(f"   {label.ljust(width)}  {value:>8} ms")
        print()

        print(f"2. write_dataset on {args.workers} workers:", flush=True)
        results = []
        for source, n in (("procedural", args.n), ("corpus", args.corpus_n)):
            if n <= 0:
                continue
            summary = run(source, n, args, tmp)
            results.append((source, n, summary))
            failed = f", {len(summary['failed'])} failed" if summary["failed"] else ""
            print(f"   done: {source}: {summary['written']} clips in {summary['elapsed_seconds']:.1f} s{failed}",
                  flush=True)
    print()

    head = ["source", "clips", "clip s", "workers", "wall s", "clips/s", "realtime x", "target", "met"]
    table = [head]
    missed = []
    for source, n, s in results:
        target, met = "-", "-"
        if source == "procedural":
            scaled = s["clips_per_second"] * args.seconds / 10.0  # as ten-second clips
            target = f">= {TARGET:g} ten-second clips/s"
            met = "met" if scaled >= TARGET else "TARGET MISSED"
            if scaled < TARGET:
                missed.append(f"TARGET MISSED: procedural {scaled:.1f} ten-second clips/s < {TARGET:g}")
        table.append([source, str(s["written"]), f"{args.seconds:g}", str(args.workers), f"{s['elapsed_seconds']:.2f}",
                      f"{s['clips_per_second']:.1f}", f"{s['realtime_factor']:.0f}", target, met])
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    numeric = {1, 2, 3, 4, 5, 6}
    fmt = lambda line: "  ".join(c.rjust(w) if i in numeric else c.ljust(w)  # noqa: E731
                                 for i, (c, w) in enumerate(zip(line, widths))).rstrip()
    for k, line in enumerate(table):
        print(fmt(line))
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for line in missed:
        print(line)
    if not missed and any(r[0] == "procedural" for r in results):
        print("Target met.")
    print(f"(load average at end: {os.getloadavg()[0]:.2f}; wall-clock rates on a shared machine are noisy)\n")
    print("Markdown:\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---:" if i in numeric else "---" for i in range(len(head))) + "|")
    for line in table[1:]:
        print("| " + " | ".join(line) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
