"""Captioned audio sources, the preprocessing cache, and the training ``Dataset``.

Chapter: ``02_dataset``. Three kinds of source become one list of :class:`Item`:

* an *audiofolder*: audio files plus ``metadata.jsonl`` or ``metadata.csv``
  with ``file_name`` (relative path) and ``caption`` (the Hugging Face
  convention); every other column or key becomes an attribute;
* a folder written by ``musicdiff data synth`` (an audiofolder whose
  ``metadata.jsonl`` carries an ``attributes`` object, a seed and an index);
* MusicCaps: the caption table shipped in ``resources/musiccaps`` paired with
  clips a user fetched into one folder (``open_source("musiccaps:DIR")``).

:func:`prepare` turns a source into a cache of safetensors shards (mel
spectrograms and caption embeddings) plus ``index.json``; bad inputs are
skipped and listed in ``skipped.jsonl``. :class:`MelDataset` reads the cache
for training, and :func:`collate` batches its items.
"""
from __future__ import annotations

import ast
import concurrent.futures as futures
import csv
import json
import math
import os
import re
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import soundfile as sf
import torch

from .audio import SUPPORTED_SUFFIXES, AudioError, load_audio, pad_or_crop
from .config import write_text_atomic
from .mel import MelCodec, MelConfig
from .text import TextCondition

CACHE_FORMAT = "musicdiff-mel-cache"
CACHE_VERSION = 1
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
# Suffixes paired with MusicCaps rows; those load_audio cannot read are reported by prepare.
AUDIO_LIKE_SUFFIXES = SUPPORTED_SUFFIXES + (".mp3", ".m4a", ".opus", ".aac", ".webm")
MAX_PAD_FRACTION = 0.05  # MelDataset pads at most this share of its frames with silence
SILENCE_PEAK = 1e-4  # -80 dBFS: below the mel's dynamic range, nothing to learn from

MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption",
                     "author_id", "is_balanced_subset", "is_audioset_eval")
MUSICCAPS_SPLITS = ("train", "eval")


# ---------------------------------------------------------------------------
# Items and sources
# ---------------------------------------------------------------------------
@dataclass
class Item:
    """One captioned clip of a source.

    ``id`` is unique within the source (the audiofolder ``file_name``, or the
    MusicCaps ``ytid``); ``error`` is set when the source could not describe
    the item (a malformed metadata line): :func:`prepare` then skips it.
    """

    id: str
    path: Path | None
    caption: str | None
    attributes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


class Source(list):
    """A list of :class:`Item` with a name, plus what the source could not pair.

    ``missing``: ids of rows whose audio was not found (MusicCaps);
    ``total``: rows in the source (found + missing).
    """

    def __init__(self, items: Iterable[Item] = (), name: str = "", missing: Sequence[str] = (),
                 unmatched: Sequence[Path] = ()):
        super().__init__(items)
        self.name = name
        self.missing = list(missing)
        self.unmatched = list(unmatched)  # audio files that match no row

    @property
    def total(self) -> int:
        return len(self) + len(self.missing)

    def summary(self) -> str:
        """One line, e.g. ``"MusicCaps: 12 of 5,521 clips found (5,509 missing)"``."""
        if not self.missing and not self.unmatched:
            return f"{self.name}: {len(self):,} items"
        text = f"{self.name}: {len(self):,} of {self.total:,} clips found ({len(self.missing):,} missing)"
        if self.unmatched:
            text += f"; {len(self.unmatched):,} audio files match no row"
        return text


