"""The conditional U-Net (chapter 06_unet): shapes, the report's layout, text conditioning, configs."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from musicdiff_lib.text import TextCondition
from musicdiff_lib.unet import (UNET_PRESETS, CrossAttention, ResBlock, SelfAttention, UNet, UNetConfig,
                                count_parameters, describe, flop_counter, stages)

# The original code's unconditional network (block channels [64, 128, 256, 512, 512, 384], attention in the
# 128- and 384-channel blocks), counted from its layers: see /work/shared/seed/original-code.md.
ORIGINAL_PARAMETERS = 35_178_689

CI = UNetConfig.preset("ci")

# Small tensors, and one 269-GFLOP pass: on a busy 2-core machine two threads can be many times slower than one.
pytestmark = pytest.mark.usefixtures("one_thread")


def caption(batch: int, length: int, dim: int, seed: int, lengths: list[int] | None = None) -> TextCondition:
    """Random token embeddings; item i has ``lengths[i]`` real tokens followed by padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = lengths or [length] * batch
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return TextCondition(torch.randn(batch, length, dim, generator=g), mask, torch.randn(batch, dim, generator=g))


@pytest.fixture(scope="module")
def ci_model() -> UNet:
    return UNet(CI, seed=0).eval()


@pytest.fixture(scope="module")
def ci_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, 16, 32, generator=g), torch.tensor([0, 480, 999])


# ---- shapes and sizes ------------------------------------------------------------------------


@pytest.mark.parametrize("name, shape", [("ci", (3, 1, 16, 32)), ("cpu", (2, 1, 64, 128))])
def test_small_presets_map_input_shape_to_itself(name, shape):
    cfg = UNetConfig.preset(name)
    model = UNet(cfg, seed=0).eval()
    text = caption(shape[0], 5, cfg.text_dim, seed=2, lengths=[5, 2][: shape[0]] + [3] * (shape[0] - 2))
    with torch.no_grad():
        out = model(torch.randn(shape), torch.full((shape[0],), 10), text)
    assert out.shape == shape and out.isfinite().all()


@pytest.mark.slow
def test_seed128_forward_on_one_report_sized_input():
    """One real forward pass at the report's 1×128×200 (batch 1, about 269 GFLOP)."""
    model = UNet(UNetConfig.preset("seed128"), seed=0).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 1, 128, 200), torch.tensor([999]), caption(1, 8, 384, seed=3))
    assert out.shape == (1, 1, 128, 200) and out.isfinite().all()


@pytest.mark.parametrize("name, size", [("seed128", (128, 200)), ("seed64", (64, 200)), ("seed3s", (128, 72)),
                                        ("cpu", (64, 128)), ("cpu", (32, 256))])
def test_every_preset_takes_its_mel_size(name, size):
    """Shapes through the whole network on the meta device (no arithmetic), so this is instant."""
    cfg = UNetConfig.preset(name)
    cfg.check_input_size(*size)
    model = UNet(cfg).to("meta")
    out = model(torch.empty(2, 1, *size, device="meta"), torch.zeros(2, dtype=torch.long, device="meta"),
                caption(2, 4, cfg.text_dim, 0).to("meta"))
    assert out.shape == (2, 1, *size)


def test_size_that_cannot_be_halved_enough_names_sizes_that_work():
    cfg = UNetConfig.preset("seed128")
    assert cfg.size_multiple == 8
    with pytest.raises(ValueError, match=r"H \(mel bins\) must be a multiple of 8 \(3 halvings\), e.g. 96 or 104; got 100"):
        cfg.check_input_size(100, 200)
    with pytest.raises(ValueError, match=r"W \(frames\) must be a multiple of 8 .* e.g. 192 or 200; got 198"):
        cfg.check_input_size(128, 198)  # the report's 10.1 s clip before padding
    with pytest.raises(ValueError, match=r"multiple of 32 \(4 halvings after a stride-2 stem\), e.g. 32 or 64; got 40"):
        UNetConfig.preset("cpu").check_input_size(40, 128)
    with pytest.raises(ValueError, match="multiple of 4"):
        UNet(CI)(torch.zeros(1, 1, 10, 32), torch.zeros(1))


