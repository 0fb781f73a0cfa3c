"""The ``musicdiff`` command.

Examples::

    musicdiff roundtrip song.wav --out song-gl.wav --preset seed128 --n-iter 64
    musicdiff data synth --n 2000 --out data/synth
    musicdiff data prepare data/synth --out data/synth-cache --seconds 10
    musicdiff evaluate --checkpoint checkpoints/book-cpu --n 128 --out eval/book
    musicdiff --version

Bad arguments, missing files and unreadable audio end with a one-line error
and exit status 2, never a traceback.
"""
from __future__ import annotations

import argparse
import sys

from . import __version__


class CliError(Exception):
    """An error the user can fix; printed as one line, exit status 2."""


def _roundtrip(args: argparse.Namespace) -> None:
    import torch

    from .audio import AudioError, load_audio, save_wav
    from .griffinlim import spectral_convergence
    from .mel import MelCodec, MelConfig

    try:
        config = MelConfig.preset(args.preset) if args.preset else MelConfig()
        codec = MelCodec(config)
        wave, rate = load_audio(args.input, sample_rate=config.sample_rate)
    except (AudioError, ValueError) as err:
        raise CliError(str(err)) from None
    mel = codec.encode(torch.from_numpy(wave))
    generator = torch.Generator().manual_seed(args.seed)
    out = codec.to_wave(mel, n_iter=args.n_iter, generator=generator)[0, : len(wave)]
    save_wav(args.out, out.numpy(), rate)
    target = codec.stft(torch.from_numpy(wave)[None]).abs()
    sc = spectral_convergence(target, out[None], config).item()
    print(f"wrote {args.out}: {out.shape[-1] / rate:.2f} s at {rate} Hz, mel {tuple(mel.shape[1:])}, "
          f"spectral convergence vs input {sc:.3f}")


def _data_synth(args: argparse.Namespace) -> None:
    from .synth import write_dataset

    if args.n <= 0:
        raise CliError(f"--n must be a positive number of clips, got {args.n}")
    try:
        summary = write_dataset(args.out, args.n, seed=args.seed, seconds=args.seconds,
                                sample_rate=args.sample_rate, source=args.source, workers=args.workers)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    failed = summary["failed"]
    print(f"{summary['out']}: {summary['total']:,} clips ({summary['written']:,} written, "
          f"{summary['skipped_existing']:,} already there) in {summary['elapsed_seconds']:.1f} s, "
          f"{summary['clips_per_second']:.1f} clips/s" + (f"; {len(failed)} failed: {failed[:5]}" if failed else ""))
    if failed:
        raise CliError(f"{len(failed)} clip(s) failed to render; re-run the same command to retry them")


def _data_prepare(args: argparse.Namespace) -> None:
    from .audio import AudioError
    from .data import open_source, prepare
    from .mel import MelConfig
    from .text import TextEncoder

    try:
        mel_config = MelConfig.preset(args.preset) if args.preset else MelConfig()
        items = open_source(args.source, split=args.split)
        encoder = TextEncoder(args.encoder)
        result = prepare(items, args.out, mel_config, encoder, seconds=args.seconds,
                         shard_size=args.shard_size, batch_size=args.batch_size)
    except (ValueError, OSError, AudioError) as err:
        raise CliError(str(err)) from None
    note = getattr(items, "summary", None)
    if note:
        print(note if isinstance(note, str) else note())
    print(result.summary())