def _caption(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    text = text.strip()
    return text or None


def _unique_id(name: str, seen: Counter) -> str:
    """``name``, or ``name#2``, ``name#3`` … when a metadata file lists a file more than once."""
    seen[name] += 1
    return name if seen[name] == 1 else f"{name}#{seen[name]}"


def audiofolder(root: str | Path, metadata: str | Path | None = None) -> Source:
    """Items of a Hugging Face style audiofolder (also what ``musicdiff data synth`` writes).

    ``root/metadata.jsonl`` (one JSON object a line) or ``root/metadata.csv``
    holds ``file_name`` (path relative to the metadata file) and ``caption``;
    other keys/columns become attributes, and a JSON ``attributes`` object is
    merged into them. Missing files and empty captions are kept here and
    reported by :func:`prepare`. Raises ``ValueError`` when there is no
    metadata file or it has no ``file_name`` column.
    """
    root = Path(root)
    if metadata is None:
        found = [root / name for name in METADATA_FILES if (root / name).is_file()]
        if not found:
            if not root.is_dir():
                raise ValueError(f"{root}: no such folder")
            raise ValueError(f"{root}: no metadata.jsonl or metadata.csv; an audiofolder needs one, "
                             "with columns file_name and caption")
        if len(found) > 1:
            raise ValueError(f"{root}: both metadata.jsonl and metadata.csv; keep only one")
        metadata = found[0]
    metadata = Path(metadata)
    if not metadata.is_file():
        raise ValueError(f"{metadata}: no such metadata file")
    base = metadata.parent
    rows = _jsonl_rows(metadata) if metadata.suffix.lower() == ".jsonl" else _csv_rows(metadata)
    items: list[Item] = []
    seen: Counter = Counter()
    for line, row, error in rows:
        if error is None and not str(row.get("file_name") or "").strip():
            error = "no file_name"
        if error is not None:
            items.append(Item(f"{metadata.name}:{line}", None, None, {}, f"{metadata.name} line {line}: {error}"))
            continue
        row = dict(row)
        name = str(row.pop("file_name")).strip()
        caption = _caption(row.pop("caption", None))
        nested = row.pop("attributes", None)
        attributes = dict(row)
        if isinstance(nested, dict):
            attributes.update(nested)
        elif nested not in (None, ""):
            attributes["attributes"] = nested
        items.append(Item(_unique_id(name, seen), base / name, caption, attributes))
    return Source(items, name=str(root))


def _jsonl_rows(path: Path):
    """``(line number, object, error)`` for each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as err:
                yield number, {}, f"not JSON ({err.msg})"
                continue
            if not isinstance(row, dict):
                yield number, {}, f"expected a JSON object, got {type(row).__name__}"
                continue
            yield number, row, None


def _csv_rows(path: Path):
    with open(path, encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheets write a BOM
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        for needed in ("file_name", "caption"):
            if needed not in columns:
                raise ValueError(f"{path}: no {needed!r} column; found {columns}; "
                                 "expected an audiofolder table with file_name and caption")
        for row in reader:
            row = {k: v for k, v in row.items() if k is not None}  # extra cells in a ragged row
            nested = row.get("attributes")
            if isinstance(nested, str) and nested.strip().startswith("{"):
                try:
                    row["attributes"] = json.loads(nested)
                except json.JSONDecodeError:
                    pass  # kept as the string it is
            yield reader.line_num, row, None


# -- MusicCaps ----------------------------------------------------------------
def musiccaps_path() -> Path:
    """The MusicCaps caption table shipped with the library (CC BY-SA 4.0, Agostinelli et al. 2023)."""
    return Path(__file__).parent / "resources" / "musiccaps" / "musiccaps-public.csv"


def _number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def _bool(text: str, where: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValueError(f"{where}: expected True or False, got {text!r}")


def musiccaps_table(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The MusicCaps table as dicts (5,521 rows for the public release).

    Parsed: ``start_s``/``end_s``/``author_id`` as numbers, ``aspect_list`` and
    ``audioset_positive_labels`` as ``list[str]``, ``is_balanced_subset`` and
    ``is_audioset_eval`` as ``bool``.
    """
    path = Path(path) if path is not None else musiccaps_path()
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MUSICCAPS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing MusicCaps column(s) {missing}; found {reader.fieldnames}")
        for raw in reader:
            where = f"{path} line {reader.line_num}"
            try:
                aspects = ast.literal_eval(raw["aspect_list"])
                row = {
                    "ytid": raw["ytid"],
                    "start_s": _number(raw["start_s"]),
                    "end_s": _number(raw["end_s"]),
                    "audioset_positive_labels": [s for s in raw["audioset_positive_labels"].split(",") if s],
                    "aspect_list": [str(a) for a in aspects],
                    "caption": raw["caption"],
                    "author_id": _number(raw["author_id"]),
                    "is_balanced_subset": _bool(raw["is_balanced_subset"], f"{where}, is_balanced_subset"),
                    "is_audioset_eval": _bool(raw["is_audioset_eval"], f"{where}, is_audioset_eval"),
                }
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"{where}: {err}") from None
            rows.append(row)
    return rows


