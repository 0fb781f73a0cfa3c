"""The built-in dataset: real, deterministic General MIDI music whose captions say what it plays."""
from __future__ import annotations

import json
import re
from collections import Counter

import librosa
import numpy as np
import pretty_midi
import pytest
import soundfile as sf

from musicdiff_lib import synth
from musicdiff_lib.synth import demo_clip, demo_song, render_midi, soundfont_path

SR = 16000


def test_soundfont_ships_with_pretty_midi():
    path = soundfont_path()
    assert path.name == "TimGM6mb.sf2" and path.stat().st_size > 1_000_000


def test_demo_clip_is_deterministic_music():
    a, b = demo_clip(3.0, 16000, seed=4), demo_clip(3.0, 16000, seed=4)
    assert a.shape == (48000,) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.max(np.abs(a)) == pytest.approx(0.95, abs=1e-6)
    assert not np.array_equal(a, demo_clip(3.0, 16000, seed=5))


def test_instrument_and_drums_change_the_sound():
    base = demo_clip(3.0, 16000, seed=0)
    assert np.sqrt(np.mean((base - demo_clip(3.0, 16000, seed=0, lead_program=56)) ** 2)) > 0.01
    no_drums = demo_clip(3.0, 16000, seed=0, drums=False)
    assert np.sqrt(np.mean((base - no_drums) ** 2)) > 0.01
    assert all(not inst.is_drum for inst in demo_song(3.0, drums=False).instruments)


def test_render_midi_plays_a_single_note_at_its_pitch():
    midi = pretty_midi.PrettyMIDI()
    flute = pretty_midi.Instrument(program=73)
    flute.notes.append(pretty_midi.Note(100, 69, 0.1, 0.9))  # A4 = 440 Hz
    midi.instruments.append(flute)
    wave = render_midi(midi, 16000, duration=1.0)
    assert wave.shape == (16000,)
    assert np.max(np.abs(wave[:1000])) < 1e-4  # silence before the note starts at 0.1 s
    spectrum = np.abs(np.fft.rfft(wave[2000:14000]))
    assert abs(np.argmax(spectrum) * 16000 / 12000 - 440) < 3


def test_cached_soundfont_renders_exactly_like_a_fresh_load():
    """The per-thread cached synth is reset between renders: same samples as loading the .sf2 each time."""
    midis = [synth.compose(synth.sample_attributes(3, i), 3.0, seed=[3, i, 1]) for i in range(6)]
    midis.append(demo_song(3.0, seed=1, lead_program=19))
    fresh = [render_midi(m, SR, duration=3.0, cache=False) for m in midis]
    for k in (6, 2, 0, 5, 1, 4, 3, 2):  # any order, after any other clip (long pad tails included)
        assert np.array_equal(render_midi(midis[k], SR, duration=3.0), fresh[k])
    assert np.array_equal(render_midi(midis[0], SR), render_midi(midis[0], SR, cache=False))  # default tail


# -- the vocabulary and sampling --------------------------------------------------------------
def test_vocabulary_is_what_the_issue_asks_for():
    A = synth.ATTRIBUTES
    assert {"piano", "strings", "organ", "guitar", "brass", "flute", "reed", "synth_lead", "mallets"} <= set(A["lead"])
    assert set(A["texture"]) == {"chords", "arpeggio", "bass", "none"}
    assert A["tempo"] == ("slow", "medium", "fast") and A["mode"] == ("major", "minor")
    assert "none" in A["drums"] and len(A["drums"]) >= 3
    assert set(A["register"]) == {"low", "middle", "high"} and set(A["dynamics"]) == {"soft", "medium", "loud"}
    assert set(A["metre"]) == {"4/4", "3/4"}
    (s0, s1), (m0, m1), (f0, f1) = (synth.TEMPO_BPM[t] for t in A["tempo"])
    assert s0 < s1 < m0 < m1 < f0 < f1  # disjoint ranges, so bpm alone tells the tempo class
    assert set(synth.DRUM_PATTERNS) == {(d, m) for d in A["drums"] if d != "none" for m in A["metre"]}
    # every GM program used is a real preset of the SoundFont
    import tinysoundfont

    sf2 = tinysoundfont.Synth(samplerate=SR)
    sfid = sf2.sfload(str(soundfont_path()))
    programs = [p for family in synth.LEAD_INSTRUMENTS.values() for p, _ in family]
    programs += [p for acc in synth.ACCOMPANIMENT.values() for p, _ in acc]
    assert all(sf2.sfpreset_name(sfid, 0, p) for p in programs)
    assert all(len(family) >= 3 for family in synth.LEAD_INSTRUMENTS.values())