def test_describe_predicts_the_shapes_forward_hooks_see():
    for name, size in [("ci", (16, 32)), ("cpu", (64, 128))]:
        model = UNet(UNetConfig.preset(name), seed=0).eval()
        rows = stages(model, *size)
        seen = {}
        hooks = [r["module"].register_forward_hook(lambda m, i, o, n=r["name"]: seen.__setitem__(n, tuple(o.shape[1:])))
                 for r in rows if r["shape"] is not None]
        with torch.no_grad():
            model(torch.zeros(1, 1, *size), torch.zeros(1))
        for h in hooks:
            h.remove()
        assert seen == {r["name"]: r["shape"] for r in rows if r["shape"] is not None}
        assert sum(r["params"] for r in rows) == count_parameters(model)  # every parameter is in some stage
        assert f"{count_parameters(model):,}" in describe(model, *size)


# ---- the report's network --------------------------------------------------------------------


def test_seed128_reproduces_the_reports_layout_plus_text():
    cfg = UNetConfig.preset("seed128")
    assert (cfg.down_channels, cfg.up_channels, cfg.time_embed_dim) == ((64, 128, 256), (512, 512, 384), 512)
    assert [c for _, c in cfg.level_channels()] == [64, 128, 256, 512, 512, 384]  # the original "Channels" list
    # Attention in the 128- and 384-channel levels, as in the original's Attentions=[F, T, F, F, F, T].
    assert cfg.self_attention == (False, True, False, False, False, True)
    model = UNet(cfg)
    assert model.tail.in_channels == 256 and model.tail.out_channels == 128 and model.out.kernel_size == (1, 1)
    total = count_parameters(model)
    print(f"seed128 with text: {total:,} parameters")
    assert 40_500_000 < total < 41_000_000  # 40,704,321


def test_unconditional_seed128_is_the_original_network_plus_its_documented_additions():
    """text_dim=0 and no cross-attention: exactly the original's 35,178,689 parameters, plus the timestep MLP,
    one embedding projection per ResBlock, and a GroupNorm in front of each self-attention."""
    cfg = dataclasses.replace(UNetConfig.preset("seed128"), text_dim=0, cross_attention=(False,) * 6)
    model = UNet(cfg)
    E = cfg.time_embed_dim
    resblock_widths = [c for _, c in cfg.level_channels() for _ in range(2)]
    mlp = 2 * (E * E + E)
    projections = sum(E * c + c for c in resblock_widths)
    attention_norms = 2 * (128 + 384)
    assert count_parameters(model) == ORIGINAL_PARAMETERS + mlp + projections + attention_norms


def test_cpu_preset_is_a_few_million_parameters_and_cheap_per_sample():
    model = UNet(UNetConfig.preset("cpu"))
    assert 3_000_000 < count_parameters(model) < 10_000_000
    with flop_counter(display=False) as flops, torch.no_grad():
        model(torch.zeros(1, 1, 64, 128), torch.zeros(1), caption(1, 8, 384, 0))
    assert flops.get_total_flops() < 0.5e9  # forward FLOPs per 1×64×128 sample (seed128: ~269e9 at 1×128×200)


def test_flop_counter_counts_attention_on_the_cpu():
    """torch's FlopCounterMode misses the CPU flash-attention kernel; ours counts it: 2·2·N²·C per layer."""
    layer = SelfAttention(16, heads=4, groups=4)
    x = torch.randn(2, 16, 6, 8)  # N = 48 pixels
    with flop_counter(display=False) as flops, torch.no_grad():
        layer(x)
    projections = 2 * 2 * 48 * (16 * 48 + 16 * 16)  # qkv (C → 3C) and out (C → C), batch 2
    assert flops.get_total_flops() == projections + 2 * 2 * 2 * 48 * 48 * 16


# ---- text conditioning ------------------------------------------------------------------------


def test_text_changes_the_output_through_tokens_and_through_pooled(ci_model, ci_input):
    x, t = ci_input
    a = caption(3, 6, CI.text_dim, seed=10)
    b = caption(3, 6, CI.text_dim, seed=11)
    with torch.no_grad():
        out_a = ci_model(x, t, a)
        tokens_only = ci_model(x, t, TextCondition(b.tokens, a.mask, a.pooled))
        pooled_only = ci_model(x, t, TextCondition(a.tokens, a.mask, b.pooled))
        null = ci_model(x, t, None)
    for other in (tokens_only, pooled_only, null):
        assert (other - out_a).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every item changes


