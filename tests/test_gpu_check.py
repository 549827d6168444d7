"""benchmarks/gpu_check.py on CPU: the dry run measures every section, a spent budget skips them cleanly.

The GPU run itself cannot happen in CI; the dry run is the same code with the tiny model on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
sys.path.insert(0, str(SCRIPT.parent))

import gpu_check  # noqa: E402


def _run(out: Path, budget_s: float) -> tuple[subprocess.CompletedProcess, dict, str]:
    cmd = [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--budget-s", str(budget_s)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert (out / "gpu_check.json").is_file(), proc.stderr[-3000:]
    assert (out / "gpu_check.md").is_file(), proc.stderr[-3000:]
    return proc, json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def _positive(entry: dict, *keys: str) -> None:
    for key in keys:
        value = entry[key]
        assert isinstance(value, float | int) and math.isfinite(value) and value > 0, (key, entry)


def _sections(r: dict) -> list[dict]:
    names = ("matmul_ceiling", "model", "sample_actions", "lora", "train_entrypoint")
    return [r[name] for name in names] + r["train"]


def test_dry_run_measures_every_section(tmp_path):
    proc, r, md = _run(tmp_path, budget_s=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for entry in _sections(r):
        assert "error" not in entry and "skipped" not in entry, entry
    assert (
        r["dry_run"] is True
        and r["env"]["torch"] == torch.__version__
        and r["env"]["cuda_available"] is False
    )
    _positive(r["matmul_ceiling"], "tflops")
    assert r["matmul_ceiling"]["datasheet_tflops"] is None  # a CPU has no datasheet entry
    _positive(r["model"], "params", "trainable_params", "forward_gflops_per_sample")
    assert r["model"]["weights_finite"] is True
    _positive(r["sample_actions"], "latency_s")
    assert r["sample_actions"]["actions_finite"] is True
    assert 0 < r["lora"]["trainable_params"] < r["model"]["trainable_params"]
    # Full and LoRA, without and with activation checkpointing, at each dry-run batch.
    combos = {(row["mode"], row["checkpointing"], row["batch"]) for row in r["train"]}
    assert combos == {(m, c, b) for m in ("full", "lora") for c in (False, True) for b in (1, 2)}
    for row in r["train"]:
        _positive(row, "step_s", "samples_per_s", "achieved_tflops", "mfu_vs_matmul_ceiling", "loss")
        assert row["mfu_vs_datasheet"] is None and row["peak_allocated_gib"] is None  # CPU: no peak, no stats
    entry = r["train_entrypoint"]
    assert entry["steps"] == 3 and "perf/step_time_s" in entry["perf_keys"]
    _positive(entry, "median_step_s", "samples_per_s", "final_loss")
    assert (tmp_path / entry["metrics_file"]).is_file()
    for heading in (
        "## bf16 matmul ceiling",
        "## sample_actions",
        "## Train step",
        "## Anchors",
        "perf/step_time_s",
    ):
        assert heading in md


def test_spent_budget_skips_every_section_and_still_writes_both_files(tmp_path):
    proc, r, md = _run(tmp_path, budget_s=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(r["train"]) == 8
    for entry in _sections(r):
        assert entry["skipped"].startswith("budget: "), entry
    assert r["env"]["torch"] == torch.__version__  # recorded without a budget check
    assert "skipped: budget" in md and not (tmp_path / "train_entrypoint.log").exists()


def test_random_model_is_materialised_tied_and_finite():
    config = gpu_check.ModelConfig(model_type="pi05", variant="tiny", max_token_len=16, dtype="bfloat16")
    torch.manual_seed(0)
    model = gpu_check.build_random_model(config, "cpu")
    pwe = model.paligemma_with_expert
    assert pwe.paligemma.lm_head.weight is pwe.vlm.embed_tokens.weight
    assert not any(p.is_meta or not p.isfinite().all() for p in model.parameters())
    assert all(bool((layer.input_layernorm.weight == 0).all()) for layer in pwe.vlm.layers)
    batch = gpu_check.make_batch(config, 2, "cpu")
    loss = model(batch).mean()
    loss.backward()
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0
    assert model.eval().sample_actions(gpu_check.make_batch(config, 1, "cpu"), num_steps=2).isfinite().all()


def test_a_failing_section_is_recorded_and_an_oom_is_marked(tmp_path):
    args = argparse.Namespace(budget_s=300.0, out=tmp_path, dry_run=True)
    check = gpu_check.Check(args, gpu_check.DRY_PLAN)
    assert check.measure(0, lambda: 1 / 0)["error"] == "ZeroDivisionError: division by zero"

    def oom():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    row = check.measure(0, oom)
    assert row["oom"] is True and "out of memory" in row["error"]
    check.result["train"].append({"mode": "full", "checkpointing": False, "batch": 32, **row})
    check.result["sample_actions"] = check.measure(0, lambda: 1 / 0)
    check.write()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| full | off | 32 | OOM |" in md and "error: ZeroDivisionError" in md


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