def test_sample_attributes_is_deterministic_and_covers_every_value():
    sets = [synth.sample_attributes(11, i) for i in range(400)]
    assert sets[17] == synth.sample_attributes(11, 17) and sets[17] != synth.sample_attributes(12, 17)
    for name, values in synth.ATTRIBUTES.items():
        counts = Counter(a[name] for a in sets)
        expected = 400 / len(values)
        assert set(counts) == set(values), name
        assert all(0.6 * expected < counts[v] < 1.4 * expected for v in values), (name, counts)  # ~uniform
    for a in sets:
        lo, hi = synth.TEMPO_BPM[a["tempo"]]
        assert lo <= a["bpm"] <= hi and a["key"] == f"{a['tonic']} {a['mode']}"
        assert (a["program"], a["instrument"]) in synth.LEAD_INSTRUMENTS[a["lead"]]
        assert (a["accompaniment"] is None) == (a["texture"] == "none")
    assert len({a["tonic"] for a in sets}) == 12
    # an override changes that attribute (and what follows from it), nothing else
    base, fast = synth.sample_attributes(11, 3), synth.sample_attributes(11, 3, tempo="fast", lead="organ")
    changed = {k for k in base if base[k] != fast[k]}
    assert fast["tempo"] == "fast" and fast["lead"] == "organ"
    assert changed <= {"tempo", "bpm", "lead", "program", "instrument"}
    with pytest.raises(ValueError, match="'tempo' must be one of"):
        synth.sample_attributes(0, 0, tempo="presto")
    with pytest.raises(ValueError, match="index must be a non-negative integer"):
        synth.sample_attributes(0, -1)


# -- captions -----------------------------------------------------------------------------
# Keyword rules written independently of the phrase tables: for every attribute, the
# caption must match the rule of its value and of no other value.
RULES = {
    "lead": {"piano": r"piano", "strings": r"violin|viola|cello|string section", "organ": r"organ",
             "guitar": r"guitar", "brass": r"trumpet|trombone|french horn|brass", "flute": r"flute|piccolo|recorder",
             "reed": r"saxophone|oboe|clarinet", "synth_lead": r"synth", "mallets":
             r"vibraphone|marimba|xylophone|glockenspiel|celesta"},
    "texture": {"chords": r"\bchords?\b", "arpeggio": r"arpeggi", "bass": r"bass line",
                "none": r"unaccompanied|no accompaniment|without (any )?accompaniment"},
    "tempo": {"slow": r"\bslow|unhurried|leisurely",
              "medium": r"mid-tempo|moderate(ly)? (tempo|pace|paced)|medium(-paced| tempo| pace)|walking pace|"
                        r"tempo is (moderate|medium)",
              "fast": r"\bfast|quick|brisk|up-tempo|lively"},
    "mode": {"major": r"major|happy|cheerful|joyful|uplifting", "minor": r"minor|melanchol|\bsad\b|wistful|sombre"},
    "drums": {"none": r"\bno (drums|percussion)\b|without any percussion", "rock": r"\brock\b",
              "dance": r"\bdance\b|disco", "shuffle": r"shuffle|swung|swing"},
    "register": {"low": r"\blow\b|\bdeep\b", "middle": r"middle|mid-range", "high": r"\bhigh|upper|soaring"},
    "dynamics": {"soft": r"\bsoft|gentl|quiet|delicate", "medium": r"mezzo-forte|moderate (in )?volume|medium volume",
                 "loud": r"\bloud|forceful|powerful|punchy"},
    "metre": {"4/4": r"4/4|common time|common-time", "3/4": r"3/4|waltz|triple time"},
}


def recovered(text: str, name: str) -> list[str]:
    return [value for value, rule in RULES[name].items() if re.search(rule, text, re.IGNORECASE)]


def test_captions_state_every_attribute_faithfully():
    for i in range(300):
        a = synth.sample_attributes(5, i)
        text = synth.caption(a, seed=[5, i, 2])
        for name in synth.ATTRIBUTES:
            assert recovered(text, name) == [a[name]], (name, a[name], text)
    # every template, explicitly, with several attribute sets
    for t in range(len(synth.CAPTION_TEMPLATES)):
        for i in range(6):
            a = synth.sample_attributes(t, i)
            text = synth.caption(a, seed=i, template=t)
            assert "{" not in text and "  " not in text and text[0].isupper() and text.endswith("."), text
            for name in synth.ATTRIBUTES:
                assert recovered(text, name) == [a[name]], (t, name, a[name], text)


