"""Real music from General MIDI: compose with pretty_midi, render with a SoundFont.

Chapter: ``05_dataset`` (the built-in dataset); the first chapters use
:func:`demo_clip` as their real music audio. Rendering uses the General MIDI
SoundFont that ships inside ``pretty_midi`` (``TimGM6mb.sf2``) through
``tinysoundfont``, so nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pretty_midi

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


def render_midi(midi: pretty_midi.PrettyMIDI, sample_rate: int = 16000,
                duration: float | None = None, gain_db: float = 0.0) -> np.ndarray:
    """Render every instrument of ``midi`` with the SoundFont → mono float32 ``(samples,)``.

    ``duration`` (seconds) defaults to the end of the last note plus one second
    of release tail. Deterministic: the same MIDI gives the same samples.
    """
    tsf = _tinysoundfont()
    synth = tsf.Synth(samplerate=sample_rate, gain=gain_db)
    sfid = synth.sfload(str(soundfont_path()))
    events: list[tuple[int, int, int, int, int]] = []  # (sample, order, channel, key, velocity)
    melodic = [i for i in midi.instruments if not i.is_drum]
    if len(melodic) > 15:
        raise ValueError(f"at most 15 melodic instruments fit the 16 MIDI channels, got {len(melodic)}")
    channel_of = {}
    for number, inst in enumerate(melodic):
        channel_of[id(inst)] = number if number < DRUM_CHANNEL else number + 1
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
    position = 0
    for sample, _, channel, key, velocity in events:
        if sample >= total:
            break
        if sample > position:
            out[position:sample] = np.frombuffer(synth.generate(sample - position), dtype=np.float32).reshape(-1, 2)
            position = sample
        if velocity:
            synth.noteon(channel, key, velocity)
        else:
            synth.noteoff(channel, key)
    if position < total:
        out[position:] = np.frombuffer(synth.generate(total - position), dtype=np.float32).reshape(-1, 2)
    return out.mean(axis=1)


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