_SEGMENT = re.compile(r"^(?P<ytid>.+)_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")


def musiccaps(audio_dir: str | Path, split: str | None = None, table: str | Path | None = None) -> Source:
    """MusicCaps rows paired with the clips a user fetched into ``audio_dir`` (searched recursively).

    A clip is the row's 10 s segment, named ``{ytid}.wav`` or
    ``{ytid}_{start}_{end}.wav`` (``abc_30_40``, ``abc_30.000_40.000``); ``.flac``
    and ``.ogg`` load too, and ``.mp3`` etc. are paired so that :func:`prepare`
    reports them. ``split``: ``None`` (all rows), ``"train"`` or ``"eval"``
    (``is_audioset_eval``). Rows without a clip are listed in ``.missing``.
    """
    if split not in (None,) + MUSICCAPS_SPLITS:
        raise ValueError(f"MusicCaps split {split!r}: expected None, 'train' or 'eval'")
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise ValueError(f"{audio_dir}: no such folder of MusicCaps clips")
    table_rows = musiccaps_table(table)
    rows = [r for r in table_rows if split is None or r["is_audioset_eval"] == (split == "eval")]
    by_ytid = {r["ytid"]: r for r in rows}
    every_row = {r["ytid"]: r for r in table_rows}
    # Rank candidates so that a readable format wins when a clip exists twice.
    rank = {s: i for i, s in enumerate(AUDIO_LIKE_SUFFIXES)}
    found: dict[str, Path] = {}
    unmatched: list[Path] = []
    for path in sorted(audio_dir.rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in rank or not path.is_file():
            continue
        ytid = _match_ytid(path.stem, by_ytid)
        if ytid is None:
            if _match_ytid(path.stem, every_row) is None:  # a clip of the other split is not "unmatched"
                unmatched.append(path)
            continue
        if ytid not in found or rank[suffix] < rank[found[ytid].suffix.lower()]:
            found[ytid] = path
    items, missing = [], []
    for row in rows:
        path = found.get(row["ytid"])
        if path is None:
            missing.append(row["ytid"])
            continue
        attributes = {k: v for k, v in row.items() if k != "caption"}
        items.append(Item(row["ytid"], path, _caption(row["caption"]), attributes))
    name = "MusicCaps" if split is None else f"MusicCaps ({split} split)"
    return Source(items, name=name, missing=missing, unmatched=unmatched)


def _match_ytid(stem: str, rows: dict[str, dict]) -> str | None:
    """The ytid a file stem names: ``{ytid}`` or ``{ytid}_{start}_{end}`` matching that row's segment."""
    if stem in rows:
        return stem
    m = _SEGMENT.match(stem)
    if m and m["ytid"] in rows:
        row = rows[m["ytid"]]
        if math.isclose(float(m["start"]), row["start_s"]) and math.isclose(float(m["end"]), row["end_s"]):
            return m["ytid"]
    return None


def open_source(spec: str | Path, split: str | None = None) -> Source:
    """A source from a path or name.

    * ``"musiccaps:DIR"``: MusicCaps clips in ``DIR`` (``split`` picks train/eval);
    * a folder with ``metadata.jsonl``/``metadata.csv`` (an audiofolder, or a
      ``musicdiff data synth`` output);
    * a ``.jsonl``/``.csv`` metadata file itself.
    """
    text = str(spec)
    if text.lower().startswith("musiccaps:"):
        return musiccaps(text.split(":", 1)[1] or ".", split=split)
    if split is not None:
        raise ValueError(f"{spec}: split={split!r} only applies to MusicCaps (musiccaps:DIR)")
    path = Path(spec)
    if path.is_file() and path.suffix.lower() in (".jsonl", ".csv"):
        return audiofolder(path.parent, metadata=path)
    if path.is_dir():
        if not any((path / name).is_file() for name in METADATA_FILES):
            raise ValueError(f"{path}: no metadata.jsonl or metadata.csv (an audiofolder needs one, with "
                             "file_name and caption); for MusicCaps clips use musiccaps:{path}")
        return audiofolder(path)
    raise ValueError(f"{spec}: no such folder or metadata file (expected an audiofolder, a metadata "
                     ".jsonl/.csv, or musiccaps:DIR)")


# ---------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------
REASONS = {  # reason code → how the summary line says it
    "bad_metadata": "bad metadata line",
    "duplicate_id": "duplicate id",
    "missing_caption": "missing caption",
    "missing_file": "missing file",
    "unsupported_format": "unsupported format",
    "unreadable": "unreadable",
    "empty": "empty",
    "non_finite": "NaN samples",
    "too_short": "shorter than {seconds:g} s",
    "silent": "silent",
}


@dataclass
class PrepareResult:
    """What :func:`prepare` did. ``kept``: items of this source now in the cache (``new`` of them this run)."""

    out: Path
    kept: int
    new: int
    skipped: list[dict[str, Any]]
    seconds: float
    cached: int  # every item in the cache, from this source or earlier ones

    @property
    def reasons(self) -> Counter:
        return Counter(s["reason"] for s in self.skipped)

    def summary(self) -> str:
        """e.g. ``"kept 118, skipped 5 (2 shorter than 10 s, 1 silent, …); report: out/skipped.jsonl"``."""
        kept = f"kept {self.kept:,}"
        if self.new != self.kept:
            kept += f" ({self.new:,} new, {self.kept - self.new:,} already cached)"
        if not self.skipped:
            return f"{kept}, skipped 0; cache {self.out} holds {self.cached:,} clips"
        parts = ", ".join(f"{n} {REASONS.get(r, r).format(seconds=self.seconds)}"
                          for r, n in self.reasons.most_common())
        return f"{kept}, skipped {len(self.skipped):,} ({parts}); report: {self.out / 'skipped.jsonl'}"


def clip_frames(mel_config: MelConfig, seconds: float) -> int:
    """Frames of the centred STFT of ``seconds`` of audio (what the cache stores per clip)."""
    return int(round(seconds * mel_config.sample_rate)) // mel_config.hop_length + 1


def load_index(cache_dir: str | Path) -> dict[str, Any]:
    """``cache_dir/index.json`` (raises ``ValueError`` naming the path when absent or of another format)."""
    path = Path(cache_dir) / "index.json"
    if not path.is_file():
        raise ValueError(f"{cache_dir}: no index.json; make the cache with musicdiff data prepare")
    index = json.loads(path.read_text())
    if index.get("format") != CACHE_FORMAT or index.get("version") != CACHE_VERSION:
        raise ValueError(f"{path}: format {index.get('format')!r} version {index.get('version')!r}; "
                         f"expected {CACHE_FORMAT!r} version {CACHE_VERSION}")
    return index


def check_cache(index: dict[str, Any], where: str | Path, mel_config: MelConfig | None = None,
                seconds: float | None = None, encoder_name: str | None = None,
                encoder_dim: int | None = None) -> None:
    """``ValueError`` naming the first field where the cache differs from what is asked.

    ``mel_config.frames`` is not compared: the cache stores every frame of its
    clips and :class:`MelDataset` crops.
    """
    def differ(name: str, have: Any, want: Any) -> ValueError:
        return ValueError(f"cache {where} was made with {name}={have!r} but {want!r} was asked for")

    if mel_config is not None:
        stored = index["mel"]
        for key, want in mel_config.to_dict().items():
            if key != "frames" and stored.get(key) != want:
                raise differ(f"mel.{key}", stored.get(key), want)
    if seconds is not None and not math.isclose(index["seconds"], seconds):
        raise differ("seconds", index["seconds"], seconds)
    if encoder_name is not None and index["encoder"]["name"] != encoder_name:
        raise differ("encoder", index["encoder"]["name"], encoder_name)
    if encoder_dim is not None and index["encoder"]["dim"] != encoder_dim:
        raise differ("encoder.dim", index["encoder"]["dim"], encoder_dim)


def _write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, ensure_ascii=False, default=str) + "\n")


