"""The built-in captioned music dataset: compose with pretty_midi, render with a SoundFont.

Chapter: ``02_dataset``; the first chapters use :func:`demo_clip` as their real
music audio. Rendering uses the General MIDI SoundFont that ships inside
``pretty_midi`` (``TimGM6mb.sf2``) through ``tinysoundfont``, so nothing is
downloaded.

Two sources of captioned clips, both deterministic given ``(seed, index)``:

* **procedural** (:func:`synth_clip`): :func:`sample_attributes` draws a lead
  instrument, texture, tempo, mode, drums, register, dynamics and metre;
  :func:`compose` writes music that follows them (a chord progression in the
  key, a melody, accompaniment, drums) and :func:`render_clip` renders it;
  :func:`caption` states every attribute in words, through one of
  :data:`CAPTION_TEMPLATES`.
* **corpus** (:func:`corpus_clip`): Bach chorales and folk tunes from the
  ``music21`` corpus (shipped in its wheel), played by a chosen instrument at a
  chosen tempo and captioned from their metadata.

:func:`write_dataset` renders either (or a mix) into ``clips/NNNNNN.wav`` plus
``metadata.jsonl`` on all cores, and resumes where a killed run stopped.
"""
from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pretty_midi

from .config import write_text_atomic

DRUM_CHANNEL = 9
_CHORDS_MAJOR = [(0, 4, 7), (9, 12, 16), (5, 9, 12), (7, 11, 14)]  # I vi IV V
_SCALE_MAJOR = [0, 2, 4, 5, 7, 9, 11]


def soundfont_path() -> Path:
    """Path of the General MIDI SoundFont shipped inside ``pretty_midi``."""
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.exists():
        raise FileNotFoundError(f"{path}: pretty_midi's SoundFont is missing; reinstall pretty_midi")
    return path


def _tinysoundfont():
    try:
        import tinysoundfont
    except ImportError:  # its only dependency, pyaudio, is for live playback
        raise ImportError("rendering needs tinysoundfont: pip install --no-deps tinysoundfont") from None
    return tinysoundfont


# One loaded SoundFont per thread and (sample rate, gain): loading the .sf2 costs
# ~15 ms, a third of rendering a 10 s clip. Per thread because a tinysoundfont
# synth is not safe to share; worker processes each get their own module state.
_SYNTHS = threading.local()


def _synth(sample_rate: int, gain_db: float, cache: bool):
    if cache:
        synths = getattr(_SYNTHS, "by_key", None)
        if synths is None:
            synths = _SYNTHS.by_key = {}
        key = (int(sample_rate), float(gain_db))
        if key in synths:
            return synths[key]
    tsf = _tinysoundfont()
    synth = tsf.Synth(samplerate=sample_rate, gain=gain_db)
    entry = (synth, synth.sfload(str(soundfont_path())))
    if cache:
        synths[key] = entry
    return entry


def _silence(synth, sample_rate: int) -> None:
    """Return a used synth to its freshly loaded state (no voices, default channels).

    ``reset`` ends every voice with a 10 ms fast release and drops the channel
    settings; rendering 50 ms then lets those voices finish, so the next render
    allocates voices in the same order as a new synth and is bit-identical.
    """
    for soundfont in synth.soundfonts.values():
        soundfont.reset()
    synth.generate(int(0.05 * sample_rate))


def render_midi(midi: pretty_midi.PrettyMIDI, sample_rate: int = 16000,
                duration: float | None = None, gain_db: float = 0.0, cache: bool = True) -> np.ndarray:
    """Render every instrument of ``midi`` with the SoundFont → mono float32 ``(samples,)``.

    ``duration`` (seconds) defaults to the end of the last note plus one second
    of release tail. Deterministic: the same MIDI gives the same samples.
    ``cache`` reuses this thread's loaded SoundFont (reset between renders; the
    output is identical to a fresh load, only faster).
    """
    synth, sfid = _synth(sample_rate, gain_db, cache)
    events: list[tuple[int, int, int, int, int]] = []  # (sample, order, channel, key, velocity)
    melodic = [i for i in midi.instruments if not i.is_drum]
    if len(melodic) > 15:
        raise ValueError(f"at most 15 melodic instruments fit the 16 MIDI channels, got {len(melodic)}")
    channel_of = {}
    for number, inst in enumerate(melodic):
        channel_of[id(inst)] = number if number < DRUM_CHANNEL else number + 1
    try:
        for inst in midi.instruments:
            channel = DRUM_CHANNEL if inst.is_drum else channel_of[id(inst)]
            synth.program_select(channel, sfid, 128 if inst.is_drum else 0, 0 if inst.is_drum else inst.program,
                                 is_drums=inst.is_drum)
            for note in inst.notes:
                start = int(round(note.start * sample_rate))
                end = max(start + 1, int(round(note.end * sample_rate)))
                events.append((start, 1, channel, note.pitch, note.velocity))
                events.append((end, 0, channel, note.pitch, 0))  # note-offs sort before note-ons
        if duration is None:
            duration = midi.get_end_time() + 1.0
        total = int(round(duration * sample_rate))
        events.sort()
        out = np.zeros((total, 2), dtype=np.float32)
        buffer = memoryview(out).cast("B")  # synth.generate writes straight into ``out``
        frame = 8  # bytes per stereo float32 frame
        position = 0
        for sample, _, channel, key, velocity in events:
            if sample >= total:
                break
            if sample > position:
                synth.generate(sample - position, buffer=buffer[position * frame: sample * frame])
                position = sample
            if velocity:
                synth.noteon(channel, key, velocity)
            else:
                synth.noteoff(channel, key)
        if position < total:
            synth.generate(total - position, buffer=buffer[position * frame:])
    finally:
        if cache:
            _silence(synth, sample_rate)
    return (out[:, 0] + out[:, 1]) * np.float32(0.5)  # the mean of the channels, without a strided reduce