def test_captions_vary_in_wording_and_order():
    assert len(synth.CAPTION_TEMPLATES) >= 30
    texts, lead_positions, first_words = [], Counter(), Counter()
    for i in range(300):
        a = synth.sample_attributes(9, i)
        text = synth.caption(a, seed=[9, i, 2])
        texts.append(text)
        words = text.lower().split()
        lead_word = a["instrument"].lower().split()[-1]
        lead_positions[next(k for k, w in enumerate(words) if w.strip(",.:;()") == lead_word)] += 1
        first_words[words[0]] += 1
    assert len(set(texts)) == len(texts)
    assert len(lead_positions) >= 10 and max(lead_positions.values()) < 0.3 * len(texts)  # no fixed slot
    assert len(first_words) >= 8
    # the same attributes get different captions from different seeds
    a = synth.sample_attributes(9, 0)
    assert len({synth.caption(a, seed=s) for s in range(20)}) >= 15
    assert synth.caption(a, seed=3) == synth.caption(a, seed=3)


# -- composition and audio ----------------------------------------------------------------------
def render(i: int, seconds: float = 4.0, **fixed) -> np.ndarray:
    return synth.render_clip(synth.sample_attributes(7, i, **fixed), seconds, SR, seed=[7, i, 1])


def test_synth_clip_is_deterministic_and_exactly_seconds_long():
    a, b = synth.synth_clip(4, seed=2, seconds=3.0), synth.synth_clip(4, seed=2, seconds=3.0)
    assert a.wave.shape == (48000,) and a.wave.dtype == np.float32 and a.sample_rate == SR
    assert np.array_equal(a.wave, b.wave) and a.caption == b.caption and a.attributes == b.attributes
    assert (a.seed, a.index, a.source) == (2, 4, "procedural")
    assert 0.01 < np.max(np.abs(a.wave)) <= 0.95 + 1e-6
    c = synth.synth_clip(5, seed=2, seconds=3.0)
    assert not np.array_equal(a.wave, c.wave) and a.caption != c.caption
    assert synth.synth_clip(4, seed=2, seconds=2.5, sample_rate=22050).wave.shape == (55125,)


def test_composition_follows_key_metre_and_texture():
    for i in range(12):
        a = synth.sample_attributes(8, i)
        midi = synth.compose(a, 8.0, seed=i)
        tonic = synth.TONICS.index(a["tonic"])
        scale = {(tonic + s) % 12 for s in synth.SCALES[a["mode"]]}
        pitched = [n for inst in midi.instruments if not inst.is_drum for n in inst.notes]
        assert {n.pitch % 12 for n in pitched} <= scale  # every note is in the key
        assert all(0 <= n.start < n.end <= 8.0 for inst in midi.instruments for n in inst.notes)
        assert midi.time_signature_changes[0].numerator == int(a["metre"][0])
        assert midi.get_tempo_changes()[1][0] == pytest.approx(a["bpm"])
        names = {inst.name for inst in midi.instruments}
        assert ("drums" in names) == (a["drums"] != "none")
        assert len(midi.instruments) == 1 + (a["texture"] != "none") + (a["drums"] != "none")
        lead = midi.instruments[0]
        assert lead.program == a["program"] and len(lead.notes) >= 8
    # major and minor differ by the third: every progression starts on the tonic triad
    for mode, third, other in (("major", 4, 3), ("minor", 3, 4)):
        midi = synth.compose(synth.sample_attributes(8, 0, mode=mode, tonic="C", texture="chords"), 8.0, seed=0)
        classes = {n.pitch % 12 for inst in midi.instruments for n in inst.notes}
        assert third in classes and other not in classes
    # an arpeggio plays more, shorter accompaniment notes than block chords
    chords = synth.compose(synth.sample_attributes(8, 1, texture="chords"), 8.0, seed=1).instruments[1]
    arpeggio = synth.compose(synth.sample_attributes(8, 1, texture="arpeggio"), 8.0, seed=1).instruments[1]
    assert len(arpeggio.notes) > 1.3 * len(chords.notes)
    assert np.mean([n.end - n.start for n in arpeggio.notes]) < 0.5 * np.mean([n.end - n.start for n in chords.notes])


def test_tempo_is_audible_as_onset_rate():
    ratios = []
    for i in range(3):
        slow, fast = (render(i, tempo=t, texture="none", drums="rock") for t in ("slow", "fast"))
        rate = [len(librosa.onset.onset_detect(y=w, sr=SR)) for w in (slow, fast)]
        ratios.append(rate[1] / rate[0])
    assert min(ratios) > 1.2 and np.mean(ratios) > 1.4, ratios  # bpm ranges are ~2x apart


