"""The ``musicdiff`` command.

Examples::

    musicdiff roundtrip song.wav --out song-gl.wav --preset seed128 --n-iter 64
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
    return parser


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
