"""Model benchmark: tiny-model train step on CPU; real-size pi0.5 forward+backward on a GPU if present.

    python benchmarks/bench_model.py [--cpu-only] [--gpu-only] [--json OUT.json]

CPU: tiny (golden-size) pi0 / pi0.5, batch 2, 784-token prefix, horizon 10: fwd + bwd + AdamW step, at 1
and 2 threads; sampling latency (10 Euler steps, KV cache). GPU: real-size pi0.5 (prefix 3x256 + 200
tokens, horizon 50), weights fp32 + bf16 autocast, fwd + bwd at batch 8 / 32 with and without activation
checkpointing: samples/s, peak memory, MFU against a measured bf16 matmul ceiling; AdamW step time;
LoRA (model_zoo/lora.py) vs full fine-tuning; sampling latency.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_zoo.config import CAMERA_SLOTS, ModelConfig  # noqa: E402
from model_zoo.pi0 import Pi0Model  # noqa: E402


def make_batch(config: ModelConfig, batch_size: int, device: str) -> dict:
    size, length, dim = config.siglip.image_size, config.max_token_len, config.action_dim
    return {
        "images": {s: torch.rand(batch_size, 3, size, size, device=device) * 2 - 1 for s in CAMERA_SLOTS},
        "image_masks": {s: torch.ones(batch_size, dtype=torch.bool, device=device) for s in CAMERA_SLOTS},
        "state": torch.randn(batch_size, dim, device=device),
        "tokens": torch.randint(1, config.vocab_size, (batch_size, length), device=device),
        "token_mask": torch.ones(batch_size, length, dtype=torch.bool, device=device),
        "actions": torch.randn(batch_size, config.action_horizon, dim, device=device),
    }


def forward_flops_per_sample(config: ModelConfig) -> float:
    """Matmul FLOPs of one forward pass for one sample (2 per multiply-add), attention scores included.

    Counts what the model computes: 3 images through SigLIP, the prefix through the VLM (the last layer
    only projects K/V), the suffix through the expert attending over prefix + suffix.
    """
    sig, vlm, exp = config.siglip, config.vlm, config.expert
    images = 3
    n_img = sig.num_patches
    prefix = images * n_img + config.max_token_len
    suffix = config.action_horizon + (0 if config.pi05 else 1)
    flops = 0.0
    # SigLIP: patch conv, per layer qkvo + MLP + attention, projector.
    flops += 2 * images * n_img * (3 * sig.patch_size**2 * sig.width)
    per_layer = 4 * sig.width**2 + 2 * sig.width * sig.mlp_dim
    flops += images * sig.depth * (2 * n_img * per_layer + 4 * n_img * n_img * sig.width)
    flops += 2 * images * n_img * sig.width * vlm.width
    # Gemma layers: q/o (width x heads*hd), k/v (width x kv*hd), MLP (3 x width x mlp).
    q_dim, kv_dim = vlm.num_heads * vlm.head_dim, vlm.num_kv_heads * vlm.head_dim

    def gemma_linear(width: int, mlp: int) -> int:
        return 2 * width * q_dim + 2 * width * kv_dim + 3 * width * mlp

    attn = 4 * q_dim  # QK^T and AV per (query, key) pair
    flops += (vlm.depth - 1) * (2 * prefix * gemma_linear(vlm.width, vlm.mlp_dim) + attn * prefix * prefix)
    flops += 2 * prefix * 2 * vlm.width * kv_dim  # last VLM layer: K/V only
    flops += exp.depth * (
        2 * suffix * gemma_linear(exp.width, exp.mlp_dim) + attn * suffix * (prefix + suffix)
    )
    return flops


def cpu_train_step(model_type: str, threads: int, steps: int = 10) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = ModelConfig(model_type=model_type, variant="tiny", action_horizon=10, max_token_len=16)
    model = Pi0Model(config).train()
    batch = make_batch(config, 2, "cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        loss = model(batch).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    model.eval()
    sample_times = []
    one = make_batch(config, 1, "cpu")
    for _ in range(5):
        start = time.perf_counter()
        model.sample_actions(one, num_steps=10)
        sample_times.append(time.perf_counter() - start)
    return {
        "model": model_type,
        "threads": threads,
        "train_step_median_s": statistics.median(times),
        "train_step_min_s": min(times),
        "sample_b1_median_s": statistics.median(sample_times[1:]),
    }


def run_cpu() -> list[dict]:
    rows = []
    for model_type in ("pi0", "pi05"):
        for threads in (1, 2):
            rows.append(cpu_train_step(model_type, threads))
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ------------------------------------------------------------------------------------------- GPU


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def cuda_time(fn, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync()
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - start)
    return out


def matmul_ceiling_tflops(device: str, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    times = cuda_time(lambda: a @ b, warmup=3, iters=10)
    return 2 * n**3 / statistics.median(times) / 1e12


def gpu_fwd_bwd(
    model: Pi0Model, config: ModelConfig, batch_size: int, checkpointing: bool, ceiling: float, device: str
) -> dict:
    model.set_gradient_checkpointing(checkpointing)
    model.train()
    batch = make_batch(config, batch_size, device)
    row = {"batch": batch_size, "checkpointing": checkpointing}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    def step():
        loss = model(batch).mean()
        loss.backward()

    try:
        times = cuda_time(step, warmup=2, iters=4)
    except torch.OutOfMemoryError:
        row["error"] = "OOM"
        for p in model.parameters():
            p.grad = None
        torch.cuda.empty_cache()
        return row
    t = statistics.median(times)
    train_flops = 3 * forward_flops_per_sample(config) * batch_size  # fwd + 2x bwd (model FLOPs)
    row.update(
        step_s=t,
        samples_per_s=batch_size / t,
        peak_mem_gib=_peak_gib(),
        achieved_tflops=train_flops / t / 1e12,
        mfu_vs_matmul_ceiling=train_flops / t / 1e12 / ceiling,
    )
    return row


def run_gpu(device: str = "cuda", variant: str = "real", batches=((8, False), (8, True), (32, True))) -> dict:
    """`device="cpu", variant="tiny"` is a dry run of this code path (used to check the script)."""
    torch.backends.cuda.matmul.allow_tf32 = True
    ceiling = matmul_ceiling_tflops(device, n=8192 if device == "cuda" else 512)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    result = {"device": name, "matmul_bf16_tflops": ceiling, "rows": []}
    print(json.dumps({"device": result["device"], "matmul_bf16_tflops": ceiling}), flush=True)
    config = ModelConfig(
        model_type="pi05",
        variant=variant,
        action_horizon=50,
        max_token_len=200 if variant == "real" else 16,
        dtype="bfloat16",
    )
    result["forward_gflops_per_sample"] = forward_flops_per_sample(config) / 1e9
    start = time.perf_counter()
    with torch.device(device):
        model = Pi0Model(config)
    result["build_s"] = time.perf_counter() - start
    for batch_size, checkpointing in batches:
        row = {"mode": "full", **gpu_fwd_bwd(model, config, batch_size, checkpointing, ceiling, device)}
        result["rows"].append(row)
        print(json.dumps(row), flush=True)
    # AdamW (fused) step over all trainable fp32 parameters, gradients from the last backward.
    params = [p for p in model.parameters() if p.requires_grad]
    if all(p.grad is not None for p in params):
        try:
            optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device == "cuda")
            result["adamw_step_s"] = statistics.median(cuda_time(optimizer.step, warmup=1, iters=3))
            result["adamw_peak_mem_gib"] = _peak_gib()
            del optimizer
        except torch.OutOfMemoryError:
            result["adamw_step_s"] = "OOM"
    for p in model.parameters():
        p.grad = None
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    model.eval()
    one = make_batch(config, 1, device)
    with torch.no_grad():
        times = cuda_time(lambda: model.sample_actions(one, num_steps=10), warmup=1, iters=3)
    result["sample_b1_10steps_s"] = statistics.median(times)
    print(json.dumps({"sample_b1_10steps_s": result["sample_b1_10steps_s"]}), flush=True)
    if (Path(__file__).resolve().parents[1] / "model_zoo" / "lora.py").exists():
        from model_zoo.lora import LoraSettings, apply_lora

        apply_lora(model, LoraSettings())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result["lora_trainable_params"] = trainable
        for batch_size, checkpointing in (batches[0], batches[-1]):
            row = {
                "mode": "lora-rlinf-r32",
                **gpu_fwd_bwd(model, config, batch_size, checkpointing, ceiling, device),
            }
            result["rows"].append(row)
            print(json.dumps(row), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-only", action="store_true")
    parser.add_argument("--gpu-only", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--dry-run-gpu-path", action="store_true", help="run the GPU section tiny on CPU")
    args = parser.parse_args()
    out: dict = {"torch": torch.__version__, "cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg()}
    if not args.gpu_only:
        out["cpu"] = run_cpu()
    if args.dry_run_gpu_path:
        out["gpu_dry_run"] = run_gpu("cpu", "tiny", batches=((2, False), (2, True)))
    elif torch.cuda.is_available() and not args.cpu_only:
        out["gpu"] = run_gpu()
    out["loadavg_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