def test_drums_are_audible_as_percussive_energy():
    for i in range(3):
        share = []
        for drums in ("none", "rock", "dance"):
            wave = render(i, drums=drums)
            _, percussive = librosa.effects.hpss(wave)
            share.append(np.sqrt(np.mean(percussive ** 2) / np.mean(wave ** 2)))
        assert share[1] > 1.2 * share[0] and share[2] > 1.2 * share[0], share


def test_register_is_audible_as_pitch_and_brightness():
    f0_ratios, centroid_ratios = [], []
    for i in range(4):
        low, high = (render(i, register=r, texture="none", drums="none") for r in ("low", "high"))
        f0 = [np.nanmedian(librosa.yin(w, fmin=60, fmax=2000, sr=SR)) for w in (low, high)]
        centroid = [np.median(librosa.feature.spectral_centroid(y=w, sr=SR)) for w in (low, high)]
        f0_ratios.append(f0[1] / f0[0])
        centroid_ratios.append(centroid[1] / centroid[0])
    assert min(f0_ratios) > 2.0, f0_ratios  # the registers are two octaves apart
    assert np.mean(centroid_ratios) > 1.5, centroid_ratios  # and sound brighter (timbre aside)


def test_dynamics_are_audible_as_level():
    for i in range(4):
        soft, medium, loud = (np.sqrt(np.mean(render(i, dynamics=d) ** 2)) for d in ("soft", "medium", "loud"))
        assert soft < 0.75 * medium and medium < 0.85 * loud, (soft, medium, loud)


def test_texture_is_audible_in_the_accompaniment_bands():
    """The lead sits high; block chords and arpeggios fill 120-400 Hz, a bass line fills below 120 Hz."""
    def band_share(wave, lo, hi):
        power = np.abs(librosa.stft(wave, n_fft=2048)) ** 2
        freqs = librosa.fft_frequencies(sr=SR, n_fft=2048)
        return power[(freqs >= lo) & (freqs < hi)].sum() / power.sum()

    for i in range(4):
        waves = {t: render(i, texture=t, drums="none", register="high") for t in synth.ATTRIBUTES["texture"]}
        mid = {t: band_share(w, 120, 400) for t, w in waves.items()}
        low = {t: band_share(w, 0, 120) for t, w in waves.items()}
        assert mid["chords"] > mid["none"] + 0.03 and mid["arpeggio"] > mid["none"] + 0.03, mid
        assert low["bass"] > 3 * max(low["none"], low["chords"], low["arpeggio"]) and low["bass"] > 0.01, low


# -- the music21 corpus -----------------------------------------------------------------------
def test_corpus_lists_chorales_and_folk_tunes():
    pieces = synth.corpus_pieces()
    assert len(pieces["chorale"]) > 300 and len(pieces["folk"]) > 1000
    assert {p.collection for p in pieces["folk"]} == {"essen", "oneills", "ryans"}
    assert all(p.path.startswith("bach/bwv") for p in pieces["chorale"])


@pytest.fixture(scope="module")
def corpus_clips():
    """One chorale and one folk tune (the first of each kind among indexes of seed 0)."""
    found = {}
    for i in range(10):
        clip = synth.corpus_clip(i, seed=0, seconds=4.0)
        found.setdefault(clip.attributes["collection"] == "bach", clip)
        if len(found) == 2:
            return found[True], found[False]
    raise AssertionError("seed 0 gave no chorale or no folk tune in 10 clips")


def test_corpus_clips_are_real_music_captioned_from_metadata(corpus_clips):
    chorale, folk = corpus_clips
    for clip in corpus_clips:
        a = clip.attributes
        assert clip.source == a["source"] == "corpus" and clip.wave.shape == (4 * SR,)
        assert 0.005 < np.max(np.abs(clip.wave)) <= 0.95 + 1e-6
        assert a["key"] in clip.caption and a["mode"] in ("major", "minor") and a["drums"] == "none"
        assert recovered(clip.caption, "lead") == [a["lead"]]
        assert recovered(clip.caption, "tempo") == [a["tempo"]]
        assert recovered(clip.caption, "dynamics") == [a["dynamics"]]
        assert recovered(clip.caption, "drums") == ["none"]
        # the audio is in the analysed key: its strongest pitch classes belong to the scale
        tonic = librosa.note_to_midi(a["tonic"].replace("b", "♭") + "4") % 12
        scale = {(tonic + s) % 12 for s in synth.SCALES[a["mode"]]}
        chroma = librosa.feature.chroma_stft(y=clip.wave, sr=SR).mean(axis=1)
        assert set(np.argsort(chroma)[-4:].tolist()) <= scale, (a["key"], chroma.round(2))
    assert "J.S. Bach" in chorale.caption and chorale.attributes["texture"] == "chords"
    assert chorale.attributes["parts"] >= 4 and recovered(chorale.caption, "texture") == ["chords"]
    assert folk.attributes["texture"] == "none" and recovered(folk.caption, "texture") == ["none"]
    again = synth.corpus_clip(chorale.index, seed=0, seconds=4.0)
    assert np.array_equal(again.wave, chorale.wave) and again.caption == chorale.caption


