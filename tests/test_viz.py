"""Players and plots the chapters use: real audio in, decodable audio out."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import soundfile as sf

from musicdiff_lib.viz import audio_player, labelled_players


def _embedded(html: str) -> tuple[str, bytes]:
    mime, data = re.search(r'src="data:(audio/[a-z0-9-]+);base64,([^"]+)"', html).groups()
    return mime, base64.b64decode(data)


@pytest.mark.parametrize("rate", [16000, 10000])
def test_mp3_player_embeds_decodable_audio_a_fraction_of_the_wav_size(music_16k, rate):
    """The MP3 decodes back to the same music (correlation > 0.9), resampled where MP3 has no such rate."""
    from musicdiff_lib.audio import resample

    wave = music_16k[: 4 * 16000] if rate == 16000 else resample(music_16k[: 4 * 16000], 16000, rate)
    mime, data = _embedded(audio_player(wave, rate, format="mp3")._repr_html_())
    wav_mime, wav_data = _embedded(audio_player(wave, rate)._repr_html_())
    assert mime == "audio/mpeg" and wav_mime == "audio/wav"
    assert len(data) < len(wav_data) / 4
    decoded, decoded_rate = sf.read(io.BytesIO(data), dtype="float32")
    assert decoded_rate == (16000 if rate == 16000 else 11025)
    expected = wave if rate == 16000 else resample(wave, rate, decoded_rate)
    # the MP3 encoder adds a start-up delay: align by cross-correlation before comparing
    n = len(expected)
    lag = int(np.argmax(np.correlate(decoded[: n + 4000], expected[:8000], mode="valid")[:4000]))
    aligned = decoded[lag: lag + n]
    assert np.corrcoef(aligned, expected[: len(aligned)])[0, 1] > 0.9
    assert np.max(np.abs(decoded)) == pytest.approx(0.95, abs=0.1)  # normalised


def test_labelled_players_and_bad_format(music_16k):
    html = labelled_players({"a": music_16k[:8000], "b <i>": music_16k[8000:16000]}, 16000, format="mp3")._repr_html_()
    assert html.count("<audio") == 2 and "<b>a</b>" in html and "<b>b &lt;i&gt;</b>" in html
    with pytest.raises(ValueError, match="'wav' or 'mp3'"):
        audio_player(music_16k, 16000, format="flac")


def test_playground_generates_from_its_controls(tmp_path):
    """The widget's button runs the pipeline with the slider values (no front end needed)."""
    from musicdiff_lib.pipeline import book_pipeline
    from musicdiff_lib.viz import Playground

    pipe = book_pipeline(device="cpu", search_from=tmp_path, fallback_dir=tmp_path / "model", fallback_preset="ci",
                         fallback_steps=2, fallback_clips=4, progress=False)
    playground = Playground(pipe, caption="a waltz on a marimba", steps=3, seed=4)
    playground.button.click()
    first = playground.last
    assert first is not None and first.prompts == ["a waltz on a marimba"] and first.seeds == [4]
    assert "s of music in" in playground.status.value
    playground.seed.value = 5
    playground.button.click()
    assert playground.last.seeds == [5] and not np.array_equal(playground.last.mels, first.mels)
    playground.caption.value = "  "
    assert playground.generate() is None and "Type a caption" in playground.status.value