def demo_song(seconds: float = 10.0, seed: int = 0, lead_program: int = 0,
              tempo: float = 100.0, drums: bool = True) -> pretty_midi.PrettyMIDI:
    """A short four-chord song in C major: lead melody, string pads, bass, optional drums.

    The lead uses GM program ``lead_program`` (0 = acoustic grand piano). The
    melody is drawn from the scale with ``seed``; everything else is fixed, so
    it is real multi-instrument music with known content for tests and chapters.
    """
    rng = np.random.default_rng(seed)
    beat = 60.0 / tempo
    bars = int(np.ceil(seconds / (4 * beat)))
    lead = pretty_midi.Instrument(program=lead_program, name="lead")
    pad = pretty_midi.Instrument(program=48, name="strings")
    bass = pretty_midi.Instrument(program=33, name="bass")
    kit = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
    degree = 4
    for bar in range(bars):
        root = 60 + _CHORDS_MAJOR[bar % 4][0]
        t0 = bar * 4 * beat
        for interval in _CHORDS_MAJOR[bar % 4]:
            pad.notes.append(pretty_midi.Note(62, 48 + interval, t0, t0 + 4 * beat))
        bass.notes.append(pretty_midi.Note(90, root - 24, t0, t0 + 2 * beat))
        bass.notes.append(pretty_midi.Note(85, root - 17, t0 + 2 * beat, t0 + 4 * beat))
        for eighth in range(8):
            start = t0 + eighth * beat / 2
            if eighth % 2 == 1 and rng.random() < 0.4:
                continue  # rests make it a melody rather than a scale exercise
            degree = int(np.clip(degree + rng.integers(-2, 3), 0, 13))
            pitch = 72 + 12 * (degree // 7) + _SCALE_MAJOR[degree % 7]
            length = beat / 2 if rng.random() < 0.7 else beat
            lead.notes.append(pretty_midi.Note(int(rng.integers(80, 110)), pitch, start, start + length * 0.95))
        if drums:
            for b in range(4):
                t = t0 + b * beat
                kit.notes.append(pretty_midi.Note(100, 36 if b % 2 == 0 else 38, t, t + 0.1))  # kick, snare
                kit.notes.append(pretty_midi.Note(70, 42, t, t + 0.05))  # closed hi-hat
                kit.notes.append(pretty_midi.Note(60, 42, t + beat / 2, t + beat / 2 + 0.05))
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    midi.instruments.extend([lead, pad, bass] + ([kit] if drums else []))
    for inst in midi.instruments:
        inst.notes = [n for n in inst.notes if n.start < seconds]
        for n in inst.notes:
            n.end = min(n.end, seconds)
    return midi


def demo_clip(seconds: float = 10.0, sample_rate: int = 16000, seed: int = 0,
              lead_program: int = 0, tempo: float = 100.0, drums: bool = True) -> np.ndarray:
    """Render :func:`demo_song` to exactly ``seconds`` of mono audio, peak 0.95."""
    from .audio import peak_normalize

    wave = render_midi(demo_song(seconds, seed, lead_program, tempo, drums), sample_rate, duration=seconds)
    return peak_normalize(wave)


# == The vocabulary ==========================================================================
# Lead families → (GM program, the words a caption uses for it). The words are
# chosen so that no family's words occur in another family's or in the
# accompaniment's (no "string" in a guitar's name, no "synth" in a pad's).
LEAD_INSTRUMENTS: dict[str, tuple[tuple[int, str], ...]] = {
    "piano": ((0, "grand piano"), (1, "bright acoustic piano"), (3, "honky-tonk piano"), (4, "electric piano")),
    "strings": ((40, "violin"), (41, "viola"), (42, "cello"), (48, "string section")),
    "organ": ((16, "Hammond organ"), (17, "percussive organ"), (18, "electric organ"), (19, "church organ")),
    "guitar": ((24, "classical guitar"), (25, "acoustic guitar"), (26, "jazz guitar"), (27, "clean electric guitar")),
    "brass": ((56, "trumpet"), (57, "trombone"), (60, "French horn"), (61, "brass section")),
    "flute": ((73, "flute"), (72, "piccolo"), (74, "recorder"), (75, "pan flute")),
    "reed": ((64, "soprano saxophone"), (65, "alto saxophone"), (66, "tenor saxophone"), (68, "oboe"),
             (71, "clarinet")),
    "synth_lead": ((80, "square-wave synth lead"), (81, "sawtooth synth lead"), (82, "calliope-style synth lead"),
                   (84, "distorted synth lead")),
    "mallets": ((11, "vibraphone"), (12, "marimba"), (13, "xylophone"), (9, "glockenspiel"), (8, "celesta")),
}

ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "lead": tuple(LEAD_INSTRUMENTS),
    "texture": ("chords", "arpeggio", "bass", "none"),  # block chords / arpeggios / a bass line only / solo lead
    "tempo": ("slow", "medium", "fast"),
    "mode": ("major", "minor"),
    "drums": ("none", "rock", "dance", "shuffle"),
    "register": ("low", "middle", "high"),                # the lead's octave
    "dynamics": ("soft", "medium", "loud"),
    "metre": ("4/4", "3/4"),
}
TEMPO_BPM: dict[str, tuple[int, int]] = {"slow": (60, 80), "medium": (90, 115), "fast": (125, 160)}
VELOCITY: dict[str, tuple[int, int]] = {"soft": (28, 40), "medium": (58, 72), "loud": (108, 124)}  # ~5 dB apart
REGISTER_TONIC: dict[str, int] = {"low": 48, "middle": 62, "high": 76}  # MIDI pitch near the melody's tonic
TONICS: tuple[str, ...] = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
# Accompaniment instruments per texture (GM program, caption word).
ACCOMPANIMENT: dict[str, tuple[tuple[int, str], ...]] = {
    "chords": ((89, "warm pad"), (94, "halo pad"), (52, "choir")),
    "arpeggio": ((46, "harp"), (10, "music box")),
    "bass": ((33, "electric bass"), (32, "upright bass")),
    "none": (),
}
SCALES: dict[str, tuple[int, ...]] = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# One chord per bar, as the scale degree (0-based) of the triad's root.
PROGRESSIONS: dict[str, dict[str, tuple[int, ...]]] = {
    "major": {"I-V-vi-IV": (0, 4, 5, 3), "I-IV-V-I": (0, 3, 4, 0), "I-vi-IV-V": (0, 5, 3, 4),
              "I-vi-ii-V": (0, 5, 1, 4), "I-IV-I-V": (0, 3, 0, 4)},
    "minor": {"i-VI-III-VII": (0, 5, 2, 6), "i-iv-v-i": (0, 3, 4, 0), "i-VII-VI-VII": (0, 6, 5, 6),
              "i-iv-VII-III": (0, 3, 6, 2), "i-VI-iv-v": (0, 5, 3, 4)},
}
SOURCES = ("procedural", "corpus", "mixed")
MIXED_CORPUS_EVERY = 4  # source="mixed": every 4th clip (index % 4 == 3) comes from the corpus
LEVEL_GAIN = 0.75  # fixed output gain: soft music stays quieter than loud music (see _level)


