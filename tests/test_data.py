"""Sources, the preprocessing cache and MelDataset, on real files written to disk.

The clips are General MIDI renders (``demo_clip``), the captions go through
the packaged MiniLM encoder, and every kind of bad input is a real file.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from musicdiff_lib import data  # noqa: E402
from musicdiff_lib.audio import save_wav  # noqa: E402
from musicdiff_lib.mel import MelCodec, MelConfig  # noqa: E402
from musicdiff_lib.synth import demo_clip  # noqa: E402
from musicdiff_lib.text import TextCondition, TextEncoder  # noqa: E402

SR = 16000
SECONDS = 3.0
MEL = MelConfig(sample_rate=SR, n_fft=512, hop_length=256, n_mels=32)
PROGRAMS = [0, 24, 73, 19, 56, 40, 11, 81]
CAPTIONS = [
    "A calm solo piano piece in a major key.",
    "Upbeat acoustic guitar with drums, fast tempo and a bright mood.",
    "Flute melody over strings.",
    "This is an instrumental piece featuring a church organ playing slow sustained chords with bass.",
    "Trumpet lead, medium tempo.",
    "A violin plays a melancholic tune over soft block chords in a minor key, without percussion.",
    "Mallets.",
    "Synth lead with an arpeggio and a steady four-on-the-floor beat.",
]


@pytest.fixture(scope="module")
def encoder(one_thread):
    return TextEncoder(device="cpu")


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """Eight different 3.5 s renders at 16 kHz."""
    return [demo_clip(3.5, SR, seed=k, lead_program=p, drums=k % 2 == 0) for k, p in enumerate(PROGRAMS)]


def write_synth_folder(root: Path, clips, captions=CAPTIONS) -> Path:
    """The layout ``musicdiff data synth`` writes: clips/NNNNNN.wav + metadata.jsonl."""
    lines = []
    for k, (wave, caption) in enumerate(zip(clips, captions)):
        name = f"clips/{k:06d}.wav"
        save_wav(root / name, wave, SR)
        lines.append({"file_name": name, "caption": caption, "seed": 7, "index": k, "source": "procedural",
                      "attributes": {"instrument": PROGRAMS[k], "drums": k % 2 == 0}})
    (root / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


# -- sources -----------------------------------------------------------------
def test_synth_folder_is_an_audiofolder(tmp_path, clips):
    root = write_synth_folder(tmp_path / "synth", clips[:3])
    items = data.open_source(root)
    assert [i.id for i in items] == ["clips/000000.wav", "clips/000001.wav", "clips/000002.wav"]
    first = items[0]
    assert first.path == root / "clips/000000.wav" and first.path.is_file()
    assert first.caption == CAPTIONS[0]
    # top-level keys and the nested attributes object both become attributes
    assert first.attributes == {"seed": 7, "index": 0, "source": "procedural", "instrument": 0, "drums": True}
    assert [i.id for i in data.open_source(root / "metadata.jsonl")] == [i.id for i in items]


def test_audiofolder_csv_columns_become_attributes(tmp_path, clips):
    root = tmp_path / "folder"
    save_wav(root / "a.wav", clips[0], SR)
    save_wav(root / "sub" / "b.flac", clips[1], SR)
    with open(root / "metadata.csv", "w", newline="", encoding="utf-8-sig") as f:  # with a BOM, as Excel writes
        w = csv.writer(f)
        w.writerow(["file_name", "caption", "genre"])
        w.writerows([["a.wav", "solo piano", "classical"], ["sub/b.flac", "guitar", "folk"],
                     ["a.wav", "the same file, captioned twice", "classical"]])
    items = data.audiofolder(root)
    assert [i.id for i in items] == ["a.wav", "sub/b.flac", "a.wav#2"]
    assert items[1].path == root / "sub" / "b.flac" and items[1].caption == "guitar"
    assert items[1].attributes == {"genre": "folk"}


def test_audiofolder_errors_name_the_file_and_column(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no metadata.jsonl or metadata.csv"):
        data.audiofolder(empty)
    with pytest.raises(ValueError, match="musiccaps:"):
        data.open_source(empty)
    with pytest.raises(ValueError, match="no such folder or metadata file"):
        data.open_source(tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.csv").write_text("path,caption\nx.wav,hello\n")
    with pytest.raises(ValueError, match=r"metadata\.csv: no 'file_name' column"):
        data.audiofolder(bad)


def test_musiccaps_table_is_the_real_table():
    rows = data.musiccaps_table()
    assert len(rows) == 5521
    first = rows[0]
    assert first["ytid"] == "-0Gj8-vB1q4" and (first["start_s"], first["end_s"]) == (30, 40)
    assert first["caption"].startswith("The low quality recording features a ballad song")
    assert first["aspect_list"] == ["low quality", "sustained strings melody", "soft female vocal",
                                    "mellow piano melody", "sad", "soulful", "ballad"]
    assert first["audioset_positive_labels"] == ["/m/0140xf", "/m/02cjck", "/m/04rlf"]
    assert first["author_id"] == 4 and first["is_balanced_subset"] is False and first["is_audioset_eval"] is True
    with open(data.musiccaps_path(), newline="", encoding="utf-8") as f:
        raw_eval = sum(r["is_audioset_eval"] == "True" for r in csv.DictReader(f))
    assert sum(r["is_audioset_eval"] for r in rows) == raw_eval == 2858
    assert all(isinstance(a, str) for r in rows for a in r["aspect_list"])
    assert len({r["ytid"] for r in rows}) == 5521


@pytest.fixture(scope="module")
def musiccaps_dir(tmp_path_factory, clips):
    """Clips for five MusicCaps rows under every accepted name form, plus two files that match nothing."""
    rows = data.musiccaps_table()
    root = tmp_path_factory.mktemp("musiccaps")
    picked = [rows[0], rows[1], rows[10], rows[12], rows[14]]  # start_s 30, 30, 230, 70, 280
    save_wav(root / f"{picked[0]['ytid']}.wav", clips[0], SR)
    save_wav(root / "fetched" / f"{picked[1]['ytid']}_{picked[1]['start_s']}_{picked[1]['end_s']}.wav", clips[1], SR)
    sf.write(root / f"{picked[2]['ytid']}_{picked[2]['start_s']:.3f}_{picked[2]['end_s']:.3f}.flac", clips[2], SR)
    sf.write(root / f"{picked[3]['ytid']}.ogg", clips[3], SR)
    sf.write(root / f"{picked[4]['ytid']}.mp3", clips[4], SR, format="MP3")  # paired; prepare refuses it
    save_wav(root / f"{rows[2]['ytid']}_0_10.wav", clips[5], SR)  # another segment of that video
    save_wav(root / "hello.wav", clips[6], SR)
    return root, picked


def test_musiccaps_pairs_clips_under_each_name_form(musiccaps_dir):
    root, picked = musiccaps_dir
    source = data.open_source(f"musiccaps:{root}")
    assert sorted(i.id for i in source) == sorted(r["ytid"] for r in picked)
    assert len(source.missing) == 5521 - 5 and picked[0]["ytid"] not in source.missing
    assert source.summary() == "MusicCaps: 5 of 5,521 clips found (5,516 missing); 2 audio files match no row"
    assert sorted(p.name for p in source.unmatched) == sorted([f"{data.musiccaps_table()[2]['ytid']}_0_10.wav",
                                                              "hello.wav"])
    item = next(i for i in source if i.id == picked[2]["ytid"])
    assert item.path.suffix == ".flac" and item.caption == picked[2]["caption"]
    assert item.attributes["aspect_list"] == picked[2]["aspect_list"] and item.attributes["start_s"] == 230
    assert "caption" not in item.attributes
    train, evals = data.musiccaps(root, split="train"), data.musiccaps(root, split="eval")
    assert sorted(i.id for i in train + evals) == sorted(i.id for i in source)
    assert all(i.attributes["is_audioset_eval"] for i in evals)
    assert not any(i.attributes["is_audioset_eval"] for i in train)
    assert train.total + evals.total == 5521 and evals.total == 2858
    assert evals.summary().startswith(f"MusicCaps (eval split): {len(evals)} of 2,858 clips found")
    with pytest.raises(ValueError, match="split"):
        data.musiccaps(root, split="test")


# -- prepare -----------------------------------------------------------------
def write_messy_folder(root: Path, clips, rng) -> tuple[list[str], dict[str, str]]:
    """Six good clips (one a stereo flac, one a few samples short of 3 s) and one of each bad input."""
    good = {}
    for k in range(4):
        good[f"good{k}.wav"] = (clips[k], CAPTIONS[k])
    stereo = np.stack([clips[4], clips[5]])
    sf.write(root / "stereo.flac", stereo.T, SR)
    good["stereo.flac"] = (None, CAPTIONS[4])
    good["nearly.wav"] = (clips[6][: int(SECONDS * SR) - 100], CAPTIONS[6])  # within one hop: kept, padded
    for name, (wave, _) in good.items():
        if wave is not None:
            save_wav(root / name, wave, SR)
    bad = {
        "corrupt.wav": "unreadable", "empty.wav": "empty", "silent.wav": "silent", "nan.wav": "non_finite",
        "short.wav": "too_short", "song.mp3": "unsupported_format", "notes.txt": "unsupported_format",
        "uncaptioned.wav": "missing_caption", "gone.wav": "missing_file", "metadata.jsonl:3": "bad_metadata",
    }
    (root / "corrupt.wav").write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    sf.write(root / "empty.wav", np.zeros(0, np.float32), SR)
    save_wav(root / "silent.wav", np.zeros(int(3.5 * SR), np.float32), SR)
    nan = clips[7].copy()
    nan[1000:1010] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    save_wav(root / "short.wav", clips[7][: int(1.5 * SR)], SR)
    sf.write(root / "song.mp3", clips[7], SR, format="MP3")
    (root / "notes.txt").write_text("not audio")
    save_wav(root / "uncaptioned.wav", clips[7], SR)
    lines = [json.dumps({"file_name": n, "caption": c, "attributes": {"n": k}})
             for k, (n, (_, c)) in enumerate(good.items())]
    lines.insert(2, '{"file_name": "broken.wav", "caption": ')  # a truncated line (line 3)
    for name in ["corrupt.wav", "empty.wav", "silent.wav", "nan.wav", "short.wav", "song.mp3", "notes.txt", "gone.wav"]:
        lines.append(json.dumps({"file_name": name, "caption": "a caption that is fine"}))
    lines.append(json.dumps({"file_name": "uncaptioned.wav", "caption": "   "}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return list(good), bad


@pytest.fixture(scope="module")
def messy(tmp_path_factory, clips, encoder):
    """A messy folder prepared once into a cache (shards of 4)."""
    root = tmp_path_factory.mktemp("messy")
    good, bad = write_messy_folder(root, clips, np.random.default_rng(0))
    out = root / "cache"
    result = data.prepare(data.open_source(root), out, MEL, encoder, SECONDS, shard_size=4, batch_size=3,
                          progress=False)
    return root, out, good, bad, result


def test_prepare_keeps_every_good_clip_and_reports_each_bad_one(messy):
    root, out, good, bad, result = messy
    index = json.loads((out / "index.json").read_text())
    assert [e["id"] for e in index["items"]] == good
    assert [s["file"] for s in index["shards"]] == ["shard-00000.safetensors", "shard-00001.safetensors"]
    assert [s["count"] for s in index["shards"]] == [4, 2]
    report = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert {r["id"]: r["reason"] for r in report} == bad
    assert {r["id"]: r["reason"] for r in result.skipped} == bad
    assert result.kept == result.new == 6 and result.cached == 6
    summary = result.summary()
    assert summary.startswith("kept 6, skipped 10 (") and "2 unsupported format" in summary
    assert "1 shorter than 3 s" in summary and "1 silent" in summary and str(out / "skipped.jsonl") in summary
    entry = index["items"][0]
    assert entry["caption"] == CAPTIONS[0] and entry["attributes"] == {"n": 0}
    assert entry["path"] == str(root / "good0.wav")
    assert index["mel"] == replace(MEL, frames=None).to_dict() and index["seconds"] == SECONDS
    assert index["encoder"] == {"name": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384}
    assert index["frames"] == int(SECONDS * SR) // MEL.hop_length + 1 == 188
    assert not list(out.glob("*.tmp"))


def test_prepare_musiccaps_source(musiccaps_dir, tmp_path, encoder):
    root, picked = musiccaps_dir
    result = data.prepare(data.musiccaps(root), tmp_path / "cache", MEL, encoder, SECONDS, progress=False)
    assert result.kept == 4
    assert [(s["id"], s["reason"]) for s in result.skipped] == [(picked[4]["ytid"], "unsupported_format")]
    ds = data.MelDataset(tmp_path / "cache")
    by_id = {ds[i]["id"]: ds[i] for i in range(len(ds))}
    assert by_id[picked[0]["ytid"]]["caption"] == picked[0]["caption"]
    assert by_id[picked[0]["ytid"]]["attributes"]["aspect_list"] == picked[0]["aspect_list"]


class FailingEncoder:
    """The real encoder, dying on its n-th call: a job killed mid-way."""

    def __init__(self, encoder, calls: int):
        self.encoder, self.calls = encoder, calls
        self.name, self.dim = encoder.name, encoder.dim

    def __call__(self, texts):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("killed")
        return self.encoder(texts)


def cache_contents(out: Path) -> list[tuple]:
    ds = data.MelDataset(out, random_crop=False)
    return [(x["id"], x["caption"], x["mel"], x["tokens"], x["mask"], x["pooled"])
            for x in (ds[i] for i in range(len(ds)))]


def assert_same_contents(a: list[tuple], b: list[tuple]) -> None:
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for x, y in zip(a, b):
        for s, t in zip(x[2:], y[2:]):
            assert s.shape == t.shape and torch.allclose(s.float(), t.float(), atol=2e-3)


def test_prepare_resumes_after_a_kill_and_is_idempotent(messy, encoder, tmp_path):
    root, full, good, bad, _ = messy
    items = data.open_source(root)
    out = tmp_path / "cache"
    with pytest.raises(RuntimeError, match="killed"):  # dies encoding the third batch, after two shards of 2
        data.prepare(items, out, MEL, FailingEncoder(encoder, calls=2), SECONDS, shard_size=2, batch_size=2,
                     progress=False)
    assert [e["id"] for e in json.loads((out / "index.json").read_text())["items"]] == good[:4]
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    resumed = data.prepare(items, out, MEL, encoder, SECONDS, shard_size=4, batch_size=3, progress=False)
    assert (resumed.kept, resumed.new) == (6, 2) and "4 already cached" in resumed.summary()
    assert_same_contents(cache_contents(out), cache_contents(full))
    # Again: nothing to do, nothing rewritten; the report still lists every bad input.
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")}
    again = data.prepare(items, out, MEL, encoder, SECONDS, shard_size=4, batch_size=3, progress=False)
    assert (again.kept, again.new) == (6, 0)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("shard-*")} == before
    assert {json.loads(line)["id"] for line in (out / "skipped.jsonl").read_text().splitlines()} == set(bad)


def test_prepare_in_two_halves_gives_the_same_cache(messy, encoder, tmp_path):
    root, full, good, _, _ = messy
    items = [i for i in data.open_source(root) if i.id in good]
    out = tmp_path / "halves"
    data.prepare(items[:3], out, MEL, encoder, SECONDS, shard_size=4, progress=False)
    second = data.prepare(items, out, MEL, encoder, SECONDS, shard_size=4, progress=False)
    assert second.new == 3
    assert_same_contents(cache_contents(out), cache_contents(full))


def test_a_different_config_is_an_error_naming_the_field(messy, encoder, tmp_path):
    root, full, _, _, _ = messy
    out = tmp_path / "cache"
    shutil.copytree(full, out)
    items = data.open_source(root)
    with pytest.raises(ValueError, match=rf"cache {out} was made with mel.n_mels=32 but 16 was asked for"):
        data.prepare(items, out, replace(MEL, n_mels=16), encoder, SECONDS, progress=False)
    with pytest.raises(ValueError, match=r"seconds=3.0 but 2.5"):
        data.prepare(items, out, MEL, encoder, 2.5, progress=False)
    other = FailingEncoder(encoder, calls=0)
    other.name = "google/flan-t5-base"
    with pytest.raises(ValueError, match="encoder='sentence-transformers/all-MiniLM-L6-v2' but 'google/flan-t5-base'"):
        data.prepare(items, out, MEL, other, SECONDS, progress=False)
    # frames is not a cache property: the dataset crops
    data.prepare(items, out, replace(MEL, frames=64), encoder, SECONDS, progress=False)
    with pytest.raises(ValueError, match=r"mel.hop_length=256 but 512"):
        data.MelDataset(out, expect_mel=replace(MEL, hop_length=512))
    with pytest.raises(ValueError, match="encoder="):
        data.MelDataset(out, expect_encoder="laion/clap-htsat-unfused")
    with pytest.raises(ValueError, match=r"holds 188 frames per clip .* frames=400 needs clips of at least 6.38 s"):
        data.MelDataset(out, frames=400)
    with pytest.raises(ValueError, match=r"frames=198 needs"):  # 10 missing of 198 is more than 5%
        data.MelDataset(out, frames=198)


def test_a_few_missing_frames_are_padded_with_silence(messy):
    """The report's case: 10 s at 10 kHz, hop 512 gives 196 frames, and it padded to 200."""
    _, out, _, _, _ = messy
    exact, padded = data.MelDataset(out), data.MelDataset(out, frames=192)
    a, b = exact[2]["mel"], padded[2]["mel"]
    assert b.shape == (1, a.shape[1], 192)
    assert torch.equal(b[..., :188], a) and torch.all(b[..., 188:] == -1.0)


