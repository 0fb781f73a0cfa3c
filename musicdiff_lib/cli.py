"""The ``musicdiff`` command.

Examples::

    musicdiff roundtrip song.wav --out song-gl.wav --preset seed128 --n-iter 64
    musicdiff data synth --n 2000 --out data/synth
    musicdiff data prepare data/synth --out data/synth-cache --seconds 10
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