def _rng(seed: int | Sequence[int]) -> np.random.Generator:
    return np.random.default_rng(seed)


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _check_seed(seed: int, index: int) -> None:
    for name, value in (("seed", seed), ("index", index)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


def sample_attributes(seed: int, index: int, **fixed: Any) -> dict:
    """Attributes of procedural clip ``index`` in the dataset of ``seed``: deterministic, uniform per attribute.

    Every value of every :data:`ATTRIBUTES` entry is equally likely, drawn
    independently. Extras: ``tonic``, ``key`` (e.g. "D minor"), ``bpm`` (within
    :data:`TEMPO_BPM`), ``progression``, the GM ``program`` and caption word
    ``instrument`` of the lead, and the accompaniment's. ``fixed`` overrides
    core attributes (``sample_attributes(0, 5, tempo="fast")``); the extras
    follow the override and every other draw stays as it was.
    """
    _check_seed(seed, index)
    unknown = sorted(set(fixed) - set(ATTRIBUTES) - {"tonic"})
    if unknown:
        raise ValueError(f"unknown attribute(s) {unknown}; expected some of {list(ATTRIBUTES)} or 'tonic'")
    rng = _rng([seed, index])
    # Draw everything in a fixed order, then apply overrides: an override changes nothing else.
    core = {name: _pick(rng, values) for name, values in ATTRIBUTES.items()}
    u_program, u_bpm, u_acc, u_prog = rng.random(4)
    tonic = _pick(rng, TONICS)
    for name, value in fixed.items():
        if name != "tonic" and value not in ATTRIBUTES[name]:
            raise ValueError(f"attribute {name!r} must be one of {ATTRIBUTES[name]}, got {value!r}")
        if name == "tonic" and value not in TONICS:
            raise ValueError(f"attribute 'tonic' must be one of {TONICS}, got {value!r}")
    core.update({k: v for k, v in fixed.items() if k != "tonic"})
    tonic = fixed.get("tonic", tonic)
    programs = LEAD_INSTRUMENTS[core["lead"]]
    program, instrument = programs[int(u_program * len(programs))]
    lo, hi = TEMPO_BPM[core["tempo"]]
    progressions = sorted(PROGRESSIONS[core["mode"]])
    accompaniment = ACCOMPANIMENT[core["texture"]]
    acc_program, acc_word = accompaniment[int(u_acc * len(accompaniment))] if accompaniment else (None, None)
    return {**core, "tonic": tonic, "key": f"{tonic} {core['mode']}", "bpm": int(lo + round(u_bpm * (hi - lo))),
            "progression": progressions[int(u_prog * len(progressions))], "program": int(program),
            "instrument": instrument, "accompaniment_program": acc_program, "accompaniment": acc_word,
            "source": "procedural"}


def _checked(attributes: dict) -> dict:
    """Validate core attributes and fill missing extras with fixed defaults."""
    a = dict(attributes)
    for name, values in ATTRIBUTES.items():
        if name not in a:
            raise ValueError(f"attributes need {name!r} (one of {values}); got keys {sorted(a)}")
        if a[name] not in values:
            raise ValueError(f"attribute {name!r} must be one of {values}, got {a[name]!r}")
    a.setdefault("tonic", "C")
    if a["tonic"] not in TONICS:
        raise ValueError(f"attribute 'tonic' must be one of {TONICS}, got {a['tonic']!r}")
    a.setdefault("key", f"{a['tonic']} {a['mode']}")
    a.setdefault("bpm", int(round(sum(TEMPO_BPM[a["tempo"]]) / 2)))
    a.setdefault("progression", sorted(PROGRESSIONS[a["mode"]])[0])
    if a["progression"] not in PROGRESSIONS[a["mode"]]:
        raise ValueError(f"attribute 'progression' must be one of {sorted(PROGRESSIONS[a['mode']])} "
                         f"in {a['mode']}, got {a['progression']!r}")
    program, word = LEAD_INSTRUMENTS[a["lead"]][0]
    a.setdefault("program", program)
    a.setdefault("instrument", word)
    acc = ACCOMPANIMENT[a["texture"]]
    a.setdefault("accompaniment_program", acc[0][0] if acc else None)
    a.setdefault("accompaniment", acc[0][1] if acc else None)
    return a


# == Composing ===============================================================================
# Melody rhythms, one bar each, in beats; the last bar of a 4-bar phrase uses a cadence rhythm.
_RHYTHMS = {
    4: ((1, 1, 1, 1), (0.5, 0.5, 1, 1, 1), (1, 0.5, 0.5, 1, 1), (1.5, 0.5, 1, 1), (2, 1, 1),
        (0.5, 0.5, 0.5, 0.5, 1, 1), (1, 1, 2), (1, 0.5, 0.5, 2), (0.5, 0.5, 1, 0.5, 0.5, 1)),
    3: ((1, 1, 1), (2, 1), (1, 0.5, 0.5, 1), (0.5, 0.5, 1, 1), (1.5, 0.5, 1), (0.5, 0.5, 0.5, 0.5, 1),
        (1, 2)),
}
_CADENCES = {4: ((2, 2), (1, 1, 2), (3, 1), (4,)), 3: ((3,), (2, 1), (1, 2))}
_KICK, _SNARE, _CLAP, _HAT, _OPEN_HAT, _RIDE, _CRASH = 36, 38, 39, 42, 46, 51, 49
_SWING = 2 / 3  # the swung off-beat of a shuffle, two thirds into the beat


def _eighth_hats(beats: int) -> list[tuple[float, int, float]]:
    return [(i / 2, _HAT, 0.75 if i % 2 == 0 else 0.55) for i in range(2 * beats)]


# (position in beats, GM drum key, velocity relative to the clip's) per (style, metre).
DRUM_PATTERNS: dict[tuple[str, str], tuple[tuple[float, int, float], ...]] = {
    ("rock", "4/4"): tuple([(0, _KICK, 1.0), (1, _SNARE, 0.95), (2, _KICK, 0.95), (2.5, _KICK, 0.7),
                            (3, _SNARE, 0.95)] + _eighth_hats(4)),
    ("rock", "3/4"): tuple([(0, _KICK, 1.0), (1, _SNARE, 0.85), (2, _SNARE, 0.85)] + _eighth_hats(3)),
    ("dance", "4/4"): tuple([(b, _KICK, 1.0) for b in range(4)] + [(1, _CLAP, 0.9), (3, _CLAP, 0.9)]
                            + [(b + 0.5, _OPEN_HAT, 0.7) for b in range(4)]),
    ("dance", "3/4"): tuple([(b, _KICK, 1.0) for b in range(3)] + [(1, _CLAP, 0.9)]
                            + [(b + 0.5, _OPEN_HAT, 0.7) for b in range(3)]),
    ("shuffle", "4/4"): tuple([(0, _KICK, 1.0), (2, _KICK, 0.9), (1, _SNARE, 0.9), (3, _SNARE, 0.9)]
                              + [(b + s, _RIDE, 0.7 if s == 0 else 0.5) for b in range(4) for s in (0, _SWING)]),
    ("shuffle", "3/4"): tuple([(0, _KICK, 1.0), (1, _SNARE, 0.8), (2, _SNARE, 0.8)]
                              + [(b + s, _RIDE, 0.7 if s == 0 else 0.5) for b in range(3) for s in (0, _SWING)]),
}


def _pitch_near(pc: int, low: int) -> int:
    """The pitch of pitch class ``pc`` in ``[low, low + 12)``."""
    return low + (pc - low) % 12


def _triad(scale: Sequence[int], tonic: int, degree: int) -> list[int]:
    """Pitch classes of the diatonic triad on ``degree``."""
    return [(tonic + scale[(degree + k) % 7]) % 12 for k in (0, 2, 4)]


def _velocity(base: int, scale: float, rng: np.random.Generator) -> int:
    return int(np.clip(round(base * scale + rng.integers(-4, 5)), 1, 127))


def compose(attributes: dict, seconds: float = 10.0, seed: int | Sequence[int] = 0) -> pretty_midi.PrettyMIDI:
    """Compose ``seconds`` of music that follows ``attributes`` (see :func:`sample_attributes`).

    A chord per bar from the attribute's progression in the key; a melody from
    the scale for the lead, phrased in 4-bar units, near ``REGISTER_TONIC`` of
    the register; accompaniment of the texture (held block chords, eighth-note
    arpeggios, a bass line, or nothing); drums of the style and metre;
    velocities of the dynamics; tempo ``bpm``. The clip starts at a random
    point of its first bar, as a clip cut from a longer recording would.
    ``seed`` (an int or a sequence of ints) fixes every choice.
    """
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    a = _checked(attributes)
    rng = _rng(seed)
    bpm = float(a["bpm"])
    beat = 60.0 / bpm
    per_bar = 3 if a["metre"] == "3/4" else 4
    bar_len = per_bar * beat
    offset = float(rng.uniform(0.0, bar_len))
    n_bars = int(np.ceil((seconds + offset) / bar_len)) + 1
    tonic = TONICS.index(a["tonic"])
    scale = SCALES[a["mode"]]
    progression = PROGRESSIONS[a["mode"]][a["progression"]]
    degrees = [progression[bar % len(progression)] for bar in range(n_bars)]
    vel = int(rng.integers(VELOCITY[a["dynamics"]][0], VELOCITY[a["dynamics"]][1] + 1))

    # -- melody: a walk on the scale that lands on chord tones on strong beats ---------------
    lead = pretty_midi.Instrument(program=int(a["program"]), name="lead")
    centre = REGISTER_TONIC[a["register"]]
    base = centre + (tonic - centre + 6) % 12 - 6  # the tonic nearest the register's pitch
    top = 11  # scale steps above the tonic: an octave and a fourth
    step = int(rng.integers(2, 6))
    motifs = [_pick(rng, _RHYTHMS[per_bar]) for _ in range(2)]
    for bar in range(n_bars):
        phrase_bar = bar % 4
        rhythm = (motifs[0] if phrase_bar in (0, 2) else motifs[1] if phrase_bar == 1
                  else _pick(rng, _CADENCES[per_bar]))
        chord_steps = [(degrees[bar] + k) % 7 for k in (0, 2, 4)]
        t = 0.0
        for i, length in enumerate(rhythm):
            if i > 0 and rng.random() < 0.12:
                t += length  # a rest
                continue
            if t == int(t) and (t == 0 or t == per_bar - 1 or rng.random() < 0.5):
                # a chord tone within a fourth of the last note keeps the line singable
                candidates = [s for s in range(top + 1) if s % 7 in chord_steps and abs(s - step) <= 3]
                step = _pick(rng, candidates) if candidates else step
            else:
                step = int(np.clip(step + _pick(rng, (-2, -1, -1, 0, 1, 1, 2)), 0, top))
            if phrase_bar == 3 and i == len(rhythm) - 1:
                step = _pick(rng, [s for s in (0, 7) if abs(s - step) <= 7] or [0])  # cadence on the tonic
            pitch = base + 12 * (step // 7) + scale[step % 7]
            start = (bar * per_bar + t) * beat
            accent = 1.08 if t == 0 else 1.0
            lead.notes.append(pretty_midi.Note(_velocity(vel, accent, rng), pitch, start,
                                               start + length * beat * 0.92))
            t += length

    # -- accompaniment -------------------------------------------------------------------------
    parts = [lead]
    if a["texture"] != "none":
        acc = pretty_midi.Instrument(program=int(a["accompaniment_program"]), name=a["texture"])
        parts.append(acc)
        hits = (0, 2) if per_bar == 4 and rng.random() < 0.5 else (0,)  # block chords: whole or half bars
        for bar in range(n_bars):
            pcs = _triad(scale, tonic, degrees[bar])
            t0 = bar * bar_len
            if a["texture"] == "chords":
                voicing = sorted(_pitch_near(pc, 52) for pc in pcs)  # held pads are loud: played softer
                length = bar_len / len(hits)
                for h in hits:
                    for p in voicing:
                        acc.notes.append(pretty_midi.Note(_velocity(vel, 0.65, rng), p, t0 + h * beat,
                                                          t0 + h * beat + length * 0.97))
            elif a["texture"] == "arpeggio":
                chord = sorted(_pitch_near(pc, 48) for pc in pcs)
                up = chord + [p + 12 for p in chord] + [chord[0] + 24]
                pattern = (up[:4] + up[4:1:-1] + up[1:2]) if per_bar == 4 else (up[:4] + up[2:0:-1])
                for k, p in enumerate(pattern[: 2 * per_bar]):
                    start = t0 + k * beat / 2
                    acc.notes.append(pretty_midi.Note(_velocity(vel, 0.75, rng), p, start, start + beat))
            else:  # bass line: root on the downbeat, the chord's fifth and the octave after it
                root = _pitch_near(pcs[0], 36)
                fifth = root + (pcs[2] - pcs[0]) % 12
                line = ((root, 2), (fifth, 1), (root + 12, 1)) if per_bar == 4 else ((root, 1), (fifth, 1),
                                                                                       (root + 12, 1))
                t = 0.0
                for p, length in line:
                    start = t0 + t * beat
                    acc.notes.append(pretty_midi.Note(_velocity(vel, 0.95, rng), p, start,
                                                      start + length * beat * 0.9))
                    t += length

    # -- drums ---------------------------------------------------------------------------------
    if a["drums"] != "none":
        kit = pretty_midi.Instrument(program=0, is_drum=True, name="drums")
        parts.append(kit)
        pattern = DRUM_PATTERNS[(a["drums"], a["metre"])]
        for bar in range(n_bars):
            t0 = bar * bar_len
            if bar % 4 == 0:
                kit.notes.append(pretty_midi.Note(_velocity(vel, 0.8, rng), _CRASH, t0, t0 + 0.1))
            for position, key, rel in pattern:
                start = t0 + position * beat
                kit.notes.append(pretty_midi.Note(_velocity(vel, rel, rng), key, start, start + 0.1))

    midi = pretty_midi.PrettyMIDI(initial_tempo=bpm)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(per_bar, 4, 0.0))
    midi.key_signature_changes.append(pretty_midi.KeySignature(tonic + (12 if a["mode"] == "minor" else 0), 0.0))
    for inst in parts:
        kept = []
        for note in inst.notes:  # shift by the offset and cut to [0, seconds)
            start, end = note.start - offset, min(note.end - offset, seconds)
            if end > 0 and start < seconds and not (inst.is_drum and start < 0):  # no hit from before the clip
                kept.append(pretty_midi.Note(note.velocity, note.pitch, max(start, 0.0), end))
        inst.notes = kept
        midi.instruments.append(inst)
    return midi


# == Captions ================================================================================
# Phrases per slot and value. A template names slots; each slot picks one phrase.
_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "tempo_adj": {"slow": ("slow", "unhurried", "leisurely"),
                  "medium": ("mid-tempo", "moderately paced", "medium-paced"),
                  "fast": ("fast", "quick", "brisk", "up-tempo", "lively")},
    "tempo_np": {"slow": ("a slow tempo", "an unhurried pace", "a leisurely tempo"),
                 "medium": ("a moderate tempo", "a medium tempo", "a walking pace"),
                 "fast": ("a fast tempo", "a quick pace", "a brisk tempo")},
    "tempo_sent": {"slow": ("the tempo is slow", "the pace is unhurried", "it moves at a leisurely pace"),
                   "medium": ("the tempo is moderate", "it moves at a walking pace", "the tempo is medium"),
                   "fast": ("the tempo is fast", "the pace is brisk", "it moves quickly")},
    "mode_adj": {"major": ("major-key", "happy", "cheerful", "joyful", "uplifting"),
                 "minor": ("minor-key", "melancholic", "sad", "wistful", "sombre")},
    "mode_pred": {"major": ("in a major key", "happy", "cheerful", "uplifting"),
                  "minor": ("in a minor key", "melancholic", "sad", "wistful")},
    "mood_sent": {"major": ("The mood is happy.", "It sounds cheerful and uplifting.",
                            "The major key gives it a joyful feel."),
                  "minor": ("The mood is melancholic.", "It sounds sad and wistful.",
                            "The minor key gives it a sombre feel.")},
    "register_pp": {"low": ("in a low register", "in its low register", "low in its range",
                            "in a deep, low register"),
                    "middle": ("in the middle register", "in a mid-range register", "in the middle of its range"),
                    "high": ("in a high register", "in its upper register", "high in its range",
                             "in a soaring high register")},
    "register_adj": {"low": ("low-pitched", "deep", "low"), "middle": ("mid-range", "middle-register"),
                     "high": ("high-pitched", "high", "soaring")},
    "dyn_adv": {"soft": ("softly", "gently", "quietly", "delicately"),
                "medium": ("at a moderate volume", "at medium volume", "mezzo-forte"),
                "loud": ("loudly", "forcefully", "powerfully", "with a loud, punchy attack")},
    "dyn_pred": {"soft": ("soft", "gentle", "quiet", "delicate"),
                 "medium": ("mezzo-forte", "moderate in volume", "at a medium volume"),
                 "loud": ("loud", "forceful", "powerful", "punchy")},
    "drums_np": {"rock": ("a rock beat", "a straight rock drum beat", "a steady rock groove"),
                 "dance": ("a thumping dance beat", "a pulsing dance beat",
                           "a disco-style dance beat"),
                 "shuffle": ("a shuffle beat", "a swung shuffle groove", "a bluesy shuffle rhythm")},
    "drums_none_pp": {"none": ("with no drums", "without any percussion", "with no percussion")},
    "drums_none_sent": {"none": ("There are no drums.", "There is no percussion.",
                                 "No drums or percussion are used.")},
    "texture_pp": {"chords": ("backed by sustained {acc} chords", "over held block chords from a {acc}",
                              "with {acc} chords underneath", "accompanied by block chords on a {acc}"),
                   "arpeggio": ("over rippling {acc} arpeggios", "accompanied by arpeggios on a {acc}",
                                "with a flowing {acc} arpeggio underneath"),
                   "bass": ("with only {a_acc} line underneath", "accompanied only by {a_acc} line",
                            "over nothing but {a_acc} line", "with just a bass line underneath"),
                   "none": ("with no accompaniment", "entirely unaccompanied", "without any accompaniment")},
    "texture_sent": {"chords": ("A {acc} holds block chords underneath.", "The accompaniment is {acc} chords.",
                                "Sustained {acc} chords support the melody."),
                     "arpeggio": ("A {acc} plays arpeggios underneath.",
                                  "The accompaniment is a flowing {acc} arpeggio.",
                                  "Arpeggios on a {acc} ripple underneath."),
                     "bass": ("The only accompaniment is {a_acc} line.", "Underneath there is just a bass line.",
                              "{a_acc} line is all that accompanies it."),
                     "none": ("There is no accompaniment.", "It is unaccompanied.",
                              "The melody is heard alone, without accompaniment.")},
    "metre_np": {"4/4": ("4/4", "common time (4/4)", "4/4 time"),
                 "3/4": ("3/4", "waltz time (3/4)", "3/4 time", "triple time (3/4)")},
    "metre_adj": {"4/4": ("4/4", "common-time"), "3/4": ("3/4", "waltz-time")},
    "piece": {"4/4": ("piece", "tune", "instrumental", "track"), "3/4": ("waltz", "piece", "tune")},
}

