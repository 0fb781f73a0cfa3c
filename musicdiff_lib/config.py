"""Configuration plumbing shared by every chapter: JSON dataclasses, profiles, devices.

Chapter: used everywhere; introduced in ``01_audio_and_mel``.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:  # torch is imported where it is used: the file helpers serve torch-free workers too
    import torch

PROFILES = ("ci", "book", "gpu")

C = TypeVar("C", bound="JsonConfig")


class JsonConfig:
    """Mixin for dataclass configs that round-trip through JSON.

    Unknown keys are an error naming the key, so a typo in a config file never
    silently falls back to a default.
    """

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; expected some of {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[C], text_or_path: str | Path) -> C:
        """Read a config from a JSON string or a path to a JSON file."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            path = Path(text_or_path)
            try:
                text = path.read_text()
            except OSError as err:
                raise ValueError(f"{cls.__name__}: cannot read {path}: {err.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{cls.__name__}: invalid JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {type(data).__name__}")
        return cls.from_dict(data)


def fsync_dir(path: str | Path) -> None:
    """Flush a directory entry (a rename into it) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves the old file or the new one, never half of either.

    The text goes to ``path.tmp``, is flushed to disk, and replaces ``path``
    with one rename. Every index, metadata and ``latest`` file of the library
    is written this way.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def find_in_parents(relative: str | Path, start: str | Path | None = None,
                    markers: tuple[str, ...] = ("",)) -> Path | None:
    """``start/relative`` (default start: the working directory) or the same under the nearest parent
    that has it, else None. It counts as present when any of ``markers`` exists inside it (``""``:
    the path itself). Notebooks run from ``notebooks/``, tests and the CLI from the repository root;
    this finds the repository's files from both.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        candidate = folder / relative
        if any((candidate / marker).exists() for marker in markers):
            return candidate
    return None


def profile() -> str:
    """The run profile from ``MUSICDIFF_PROFILE``: ``ci``, ``book`` or ``gpu``.

    Unset means ``gpu`` when CUDA is available and ``book`` otherwise.
    """
    value = os.environ.get("MUSICDIFF_PROFILE", "").strip().lower()
    if not value:
        import torch

        return "gpu" if torch.cuda.is_available() else "book"
    if value not in PROFILES:
        raise ValueError(f"MUSICDIFF_PROFILE={value!r}: expected one of {', '.join(PROFILES)}")
    return value


def default_device() -> torch.device:
    """The best available device: ``cuda`` > ``mps`` > ``cpu``.

    Library code takes a device argument and never calls ``.cuda()`` itself.
    """
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
