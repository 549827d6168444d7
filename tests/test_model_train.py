"""Training behaviour of the tiny model on CPU: overfitting, gradients, checkpointing, bf16, speed."""

from __future__ import annotations

import time

import pytest
import torch

from model_zoo.pi0 import Pi0Model, sample_flow_time, sincos_time_embedding
from tests.model_helpers import random_batch, seeded_model, tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_overfits_one_batch(model_type):
    torch.manual_seed(0)
    config = tiny_config(model_type)
    model = Pi0Model(config).train()
    batch = random_batch(config, batch_size=2)
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    time_ = torch.tensor([0.4, 0.8])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model.compute_loss(batch, noise=noise, time=time_).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_every_trainable_parameter_gets_a_gradient(model_type):
    config = tiny_config(model_type)
    model = seeded_model(config).train()
    model.compute_loss(random_batch(config)).mean().backward()
    missing = [
        n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert missing == []
    # The frozen "unused" weights really are unused: they would have no gradient even if trainable.
    frozen = [p for n, p in model.named_parameters() if n in set(model.unused_parameter_names())]
    assert all(p.grad is None for p in frozen)


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(model_type):
    config = tiny_config(model_type)
    batch = random_batch(config)
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    time_ = torch.tensor([0.3, 0.6])
    results = []
    for checkpointing in (False, True):
        model = seeded_model(config.replace(gradient_checkpointing=checkpointing)).train()
        loss = model.compute_loss(batch, noise=noise, time=time_).mean()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-7), name


def test_gradient_checkpointing_recomputes_layers():
    config = tiny_config("pi05", gradient_checkpointing=True)
    model = seeded_model(config).train()
    calls = []
    layer = model.paligemma_with_expert.expert.layers[0]
    # Pre-hook: recomputation stops early once it has what backward needs, so post-hooks may not run.
    handle = layer.register_forward_pre_hook(lambda *_: calls.append(1))
    model.compute_loss(random_batch(config)).mean().backward()
    handle.remove()
    assert len(calls) == 2  # forward + recomputation in backward


@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_bfloat16_autocast_keeps_fp32_weights_and_heads(model_type):
    config = tiny_config(model_type)
    batch = random_batch(config)
    noise = torch.randn(2, config.action_horizon, config.action_dim)
    time_ = torch.tensor([0.3, 0.6])
    fp32 = seeded_model(config).train()
    bf16 = seeded_model(config.replace(dtype="bfloat16")).train()
    loss32 = fp32.compute_loss(batch, noise=noise, time=time_)
    loss16 = bf16.compute_loss(batch, noise=noise, time=time_)
    assert loss16.dtype == torch.float32
    assert torch.isfinite(loss16).all()
    assert (loss16.mean() - loss32.mean()).abs() < 0.02 * loss32.mean()
    assert (loss16 - loss32).abs().max() > 0  # autocast really ran in bf16
    loss16.mean().backward()
    assert all(p.dtype == torch.float32 for p in bf16.parameters())
    assert all(p.grad.dtype == torch.float32 for p in bf16.parameters() if p.grad is not None)
    # Heads run outside autocast: their output is float32 even inside an autocast region.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, _, _, _ = bf16.embed_suffix(batch["state"], noise, time_)
        assert bf16._project_actions(torch.randn(2, config.action_horizon, config.expert.width)).dtype == (
            torch.float32
        )
    actions = bf16.eval().sample_actions(batch, num_steps=2)
    assert actions.dtype == torch.float32 and torch.isfinite(actions).all()


def test_time_embedding_and_time_sampling():
    emb = sincos_time_embedding(torch.tensor([0.0, 1.0]), 8)
    assert emb.dtype == torch.float32 and emb.shape == (2, 8)
    assert torch.equal(emb[0], torch.tensor([0.0] * 4 + [1.0] * 4))  # sine half first
    # Shortest period 4e-3: at t=1 the first angle is 2*pi/4e-3 = 500*pi -> sin ~ 0.
    assert abs(emb[1, 0].item()) < 1e-6
    torch.manual_seed(0)
    t = sample_flow_time(20_000, torch.device("cpu"))
    assert t.min() >= 0.001 and t.max() <= 1.0
    assert t.mean().item() == pytest.approx(0.001 + 0.999 * 0.6, abs=0.01)  # Beta(1.5, 1) mean 0.6