# Every template states all eight attributes; clause order and wording vary.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "This is an instrumental piece featuring {a_lead} playing a {mode_adj} melody {register_pp}, {texture_pp}. "
    "{tempo_sent}, in {metre_np}, and everything is played {dyn_adv} {drums_pp}.",
    "A {tempo_adj}, {mode_adj} {piece} in {metre_np}. {a_lead} plays the melody {dyn_adv} {register_pp}, "
    "{texture_pp}. {drums_sent}",
    "The song features {a_lead} {register_pp}, played {dyn_adv} {texture_pp}. It is {key_pp} at {tempo_np}, "
    "in {metre_np}, {drums_pp}.",
    "{drums_sent} {a_lead} carries a {mode_adj} tune {register_pp}, {texture_pp}. The {piece} moves at "
    "{tempo_np} in {metre_np} and is played {dyn_adv}.",
    "Instrumental music {key_pp}, in {metre_np}: {a_lead} {register_pp} {texture_pp}, {drums_pp}. "
    "The playing is {dyn_pred}. {tempo_sent}.",
    "This {tempo_adj} instrumental is led by a {register_adj} {lead} {texture_pp}. {mood_sent} It is in "
    "{metre_np}, played {dyn_adv}, {drums_pp}.",
    "{a_lead} plays {dyn_adv} {register_pp} in this {mode_adj} {piece}, {texture_pp}. {tempo_sent} and the "
    "metre is {metre_np}. {drums_sent}",
    "The recording features a {register_adj} {lead} melody {key_pp}. {texture_sent} {drums_sent} "
    "{tempo_sent}, in {metre_np}, and the playing is {dyn_pred}.",
    "A {mode_adj} {metre_adj} {piece} at {tempo_np}: {a_lead} {register_pp}, {texture_pp}, {drums_pp}, "
    "played {dyn_adv}.",
    "Here {a_lead} plays a {tempo_adj} melody {register_pp} {key_pp}, {texture_pp}. {drums_sent} The {piece} "
    "is in {metre_np} and the playing is {dyn_pred}.",
    "{tempo_sent}. {a_lead} leads {register_pp} {texture_pp}, {dyn_adv}, {drums_pp}. The piece is {key_pp}, "
    "in {metre_np}.",
    "An instrumental {piece} {key_pp} with {a_lead} {register_pp}. {texture_sent} It is played {dyn_adv} at "
    "{tempo_np}, in {metre_np}. {drums_sent}",
    "The main melody is played by {a_lead} {register_pp}. {texture_sent} {mood_sent} {drums_sent} "
    "{tempo_sent}, in {metre_np}, and the playing is {dyn_pred}.",
    "{drums_sent} {tempo_sent}. A {register_adj} {lead} plays {dyn_adv} {texture_pp}, {key_pp}, in {metre_np}.",
    "This {piece} in {metre_np} is {tempo_adj} and {mode_pred}. {a_lead} plays {register_pp}, {dyn_adv}, "
    "{texture_pp}, {drums_pp}.",
    "{a_lead} {register_pp} takes the lead in a {tempo_adj} {piece} {key_pp}. {texture_sent} The time "
    "signature is {metre_np}. {drums_sent} The playing is {dyn_pred}.",
    "Played {dyn_adv} by {a_lead} {register_pp}, this {mode_adj} {piece} moves at {tempo_np} in {metre_np}, "
    "{texture_pp}, {drums_pp}.",
    "A {mode_adj} melody on {a_lead}, {register_pp}, {texture_pp}. {tempo_sent}. {drums_sent} The metre is "
    "{metre_np} and it is played {dyn_adv}.",
    "There is {a_lead} playing {dyn_adv} {register_pp}. {texture_sent} {drums_sent} The {piece} is "
    "{tempo_adj}, in {metre_np}, and {mode_pred}.",
    "{mood_sent} {a_lead} plays {register_pp} {texture_pp}, at {tempo_np}, in {metre_np}. The dynamics are "
    "{dyn_pred}, {drums_pp}.",
    "An instrumental {piece} in {metre_np} featuring {a_lead} {register_pp}, played {dyn_adv}. {texture_sent} "
    "It is {mode_pred}, at {tempo_np}. {drums_sent}",
    "{a_lead} plays a {tempo_adj}, {mode_adj} line {register_pp}, {dyn_adv}, {texture_pp}. {drums_sent} "
    "It is in {metre_np}.",
    "At {tempo_np}, {a_lead} plays {dyn_adv} {register_pp} {key_pp}. {texture_sent} {drums_sent} "
    "The {piece} is in {metre_np}.",
    "This {mode_adj} instrumental is in {metre_np}. {texture_sent} On top, {a_lead} plays {register_pp}, "
    "{dyn_adv}. {tempo_sent}. {drums_sent}",
    "{texture_sent} {a_lead} plays a {mode_adj} melody {register_pp}, {dyn_adv}. {tempo_sent}, in {metre_np}, "
    "{drums_pp}.",
    "Music for {a_lead}, {register_pp}: a {tempo_adj}, {mode_adj} {piece} in {metre_np}, played {dyn_adv} "
    "{texture_pp}. {drums_sent}",
    "{drums_sent} The {piece} is {mode_pred} and {tempo_adj}, in {metre_np}. {a_lead} plays the tune "
    "{register_pp} {texture_pp}; the playing is {dyn_pred}.",
    "A {register_adj} {lead} melody, played {dyn_adv}, {texture_pp}, {drums_pp}. The {piece} is {key_pp}, "
    "in {metre_np}, at {tempo_np}.",
    "{tempo_sent} in this {metre_adj} instrumental {key_pp}. {a_lead} plays {register_pp} and {dyn_adv}, "
    "{texture_pp}. {drums_sent}",
    "Featuring {a_lead} {register_pp}, this {tempo_adj} {piece} is {mode_pred}. {texture_sent} {drums_sent} "
    "It is in {metre_np}, played {dyn_adv}.",
    "{a_lead} ({register_adj}, played {dyn_adv}) leads a {tempo_adj} {piece} {key_pp}, in {metre_np}. "
    "{texture_sent} {drums_sent}",
    "An instrumental track at {tempo_np} in {metre_np} with a {mode_adj} mood. {a_lead} plays {register_pp}, "
    "{texture_pp}, {drums_pp}. It is played {dyn_adv}.",
    "The {piece} opens with {a_lead} {register_pp}, {texture_pp}. {mood_sent} {tempo_sent}, in {metre_np}, "
    "and it is played {dyn_adv}. {drums_sent}",
)