# -- MelDataset and collate --------------------------------------------------
def test_dataset_items_are_the_encoded_clips(messy, clips, encoder):
    _, out, good, _, _ = messy
    ds = data.MelDataset(out, expect_mel=MEL, expect_encoder=encoder.name)
    assert len(ds) == 6 and ds.encoder_name == encoder.name and ds.text_dim == 384
    assert ds.mel_config == replace(MEL, frames=188)
    codec = MelCodec(MEL)
    n = int(SECONDS * SR)
    for k in range(4):  # good0..3 are clips[0..3]
        item = ds[k]
        assert item["id"] == good[k] and item["caption"] == CAPTIONS[k]
        assert item["mel"].shape == (1, 32, 188) and item["mel"].dtype == torch.float32
        # the wav on disk is 16-bit, so encode what was written, not the float render
        wave, _ = sf.read(out.parent / good[k], dtype="float32")
        expected = codec.encode(torch.from_numpy(wave[:n]))[0]
        assert (item["mel"] - expected).abs().max() < 1e-3
        cond = encoder([CAPTIONS[k]])
        length = int(cond.mask.sum())
        assert item["tokens"].shape == (length, 384) and item["mask"].shape == (length,) and item["mask"].all()
        assert (item["tokens"] - cond.tokens[0, :length]).abs().max() < 1e-2
        assert torch.allclose(item["pooled"], cond.pooled[0], atol=1e-6)
    # the stereo flac is mixed to mono; the nearly-3-s clip is padded with silence at the end
    stereo, nearly = ds[4], ds[5]
    mixed = sf.read(out.parent / "stereo.flac", dtype="float32")[0].mean(axis=1)
    assert (stereo["mel"] - codec.encode(torch.from_numpy(mixed[:n]))[0]).abs().max() < 2e-3
    short = sf.read(out.parent / "nearly.wav", dtype="float32")[0]
    assert len(short) == n - 100
    padded = codec.encode(torch.from_numpy(np.pad(short, (0, 100))))[0]
    assert nearly["mel"].shape == (1, 32, 188) and (nearly["mel"] - padded).abs().max() < 1e-3