def test_bad_batches_name_the_field():
    config = tiny_config("pi0")
    model = Pi0Model(config)
    batch = random_batch(config)
    with pytest.raises(ValueError, match=r"missing \['state'\]"):
        model.compute_loss({k: v for k, v in batch.items() if k != "state"})
    with pytest.raises(ValueError, match="missing camera slot.*right_wrist_0_rgb"):
        model.compute_loss(
            {**batch, "images": {k: v for k, v in batch["images"].items() if "right" not in k}}
        )
    with pytest.raises(ValueError, match=r"batch\['actions'\] shape"):
        model.compute_loss({**batch, "actions": batch["actions"][:, :2]})
    with pytest.raises(ValueError, match=r"batch\['state'\] last dim 8 != action_dim 32"):
        model.compute_loss({**batch, "state": batch["state"][:, :8]})


def test_tiny_train_step_is_fast_on_one_core():
    config = tiny_config("pi05")
    model = Pi0Model(config).train()
    batch = random_batch(config, batch_size=2)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for _ in range(4):
        start = time.perf_counter()
        loss = model.compute_loss(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    # ~0.1-0.2 s on an idle core (benchmarks/RESULTS.md "## Model"); generous bound for a busy CI box.
    assert sorted(times)[1] < 2.0, times


def test_fsdp2_per_block_sharding_matches_plain_model(tmp_path):
    """transformer_blocks() are valid FSDP2 units: each is called through forward once per pass."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        config = tiny_config("pi05", gradient_checkpointing=True)
        plain, sharded = seeded_model(config).train(), seeded_model(config).train()
        mesh = init_device_mesh("cpu", (1,))
        for block in sharded.transformer_blocks():
            fully_shard(block, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        batch, noise, time_ = random_batch(config), torch.randn(2, 4, 32), torch.tensor([0.3, 0.6])
        plain(batch, noise, time_).mean().backward()
        sharded(batch, noise, time_).mean().backward()
        plain_grads = {n: p.grad for n, p in plain.named_parameters() if p.grad is not None}
        sharded_grads = {n: p.grad.full_tensor() for n, p in sharded.named_parameters() if p.grad is not None}
        assert plain_grads.keys() == sharded_grads.keys()
        for name, grad in plain_grads.items():
            assert torch.allclose(grad, sharded_grads[name], atol=1e-7), name
        actions = sharded.eval().sample_actions(batch, num_steps=2, noise=noise)
        assert torch.allclose(
            actions, plain.eval().sample_actions(batch, num_steps=2, noise=noise), atol=1e-6
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.gpu
@pytest.mark.parametrize("model_type", ["pi0", "pi05"])
def test_cuda_bfloat16_matches_cpu_float32(model_type):
    config = tiny_config(model_type)
    batch = random_batch(config)
    noise, time_ = torch.randn(2, config.action_horizon, config.action_dim), torch.tensor([0.3, 0.6])
    cpu = seeded_model(config).train()
    gpu = seeded_model(config.replace(dtype="bfloat16", gradient_checkpointing=True)).cuda().train()
    on_gpu = {
        k: ({s: t.cuda() for s, t in v.items()} if isinstance(v, dict) else v.cuda())
        for k, v in batch.items()
    }
    loss_cpu = cpu.compute_loss(batch, noise=noise, time=time_)
    loss_gpu = gpu.compute_loss(on_gpu, noise=noise.cuda(), time=time_.cuda())
    loss_gpu.mean().backward()
    assert (loss_gpu.mean().cpu() - loss_cpu.mean()).abs() < 0.02 * loss_cpu.mean()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in gpu.parameters())
    actions = gpu.eval().sample_actions(on_gpu, noise=noise.cuda())
    assert torch.isfinite(actions).all()