# Captions of corpus clips: a work from its metadata, then the same slots.
CORPUS_TEMPLATES: tuple[str, ...] = (
    "This is {work}, played {dyn_adv} on {a_lead} {texture_pp}. It is {key_pp}, in {metre_np}, at {tempo_np}, "
    "{drums_pp}.",
    "{work} arranged for {lead}, {texture_pp}. {tempo_sent}, in {metre_np}, and the playing is {dyn_pred}. "
    "The piece is {key_pp}. {drums_sent}",
    "A rendition of {work} on {a_lead}: {key_pp}, in {metre_np}, at {tempo_np}, played {dyn_adv} "
    "{texture_pp}, {drums_pp}.",
    "{a_lead} plays {work} {key_pp} at {tempo_np}, {texture_pp}. It is in {metre_np}, played {dyn_adv}. "
    "{drums_sent}",
    "Here {work} is played {dyn_adv} by {a_lead}, {texture_pp}, {key_pp}. {tempo_sent}, in {metre_np}. "
    "{drums_sent}",
    "{mood_sent} This is {work} {key_pp}, played on {a_lead} {texture_pp} at {tempo_np} in {metre_np}, "
    "{drums_pp}, {dyn_adv}.",
)
_CORPUS_TEXTURE_PP = {"chords": ("in {parts}-part chords, every voice on the same instrument",
                                 "harmonised in {parts}-part chords", "in full {parts}-part chords"),
                      "none": _PHRASES["texture_pp"]["none"]}


