"""The inference policy and its MLflow pyfunc: same actions as calling the model directly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data_adapters.normalization import NormStats
from data_adapters.transforms import InputTransform, OutputTransform, collate
from steps.policy import Policy
from tests.policy_helpers import make_tiny_export


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("policy"), "pi05_metaworld")


def _obs(rng, task="push the puck", size=48):
    return {
        "images": {"observation.image": rng.integers(0, 255, (size, size, 3), dtype=np.uint8)},
        "state": rng.normal(size=4).astype(np.float32),
        "task": task,
    }


def test_policy_equals_model_called_directly(export):
    policy = Policy.from_export(export, device="cpu")
    rng = np.random.default_rng(0)
    observations = [_obs(rng), _obs(rng, "open the drawer", size=64)]
    actions = policy.predict(observations)
    assert actions.shape == (2, 5, 4) and actions.dtype == np.float32

    # The same computation spelled out by hand from the parts.
    cfg, stats = policy.config_type, NormStats.load(export / "norm_stats.json")
    inputs = InputTransform(cfg, stats, policy.input_transform.tokenizer, train=False)
    batch = collate([inputs({**o, "state": np.asarray(o["state"])}) for o in observations])
    noise = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model_actions = policy.model.sample_actions(batch, noise=noise)
    expected = OutputTransform(cfg, stats)(
        model_actions.numpy(), np.stack([o["state"] for o in observations])
    )
    np.testing.assert_allclose(actions, expected, rtol=0, atol=1e-6)
    # One dict in -> one chunk out; deterministic given the seed.
    np.testing.assert_allclose(policy.predict(observations[0]), actions[0], atol=1e-6)


def test_policy_rejects_bad_observations(export):
    policy = Policy.from_export(export, device="cpu")
    rng = np.random.default_rng(1)
    obs = _obs(rng)
    with pytest.raises(ValueError, match=r"observation 0 is missing camera 'observation.image'"):
        policy.predict({**obs, "images": {}})
    with pytest.raises(
        ValueError, match=r"observation 1: state has 3 values, config type 'pi05_metaworld' expects 4"
    ):
        policy.predict([obs, {**obs, "state": [0.0, 0.0, 0.0]}])
    with pytest.raises(ValueError, match=r"camera 'observation.image' must be uint8 \[height, width, 3\]"):
        policy.predict({**obs, "images": {"observation.image": np.zeros((8, 8), np.uint8)}})
    with pytest.raises(FileNotFoundError, match="config_type.json is missing"):
        Policy.from_export(export.parent)


def test_explicit_noise_makes_samples_independent_of_the_batch(export):
    policy = Policy.from_export(export, device="cpu")
    rng = np.random.default_rng(3)
    observations = [_obs(rng), _obs(rng)]
    noise = torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(7))
    together = policy.predict(observations, noise=noise)
    alone = policy.predict(observations[1], noise=noise[1:])
    np.testing.assert_allclose(together[1], alone, atol=1e-5)