def _train(args: argparse.Namespace) -> None:
    from pathlib import Path

    from .data import METADATA_FILES, open_source, prepare
    from .mel import MelConfig
    from .training import TRAIN_PRESETS, TrainingDiverged, train

    if args.preset not in TRAIN_PRESETS:
        raise CliError(f"unknown preset {args.preset!r}; expected one of {', '.join(sorted(TRAIN_PRESETS))}")
    for name in ("max_minutes", "max_steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise CliError(f"--{name.replace('_', '-')} must be positive, got {value}")
    data = Path(args.data)
    if not data.is_dir():
        raise CliError(f"{data}: no such folder (expected a cache from 'musicdiff data prepare' or a dataset folder)")
    overrides = {"batch_size": args.batch_size} if args.batch_size else {}
    try:
        if not (data / "index.json").exists():
            if not any((data / name).exists() for name in METADATA_FILES):
                raise CliError(f"{data}: neither a cache (index.json) nor a dataset (metadata.jsonl/.csv)")
            # A dataset folder: prepare it once for this preset's mel settings, inside the run folder.
            from .text import TextEncoder

            cache = Path(args.out) / "cache"
            result = prepare(open_source(data), cache, MelConfig.preset(args.preset), TextEncoder(),
                             seconds=args.seconds)
            print(result.summary())
            data = cache
        summary = train(args.preset, data, args.out, resume=args.resume, max_minutes=args.max_minutes,
                        max_steps=args.max_steps, **overrides)
    except TrainingDiverged as err:
        raise CliError(f"{err} (the last good checkpoint in {args.out} is intact)") from None
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    print(f"stopped at step {summary['step']:,} ({summary['stopped'].replace('_', ' ')}) after "
          f"{summary['elapsed'] / 60:.1f} min, loss {summary['loss']:.4f}; checkpoint {summary['checkpoint']}")


def _generate(args: argparse.Namespace) -> None:
    from .pipeline import MusicDiffusionPipeline

    if not args.prompt.strip():
        raise CliError("the prompt is empty; describe the music, e.g. \"a slow, sad piano melody\"")
    if args.steps <= 0:
        raise CliError(f"--steps must be a positive number, got {args.steps}")
    try:
        pipe = MusicDiffusionPipeline.from_checkpoint(args.checkpoint, use_ema=not args.raw_weights)
        out = pipe(args.prompt, steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance,
                   seed=args.seed, negative_prompt=args.negative, griffin_lim_iters=args.griffin_lim_iters)
        wav = out.save_wav(args.out)[0]
        png = out.save_png(args.png)[0] if args.png else None
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    print(f"wrote {wav}: {out.waves.shape[-1] / out.sample_rate:.2f} s at {out.sample_rate} Hz "
          f"({args.sampler}, {args.steps} steps, guidance {args.guidance:g}, seed {args.seed})"
          + (f"; spectrogram {png}" if png else ""))


def _evaluate(args: argparse.Namespace) -> None:
    from .report import evaluate

    if args.n < 8 or args.n % 2:
        raise CliError(f"--n must be an even number of at least 8, got {args.n}")
    if args.steps <= 0:
        raise CliError(f"--steps must be a positive number, got {args.steps}")
    baselines = {}
    for spec in args.baseline:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CliError(f"--baseline {spec!r}: expected NAME=CHECKPOINT, e.g. unconditional=runs/uncond")
        baselines[name] = path
    try:
        report = evaluate(args.checkpoint, args.out, n=args.n, seed=args.seed, steps=args.steps,
                          sampler=args.sampler, guidance_scale=args.guidance, classifier=args.classifier,
                          train_data=args.train_data, baselines=baselines, diversity=min(args.diversity, args.n),
                          heldout_dir=args.heldout_dir)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    used = report["classifier"]["used_attributes"]
    mean = report["adherence"]["generated"]["mean over used attributes"]
    print(f"wrote {args.out}/report.md, report.json and plots: adherence {100 * mean:.0f}% over "
          f"{', '.join(used) or 'no attribute'}")


def _export(args: argparse.Namespace) -> None:
    from .training import export_checkpoint

    try:
        out = export_checkpoint(args.checkpoint, args.out)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"wrote {out}: EMA weights in fp16, {size / 1e6:.1f} MB")