def _article(words: str) -> str:
    return ("an " if words[:1].lower() in "aeiou" else "a ") + words


def _vowel_sound(word: str) -> bool:
    word = word.lower()
    return word[:1] in "aeiou" and not word.startswith(("uni", "use", "usu", "eu", "one"))


def _sentences(text: str) -> str:
    """Tidy a filled template: single spaces, a capital letter starting every sentence."""
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    # "a" / "an" by the sound of the next word: templates write "a {tempo_adj}", the slot may be "unhurried"
    text = re.sub(r"\b([Aa])n? (?=(\w+))", lambda m: m.group(1) + ("n " if _vowel_sound(m.group(2)) else " "), text)
    return re.sub(r"(^|[.!?]\s+)([a-z])", lambda m: m.group(1) + m.group(2).upper(), text)


def _slots(a: dict, rng: np.random.Generator) -> dict[str, str]:
    """One phrase per slot for attributes ``a``."""
    pick = partial(_pick, rng)
    attribute_of = {"tempo": "tempo", "mode": "mode", "mood": "mode", "register": "register", "dyn": "dynamics"}
    slots = {name: pick(table[a[attribute_of[name.split("_")[0]]]]) for name, table in _PHRASES.items()
             if attribute_of.get(name.split("_")[0]) in a}  # corpus clips have no register
    metre = a["metre"]
    if metre in _PHRASES["metre_np"]:
        slots.update(metre_np=pick(_PHRASES["metre_np"][metre]), metre_adj=pick(_PHRASES["metre_adj"][metre]),
                     piece=pick(_PHRASES["piece"][metre]))
    else:  # a corpus metre such as 6/8
        slots.update(metre_np=pick((metre, f"{metre} time")), metre_adj=metre, piece="piece")
    if rng.random() < 0.3:  # sometimes the exact tempo, as MusicCaps captions sometimes give it
        slots["tempo_np"] += pick((" of about {bpm} BPM", " (around {bpm} BPM)")).format(bpm=a["bpm"])
    if a["drums"] == "none":
        slots["drums_pp"] = pick(_PHRASES["drums_none_pp"]["none"])
        slots["drums_sent"] = pick(_PHRASES["drums_none_sent"]["none"])
    else:
        beat = pick(_PHRASES["drums_np"][a["drums"]])
        slots["drums_pp"] = pick(("over {}", "with {} on the drums", "driven by {}")).format(beat)
        slots["drums_sent"] = pick(("The drums play {}.", "A drum kit plays {}.", "The percussion plays {}.")
                                   ).format(beat)
    acc = a.get("accompaniment") or ""
    fill = {"acc": acc, "a_acc": _article(acc) if acc else ""}
    slots["texture_pp"] = pick(_PHRASES["texture_pp"][a["texture"]]).format(**fill)
    slots["texture_sent"] = pick(_PHRASES["texture_sent"][a["texture"]]).format(**fill)
    slots["lead"] = a["instrument"]
    slots["a_lead"] = _article(a["instrument"])
    slots["key_pp"] = pick((f"in {a['key']}", f"in the key of {a['key']}", f"in a {a['mode']} key"))
    return slots


def caption(attributes: dict, seed: int | Sequence[int] = 0, template: int | None = None) -> str:
    """A MusicCaps-style caption stating every attribute: lead, texture, tempo, mode, drums, register, dynamics, metre.

    ``seed`` picks the template (one of :data:`CAPTION_TEMPLATES`, or
    ``template`` to force one) and the synonyms. Corpus attributes (with a
    ``work`` entry, see :func:`corpus_clip`) use :data:`CORPUS_TEMPLATES`.
    """
    rng = _rng(seed)
    if attributes.get("source") == "corpus":
        a = dict(attributes)
        templates = CORPUS_TEMPLATES
    else:
        a = _checked(attributes)
        templates = CAPTION_TEMPLATES
    if template is not None and not 0 <= template < len(templates):
        raise ValueError(f"template must be in [0, {len(templates)}), got {template}")
    text = templates[int(rng.integers(len(templates))) if template is None else template]
    slots = _slots(a, rng)
    if a.get("source") == "corpus":
        slots["work"] = a["work"]
        slots["key_pp"] = _pick(rng, (f"in {a['key']}", f"in the key of {a['key']}"))  # always name the key
        slots["texture_pp"] = _pick(rng, _CORPUS_TEXTURE_PP[a["texture"]]).format(parts=a.get("parts", 4))
    return _sentences(text.format(**slots))


# == Clips ===================================================================================
@dataclass
class SynthClip:
    """A rendered, captioned clip: ``wave`` is float32 ``(samples,)`` in [-1, 1]."""

    wave: np.ndarray
    sample_rate: int
    caption: str
    attributes: dict
    seed: int
    index: int
    source: str = "procedural"


def _level(wave: np.ndarray) -> np.ndarray:
    """A fixed gain, then scaled down only where the peak would pass 0.95.

    Per-clip peak normalisation would erase the ``dynamics`` attribute (a soft
    piano solo would come out as loud as a loud band); a fixed gain keeps soft
    clips quieter than loud ones, and the limit keeps the loudest within range.
    """
    wave = wave * np.float32(LEVEL_GAIN)
    top = float(np.max(np.abs(wave))) if wave.size else 0.0
    return wave * np.float32(0.95 / top) if top > 0.95 else wave


def render_clip(attributes: dict, seconds: float = 10.0, sample_rate: int = 16000,
                seed: int | Sequence[int] = 0) -> np.ndarray:
    """:func:`compose` then render: float32 ``(round(seconds * sample_rate),)``, at the dataset's level."""
    return _level(render_midi(compose(attributes, seconds, seed), sample_rate, duration=seconds))


def synth_clip(index: int, seed: int = 0, seconds: float = 10.0, sample_rate: int = 16000) -> SynthClip:
    """Procedural clip ``index`` of the dataset ``seed``: exactly ``seconds`` at ``sample_rate``, peak <= 0.95."""
    _check_seed(seed, index)
    attributes = sample_attributes(seed, index)
    wave = render_clip(attributes, seconds, sample_rate, seed=[seed, index, 1])
    return SynthClip(wave, sample_rate, caption(attributes, seed=[seed, index, 2]), attributes, seed, index)


# -- the music21 corpus --------------------------------------------------------------------------
@dataclass(frozen=True)
class CorpusPiece:
    """One work of the music21 corpus: ``path`` inside the corpus, ``number`` within an ABC collection."""

    collection: str  # "bach", "essen", "oneills", "ryans"
    path: str
    number: int | None = None