def _write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def _load_clip(item: Item, sample_rate: int, num_samples: int, min_samples: int):
    """``(wave (num_samples,), None)`` or ``(None, (reason, detail))`` for one item."""
    path = item.path
    if path is None or not path.exists():
        return None, ("missing_file", f"{path}: no such file")
    if path.suffix.lower() not in SUPPORTED_SUFFIXES:
        return None, ("unsupported_format", f"{path.suffix or '(no suffix)'}; expected one of "
                                            f"{', '.join(SUPPORTED_SUFFIXES)}")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError) as err:
        return None, ("unreadable", str(err))
    if info.frames <= 0:
        return None, ("empty", "0 samples")
    length = info.frames / info.samplerate
    need = min_samples / sample_rate
    if length < need:
        return None, ("too_short", f"{length:.2f} s; needs {need:.2f} s")
    try:
        # A little past the crop so that resampling sees real signal at the cut.
        wave, _ = load_audio(path, sample_rate, duration=min(length, num_samples / sample_rate + 0.05))
    except AudioError as err:
        message = str(err)
        reason = "non_finite" if "NaN" in message else "empty" if "no samples" in message else "unreadable"
        return None, (reason, message)
    wave = pad_or_crop(wave, num_samples)  # a clip within the tolerance is padded with silence
    peak = float(np.max(np.abs(wave)))
    if peak < SILENCE_PEAK:
        return None, ("silent", f"peak {peak:.1e} below {SILENCE_PEAK:g}")
    return wave, None