def test_masked_padding_tokens_do_not_change_the_output(ci_model, ci_input):
    x, t = ci_input
    text = caption(3, 7, CI.text_dim, seed=12, lengths=[7, 3, 1])
    junk = text.tokens.clone()
    junk[~text.mask] = 1e4 * torch.randn(int((~text.mask).sum()), CI.text_dim)
    junk[1, 5] = float("nan")  # even NaN in the padding never reaches the network
    with torch.no_grad():
        clean = ci_model(x, t, text)
        padded = ci_model(x, t, TextCondition(junk, text.mask, text.pooled))
        longer = ci_model(x, t, TextCondition(torch.nn.functional.pad(text.tokens, (0, 0, 0, 5)),
                                              torch.nn.functional.pad(text.mask, (0, 5)), text.pooled))
    assert torch.equal(clean, padded)
    torch.testing.assert_close(clean, longer, rtol=0, atol=1e-6)  # extra padding: same up to summation order


def test_none_is_exactly_the_null_condition_and_fully_masked_rows_are_finite(ci_model, ci_input):
    x, t = ci_input
    with torch.no_grad():
        none = ci_model(x, t)
        null = ci_model(x, t, TextCondition.null(3, CI.text_dim))
        null_long = ci_model(x, t, TextCondition.null(3, CI.text_dim, length=9))
        mixed = ci_model(x, t, caption(3, 4, CI.text_dim, 14).where(torch.tensor([True, False, True]),
                                                                    TextCondition.null(3, CI.text_dim, length=4)))
    assert torch.equal(none, null)
    torch.testing.assert_close(null_long, null, rtol=0, atol=1e-6)
    assert mixed.isfinite().all()
    torch.testing.assert_close(mixed[1], null[1], rtol=0, atol=1e-6)  # a null row is unaffected by its batch


def test_cross_attention_to_a_fully_masked_caption_adds_the_same_vector_at_every_pixel():
    layer = CrossAttention(8, text_dim=6, heads=2, groups=4)
    x = torch.randn(2, 8, 4, 5)
    with torch.no_grad():
        delta = layer(x, torch.randn(2, 3, 6), torch.zeros(2, 3, dtype=torch.bool)) - x
    assert delta.isfinite().all()
    torch.testing.assert_close(delta, delta[:, :, :1, :1].expand_as(delta), rtol=0, atol=1e-6)


def test_self_attention_commutes_with_permuting_the_pixels():
    layer = SelfAttention(8, heads=2, groups=4)
    x = torch.randn(2, 8, 4, 6)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(0))

    def shuffle(v):
        return v.flatten(2)[:, :, perm].reshape(v.shape)

    with torch.no_grad():
        torch.testing.assert_close(layer(shuffle(x)), shuffle(layer(x)), rtol=1e-5, atol=1e-5)


def test_resblock_changes_channels_through_a_1x1_skip_and_uses_the_embedding():
    for mode in ("add", "scale_shift"):
        block = ResBlock(8, 12, emb_dim=10, groups=4, time_mode=mode)
        assert isinstance(block.skip, torch.nn.Conv2d) and block.skip.kernel_size == (1, 1)
        x, e = torch.randn(2, 8, 5, 7), torch.randn(2, 10)
        with torch.no_grad():
            out = block(x, e)
            assert out.shape == (2, 12, 5, 7)
            assert (block(x, e + 1) - out).abs().max() > 1e-4
    assert isinstance(ResBlock(8, 8, emb_dim=10, groups=4).skip, torch.nn.Identity)


def test_unconditional_network_rejects_text():
    cfg = dataclasses.replace(CI, text_dim=0, cross_attention=(False,) * 4)
    model = UNet(cfg)
    assert model(torch.zeros(1, 1, 8, 8), torch.zeros(1)).shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.zeros(1, 1, 8, 8), torch.zeros(1), caption(1, 2, 12, 0))