# Essen's locale (German place names) → (kind of song, where from).
_ESSEN_ORIGINS = (("Deutschland", "German folk song", ""), ("China", "Chinese folk song", ""),
                  ("Irland", "Irish folk song", ""), ("Lothringen", "folk song", " from Lorraine"),
                  ("Luxemburg", "folk song", " from Luxembourg"), ("Schweiz", "Swiss folk song", ""),
                  ("sterreich", "Austrian folk song", ""))


@lru_cache(maxsize=1)
def corpus_pieces() -> dict[str, tuple[CorpusPiece, ...]]:
    """The fixed, sorted lists of corpus works used by :func:`corpus_clip`: ``{"chorale": …, "folk": …}``.

    Bach's four-part chorales (``bach/bwvN.M.mxl`` and the 371 chorales), and
    single-line folk tunes: the Essen collection, O'Neill's *Music of Ireland*
    and Ryan's *Mammoth Collection* (tune numbers read from the ABC ``X:`` lines,
    without parsing the music). Computed once per process (about a second).
    """
    try:
        from music21 import corpus
    except ImportError:
        raise ImportError("corpus clips need music21: pip install music21") from None

    def relative(path) -> str:
        parts = Path(str(path)).parts
        return "/".join(parts[parts.index("corpus") + 1:])

    chorales = sorted((CorpusPiece("bach", relative(p)) for p in corpus.getComposer("bach")
                       if re.fullmatch(r"bwv\d+(\.\d+)?\.mxl", Path(str(p)).name)
                       and Path(str(p)).name != "bwv846.mxl"),  # a fugue, not a chorale
                      key=lambda piece: piece.path)
    folk = []
    for collection, composer in (("essen", "essenFolksong"), ("oneills", "oneills1850"), ("ryans", "ryansMammoth")):
        for path in sorted(corpus.getComposer(composer), key=str):
            name = Path(str(path)).name
            if collection == "essen" and name.startswith(("test", "variant")):
                continue  # the collection's parser test files, not songs
            text = Path(str(path)).read_text(encoding="utf-8", errors="replace")
            numbers = [int(x) for x in re.findall(r"(?m)^X:\s*(\d+)", text)]
            if collection == "ryans" and len(numbers) <= 1:
                folk.append(CorpusPiece(collection, relative(path)))
            else:
                folk.extend(CorpusPiece(collection, relative(path), x) for x in sorted(set(numbers)))
    if not chorales or not folk:
        raise RuntimeError("music21's corpus is missing its Bach chorales or folk collections; reinstall music21")
    return {"chorale": tuple(chorales), "folk": tuple(folk)}


def _clean_title(title: str | None) -> str:
    title = (title or "").strip()
    title = re.sub(r"\s*\(Band \d+\)", "", title)
    title = re.sub(r",?\s*S\.\s*\d+.*$", "", title)  # Essen page references ("…, S. 26")
    if title.isupper():
        title = " ".join(w.capitalize() for w in title.split())
    return title.strip(" ,")


def _work(piece: CorpusPiece, score) -> tuple[str, str, str]:
    """(phrase naming the work, composer, title) from the piece's metadata."""
    md = score.metadata
    if piece.collection == "bach":
        title = "BWV " + Path(piece.path).stem[3:]
        return f"a chorale by J.S. Bach ({title})", "J.S. Bach", title
    title = _clean_title(md.title if md is not None else None)
    named = f' "{title}"' if title else ""
    if piece.collection == "essen":
        locale = (md.localeOfComposition or "") if md is not None else ""
        kind, where = next(((k, w) for place, k, w in _ESSEN_ORIGINS if place in locale),
                           ("folk song", " from the Essen collection"))
        return (f"the {kind}{named}{where}" if title else _article(kind) + where), "traditional", title
    if piece.collection == "oneills":
        return f"{'the' if title else 'an'} Irish tune{named} from O'Neill's Music of Ireland", "traditional", title
    kind = "fiddle tune"
    if " -- " in title:  # Ryan's titles end in the dance: "7th Regiment -- Reel"
        title, kind = (s.strip() for s in title.rsplit(" -- ", 1))
        kind, named = kind.lower(), f' "{title}"'
    composer = ""
    if md is not None and (md.composer or "").strip():
        composer = " ".join(w.capitalize() for w in md.composer.strip(" .").split())
    by = f" by {composer}" if composer else ""
    article = "the" if title else "a"
    return f"{article} {kind}{named}{by} from Ryan's Mammoth Collection", composer or "traditional", title


def _corpus_midi(score, bpm: float, program: int, seconds: float, velocity: int,
                 rng: np.random.Generator) -> tuple[pretty_midi.PrettyMIDI, int, str]:
    """Walk the score's notes into MIDI at ``bpm`` (looping short pieces) → (midi, voices, metre)."""
    from music21 import harmony

    signature = score.recurse().getElementsByClass("TimeSignature").first()
    metre = signature.ratioString if signature is not None else "4/4"
    compound = signature is not None and signature.denominator == 8 and signature.numerator % 3 == 0
    beat_ql = 1.5 if compound else 1.0  # the beat is a dotted quarter in 6/8, 9/8, 12/8
    sec_per_ql = 60.0 / bpm / beat_ql
    voices = []
    for part in (score.parts or [score]):
        notes = []
        part.stripTies(inPlace=True)  # in place: the parsed score is ours, and a copy costs 6x more
        for element in part.flatten().notes:
            length = float(element.duration.quarterLength)
            if isinstance(element, harmony.ChordSymbol) or length <= 0:
                continue  # chord symbols and grace notes have no duration of their own
            notes.extend((float(element.offset), length, p.midi) for p in element.pitches)
        if notes:
            voices.append(notes)
    if not voices:
        raise ValueError("no notes")
    span = max(max(o + d for o, d, _ in v) for v in voices) * sec_per_ql
    midi = pretty_midi.PrettyMIDI(initial_tempo=bpm * beat_ql)
    for k, notes in enumerate(voices[:15]):
        inst = pretty_midi.Instrument(program=program, name=f"voice {k + 1}")
        loop = 0
        while loop * span < seconds:  # short tunes repeat, as they would be played
            for offset, length, pitch in notes:
                start = loop * span + offset * sec_per_ql
                if start < seconds:
                    inst.notes.append(pretty_midi.Note(_velocity(velocity, 1.0, rng), pitch, start,
                                                       min(start + length * sec_per_ql * 0.95, seconds)))
            loop += 1
        midi.instruments.append(inst)
    return midi, len(voices), metre