def prepare(items: Iterable[Item], out: str | Path, mel_config: MelConfig, encoder, seconds: float,
            shard_size: int = 256, batch_size: int = 32, progress: bool = True,
            tolerance: float | None = None, workers: int | None = None) -> PrepareResult:
    """Encode a source into a cache in ``out``: mel spectrograms and caption embeddings.

    Each clip is loaded at ``mel_config.sample_rate`` (mono), cut to its first
    ``seconds`` and encoded with ``MelCodec`` (all ``clip_frames`` frames; the
    config's ``frames`` is not applied); captions go through ``encoder`` (a
    :class:`~musicdiff_lib.text.TextEncoder`, or its name). Shards
    ``shard-NNNNN.safetensors`` hold ``mel (N, n_mels, frames)`` float16,
    ``tokens (N, L, D)`` float16, ``mask (N, L)`` bool, ``pooled (N, D)`` float32
    and ``lengths (N,)``; ``index.json`` records the configs and every item.

    Resumable: items whose id is already in the index are skipped; a killed
    run loses at most the shard in progress. Bad items (missing, unreadable,
    empty, NaN, silent, shorter than ``seconds - tolerance`` (default one hop;
    a shorter gap is padded with silence), unsupported format, no caption) are
    listed in ``out/skipped.jsonl`` and never stop the job. A cache made with
    another mel config, duration or encoder is a ``ValueError`` naming the field.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    out = Path(out)
    if shard_size <= 0 or batch_size <= 0:
        raise ValueError(f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}")
    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if encoder is None or isinstance(encoder, str):
        from .text import TextEncoder

        encoder = TextEncoder(encoder)
    mel_config = replace(mel_config, frames=None)
    sr = mel_config.sample_rate
    num_samples = int(round(seconds * sr))
    tolerance = mel_config.hop_length / sr if tolerance is None else tolerance
    min_samples = max(1, int(math.ceil((seconds - tolerance) * sr - 1e-6)))
    frames = clip_frames(mel_config, seconds)

    index_path = out / "index.json"
    if index_path.exists():
        index = load_index(out)
        check_cache(index, out, mel_config, seconds, encoder.name, encoder.dim)
    else:
        index = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "mel": mel_config.to_dict(),
                 "encoder": {"name": encoder.name, "dim": int(encoder.dim)}, "seconds": float(seconds),
                 "frames": frames, "shards": [], "items": []}
    out.mkdir(parents=True, exist_ok=True)
    done = {entry["id"] for entry in index["items"]}
    report_path = out / "skipped.jsonl"
    report: dict[str, dict] = {}  # id → record; earlier runs' records stay unless this run keeps the item
    if report_path.exists():
        for line in report_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                report[record["id"]] = record

    skipped: list[dict] = []

    def skip(item: Item, reason: str, detail: str) -> None:
        record = {"id": item.id, "path": None if item.path is None else str(item.path), "reason": reason,
                  "detail": detail}
        skipped.append(record)
        report[item.id] = record

    # Cheap checks first: nothing to load for these.
    pending: list[Item] = []
    seen: set[str] = set()
    already = 0
    for item in items:
        if item.id in seen:
            skip(item, "duplicate_id", f"id {item.id!r} appears more than once in the source")
            continue
        seen.add(item.id)
        if item.id in done:
            already += 1
            report.pop(item.id, None)
        elif item.error is not None:
            skip(item, "bad_metadata", item.error)
        elif not item.caption or not item.caption.strip():
            skip(item, "missing_caption", "no caption")
        else:
            pending.append(item)

    codec = MelCodec(mel_config)
    buffer: list[tuple[Item, torch.Tensor, torch.Tensor, torch.Tensor]] = []  # item, mel, tokens, pooled

    def flush() -> None:
        if not buffer:
            return
        number = len(index["shards"])
        name = f"shard-{number:05d}.safetensors"
        length = max(t.shape[0] for _, _, t, _ in buffer)
        tokens = torch.zeros(len(buffer), length, int(encoder.dim), dtype=torch.float16)
        mask = torch.zeros(len(buffer), length, dtype=torch.bool)
        for row, (_, _, t, _) in enumerate(buffer):
            tokens[row, : t.shape[0]] = t.to(torch.float16)
            mask[row, : t.shape[0]] = True
        tensors = {
            "mel": torch.stack([m for _, m, _, _ in buffer]).to(torch.float16).contiguous(),
            "tokens": tokens, "mask": mask,
            "pooled": torch.stack([p for _, _, _, p in buffer]).float().contiguous(),
            "lengths": torch.tensor([t.shape[0] for _, _, t, _ in buffer], dtype=torch.int32),
        }
        tmp = out / (name + ".tmp")
        save_file(tensors, str(tmp), metadata={"ids": json.dumps([it.id for it, _, _, _ in buffer])})
        os.replace(tmp, out / name)
        index["shards"].append({"file": name, "count": len(buffer)})
        for row, (item, _, t, _) in enumerate(buffer):
            index["items"].append({"id": item.id, "caption": item.caption, "attributes": item.attributes,
                                   "path": None if item.path is None else str(item.path),
                                   "shard": number, "row": row, "length": int(t.shape[0])})
            report.pop(item.id, None)
        _write_json(index_path, index)  # after the shard: the index never names a missing shard
        _write_jsonl(report_path, report.values())
        buffer.clear()

    def encode(batch: list[tuple[Item, np.ndarray]]) -> None:
        waves = torch.from_numpy(np.stack([w for _, w in batch]))
        with torch.no_grad():
            mels = codec.encode(waves)[:, 0].cpu()  # (B, n_mels, frames)
            cond = encoder([it.caption for it, _ in batch]).to("cpu")
        for k, (item, _) in enumerate(batch):
            n = int(cond.mask[k].sum())
            buffer.append((item, mels[k], cond.tokens[k, :n].float(), cond.pooled[k].float()))
            if len(buffer) >= shard_size:
                flush()

    workers = workers or min(4, os.cpu_count() or 1)
    bar = tqdm(total=len(pending), desc=f"prepare {out.name}", unit="clip",
               **({} if progress else {"disable": True}))  # passing disable=False would override TQDM_DISABLE
    try:
        with futures.ThreadPoolExecutor(workers) as pool:
            # Load ahead by two batches while the main thread encodes: bounded memory, overlapped I/O.
            queue: deque = deque()
            todo = iter(pending)

            def top_up() -> None:
                while len(queue) < 2 * batch_size:
                    item = next(todo, None)
                    if item is None:
                        return
                    queue.append((item, pool.submit(_load_clip, item, sr, num_samples, min_samples)))

            top_up()
            batch: list[tuple[Item, np.ndarray]] = []
            while queue:
                item, future = queue.popleft()
                top_up()
                wave, problem = future.result()
                if problem is not None:
                    skip(item, *problem)
                else:
                    batch.append((item, wave))
                if len(batch) == batch_size:
                    encode(batch)
                    batch = []
                bar.update(1)
            if batch:
                encode(batch)
        flush()
    except KeyboardInterrupt:
        flush()  # keep what is complete; the next run resumes after it
        raise
    finally:
        bar.close()
        _write_jsonl(report_path, report.values())  # whatever happened, the reasons so far are on disk
    if not index_path.exists():  # nothing kept at all: still leave an index so that the cache opens
        _write_json(index_path, index)
    new = len(index["items"]) - len(done)
    return PrepareResult(out, kept=already + new, new=new, skipped=skipped, seconds=float(seconds),
                         cached=len(index["items"]))


# ---------------------------------------------------------------------------
# Training dataset
# ---------------------------------------------------------------------------
class MelDataset(torch.utils.data.Dataset):
    """The cache as a ``Dataset``: one dict per clip.

    ``mel (1, n_mels, frames)`` float32 (a random crop when the stored clip is
    longer than ``frames``; deterministic given ``seed``, :meth:`set_epoch` and
    the index; up to 5% of ``frames`` missing at the end are padded with silence, -1), ``tokens (L_i, D)``, ``mask (L_i,)`` and ``pooled (D,)``,
    ``caption``, ``attributes`` and ``id``. Shards are memory-mapped, so a large
    cache does not need to fit in RAM. ``expect_mel``/``expect_encoder``: a
    ``ValueError`` naming the field if the cache was made differently.
    """

    def __init__(self, cache_dir: str | Path, frames: int | None = None, random_crop: bool = True,
                 seed: int = 0, expect_mel: MelConfig | None = None, expect_encoder: str | None = None):
        self.cache_dir = Path(cache_dir)
        self.index = load_index(self.cache_dir)
        check_cache(self.index, self.cache_dir, mel_config=expect_mel, encoder_name=expect_encoder)
        self.stored_frames = int(self.index["frames"])
        self.frames = self.stored_frames if frames is None else int(frames)
        if self.frames <= 0:
            raise ValueError(f"frames must be positive, got {frames}")
        # A few frames short (the report's 10 s clips give 196 of its 200 frames) are padded with
        # silence, as the report did; more would train on silence that the captions do not mention.
        self.pad = self.frames - self.stored_frames
        if self.pad > MAX_PAD_FRACTION * self.frames:
            stored = MelConfig.from_dict(self.index["mel"])
            need = (self.frames - 1) * stored.hop_length / stored.sample_rate
            raise ValueError(f"cache {self.cache_dir} holds {self.stored_frames} frames per clip "
                             f"({self.index['seconds']:g} s); frames={self.frames} needs clips of at least "
                             f"{need:.2f} s: prepare the cache again with seconds >= {need:.2f}")
        self.random_crop = random_crop
        self.seed = int(seed)
        self.epoch = 0
        self.items: list[dict[str, Any]] = self.index["items"]
        self._handles: dict[int, Any] = {}

    @property
    def mel_config(self) -> MelConfig:
        """The cache's mel config, with ``frames`` set to this dataset's crop width."""
        return replace(MelConfig.from_dict(self.index["mel"]), frames=self.frames)

    @property
    def encoder_name(self) -> str:
        return self.index["encoder"]["name"]

    @property
    def text_dim(self) -> int:
        return int(self.index["encoder"]["dim"])

    @property
    def captions(self) -> list[str]:
        return [entry["caption"] for entry in self.items]

    def set_epoch(self, epoch: int) -> None:
        """Crops depend on (seed, epoch, index): call once per epoch for fresh, reproducible crops."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.items)

    def _shard(self, number: int):
        handle = self._handles.get(number)
        if handle is None:
            from safetensors import safe_open

            path = self.cache_dir / self.index["shards"][number]["file"]
            handle = self._handles[number] = safe_open(str(path), framework="pt")
        return handle

    def __getstate__(self):  # DataLoader workers reopen the (unpicklable) shard handles
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def crop_start(self, index: int) -> int:
        """First frame of item ``index``'s crop this epoch."""
        spare = self.stored_frames - self.frames
        if spare <= 0 or not self.random_crop:
            return 0
        rng = np.random.default_rng([self.seed, self.epoch, index])
        return int(rng.integers(0, spare + 1))

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} clips")
        index = index % len(self)
        entry = self.items[index]
        shard, row, n = self._shard(entry["shard"]), entry["row"], entry["length"]
        start = self.crop_start(index)
        mel = shard.get_slice("mel")[row : row + 1, :, start : start + self.frames].float()
        if self.pad > 0:
            mel = torch.nn.functional.pad(mel, (0, self.pad), value=-1.0)  # -1: silence in [-1, 1] units
        return {
            "mel": mel,  # (1, n_mels, frames)
            "tokens": shard.get_slice("tokens")[row, :n].float(),
            "mask": shard.get_slice("mask")[row, :n].bool(),
            "pooled": shard.get_slice("pooled")[row].float(),
            "caption": entry["caption"],
            "attributes": entry["attributes"],
            "id": entry["id"],
        }


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack :class:`MelDataset` items: ``mel (B, 1, n_mels, frames)``, ``text`` a
    :class:`TextCondition` with tokens padded (masked zeros) to the longest
    caption, plus ``captions``, ``attributes`` and ``ids`` lists."""
    length = max(b["tokens"].shape[0] for b in batch)
    dim = batch[0]["tokens"].shape[1]
    tokens = torch.zeros(len(batch), length, dim)
    mask = torch.zeros(len(batch), length, dtype=torch.bool)
    for k, b in enumerate(batch):
        n = b["tokens"].shape[0]
        tokens[k, :n] = b["tokens"]
        mask[k, :n] = b["mask"]
    return {
        "mel": torch.stack([b["mel"] for b in batch]),
        "text": TextCondition(tokens, mask, torch.stack([b["pooled"] for b in batch])),
        "captions": [b["caption"] for b in batch],
        "attributes": [b["attributes"] for b in batch],
        "ids": [b["id"] for b in batch],
    }