def test_wrong_caption_width_or_batch_is_a_clear_error(ci_model):
    with pytest.raises(ValueError, match="width 12"):
        ci_model(torch.zeros(1, 1, 8, 8), torch.zeros(1), caption(1, 2, 384, 0))
    with pytest.raises(ValueError, match="for 2 items"):
        ci_model(torch.zeros(2, 1, 8, 8), torch.zeros(2), caption(1, 2, 12, 0))
    with pytest.raises(ValueError, match=r"expected x of shape \(B, 1, H, W\)"):
        ci_model(torch.zeros(1, 8, 8), torch.zeros(1))


# ---- training and determinism ------------------------------------------------------------------


def test_gradients_reach_every_parameter():
    model = UNet(CI, seed=0)
    x = torch.randn(2, 1, 16, 32)
    text = caption(2, 5, CI.text_dim, 3, lengths=[5, 2])
    loss = (model(x, torch.tensor([3, 700]), text) - x).pow(2).mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_timesteps_may_be_ints_floats_or_one_scalar(ci_model, ci_input):
    x, _ = ci_input
    with torch.no_grad():
        as_long = ci_model(x, torch.tensor([250, 250, 250]))
        as_float = ci_model(x, torch.tensor([250.0, 250.0, 250.0]))
        as_scalar = ci_model(x, 250)
        half = ci_model(x, torch.tensor([250.5, 250.5, 250.5]))
    assert torch.equal(as_long, as_float) and torch.equal(as_long, as_scalar)
    assert not torch.equal(as_long, half)  # real-valued t is used as is, not rounded
    with pytest.raises(ValueError, match=r"t of shape \(3,\)"):
        ci_model(x, torch.zeros(2))


def test_same_seed_same_network_and_global_random_state_untouched(ci_input):
    x, t = ci_input
    state = torch.random.get_rng_state()
    a, b = UNet(CI, seed=7).eval(), UNet(CI, seed=7).eval()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(UNet(CI, seed=8).stem.weight, a.stem.weight)
    with torch.no_grad():
        assert torch.equal(a(x, t), b(x, t)) and torch.equal(a(x, t), a(x, t))


# ---- configs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_config_round_trips_through_json(name, tmp_path):
    cfg = UNetConfig.preset(name)
    assert UNetConfig.from_json(cfg.to_json()) == cfg
    cfg.to_json(tmp_path / "unet.json")
    loaded = UNetConfig.from_json(tmp_path / "unet.json")
    assert loaded == cfg and isinstance(loaded.down_channels, tuple) and hash(loaded) == hash(cfg)


def test_unknown_preset_and_unknown_json_key_are_named():
    with pytest.raises(ValueError, match="unknown U-Net preset 'big'; expected one of ci, cpu, seed128"):
        UNetConfig.preset("big")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['channels'\]"):
        UNetConfig.from_dict({"channels": [64]})


@pytest.mark.parametrize("change, message", [
    (dict(up_channels=(32,)), "same non-zero length"),
    (dict(self_attention=(True, False)), r"self_attention: expected 4 true/false flags"),
    (dict(cross_attention=(0, 1, 1, 1)), r"cross_attention: expected 4 true/false flags"),
    (dict(res_blocks=(1, 2)), r"res_blocks: expected one integer or 4"),
    (dict(res_blocks=0), "res_blocks: expected a positive integer"),
    (dict(groups=3), r"groups: 3 groups do not divide the 8 channels of level 1"),
    (dict(heads=3), r"heads: 3 heads do not divide the 16 channels of level 2"),
    (dict(text_dim=0), "cross_attention: needs text_dim > 0"),
    (dict(text_dim=-1), "text_dim: expected an integer >= 0"),
    (dict(time_embed_dim=15), "time_embed_dim: must be even"),
    (dict(time_mode="film"), "time_mode: expected one of"),
    (dict(activation="tanh"), "activation: expected one of"),
    (dict(dropout=1.0), r"dropout: expected a probability in \[0, 1\)"),
    (dict(stem_stride=0), "stem_stride: expected a positive integer"),
    (dict(down_channels=(8, 0)), "down_channels: expected a positive integer"),
    (dict(down_channels=8), "down_channels: expected a list"),
])
def test_invalid_config_is_rejected_with_the_field_named(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(CI, **change)