def test_random_crops_are_deterministic(messy):
    _, out, _, _, _ = messy
    full = data.MelDataset(out, random_crop=False)
    ds = data.MelDataset(out, frames=64, seed=3)
    starts = [ds.crop_start(i) for i in range(len(ds))]
    assert len(set(starts)) > 1 and all(0 <= s <= 188 - 64 for s in starts)
    for i in range(len(ds)):
        crop = ds[i]["mel"]
        assert crop.shape == (1, 32, 64)
        assert torch.equal(crop, full[i]["mel"][..., starts[i]: starts[i] + 64])
    assert starts == [data.MelDataset(out, frames=64, seed=3).crop_start(i) for i in range(len(ds))]
    assert starts != [data.MelDataset(out, frames=64, seed=4).crop_start(i) for i in range(len(ds))]
    ds.set_epoch(1)
    assert starts != [ds.crop_start(i) for i in range(len(ds))]
    fixed = data.MelDataset(out, frames=64, random_crop=False)
    assert torch.equal(fixed[2]["mel"], full[2]["mel"][..., :64])


def test_collate_pads_tokens_and_masks(messy, encoder):
    _, out, _, _, _ = messy
    ds = data.MelDataset(out, frames=64)
    items = [ds[i] for i in range(len(ds))]
    lengths = [x["tokens"].shape[0] for x in items]
    assert len(set(lengths)) > 2  # captions of different lengths, so padding is exercised
    loader = torch.utils.data.DataLoader(ds, batch_size=6, shuffle=False, collate_fn=data.collate)
    batch = next(iter(loader))
    text = batch["text"]
    assert isinstance(text, TextCondition)
    assert batch["mel"].shape == (6, 1, 32, 64)
    assert text.tokens.shape == (6, max(lengths), 384) and text.pooled.shape == (6, 384)
    assert text.mask.sum(1).tolist() == lengths
    for k, n in enumerate(lengths):
        assert torch.equal(text.tokens[k, :n], items[k]["tokens"]) and not text.tokens[k, n:].any()
    assert batch["captions"] == [x["caption"] for x in items] and batch["ids"] == [x["id"] for x in items]
    assert batch["attributes"][0] == {"n": 0}
    # round trip: the batch's condition is what the encoder gives for those captions (to float16 precision)
    direct = encoder(batch["captions"])
    assert torch.equal(direct.mask, text.mask)
    assert (direct.tokens - text.tokens).abs().max() < 1e-2
    assert torch.allclose(direct.pooled, text.pooled, atol=1e-6)
