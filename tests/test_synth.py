"""The demo renders are real, deterministic General MIDI music."""
from __future__ import annotations

import numpy as np
import pytest
import pretty_midi

from musicdiff_lib.synth import demo_clip, demo_song, render_midi, soundfont_path


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
