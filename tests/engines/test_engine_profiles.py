"""Optimization profiles: defaults, validation before any build, and profile selection (pure Python)."""

from __future__ import annotations

import pytest

from whisper_export.backends.tensorrt.profiles import (
    EngineLimits,
    Profile,
    ProfileError,
    ShapeRange,
    check_profiles_cover,
    decoder_profiles,
    encoder_profiles,
    select_profile,
)
from whisper_export import graph_io as io
from whisper_export.dims import ModelDims

TINY = ModelDims(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4, n_vocab=51864,
                 n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)


def _decoder_shapes(rows: int, n_new: int, capacity: int, n_audio: int, n_logits: int = 1) -> dict:
    shapes = {io.TOKENS: (rows, n_new), io.OFFSETS: (rows,), io.LOGIT_POSITIONS: (n_logits,)}
    shapes.update({n: (rows, 6, capacity, 64) for n in io.self_inputs(4)})
    shapes.update({n: (n_audio, 6, 1500, 64) for n in io.cross_inputs(4)})
    return shapes


def test_default_limits_for_tiny():
    lim = EngineLimits().resolved(TINY)
    assert (lim.max_batch, lim.max_beam, lim.max_rows) == (16, 5, 80)
    assert lim.max_tokens == 448 // 2 + 4  # <|startofprev|> + 223 prompt tokens + SOT sequence + <|notimestamps|>
    assert (lim.max_capacity, lim.opt_capacity, lim.opt_rows, lim.opt_batch) == (448, 228, 1, 1)


def test_encoder_profile_fixes_frames_and_spans_the_batch():
    (p,) = encoder_profiles(TINY, EngineLimits(max_batch=8))
    assert p.shapes[io.MEL] == ShapeRange((1, 80, 3000), (1, 80, 3000), (8, 80, 3000))


def test_decoder_profiles_step_then_prompt():
    step, prompt = decoder_profiles(TINY, EngineLimits())
    assert (step.name, prompt.name) == ("step", "prompt")
    assert step.shapes[io.TOKENS] == ShapeRange((1, 1), (1, 1), (80, 1))
    assert step.shapes[io.LOGIT_POSITIONS] == ShapeRange((1,), (1,), (1,))
    assert prompt.shapes[io.TOKENS] == ShapeRange((1, 1), (1, 4), (80, 228))
    assert prompt.shapes[io.LOGIT_POSITIONS].max == (228,)
    assert prompt.shapes["in_self_v_3"] == ShapeRange((1, 6, 1, 64), (1, 6, 228, 64), (80, 6, 448, 64))
    assert prompt.shapes["in_cross_k_0"] == ShapeRange((1, 6, 1500, 64), (1, 6, 1500, 64), (16, 6, 1500, 64))
    (single,) = decoder_profiles(TINY, EngineLimits(split_step=False))
    assert single.name == "prompt"


def test_selection_steps_use_the_step_profile_and_prompts_the_prompt_profile():
    profiles = decoder_profiles(TINY, EngineLimits())
    assert select_profile(profiles, _decoder_shapes(rows=10, n_new=1, capacity=227, n_audio=2)) == 0
    assert select_profile(profiles, _decoder_shapes(rows=10, n_new=4, capacity=227, n_audio=2, n_logits=2)) == 1
    assert select_profile(profiles, _decoder_shapes(rows=80, n_new=228, capacity=448, n_audio=16, n_logits=228)) == 1


def test_selection_error_names_every_profile_and_the_tensor_out_of_range():
    profiles = decoder_profiles(TINY, EngineLimits())
    with pytest.raises(ProfileError) as info:
        select_profile(profiles, _decoder_shapes(rows=81, n_new=1, capacity=448, n_audio=16), "decoder.engine")
    msg = str(info.value)
    assert msg.startswith("decoder.engine: no optimization profile accepts these shapes")
    assert "profile 0 'step': in_tokens (81, 1) is outside min (1, 1) .. max (80, 1)" in msg
    assert "profile 1 'prompt': in_tokens (81, 1) is outside min (1, 1) .. max (80, 228)" in msg
    assert "rebuild" in msg
    with pytest.raises(ProfileError, match=r"in_tokens \(4, 300\) is outside"):
        select_profile(profiles, _decoder_shapes(rows=4, n_new=300, capacity=448, n_audio=1))


@pytest.mark.parametrize("limits, message", [
    (EngineLimits(max_batch=16, max_beam=5, max_rows=79), "max rows 79 < max_batch 16 x max_beam 5 = 80"),
    (EngineLimits(max_capacity=449), "max_capacity: received 449, expected <= n_text_ctx 448"),
    (EngineLimits(max_tokens=300, max_capacity=256), "max_tokens: received 300, expected <= max_capacity 256"),
    (EngineLimits(opt_batch=17), "opt_batch: received 17, expected <= max_batch 16"),
    (EngineLimits(opt_capacity=500), "opt_capacity: received 500, expected <= max_capacity 448"),
    (EngineLimits(max_beam=0), "max_beam: received 0, expected a positive int"),
    (EngineLimits(max_beam=16), "max_beam: received 16, expected at most 15"),
    (EngineLimits(max_batch=800), "max_rows: received 4000 (max_batch x max_beam), expected at most 3728"),
])
def test_limits_are_verified_before_building(limits, message):
    with pytest.raises(ProfileError, match=message.replace("(", r"\(").replace(")", r"\)")):
        decoder_profiles(TINY, limits)


def test_shape_range_verification():
    with pytest.raises(ProfileError, match="expected min <= opt <= max"):
        Profile("p", {"x": ShapeRange((1,), (5,), (4,))}).verify("g")
    with pytest.raises(ProfileError, match="expected >= 1"):
        Profile("p", {"x": ShapeRange((0,), (1,), (4,))}).verify("g")
    with pytest.raises(ProfileError, match="equal ranks"):
        Profile("p", {"x": ShapeRange((1,), (1, 1), (4,))}).verify("g")


def test_profiles_must_cover_the_network_inputs_and_respect_fixed_axes():
    profiles = encoder_profiles(TINY, EngineLimits())
    check_profiles_cover(profiles, {io.MEL: (-1, 80, 3000)}, "encoder")
    with pytest.raises(ProfileError, match="axis 1 is fixed at 128 in the network"):
        check_profiles_cover(profiles, {io.MEL: (-1, 128, 3000)}, "encoder")
    with pytest.raises(ProfileError, match=r"missing \['extra'\]"):
        check_profiles_cover(profiles, {io.MEL: (-1, 80, 3000), "extra": (-1,)}, "encoder")


def test_profile_json_round_trip():
    for p in decoder_profiles(TINY, EngineLimits()):
        assert Profile.from_json(p.to_json()) == Profile(p.name, dict(p.shapes))