def corpus_clip(index: int, seed: int = 0, seconds: float = 10.0, sample_rate: int = 16000) -> SynthClip:
    """Corpus clip ``index`` of the dataset ``seed``: a real composition, played by a chosen instrument.

    Half the clips are Bach chorales (every voice on the lead instrument,
    texture "chords"), half single-line folk tunes (texture "none"). The lead,
    tempo and dynamics are drawn like :func:`sample_attributes`; the key and
    mode come from ``score.analyze('key')``, the metre from the score, the
    caption from the metadata (composer, title, collection). A piece that fails
    to parse is replaced by the next in the list, deterministically.
    """
    from music21 import corpus

    _check_seed(seed, index)
    rng = _rng([seed, index, 3])
    kind = "chorale" if rng.random() < 0.5 else "folk"
    pieces = corpus_pieces()[kind]
    lead = _pick(rng, ATTRIBUTES["lead"])
    program, instrument = _pick(rng, LEAD_INSTRUMENTS[lead])
    tempo = _pick(rng, ATTRIBUTES["tempo"])
    lo, hi = TEMPO_BPM[tempo]
    bpm = int(rng.integers(lo, hi + 1))
    dynamics = _pick(rng, ATTRIBUTES["dynamics"])
    velocity = int(rng.integers(VELOCITY[dynamics][0], VELOCITY[dynamics][1] + 1))
    first = int(rng.integers(len(pieces)))
    errors = []
    for attempt in range(8):
        piece = pieces[(first + attempt) % len(pieces)]
        try:
            score = corpus.parse(piece.path, number=piece.number) if piece.number else corpus.parse(piece.path)
            midi, voices, metre = _corpus_midi(score, bpm, program, seconds, velocity, rng)
            key = score.analyze("key")
            break
        except Exception as err:  # noqa: BLE001 (a malformed corpus file: take the next one)
            errors.append(f"{piece.path}#{piece.number}: {err}")
    else:
        raise RuntimeError("corpus_clip: no parsable piece near index; " + "; ".join(errors))
    work, composer, title = _work(piece, score)
    tonic = key.tonic.name.replace("-", "b")
    attributes = {"lead": lead, "texture": "chords" if voices > 1 else "none", "tempo": tempo,
                  "mode": key.mode, "drums": "none", "dynamics": dynamics, "metre": metre,
                  "tonic": tonic, "key": f"{tonic} {key.mode}", "bpm": bpm, "program": int(program),
                  "instrument": instrument, "source": "corpus", "collection": piece.collection,
                  "composer": composer, "title": title, "work": work, "parts": voices,
                  "path": piece.path, "number": piece.number}
    wave = _level(render_midi(midi, sample_rate, duration=seconds))
    return SynthClip(wave, sample_rate, caption(attributes, seed=[seed, index, 4]), attributes, seed, index,
                     source="corpus")


def make_clip(index: int, seed: int = 0, seconds: float = 10.0, sample_rate: int = 16000,
              source: str = "procedural") -> SynthClip:
    """Clip ``index`` of a dataset of ``source`` "procedural", "corpus" or "mixed" (every 4th from the corpus)."""
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    from_corpus = source == "corpus" or (source == "mixed" and index % MIXED_CORPUS_EVERY == MIXED_CORPUS_EVERY - 1)
    return (corpus_clip if from_corpus else synth_clip)(index, seed, seconds, sample_rate)


# == Writing a dataset =======================================================================
def _init_worker() -> None:
    """Pool initialiser: one torch thread per worker process (if torch is loaded at all)."""
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)


def _render_one(index: int, out: str, seed: int, seconds: float, sample_rate: int, source: str) -> dict:
    """Render and save one clip → its metadata record (or ``{"index", "error"}``)."""
    from .audio import save_wav

    try:
        clip = make_clip(index, seed, seconds, sample_rate, source)
        name = f"clips/{index:06d}.wav"
        save_wav(Path(out) / name, clip.wave, sample_rate)
    except Exception as err:  # noqa: BLE001 (a batch job reports a bad item and keeps going)
        return {"index": index, "error": f"{type(err).__name__}: {err}"}
    return {"file_name": name, "caption": clip.caption, "attributes": clip.attributes, "seed": seed,
            "index": index, "source": clip.source}


def _read_metadata(out: Path) -> tuple[dict[int, dict], int]:
    """Records of ``out/metadata.jsonl`` whose wav exists, by index; and how many lines were unreadable."""
    path = out / "metadata.jsonl"
    records, bad = {}, 0
    if not path.exists():
        return records, bad
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            index, name = int(record["index"]), str(record["file_name"])
        except (ValueError, KeyError, TypeError):  # e.g. the half-written last line of a killed run
            bad += 1
            continue
        if (out / name).is_file():
            records[index] = record
    return records, bad


def _metadata_text(records: dict[int, dict]) -> str:
    return "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in sorted(records))


def write_dataset(out: str | Path, n: int, seed: int = 0, seconds: float = 10.0, sample_rate: int = 16000,
                  source: str = "procedural", workers: int | None = None, progress: bool = True) -> dict:
    """Render clips ``0 … n-1`` into ``out/clips/NNNNNN.wav`` + ``out/metadata.jsonl``; resumable.

    ``metadata.jsonl`` has one JSON object per clip: ``file_name`` (relative to
    ``out``), ``caption``, ``attributes``, ``seed``, ``index``, ``source``.
    ``out/dataset.json`` keeps the settings; asking for different ones in the
    same folder is a ``ValueError`` naming the field. A re-run skips clips that
    are listed with their wav on disk, renders the rest (a larger ``n`` extends
    the dataset), and rewrites ``metadata.jsonl`` sorted by index. Clips render
    on ``workers`` processes (default: all cores). A clip that fails is listed
    in the summary's ``failed`` and everything else is kept.

    Returns ``{"written", "skipped_existing", "failed", "total", "elapsed_seconds",
    "clips_per_second", "realtime_factor", "out"}``.
    """
    from tqdm.auto import tqdm

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    _check_seed(seed, 0)
    if not seconds > 0:
        raise ValueError(f"seconds must be positive, got {seconds!r}")
    if not (isinstance(sample_rate, (int, np.integer)) and sample_rate > 0):
        raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"generator": "musicdiff_lib.synth", "format": 1, "seed": int(seed), "seconds": float(seconds),
                "sample_rate": int(sample_rate), "source": source}
    info_path = out / "dataset.json"
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{info_path}: not valid JSON ({err}); delete it or write to another folder") from None
        for field, value in settings.items():
            if info.get(field) != value:
                raise ValueError(f"{info_path}: {field} is {info.get(field)!r} in this folder but {value!r} was "
                                 f"asked; use the same settings or another folder")
    else:
        info = dict(settings)
    for stale in (out / "clips").glob("*.tmp"):  # half-written files of a killed run
        stale.unlink()
    records, bad_lines = _read_metadata(out)
    write_text_atomic(out / "metadata.jsonl", _metadata_text(records))  # drop broken lines before appending
    todo = [i for i in range(n) if i not in records]
    skipped = n - len(todo)
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    workers = max(1, min(workers, len(todo)))
    job = partial(_render_one, out=str(out), seed=int(seed), seconds=float(seconds),
                  sample_rate=int(sample_rate), source=source)
    failed: list[dict] = []
    start = time.perf_counter()
    if source != "procedural" and todo:
        corpus_pieces()  # list the corpus once here: forked workers inherit it instead of each listing it
    pool = None
    try:
        if workers > 1:
            import multiprocessing

            pool = multiprocessing.Pool(workers, initializer=_init_worker)
            results = pool.imap_unordered(job, todo, chunksize=max(1, min(8, len(todo) // (workers * 8))))
        else:
            results = map(job, todo)
        with open(out / "metadata.jsonl", "a", encoding="utf-8") as meta, \
                tqdm(total=len(todo), desc=f"rendering {source} clips", unit="clip",
                     **({} if progress else {"disable": True})) as bar:  # {}: TQDM_DISABLE still works
            for record in results:
                if "error" in record:
                    failed.append(record)
                    bar.write(f"clip {record['index']}: {record['error']}")
                else:
                    records[record["index"]] = record
                    meta.write(json.dumps(record, ensure_ascii=False) + "\n")
                    meta.flush()  # a killed run keeps every clip it finished
                bar.update()
        if pool is not None:
            pool.close()
    finally:
        if pool is not None:
            pool.terminate()  # after close(): waits for nothing; after an error: stops the workers
            pool.join()
    elapsed = time.perf_counter() - start
    write_text_atomic(out / "metadata.jsonl", _metadata_text(records))
    info["n"] = max(int(info.get("n", 0)), int(n))
    write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")
    written = len(todo) - len(failed)
    return {"out": str(out), "written": written, "skipped_existing": skipped, "failed": failed,
            "total": len(records), "unreadable_metadata_lines": bad_lines, "elapsed_seconds": elapsed,
            "clips_per_second": written / elapsed if elapsed > 0 else float("inf"),
            "realtime_factor": written * seconds / elapsed if elapsed > 0 else float("inf")}
