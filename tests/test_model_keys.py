"""State-dict keys and shapes equal openpi's (reference TSVs), parameter counts, config validation."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

from model_zoo.config import GEMMA_VARIANTS, MODEL_BUNDLES, GemmaVariant, ModelConfig
from model_zoo.pi0 import Pi0Model
from tests.model_helpers import (
    EMBED_KEY,
    EXPERT_LM_HEAD_KEY,
    GOLDEN_DIR,
    REFERENCE_DIR,
    TIED_HEAD_KEY,
    golden_config,
)

# openpi's pi0 / pi0.5 (reference/*.tsv): unique parameters without the expert lm_head (tied embedding counted once).
REAL_PARAMETER_COUNTS = {"pi0": 3_238_048_528, "pi05": 3_353_433_872}
EXPERT_LM_HEAD_PARAMS = 257_152 * 1024


def read_tsv(model_type: str) -> list[tuple[str, list[int], int]]:
    """(key pattern with {i}, shape, count) rows of reference/<model>_state_dict.tsv."""
    rows = []
    for line in (REFERENCE_DIR / f"{model_type}_state_dict.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, count = line.split("\t")
        rows.append((key, json.loads(shape), int(count)))
    return rows


def expand(rows) -> dict[str, list[int]]:
    out = {}
    for key, shape, count in rows:
        if "{i}" in key:
            out.update({key.replace("{i}", str(i)): shape for i in range(count)})
        else:
            out[key] = shape
    return out


def pattern(key: str) -> str:
    return re.sub(r"\.layers\.\d+\.", ".layers.{i}.", key)


@pytest.fixture(scope="module", params=["pi0", "pi05"])
def real_model(request) -> tuple[str, Pi0Model]:
    with torch.device("meta"):
        return request.param, Pi0Model(ModelConfig(model_type=request.param, variant="real"))


def test_real_keys_and_shapes_match_reference_tsv(real_model):
    model_type, model = real_model
    reference = expand(read_tsv(model_type))
    assert EXPERT_LM_HEAD_KEY in reference
    del reference[EXPERT_LM_HEAD_KEY]  # the unused expert lm_head is not built
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert sorted(set(ours) - set(reference)) == []
    assert sorted(set(reference) - set(ours)) == []
    mismatched = {k: (ours[k], reference[k]) for k in ours if ours[k] != reference[k]}
    assert mismatched == {}


def test_real_key_order_follows_reference(real_model):
    model_type, model = real_model
    reference_patterns = [k for k, _, _ in read_tsv(model_type) if k != EXPERT_LM_HEAD_KEY]
    ours = list(dict.fromkeys(pattern(k) for k in model.state_dict()))
    assert ours == reference_patterns


def test_real_parameter_count_and_tie(real_model):
    model_type, model = real_model
    assert sum(p.numel() for p in model.parameters()) == REAL_PARAMETER_COUNTS[model_type]
    # The TSV (with the tied head and expert lm_head) minus both gives the same number.
    tsv_total = sum(math.prod(shape) * count for _, shape, count in read_tsv(model_type))
    tied_head_params = 257_152 * 2048
    assert tsv_total - tied_head_params - EXPERT_LM_HEAD_PARAMS == REAL_PARAMETER_COUNTS[model_type]
    paligemma = model.paligemma_with_expert.paligemma
    assert paligemma.lm_head.weight is paligemma.model.language_model.embed_tokens.weight
    assert {TIED_HEAD_KEY, EMBED_KEY} <= set(model.state_dict())


def test_transformer_blocks_cover_every_layer(real_model):
    _, model = real_model
    blocks = model.transformer_blocks()
    assert len(blocks) == 27 + 18 + 18
    block_params = {id(p) for b in blocks for p in b.parameters()}
    layer_params = {id(p) for name, p in model.named_parameters() if re.search(r"\.layers\.\d+\.", name)}
    assert block_params == layer_params


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_golden_size_matches_golden_param_list(model_type):
    meta = json.loads((GOLDEN_DIR / f"{model_type}_params.json").read_text())
    golden = {p["key"]: p["shape"] for p in meta["params"]}
    expert_head = golden.pop(EXPERT_LM_HEAD_KEY)
    model = Pi0Model(golden_config(model_type))
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == golden
    unique = sum(p.numel() for p in model.parameters())
    assert unique == meta["num_unique_parameters"] - math.prod(expert_head)


def test_unused_parameters_are_frozen_and_the_rest_trainable():
    model = Pi0Model(golden_config("pi05"))
    unused = set(model.unused_parameter_names())
    params = dict(model.named_parameters())
    assert unused <= set(params)
    assert "paligemma_with_expert.paligemma.model.language_model.norm.weight" in unused
    assert "paligemma_with_expert.paligemma.model.language_model.layers.1.mlp.up_proj.weight" in unused
    assert (
        "paligemma_with_expert.paligemma.model.language_model.layers.1.self_attn.k_proj.weight" not in unused
    )
    assert {n for n, p in params.items() if not p.requires_grad} == unused


def test_freeze_flags():
    model = Pi0Model(golden_config("pi0", freeze_vision=True, freeze_vlm=True))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(".vision_tower." in n or "multi_modal_projector" in n for n in trainable)
    assert not any(".language_model." in n for n in trainable)
    assert any("gemma_expert" in n for n in trainable)
    assert "action_in_proj.weight" in trainable


def test_tie_survives_meta_init_and_to_empty():
    with torch.device("meta"):
        model = Pi0Model(golden_config("pi0"))
    model.to_empty(device="cpu")
    model.tie_weights()
    state = model.state_dict()
    assert state[TIED_HEAD_KEY].data_ptr() == state[EMBED_KEY].data_ptr()
    assert not any(p.is_meta for p in model.parameters())


def test_tiny_and_golden_bundles_are_the_golden_sizes():
    assert MODEL_BUNDLES["tiny"] == MODEL_BUNDLES["golden"]
    config = ModelConfig(variant="tiny")
    assert (config.vlm.width, config.vlm.depth, config.vlm.mlp_dim) == (64, 2, 128)
    assert (config.expert.width, config.expert.depth, config.expert.mlp_dim) == (32, 2, 64)
    assert (config.vlm.num_heads, config.vlm.num_kv_heads, config.vlm.head_dim) == (8, 1, 16)
    assert (config.siglip.width, config.siglip.depth, config.siglip.mlp_dim, config.siglip.num_heads) == (
        32,
        2,
        64,
        2,
    )
    assert config.vocab_size == 1024
    real = ModelConfig()
    assert (real.vlm.width, real.vlm.mlp_dim, real.expert.width, real.expert.mlp_dim) == (
        2048,
        16384,
        1024,
        4096,
    )
    assert (real.siglip.width, real.siglip.depth, real.siglip.mlp_dim, real.siglip.num_heads) == (
        1152,
        27,
        4304,
        16,
    )
    assert real.vocab_size == 257_152


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"variant": "tinyy"}, r"Unknown variant 'tinyy'.*Did you mean 'tiny'"),
        ({"expert_variant": "gemma_3b"}, r"Unknown expert_variant 'gemma_3b'"),
        ({"siglip_variant": "so401m"}, r"Unknown siglip_variant.*Did you mean 'so400m'"),
        (
            {"variant": "tiny", "expert_variant": "gemma_300m"},
            r"must share depth: dummy has 2, gemma_300m has 18",
        ),
        ({"variant": "tiny", "expert_variant": "odd_head_dim"}, r"must share head_dim"),
        ({"variant": "tiny", "expert_variant": "odd_kv_heads"}, r"must share num_kv_heads"),
        ({"action_dim": 33}, r"action_dim must be in \[1, 32\], got 33"),
        ({"action_dim": 0}, r"action_dim"),
        ({"model_type": "pi1"}, r"model_type must be one of"),
        ({"dtype": "float16"}, r"dtype must be one of"),
        ({"action_horizon": 0}, r"action_horizon"),
    ],
)
def test_config_validation_errors(changes, match, monkeypatch):
    monkeypatch.setitem(GEMMA_VARIANTS, "odd_head_dim", GemmaVariant(32, 2, 64, 8, 1, 8))
    monkeypatch.setitem(GEMMA_VARIANTS, "odd_kv_heads", GemmaVariant(32, 2, 64, 8, 2, 16))
    with pytest.raises(ValueError, match=match):
        ModelConfig(**changes)


def test_config_round_trip_and_unknown_field():
    config = ModelConfig(model_type="pi0", variant="tiny", action_horizon=7, dtype="bfloat16")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"Unknown ModelConfig field\(s\) \['horizon'\]"):
        ModelConfig.from_dict({"horizon": 3})