def _info(args: argparse.Namespace) -> None:
    import json

    from .training import load_checkpoint_config, resolve_checkpoint

    try:
        where = resolve_checkpoint(args.checkpoint)
        config = load_checkpoint_config(where)
    except (ValueError, OSError) as err:
        raise CliError(str(err)) from None
    if args.json:
        print(json.dumps(config, indent=2, sort_keys=True))
        return
    from .unet import UNet, UNetConfig, count_parameters

    mel, unet = config["mel"], UNetConfig.from_dict(config["unet"])
    seconds = (mel["frames"] - 1) * mel["hop_length"] / mel["sample_rate"] if mel.get("frames") else None
    size = sum(f.stat().st_size for f in where.iterdir() if f.is_file())
    schedule = config["schedule"]
    rows = [("checkpoint", str(where)), ("step", f"{config['step']:,}"), ("preset", config.get("preset") or "-"),
            ("U-Net", f"{count_parameters(UNet(unet)):,} parameters, channels {list(unet.down_channels)}"),
            ("mel", f"{mel['n_mels']} mels × {mel.get('frames')} frames at {mel['sample_rate']} Hz, hop "
                    f"{mel['hop_length']}" + (f" ({seconds:.2f} s)" if seconds else "")),
            ("text encoder", f"{config['text_encoder']['name']} ({config['text_encoder']['dim']}-d)"),
            ("schedule", f"{schedule['name']}, T = {schedule['T']}"
                         + (", zero terminal SNR" if schedule.get("zero_terminal_snr") else "")),
            ("prediction", config["prediction_type"]), ("size on disk", f"{size / 1e6:.1f} MB")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (and exit status 2), without the usage dump."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="musicdiff",
        description="Text-conditioned music generation with diffusion models.",
        epilog="example: musicdiff roundtrip song.wav --out song-gl.wav --preset seed128",
    )
    parser.add_argument("--version", action="version", version=f"musicdiff {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    rt = sub.add_parser(
        "roundtrip", help="audio → mel → Griffin-Lim → audio, to hear what the mel keeps",
        description="Encode an audio file to a normalised log-mel spectrogram and back through Griffin-Lim.",
        epilog="example: musicdiff roundtrip song.wav --out song-gl.wav --preset seed128 --n-iter 64",
    )
    rt.add_argument("input", help="wav, flac or ogg file")
    rt.add_argument("--out", required=True, help="wav file to write")
    rt.add_argument("--preset", default=None, help="mel preset: seed128, seed64, seed3s (default: MelConfig())")
    rt.add_argument("--n-iter", type=int, default=32, help="Griffin-Lim iterations (default 32)")
    rt.add_argument("--seed", type=int, default=0, help="seed of the initial random phase")
    rt.set_defaults(run=_roundtrip)

    data = sub.add_parser(
        "data", help="make the built-in dataset, or turn a dataset into a training cache",
        description="Datasets: render the built-in captioned music, or prepare any source for training.",
        epilog="example: musicdiff data synth --n 2000 --out data/synth",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    data.set_defaults(run=_missing_subcommand("synth or prepare", "musicdiff data --help"))
    syn = data_sub.add_parser(
        "synth", help="render captioned clips with the General MIDI SoundFont (resumable)",
        description="Compose captioned music and render it with the SoundFont inside pretty_midi: "
                    "OUT/clips/*.wav and OUT/metadata.jsonl. Re-running skips clips already written.",
        epilog="example: musicdiff data synth --n 2000 --out data/synth --seconds 10 --source mixed",
    )
    syn.add_argument("--n", type=int, required=True, help="number of clips (a larger n extends the folder)")
    syn.add_argument("--out", required=True, help="folder to write")
    syn.add_argument("--seed", type=int, default=0, help="dataset seed: clip i depends only on (seed, i)")
    syn.add_argument("--seconds", type=float, default=10.0, help="clip length (default 10)")
    syn.add_argument("--sample-rate", type=int, default=16000, help="Hz (default 16000)")
    syn.add_argument("--source", choices=("procedural", "corpus", "mixed"), default="procedural",
                     help="procedural songs, music21-corpus pieces, or a mix (every 4th from the corpus)")
    syn.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    syn.set_defaults(run=_data_synth)
    prep = data_sub.add_parser(
        "prepare", help="encode a source into mel spectrograms + caption embeddings (resumable)",
        description="Turn a source into a training cache: mel spectrograms and caption embeddings in "
                    "safetensors shards, with index.json. SOURCE is a folder with metadata.jsonl or "
                    "metadata.csv (file_name, caption), e.g. a 'musicdiff data synth' folder, or "
                    "musiccaps:DIR for MusicCaps clips you fetched, named {ytid}.wav. Bad clips are "
                    "skipped and listed in OUT/skipped.jsonl.",
        epilog="example: musicdiff data prepare data/synth --out data/synth-cache --seconds 10",
    )
    prep.add_argument("source", help="a dataset folder, a metadata file, or musiccaps:DIR")
    prep.add_argument("--out", required=True, help="cache folder (created, or extended if it exists)")
    prep.add_argument("--preset", default=None, help="mel preset, e.g. seed128 (default: MelConfig())")
    prep.add_argument("--seconds", type=float, default=10.0, help="seconds kept from each clip (default 10)")
    prep.add_argument("--encoder", default=None,
                      help="text encoder: a Hub id or local folder (default: all-MiniLM-L6-v2, offline)")
    prep.add_argument("--split", choices=("train", "eval"), default=None, help="MusicCaps split (default: both)")
    prep.add_argument("--shard-size", type=int, default=256, help="clips per safetensors shard")
    prep.add_argument("--batch-size", type=int, default=32, help="clips encoded at once")
    prep.set_defaults(run=_data_prepare)

    tr = sub.add_parser(
        "train", help="train a model on a prepared cache (or a dataset folder); resumable",
        description="Train the conditional diffusion model with a named preset. DATA is a cache from "
                    "'musicdiff data prepare', or a dataset folder, which is prepared into OUT/cache "
                    "first. Checkpoints go to OUT; --resume continues exactly where a run stopped.",
        epilog="example: musicdiff train --preset cpu --data data/synth-cache --out runs/cpu --max-minutes 30",
    )
    tr.add_argument("--preset", required=True, help="ci, cpu, seed128, seed64, seed3s or gpu")
    tr.add_argument("--data", required=True, help="a prepared cache or a dataset folder")
    tr.add_argument("--out", required=True, help="run folder for checkpoints and logs")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in OUT")
    tr.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this long")
    tr.add_argument("--max-steps", type=int, default=None, help="optimiser steps (default: the preset's)")
    tr.add_argument("--batch-size", type=int, default=None, help="clips per step and process (default: preset)")
    tr.add_argument("--seconds", type=float, default=10.0, help="seconds per clip when preparing a dataset folder")
    tr.set_defaults(run=_train)

    gen = sub.add_parser(
        "generate", help="text → music with a trained checkpoint",
        description="Generate a clip from a caption with a trained checkpoint (a run folder or one checkpoint).",
        epilog='example: musicdiff generate "a slow, sad piano melody with soft strings" '
               "--checkpoint checkpoints/book-cpu --out song.wav --steps 25 --guidance 3 --seed 1",
    )
    gen.add_argument("prompt", help="the caption, in quotes")
    gen.add_argument("--checkpoint", required=True, help="a training run folder or a checkpoint folder")
    gen.add_argument("--out", required=True, help="wav file to write")
    gen.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    gen.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp_2m"), default="dpmpp_2m",
                     help="default dpmpp_2m (DPM-Solver++ 2M)")
    gen.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    gen.add_argument("--seed", type=int, default=0, help="same seed, same music")
    gen.add_argument("--negative", default=None, help="a caption to steer away from")
    gen.add_argument("--griffin-lim-iters", type=int, default=32, help="phase reconstruction iterations")
    gen.add_argument("--png", default=None, help="also save the spectrogram as this PNG")
    gen.add_argument("--raw-weights", action="store_true", help="use the raw weights instead of the EMA")
    gen.set_defaults(run=_generate)

    ev = sub.add_parser(
        "evaluate", help="score a checkpoint: caption adherence, distribution distance, SSIM/MSE, memorisation",
        description="Generate from held-out captions of the built-in dataset and score the samples; writes "
                    "report.json (deterministic for a seed), report.md and plots into OUT. Resumable.",
        epilog="example: musicdiff evaluate --checkpoint checkpoints/book-cpu --n 128 --out eval/book "
               "--train-data data/synth-cache --baseline unconditional=runs/uncond",
    )
    ev.add_argument("--checkpoint", required=True, help="a training run folder or a checkpoint folder")
    ev.add_argument("--out", required=True, help="folder for the report")
    ev.add_argument("--n", type=int, default=128, help="held-out captions, one sample each (default 128)")
    ev.add_argument("--seed", type=int, default=0, help="noise seed of the first sample (default 0)")
    ev.add_argument("--steps", type=int, default=25, help="sampling steps (default 25)")
    ev.add_argument("--sampler", choices=("ddpm", "ddim", "dpmpp_2m"), default="dpmpp_2m")
    ev.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    ev.add_argument("--classifier", default=None, help="attribute classifier folder (default checkpoints/classifier-cpu)")
    ev.add_argument("--train-data", default=None, help="the training cache, for the memorisation check")
    ev.add_argument("--baseline", action="append", default=[], metavar="NAME=CHECKPOINT",
                    help="a model scored on the same captions, e.g. unconditional=runs/uncond (repeatable)")
    ev.add_argument("--diversity", type=int, default=64, help="captions sampled twice, for diversity (default 64)")
    ev.add_argument("--heldout-dir", default=None, help="where the held-out clips are rendered (default OUT/heldout)")
    ev.set_defaults(run=_evaluate)

    exp = sub.add_parser(
        "export", help="a small release copy of a checkpoint: EMA weights in fp16, no optimiser state",
        description="Copy a checkpoint's EMA weights in fp16 (and the run's metrics log) into OUT, "
                    "for sharing or committing; it generates like the original but cannot resume.",
        epilog="example: musicdiff export runs/cpu --out checkpoints/book-cpu",
    )
    exp.add_argument("checkpoint", help="a training run folder or a checkpoint folder")
    exp.add_argument("--out", required=True, help="folder to write (a run folder with one checkpoint)")
    exp.set_defaults(run=_export)

    info = sub.add_parser(
        "info", help="what a checkpoint holds: step, network, mel settings, text encoder",
        description="Describe a checkpoint: its training step, network size, mel settings and text encoder.",
        epilog="example: musicdiff info checkpoints/book-cpu",
    )
    info.add_argument("checkpoint", help="a training run folder or a checkpoint folder")
    info.add_argument("--json", action="store_true", help="print the stored config.json")
    info.set_defaults(run=_info)
    return parser


def _missing_subcommand(choices: str, help_command: str):
    def run(args: argparse.Namespace) -> None:
        raise CliError(f"which one: {choices}? (see {help_command})")
    return run


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a bad argument
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        args.run(args)
    except CliError as err:
        print(f"musicdiff {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