# -- write_dataset ------------------------------------------------------------------------------
def wav_bytes(root) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((root / "clips").glob("*.wav"))}


def test_write_dataset_writes_resumes_and_extends(tmp_path):
    out = tmp_path / "ds"
    summary = synth.write_dataset(out, 6, seed=3, seconds=2.0, source="mixed", workers=2, progress=False)
    assert summary["written"] == 6 and summary["skipped_existing"] == 0 and not summary["failed"]
    assert summary["clips_per_second"] > 0
    lines = (out / "metadata.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["index"] for r in records] == list(range(6))
    assert [r["source"] for r in records] == ["procedural"] * 3 + ["corpus"] + ["procedural"] * 2
    for r in records:
        assert set(r) == {"file_name", "caption", "attributes", "seed", "index", "source"}
        assert r["file_name"] == f"clips/{r['index']:06d}.wav" and r["seed"] == 3
        wave, rate = sf.read(out / r["file_name"], dtype="float32")
        assert rate == SR and wave.shape == (2 * SR,)
    clip = synth.synth_clip(1, seed=3, seconds=2.0)  # the file is that clip, as 16-bit PCM
    assert np.max(np.abs(sf.read(out / "clips/000001.wav", dtype="float32")[0] - clip.wave)) < 1.5 / 32768
    assert records[1]["caption"] == clip.caption and records[1]["attributes"] == clip.attributes
    assert json.loads((out / "dataset.json").read_text())["sample_rate"] == SR
    before = wav_bytes(out)

    # a killed run: a wav lost, the metadata's last line cut in half
    (out / "clips/000002.wav").unlink()
    (out / "metadata.jsonl").write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    summary = synth.write_dataset(out, 6, seed=3, seconds=2.0, source="mixed", workers=2, progress=False)
    assert summary["written"] == 2 and summary["skipped_existing"] == 4  # clips 2 and 5
    assert summary["unreadable_metadata_lines"] == 1
    assert wav_bytes(out) == before
    assert (out / "metadata.jsonl").read_text().splitlines() == lines

    # a larger n extends; the same n again does nothing
    summary = synth.write_dataset(out, 8, seed=3, seconds=2.0, source="mixed", workers=1, progress=False)
    assert summary["written"] == 2 and summary["skipped_existing"] == 6
    assert synth.write_dataset(out, 8, seed=3, seconds=2.0, source="mixed", progress=False)["written"] == 0
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 8

    # other settings in the same folder are an error naming the field
    with pytest.raises(ValueError, match="seconds is 2.0 in this folder but 3.0"):
        synth.write_dataset(out, 8, seed=3, seconds=3.0, source="mixed", progress=False)
    with pytest.raises(ValueError, match="source is 'mixed'"):
        synth.write_dataset(out, 8, seed=3, seconds=2.0, source="procedural", progress=False)
    with pytest.raises(ValueError, match="source must be one of"):
        synth.write_dataset(tmp_path / "other", 2, source="midi", progress=False)


def test_write_dataset_skips_a_failing_clip_and_keeps_the_rest(tmp_path, monkeypatch):
    real = synth.make_clip

    def flaky(index, *args, **kwargs):
        if index == 1:
            raise RuntimeError("boom")
        return real(index, *args, **kwargs)

    monkeypatch.setattr(synth, "make_clip", flaky)
    summary = synth.write_dataset(tmp_path, 3, seconds=1.0, workers=1, progress=False)
    assert summary["written"] == 2 and [f["index"] for f in summary["failed"]] == [1]
    assert "RuntimeError: boom" in summary["failed"][0]["error"]
    monkeypatch.setattr(synth, "make_clip", real)
    summary = synth.write_dataset(tmp_path, 3, seconds=1.0, workers=1, progress=False)
    assert summary["written"] == 1 and summary["skipped_existing"] == 2
    assert [json.loads(x)["index"] for x in (tmp_path / "metadata.jsonl").read_text().splitlines()] == [0, 1, 2]
