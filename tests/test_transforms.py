"""InputTransform / collate / OutputTransform on synthetic raw items for every config type."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from data_adapters.config_types import IMAGE_SLOTS
from data_adapters.image_ops import crop_rotate, resize_with_pad
from data_adapters.normalization import NormStats, Stats, normalize
from data_adapters.registry import get_config_type, list_config_types
from data_adapters.tokenizer import PromptTokenizer, train_tiny_tokenizer
from data_adapters.transforms import InputTransform, OutputTransform, collate

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny.model")


def _raw(cfg, seed=0, *, image_hw=(96, 128)):
    rng = np.random.default_rng(seed)
    horizon = cfg.action_horizon
    return {
        "state": rng.normal(0.5, 2.0, cfg.state_dim).astype(np.float32),
        "actions": rng.normal(-0.5, 3.0, (horizon, cfg.action_dim)).astype(np.float32),
        "action_is_pad": np.arange(horizon) >= horizon - 2,
        "images": {key: rng.integers(0, 256, (*image_hw, 3), dtype=np.uint8) for key in cfg.camera_keys},
        "task": "pick_up the black bowl\n",
        "episode_index": 3,
        "frame_index": 7,
        "index": 42,
    }


def _stats(dim, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(0.0, 3.0, (400, dim))
    return Stats(
        mean=values.mean(0),
        std=values.std(0),
        q01=np.quantile(values, 0.01, 0),
        q99=np.quantile(values, 0.99, 0),
    )


def _norm_stats(cfg):
    return NormStats(state=_stats(cfg.state_dim, 1), actions=_stats(cfg.action_dim, 2))


def _transforms(cfg, tokenizer_path, **kwargs):
    norm_stats = _norm_stats(cfg)
    tokenizer = PromptTokenizer(tokenizer_path, cfg.max_token_len)
    return InputTransform(cfg, norm_stats, tokenizer, **kwargs), OutputTransform(cfg, norm_stats)


@pytest.mark.parametrize("name", list_config_types())
def test_batch_contract(name, tokenizer_path):
    cfg = get_config_type(name)
    transform, _ = _transforms(cfg, tokenizer_path, train=True)
    batch = collate([transform(_raw(cfg, seed)) for seed in range(3)])
    assert set(batch) == {
        "images",
        "image_masks",
        "state",
        "tokens",
        "token_mask",
        "actions",
        "action_is_pad",
    }
    assert tuple(batch["images"]) == IMAGE_SLOTS and tuple(batch["image_masks"]) == IMAGE_SLOTS
    for slot in IMAGE_SLOTS:
        image, mask = batch["images"][slot], batch["image_masks"][slot]
        assert image.shape == (3, 3, 224, 224) and image.dtype == torch.float32
        assert mask.shape == (3,) and mask.dtype == torch.bool
        assert image.min() >= -1.0 and image.max() <= 1.0
        assert bool(mask.all()) == bool(cfg.cameras[slot]) and bool(mask.any()) == bool(cfg.cameras[slot])
        if not cfg.cameras[slot]:
            assert (image == -1.0).all()
    horizon, length = cfg.action_horizon, cfg.max_token_len
    assert batch["state"].shape == (3, 32) and batch["state"].dtype == torch.float32
    assert (batch["state"][:, cfg.state_dim :] == 0).all() and (batch["state"][:, : cfg.state_dim] != 0).all()
    assert batch["actions"].shape == (3, horizon, 32) and batch["actions"].dtype == torch.float32
    assert (batch["actions"][..., cfg.action_dim :] == 0).all()
    assert batch["action_is_pad"].dtype == torch.bool and batch["action_is_pad"].shape == (3, horizon)
    assert batch["action_is_pad"][:, -2:].all() and not batch["action_is_pad"][:, :-2].any()
    assert batch["tokens"].shape == batch["token_mask"].shape == (3, length)
    assert batch["tokens"].dtype == torch.int64 and batch["token_mask"].dtype == torch.bool
    assert (batch["tokens"][:, 0] == 2).all()  # BOS
    num_real = batch["token_mask"].sum(1)
    assert (batch["token_mask"] == (torch.arange(length) < num_real[:, None])).all()  # right padding
    assert (batch["tokens"][~batch["token_mask"]] == 0).all()


@pytest.mark.parametrize("name", list_config_types())
def test_state_and_actions_are_normalized_after_delta(name, tokenizer_path):
    cfg = get_config_type(name)
    transform, _ = _transforms(cfg, tokenizer_path, train=False)
    raw = _raw(cfg)
    item = transform(raw)
    norm_stats = _norm_stats(cfg)
    expected_state = normalize(raw["state"], norm_stats.state, cfg.normalization)
    np.testing.assert_allclose(item["state"][: cfg.state_dim].numpy(), expected_state, rtol=1e-6)
    delta = raw["actions"].copy()
    for dim in cfg.delta_dims:
        delta[:, dim] -= raw["state"][dim]
    expected = normalize(delta, norm_stats.actions, cfg.normalization)
    np.testing.assert_allclose(item["actions"][:, : cfg.action_dim].numpy(), expected, rtol=1e-6, atol=1e-6)


def _round_trip_cases():
    cases = [(name, None) for name in list_config_types()]
    # Both normalization modes with and without delta dims.
    cases += [("pi0_libero", "quantile"), ("pi05_libero", "zscore"), ("pi05_metaworld", "zscore")]
    return cases


@pytest.mark.parametrize(("name", "mode"), _round_trip_cases())
def test_output_of_input_returns_original_actions(name, mode, tokenizer_path):
    cfg = get_config_type(name)
    if mode:
        cfg = dataclasses.replace(cfg, name=f"{name}_{mode}", normalization=mode)
    transform, output = _transforms(cfg, tokenizer_path, train=True)
    raws = [_raw(cfg, seed) for seed in range(2)]
    batch = collate([transform(raw) for raw in raws])
    states = np.stack([raw["state"] for raw in raws])
    originals = np.stack([raw["actions"] for raw in raws])
    restored = output(batch["actions"], torch.from_numpy(states))
    assert isinstance(restored, torch.Tensor) and restored.shape == originals.shape
    np.testing.assert_allclose(restored.numpy(), originals, atol=1e-5)
    np.testing.assert_allclose(output(batch["actions"].numpy(), states), originals, atol=1e-5)


def test_pi0_libero_delta_dims_are_relative_to_state(tokenizer_path):
    cfg = get_config_type("pi0_libero")
    assert cfg.delta_dims == (0, 1, 2, 3, 4, 5)
    raw = _raw(cfg)
    raw["actions"][:] = raw["state"][:7]  # actions equal to the state -> zero deltas, absolute gripper
    norm_stats = _norm_stats(cfg)
    transform = InputTransform(cfg, norm_stats, PromptTokenizer(tokenizer_path, 48), train=False)
    actions = transform(raw)["actions"][:, :7].numpy()
    zero = normalize(np.zeros(7, np.float32), norm_stats.actions, "zscore")
    gripper = normalize(raw["state"][:7], norm_stats.actions, "zscore")[6]
    np.testing.assert_allclose(actions[:, :6], np.broadcast_to(zero[:6], (cfg.action_horizon, 6)), rtol=1e-6)
    np.testing.assert_allclose(actions[:, 6], gripper, rtol=1e-6)


def test_prompt_formats(tokenizer_path):
    cfg = get_config_type("pi05_libero")
    transform, _ = _transforms(cfg, tokenizer_path, train=False)
    tokenizer = PromptTokenizer(tokenizer_path, cfg.max_token_len)
    item = transform(_raw(cfg))
    assert tokenizer.decode(item["tokens"].numpy(), item["token_mask"].numpy()) == "pick up the black bowl\n"
    discrete = dataclasses.replace(cfg, name="pi05_libero_discrete", discrete_state=True)
    transform, _ = _transforms(discrete, tokenizer_path, train=False)
    item = transform(_raw(discrete))
    state = item["state"][: discrete.state_dim].numpy()
    bins = " ".join(str(b) for b in np.digitize(state, np.linspace(-1, 1, 257)[:-1]) - 1)
    assert (
        tokenizer.decode(item["tokens"].numpy(), item["token_mask"].numpy())
        == f"Task: pick up the black bowl, State: {bins};\nAction: "
    )


def test_resize_with_pad_keeps_aspect_and_centres(tokenizer_path):
    image = np.full((96, 128, 3), 200, dtype=np.uint8)
    cfg = get_config_type("pi05_metaworld")
    raw = {"state": np.zeros(4, np.float32), "images": {"observation.image": image}, "task": "reach"}
    stats = NormStats(state=_stats(4, 0), actions=_stats(4, 1))
    item = InputTransform(cfg, stats, PromptTokenizer(tokenizer_path, 200), train=False)(raw)
    base = item["images"]["base_0_rgb"]
    # 96x128 -> 168x224, 28 rows of black padding above and below.
    assert (base[:, :28] == -1).all() and (base[:, 196:] == -1).all()
    np.testing.assert_allclose(base[:, 28:196].numpy(), 200 / 127.5 - 1, rtol=1e-6)
    assert "actions" not in item  # inference item: no actions
    square = torch.rand(3, 224, 224) * 255
    assert resize_with_pad(square) is square
    tall = resize_with_pad(torch.full((3, 300, 100), 10.0))
    # 300x100 -> 224x74, 75 columns of padding on the left and 75 on the right.
    assert (tall[:, :, :75] == 0).all() and (tall[:, :, 75 + 74 :] == 0).all()
    assert torch.allclose(tall[:, :, 75:149], torch.tensor(10.0))
    pixels = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 256, 256), dtype=np.uint8))
    resized = resize_with_pad(pixels)
    assert resized.dtype == torch.uint8 and resized.shape == (3, 224, 224)
    # The fast uint8 path matches the float path to one grey level.
    assert (resized.float() - resize_with_pad(pixels.float())).abs().max() < 1.01


def test_augmentation_deterministic_and_only_when_training(tokenizer_path):
    cfg = get_config_type("pi05_calvin")
    raw = _raw(cfg)
    plain = _transforms(cfg, tokenizer_path, train=False)[0](raw)
    eval_augment = _transforms(cfg, tokenizer_path, train=False, augment=True, seed=0)[0](raw)
    train_plain = _transforms(cfg, tokenizer_path, train=True, augment=False, seed=0)[0](raw)
    first = _transforms(cfg, tokenizer_path, train=True, augment=True, seed=0)[0]
    second = _transforms(cfg, tokenizer_path, train=True, augment=True, seed=0)[0]
    other_seed = _transforms(cfg, tokenizer_path, train=True, augment=True, seed=1)[0]
    a, b, c = first(raw), second(raw), other_seed(raw)
    for slot in ("base_0_rgb", "left_wrist_0_rgb"):
        assert torch.equal(eval_augment["images"][slot], plain["images"][slot])
        assert torch.equal(train_plain["images"][slot], plain["images"][slot])
        assert torch.equal(a["images"][slot], b["images"][slot])
        assert not torch.equal(a["images"][slot], plain["images"][slot])
        assert not torch.equal(a["images"][slot], c["images"][slot])
        assert a["images"][slot].min() >= -1 and a["images"][slot].max() <= 1
    assert not torch.equal(first(raw)["images"]["base_0_rgb"], a["images"]["base_0_rgb"])  # drawn per sample
    assert (a["images"]["right_wrist_0_rgb"] == -1).all()
    assert torch.equal(a["state"], plain["state"]) and torch.equal(a["actions"], plain["actions"])


def test_wrist_cameras_get_colour_jitter_only(tokenizer_path):
    cfg = get_config_type("pi05_calvin")
    raw = _raw(cfg)
    ramp = np.broadcast_to(np.arange(224, dtype=np.uint8)[None, :, None], (224, 224, 3)).copy()
    raw["images"] = {"video.image_base": ramp, "video.image_wrist": ramp}
    item = _transforms(cfg, tokenizer_path, train=True, augment=True, seed=3)[0](raw)
    wrist, base = item["images"]["left_wrist_0_rgb"], item["images"]["base_0_rgb"]
    # Per-pixel jitter of a column ramp stays constant down each column; crop/rotate does not.
    assert torch.allclose(wrist, wrist[:, :1].expand_as(wrist), atol=1e-6)
    assert not torch.allclose(base, base[:, :1].expand_as(base), atol=1e-3)


def test_crop_rotate_deterministic_given_generator():
    image = torch.rand(3, 224, 224)
    a = crop_rotate(image, torch.Generator().manual_seed(5))
    b = crop_rotate(image, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, image)


@pytest.mark.parametrize(
    ("key", "index", "pattern"),
    [
        ("state", (2,), r"state has NaN or inf values \(episode_index=3, frame_index=7\)"),
        ("actions", (1, 0), r"actions has NaN or inf values \(episode_index=3, frame_index=7\)"),
    ],
)
def test_non_finite_values_name_episode_and_frame(key, index, pattern, tokenizer_path):
    cfg = get_config_type("pi0_libero")
    raw = _raw(cfg)
    raw[key][index] = np.nan if key == "state" else np.inf
    transform, _ = _transforms(cfg, tokenizer_path, train=True)
    with pytest.raises(ValueError, match=pattern):
        transform(raw)


def test_bad_raw_items_and_mismatched_stats(tokenizer_path):
    cfg = get_config_type("pi0_libero")
    transform, _ = _transforms(cfg, tokenizer_path, train=True)
    raw = _raw(cfg)
    del raw["images"]["wrist_image"]
    with pytest.raises(
        ValueError,
        match=r"no image 'wrist_image' for slot 'left_wrist_0_rgb' "
        r"\(episode_index=3, frame_index=7\); it has \['image'\]",
    ):
        transform(raw)
    raw = _raw(cfg)
    raw["actions"] = raw["actions"][:10]
    with pytest.raises(ValueError, match=r"actions has shape \(10, 7\), expected \(50, 7\)"):
        transform(raw)
    raw = _raw(cfg)
    raw["images"]["image"] = raw["images"]["image"].astype(np.float32)
    with pytest.raises(ValueError, match=r"camera 'image': expected a uint8 \[H, W, 3\] image"):
        transform(raw)
    wrong = NormStats(state=_stats(7, 0), actions=_stats(7, 1))
    with pytest.raises(
        ValueError, match=r"norm stats for state have 7 dims but config type 'pi0_libero' has 8"
    ):
        InputTransform(cfg, wrong, PromptTokenizer(tokenizer_path, 48), train=True)
    with pytest.raises(ValueError, match=r"tokenizer max_len 200 != 'pi0_libero' max_token_len 48"):
        InputTransform(cfg, _norm_stats(cfg), PromptTokenizer(tokenizer_path, 200), train=True)


def test_dataloader_workers_get_distinct_reproducible_augmentation(tokenizer_path):
    cfg = get_config_type("pi05_metaworld")
    transform = _transforms(cfg, tokenizer_path, train=True, augment=True, seed=0)[0]
    raw = _raw(cfg, image_hw=(64, 64))

    class Same(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return transform(raw)

    def run():
        torch.manual_seed(0)
        loader = torch.utils.data.DataLoader(Same(), batch_size=1, num_workers=2, collate_fn=collate)
        return [batch["images"]["base_0_rgb"] for batch in loader]

    first, second = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[1])  # the two workers draw different augmentations
