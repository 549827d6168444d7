"""Attention-mask and position semantics of the prefix-LM, as masks and as model behaviour."""

from __future__ import annotations

import pytest
import torch

from model_zoo.joint_transformer import (
    MASK_VALUE,
    additive_mask,
    make_attention_mask_2d,
    positions_from_pad,
)
from model_zoo.pi0 import Pi0Model
from tests.model_helpers import random_batch, seeded_model, tiny_config

N_IMAGE_TOKENS = 3 * 256


def flags(*values: int) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.bool)


def test_all_zero_flags_are_bidirectional_and_all_one_causal():
    valid = flags(1, 1, 1, 1)
    assert make_attention_mask_2d(valid, flags(0, 0, 0, 0)).all()
    causal = make_attention_mask_2d(valid, flags(1, 1, 1, 1))[0]
    assert torch.equal(causal, torch.tril(torch.ones(4, 4, dtype=torch.bool)))


def test_pi0_layout_prefix_state_actions():
    # prefix (3 tokens, last is padding) | state (ar 1) | 3 actions (ar 1, 0, 0)
    valid = flags(1, 1, 0, 1, 1, 1, 1)
    ar = flags(0, 0, 0, 1, 1, 0, 0)
    mask = make_attention_mask_2d(valid, ar)[0].int()
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0, 0],  # prefix: bidirectional within the prefix, never the suffix
            [1, 1, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0, 0, 0],  # padding sees nothing and is seen by nobody
            [1, 1, 0, 1, 0, 0, 0],  # state: prefix + itself, not the actions
            [1, 1, 0, 1, 1, 1, 1],  # actions: prefix, state and the whole action block
            [1, 1, 0, 1, 1, 1, 1],
            [1, 1, 0, 1, 1, 1, 1],
        ]
    )
    assert torch.equal(mask, expected)


def test_positions_skip_padding_and_additive_mask_is_finite():
    valid = flags(1, 0, 0, 1, 1, 0)
    assert positions_from_pad(valid).tolist() == [[0, 0, 0, 1, 2, 2]]
    additive = additive_mask(make_attention_mask_2d(valid, flags(0, 0, 0, 0, 0, 0)))
    assert additive.shape == (1, 1, 6, 6)
    assert torch.isfinite(additive).all()
    assert additive.unique().tolist() == [pytest.approx(MASK_VALUE, rel=1e-6), 0.0]


def test_mask_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="pad_masks .* and ar_masks .* differ"):
        make_attention_mask_2d(flags(1, 1), flags(0, 0, 0))


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_model_masks_prefix_never_sees_suffix(model_type):
    config = tiny_config(model_type)
    model = Pi0Model(config).eval()
    batch = random_batch(config)
    with torch.no_grad():
        context = model.encode_prefix(batch, use_kv_cache=False)
    p = context.prefix_len
    assert p == N_IMAGE_TOKENS + config.max_token_len
    mask = context.mask_2d
    assert not mask[:, :p, p:].any()
    # Sample 0 is fully valid: the first image token and the last text token see each other.
    assert mask[0, 0, p - 1] and mask[0, p - 1, 0]
    # Sample 1: the masked left-wrist camera (tokens 256..511) and padded text are invisible.
    assert not mask[1, :, 256:512].any()
    assert not mask[1, :, N_IMAGE_TOKENS + config.max_token_len // 2 : p].any()
    # Its text starts right after the two valid cameras.
    assert context.positions[1, N_IMAGE_TOKENS].item() == 512
    if model_type == "pi0":
        assert not mask[:, p, p + 1 :].any()  # the state token does not see the actions
        assert mask[:, p + 1 :, p].all()  # the actions see the state token
    assert mask[:, -config.action_horizon :, -config.action_horizon :].all()  # action block


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_padding_content_does_not_change_outputs(model_type):
    config = tiny_config(model_type)
    model = seeded_model(config).eval()
    batch = random_batch(config)
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    time = torch.tensor([0.3, 0.7])
    changed = {**batch, "images": dict(batch["images"]), "tokens": batch["tokens"].clone()}
    changed["images"]["left_wrist_0_rgb"] = batch["images"]["left_wrist_0_rgb"].clone()
    changed["images"]["left_wrist_0_rgb"][1] = 0.5  # masked camera of sample 1
    changed["tokens"][1, config.max_token_len // 2 :] = 7  # padded tokens of sample 1
    with torch.no_grad():
        loss = model.compute_loss(batch, noise=noise, time=time)
        loss_changed = model.compute_loss(changed, noise=noise, time=time)
        # Same change on a *valid* camera (sample 0) must matter: the test can fail.
        changed["images"]["left_wrist_0_rgb"][0] = 0.5
        loss_valid_changed = model.compute_loss(changed, noise=noise, time=time)
    assert torch.allclose(loss[1], loss_changed[1], rtol=0, atol=1e-6)
    assert (loss_valid_changed[0] - loss[0]).abs().max() > 1e-4


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_action_tokens_attend_to_each_other_and_to_the_state(model_type):
    config = tiny_config(model_type)
    model = seeded_model(config).eval()
    batch = random_batch(config, padded=False)
    time = torch.tensor([0.5, 0.5])
    x_t = torch.randn(2, config.action_horizon, config.action_dim)
    later = x_t.clone()
    later[:, -1] += 1.0  # change only the last action token
    # Effects are small (784 prefix tokens dilute one suffix token), but a masked change would give a
    # bit-identical output, so anything above float32 noise (~1e-7) shows the token is attended.
    with torch.no_grad():
        v = model.velocity(batch, x_t, time)
        v_later = model.velocity(batch, later, time)
        moved_state = {**batch, "state": batch["state"] + 1.0}
        v_state = model.velocity(moved_state, x_t, time)
    assert (v[:, 0] - v_later[:, 0]).abs().max() > 1e-6  # bidirectional action block
    state_effect = (v - v_state).abs().max()
    if model_type == "pi0":
        assert state_effect > 1e-6  # actions read the state token
    else:
        assert state_effect == 0  # pi0.5 has no state token (state is in the prompt)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_kv_cache_sampling_equals_no_cache(model_type):
    config = tiny_config(model_type)
    model = seeded_model(config).eval()
    batch = random_batch(config)
    noise = torch.randn(
        2, config.action_horizon, config.action_dim, generator=torch.Generator().manual_seed(3)
    )
    cached = model.sample_actions(batch, num_steps=2, noise=noise)
    uncached = model.sample_actions(batch, num_steps=2, noise=noise, use_kv_cache=False)
    assert cached.shape == (2, config.action_horizon, config.action_dim)
    assert torch.allclose(cached, uncached, rtol=0, atol=2e-6)
    assert (cached - noise).abs().max() > 1e-3


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_two_pass_training_equals_single_joint_attention(model_type):
    config = tiny_config(model_type)
    model = seeded_model(config).eval()
    batch = random_batch(config)
    time = torch.tensor([0.2, 0.9])
    x_t = torch.randn(2, config.action_horizon, config.action_dim)
    with torch.no_grad():
        v_two_pass = model.velocity(batch, x_t, time)
        context = model.encode_prefix(batch, use_kv_cache=False)
        v_joint = model.denoise_step(context, batch["state"], x_t, time)
    assert torch.allclose(v_two_pass, v_joint, rtol=0, atol=2e-6)
