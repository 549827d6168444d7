"""The whole data path on files: every config type, every LeRobot layout -> model-ready batches.

Generated dataset in the type's schema (our writer) -> exact norm stats -> LeRobotFrames ->
InputTransform -> collate, checked against the batch contract (documented on ``Pi0Model``), and the output
transform brings the predicted-as-truth actions back to the dataset's values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_adapters.config_types import IMAGE_SLOTS
from data_adapters.lerobot_reader import LeRobotFrames
from data_adapters.registry import get_config_type, list_config_types
from data_adapters.synthetic import make_synthetic_dataset
from data_adapters.tokenizer import PromptTokenizer, train_tiny_tokenizer
from data_adapters.transforms import InputTransform, OutputTransform, collate
from steps.stats.norm_stats import compute_norm_stats

LAYOUTS = [("v3.0", "image"), ("v3.0", "video"), ("v2.1", "video"), ("v2.0", "image")]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tiny.model")


@pytest.mark.parametrize("layout", LAYOUTS, ids=["-".join(x) for x in LAYOUTS])
@pytest.mark.parametrize("name", list_config_types())
def test_dataset_to_batches(name, layout, tokenizer_path, tmp_path):
    version, storage = layout
    cfg = get_config_type(name)
    root = make_synthetic_dataset(
        tmp_path / "ds", cfg, num_episodes=2, min_len=4, max_len=7, image_size=32,
        version=version, image_storage=storage, seed=3,
    )  # fmt: skip
    stats = compute_norm_stats(cfg, root, [0, 1], out_path=tmp_path / "norm_stats.json", use_cache=False)
    frames = LeRobotFrames(root, state_keys=cfg.state_keys, action_keys=cfg.action_keys,
                           camera_keys=cfg.camera_keys, horizon=cfg.action_horizon, cache_dir=tmp_path / "cache")  # fmt: skip
    tokenizer = PromptTokenizer(tokenizer_path, cfg.max_token_len)
    transform = InputTransform(cfg, stats, tokenizer, train=True, augment=True, seed=0)
    raws = [frames[i] for i in range(len(frames))]
    batch = collate([transform(raw) for raw in raws])

    n, horizon = len(raws), cfg.action_horizon
    assert tuple(batch["images"]) == IMAGE_SLOTS
    for slot in IMAGE_SLOTS:
        image, mask = batch["images"][slot], batch["image_masks"][slot]
        assert image.shape == (n, 3, 224, 224) and image.dtype == torch.float32
        assert float(image.min()) >= -1.0 and float(image.max()) <= 1.0
        assert mask.dtype == torch.bool and bool(mask.all()) == bool(cfg.cameras[slot])
    assert batch["state"].shape == (n, 32) and (batch["state"][:, cfg.state_dim :] == 0).all()
    assert batch["actions"].shape == (n, horizon, 32) and (batch["actions"][..., cfg.action_dim :] == 0).all()
    assert batch["tokens"].shape == batch["token_mask"].shape == (n, cfg.max_token_len)
    assert batch["tokens"].dtype == torch.int64 and batch["token_mask"].any(1).all()
    # Padding past each episode's end: the last frame of an episode has only its first step real.
    is_pad = batch["action_is_pad"].numpy()
    ends = [
        i
        for i, r in enumerate(raws)
        if i + 1 == len(raws) or raws[i + 1]["episode_index"] != r["episode_index"]
    ]
    for i in ends:
        assert not is_pad[i, 0] and is_pad[i, 1:].all()
    # Statistics were computed over exactly what training normalizes: quantile types map q01/q99 -> -1/1.
    values = batch["actions"][..., : cfg.action_dim][~batch["action_is_pad"]].numpy()
    assert np.isfinite(values).all()
    # Output transform: normalized training targets -> the dataset's robot actions again.
    states = np.stack([r["state"] for r in raws])
    back = OutputTransform(cfg, stats)(batch["actions"].numpy(), states)
    np.testing.assert_allclose(back, np.stack([r["actions"] for r in raws]), rtol=1e-4, atol=1e-4)
