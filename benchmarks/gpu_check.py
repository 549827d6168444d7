"""GPU check (issue #21): one script, one H100/H200, a few minutes, a JSON and a Markdown summary.

    python benchmarks/gpu_check.py --out DIR [--budget-s 420]    # on a GPU machine
    python benchmarks/gpu_check.py --out DIR --dry-run           # the same code on CPU, tiny model

Sections, in this order. Each one starts only if the time left in --budget-s covers its estimate
(``NEED_S``), else it is recorded as skipped with the reason; an exception is recorded as that section's
error and the next section runs; DIR/gpu_check.json and DIR/gpu_check.md are rewritten after every
section and at exit, so they always hold what was measured.

1. environment: GPU name and memory, driver, torch, CUDA and cuDNN versions;
2. the bf16 matmul ceiling (one large square bf16 matmul) and the datasheet dense bf16 peak, by GPU name;
3. real-size pi0.5 built on the meta device, materialised on the GPU with random weights (no download);
4. ``sample_actions`` latency at batch 1 (10 Euler steps, prefix K/V cache);
5. train steps: forward + backward + fused AdamW step, bf16 autocast with fp32 master weights (what
   ``steps.train`` runs for precision "bf16"); full fine-tuning, then LoRA (rank 32, preset rlinf), each
   without and with activation checkpointing, at batches 8 and 32 (3 warm-up + 5 timed steps): median
   step time, samples/s, MFU against the measured matmul ceiling and the datasheet peak, peak memory
   allocated / reserved; an OOM is recorded for its row and the next row runs;
6. the training entry point itself (``python -m steps.train`` in a subprocess, one process, precision
   bf16, tiny model, 20 steps on a dataset generated here), to show the real path runs on CUDA and
   writes ``perf/*`` metrics into its metrics file. (Tiny model: a real-size run would also write a ~50 GB
   checkpoint at its last step; the real-size speed is what section 5 measures.)

``--dry-run``: the same code on CPU with the tiny model, batches 1 and 2, 1 + 1 steps, a 3-step entry
point run (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# benchmarks/ is on sys.path when this runs as a script.
from bench_model import cuda_time, forward_flops_per_sample, make_batch, matmul_ceiling_tflops  # noqa: E402
from bench_train import make_assets  # noqa: E402

from model_zoo.config import ModelConfig  # noqa: E402
from model_zoo.pi0 import Pi0Model  # noqa: E402


def datasheet_peak_flops(device: str) -> float | None:
    """Dense bf16 datasheet peak of this GPU by name (H100 / H200: 989 TFLOP/s); None if unknown or CPU."""
    from steps.train.setup import peak_flops

    return peak_flops(torch.device(device))


# Published numbers printed beside ours in the Markdown.
ANCHORS = {
    "openpi_memory_gb": {"inference": 8.0, "lora": 22.5, "full": 70.0},  # openpi README, per GPU
    "lerobot_pi05_s_per_step_b32_4xh100": 2.55,  # LeRobot's pi0.5: s/step at batch 32 per GPU, 4 x H100
    "goal_mfu_full_bf16": 0.40,  # ours: MFU (datasheet peak) of full bf16 fine-tuning
}
# Seconds left in the budget a section needs to start: generous estimates for one H100/H200.
NEED_S = {"matmul": 10, "build": 60, "sample": 20, "lora": 15, "train_row": 30, "entrypoint": 120}
ENTRY_CONFIG_TYPE = "pi05_metaworld"  # one camera, small state/action: the data costs nothing
FLOP_MODEL = (
    "FLOPs per sample of one forward pass: benchmarks/bench_model.py forward_flops_per_sample (matmuls "
    "only, 2 per multiply-add, attention scores included: 3 images through SigLIP, the 3 x 256 image + "
    "prompt tokens through Gemma-2B with only K/V in its last layer, the 50 action tokens through the "
    "expert). A train step counts 3 x forward for full fine-tuning (forward, input gradients, weight "
    "gradients) and 2 x forward for LoRA (frozen base weights get no weight gradients; left out: the "
    "attention scores' second gradient and the weight gradients of the trainable expert, heads and "
    "adapters, a few % together, so LoRA MFU is a slight underestimate). Optimizer FLOPs are not counted. "
    "MFU = FLOPs per step / step time / (measured matmul ceiling, or datasheet peak)."
)


@dataclass(frozen=True)
class Plan:
    device: str
    variant: str  # model_zoo.config bundle
    max_token_len: int  # prompt tokens; openpi's pi0.5 uses 200
    batches: tuple[int, ...]
    warmup: int
    iters: int
    matmul_n: int
    entry_steps: int
    entry_batch: int
    entry_workers: int


GPU_PLAN = Plan("cuda", "real", 200, (8, 32), 3, 5, 16384, 20, 8, 2)
DRY_PLAN = Plan("cpu", "tiny", 16, (1, 2), 1, 1, 512, 3, 2, 0)


def build_random_model(config: ModelConfig, device: str) -> Pi0Model:
    """Pi0Model on `device` with random weights; built on the meta device, so never on the host."""
    with torch.device("meta"):
        model = Pi0Model(config)
    model.to_empty(device=device)  # uninitialised memory: every parameter is written below
    model.tie_weights()  # to_empty gave lm_head its own copy of embed_tokens' weight: share it again
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "reset_parameters"):  # Linear, Conv2d, Embedding, LayerNorm
                module.reset_parameters()
            else:  # Gemma's RMSNorm scales by 1 + weight, so 0 is its init
                for p in module.parameters(recurse=False):
                    p.zero_()
    # No buffers to recompute: RoPE tables and the time embedding are computed in forward.
    return model


def _memory() -> dict:
    if not torch.cuda.is_available():
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}
    return {
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
    }


def _fresh_memory_stats() -> None:
    gc.collect()  # a failed row's tensors are garbage once its exception is gone
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)


class Check:
    """The sections, the state they share (model, optimizer, FLOP count) and the budget."""

    def __init__(self, args, plan: Plan, *, started: float | None = None) -> None:
        # ``started`` (a time.monotonic() value) is when the budget began: main() passes the process start, since
        # importing torch and the model code already took seconds; by default, now.
        self.t0 = time.monotonic() if started is None else started
        self.budget_s, self.out, self.plan = args.budget_s, args.out, plan
        self.model = self.optimizer = None
        self.flops_per_sample = 0.0
        self.config = ModelConfig(
            model_type="pi05",
            variant=plan.variant,
            action_horizon=50,
            max_token_len=plan.max_token_len,
            dtype="bfloat16",
        )
        # On a machine without a usable GPU: the environment is still recorded (driver, CUDA build), and
        # every measurement is skipped with this reason instead of failing with the same error each.
        self.blocked = None
        if plan.device == "cuda" and not torch.cuda.is_available():
            self.blocked = "CUDA is not available (torch.cuda.is_available() is False); --dry-run runs on CPU"
        self.result: dict = {
            "command": " ".join(["python", *sys.argv]),
            "dry_run": args.dry_run,
            "budget_s": self.budget_s,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "plan": asdict(plan),
            "anchors": ANCHORS,
            "flop_model": FLOP_MODEL,
            "env": environment(),
            "matmul_ceiling": {},
            "model": {},
            "sample_actions": {},
            "lora": {},
            "train": [],
            "train_entrypoint": {},
        }

    def remaining(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def measure(self, need_s: float, fn, *args) -> dict:
        """fn(*args) -> its dict; or {"skipped": why} if it cannot start; or {"error": ...} if it raised."""
        left = self.remaining()
        if self.blocked or left < need_s:
            why = (
                self.blocked
                or f"budget: {max(left, 0):.1f} s left of {self.budget_s:.0f} s, needs ~{need_s} s"
            )
            return {"skipped": why}
        start = time.monotonic()
        try:
            entry = fn(*args)
        except Exception as exc:  # noqa: BLE001 - one failing section must not cost the others
            oom = isinstance(exc, torch.OutOfMemoryError)
            print(f"OOM: {exc}" if oom else traceback.format_exc(), file=sys.stderr)
            entry = {"error": f"{type(exc).__name__}: {exc}"[:1000], **({"oom": True} if oom else {})}
        entry["wall_s"] = time.monotonic() - start
        return entry

    def write(self) -> None:
        self.result["elapsed_s"] = time.monotonic() - self.t0
        self.out.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.out / "gpu_check.json", json.dumps(self.result, indent=1))
        try:
            markdown = render_markdown(self.result)
        except Exception as exc:  # noqa: BLE001 - the JSON is written; a summary bug must not stop the check
            markdown = f"# GPU check\n\nsummary failed ({type(exc).__name__}: {exc}); see gpu_check.json"
        _write_atomic(self.out / "gpu_check.md", markdown)

    def run(self) -> None:
        r = self.result
        for key, need, fn in (
            ("matmul_ceiling", "matmul", self.matmul),
            ("model", "build", self.build),
            ("sample_actions", "sample", self.sample),
        ):
            r[key] = self.measure(NEED_S[need], fn)
            self.write()
        for mode in ("full", "lora"):
            if mode == "lora":
                r["lora"] = self.measure(NEED_S["lora"], self.to_lora)
            for checkpointing in (False, True):
                for batch in self.plan.batches:
                    row = self.measure(NEED_S["train_row"], self.train_row, mode, batch, checkpointing)
                    r["train"].append({"mode": mode, "checkpointing": checkpointing, "batch": batch, **row})
                    print(json.dumps(r["train"][-1]), flush=True)
                    self.write()
        r["train_entrypoint"] = self.measure(NEED_S["entrypoint"], self.entrypoint)
        self.write()

    # --- sections -----------------------------------------------------------------------------------
    def matmul(self) -> dict:
        n, peak = self.plan.matmul_n, datasheet_peak_flops(self.plan.device)
        return {
            "n": n,
            "tflops": matmul_ceiling_tflops(self.plan.device, n=n),
            "datasheet_tflops": peak / 1e12 if peak else None,
        }

    def build(self) -> dict:
        start = time.monotonic()
        self.model = build_random_model(self.config, self.plan.device)
        params = list(self.model.parameters())  # tied weights once
        trainable = [p for p in params if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=self.plan.device == "cuda" or None)
        self.flops_per_sample = 3 * forward_flops_per_sample(self.config)  # full fine-tuning: FLOP_MODEL
        return {
            "build_s": time.monotonic() - start,
            "params": sum(p.numel() for p in params),
            "trainable_params": sum(p.numel() for p in trainable),
            "forward_gflops_per_sample": forward_flops_per_sample(self.config) / 1e9,
            "weights_finite": all(bool(p.isfinite().all()) for p in params),
        }

    def sample(self) -> dict:
        if self.model is None:
            raise RuntimeError("no model: the build section did not complete")
        self.model.eval()
        _fresh_memory_stats()
        one = make_batch(self.config, 1, self.plan.device)
        out = []
        times = cuda_time(
            lambda: out.append(self.model.sample_actions(one, num_steps=10)),
            warmup=self.plan.warmup,
            iters=self.plan.iters,
        )
        return {
            "batch": 1,
            "num_steps": 10,
            "kv_cache": True,
            "latency_s": statistics.median(times),
            "latency_s_min": min(times),
            "actions_finite": bool(out[-1].isfinite().all()),
            **_memory(),
        }

    def to_lora(self) -> dict:
        """Free the full fine-tuning optimizer state; put rank-32 adapters into the same model."""
        from model_zoo.lora import LoraSettings, apply_lora  # imports peft: only when needed

        self.optimizer = None  # also if LoRA fails: its rows then fail instead of training the full model
        if self.model is None:
            raise RuntimeError("no model: the build section did not complete")
        _fresh_memory_stats()
        apply_lora(self.model, LoraSettings(rank=32, preset="rlinf"))
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=self.plan.device == "cuda" or None)
        self.flops_per_sample = 2 * forward_flops_per_sample(self.config)  # frozen base: FLOP_MODEL
        return {"rank": 32, "preset": "rlinf", "trainable_params": sum(p.numel() for p in trainable)}

    def train_row(self, mode: str, batch_size: int, checkpointing: bool) -> dict:
        """Forward + backward + optimizer step at one batch size (optimizer state persists across rows)."""
        model, optimizer, plan = self.model, self.optimizer, self.plan
        if model is None or optimizer is None:
            raise RuntimeError(f"no model or {mode} optimizer: an earlier section did not complete")
        model.set_gradient_checkpointing(checkpointing)
        model.train()
        _fresh_memory_stats()
        batch = make_batch(self.config, batch_size, plan.device)
        losses = []

        def step() -> None:
            loss = model(batch).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())

        try:
            times = cuda_time(step, warmup=plan.warmup, iters=plan.iters)
        finally:
            optimizer.zero_grad(set_to_none=True)  # an OOM mid-step leaves gradients behind
        t = statistics.median(times)
        tflops = self.flops_per_sample * batch_size / t / 1e12
        ceiling, peak = (
            self.result["matmul_ceiling"].get("tflops"),
            self.result["matmul_ceiling"].get("datasheet_tflops"),
        )
        return {
            "step_s": t,
            "step_s_min": min(times),
            "samples_per_s": batch_size / t,
            "achieved_tflops": tflops,
            "mfu_vs_matmul_ceiling": tflops / ceiling if ceiling else None,
            "mfu_vs_datasheet": tflops / peak if peak else None,
            **_memory(),
            "loss": float(losses[-1]),
        }

    def entrypoint(self) -> dict:
        self.model = self.optimizer = None  # leave the GPU's memory to the subprocess
        _fresh_memory_stats()
        return train_entrypoint(self.plan, self.out, timeout=max(self.remaining(), 1.0))


def environment() -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "cpu_count": os.cpu_count(),
        "cuda_available": torch.cuda.is_available(),
        "gpu": None,
        "driver": None,
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=props.total_memory / 2**30,
        )
    try:  # torch does not report the driver version
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        lines = subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split()
        env["driver"] = lines[0] if lines else None  # one line per GPU, all the same driver
    except (OSError, subprocess.TimeoutExpired):
        pass  # no NVIDIA tools here
    return env


def train_entrypoint(plan: Plan, out: Path, timeout: float) -> dict:
    """``python -m steps.train`` in a subprocess on a generated dataset; checks its metrics file."""
    metrics, log = out / "train_entrypoint.metrics.jsonl", out / "train_entrypoint.log"
    metrics.unlink(missing_ok=True)  # the trainer appends
    steps = plan.entry_steps
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        base = Path(tmp)
        assets = make_assets(base, ENTRY_CONFIG_TYPE)  # data_adapters: synthetic dataset, tiny tokenizer
        cfg = {
            "config_type": ENTRY_CONFIG_TYPE,
            "dataset_root": assets["root"],
            "norm_stats_path": assets["norm"],
            "tokenizer_path": assets["tok"],
            "model_variant": "tiny",
            "precision": "bf16",
            "device": plan.device,
            "global_batch": plan.entry_batch,
            "max_steps": steps,
            "warmup_steps": 1,
            "decay_steps": steps,
            "val_every": 0,
            "save_every": steps,
            "log_every": min(10, steps),
            "num_workers": plan.entry_workers,
            "checkpoint_dir": str(base / "ckpt"),
            "metrics_file": str(metrics),
        }
        cfg_file, result_file = base / "cfg.json", base / "result.json"
        cfg_file.write_text(json.dumps(cfg))
        cmd = [
            sys.executable,
            "-m",
            "steps.train",
            "--config",
            str(cfg_file),
            "--result_json",
            str(result_file),
        ]
        with open(log, "w") as fh:  # a timeout (the budget) kills it and is this section's error
            proc = subprocess.run(
                cmd,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
        if proc.returncode:
            tail = " | ".join(log.read_text().splitlines()[-5:])
            raise RuntimeError(f"exit code {proc.returncode}; {log.name} ends: {tail}")
        final_loss = json.loads(result_file.read_text())["losses"][-1][1]
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    perf_keys = sorted({k for row in rows for k in row if k.startswith("perf/")})
    if "perf/step_time_s" not in perf_keys:
        raise RuntimeError(f"{metrics.name} has no perf/step_time_s (perf keys: {perf_keys})")
    step_s = statistics.median(row["perf/step_time_s"] for row in rows[1:] or rows)  # step 1: warm-up
    return {
        "config": {k: v for k, v in cfg.items() if not k.endswith(("_root", "_path", "_dir", "_file"))},
        "steps": len(rows),
        "final_loss": final_loss,
        "median_step_s": step_s,
        "samples_per_s": plan.entry_batch / step_s,
        "perf_keys": perf_keys,
        "metrics_file": metrics.name,
        "log": log.name,
    }


# ------------------------------------------------------------------------------------------ markdown


def _f(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _status(entry: dict) -> str:
    if entry.get("oom"):
        return "OOM"
    if "skipped" in entry:
        return f"skipped: {entry['skipped']}"
    return f"error: {entry['error']}" if "error" in entry else "not run yet"


def _train_table(rows: list[dict]) -> list[str]:
    lines = [
        "| mode | act. ckpt | batch | step s (median) | samples/s | TFLOP/s | MFU vs ceiling | "
        "MFU vs datasheet | peak alloc GiB | peak reserved GiB | loss |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        cells = [row["mode"], "on" if row["checkpointing"] else "off", str(row["batch"])]
        if "step_s" in row:
            cells += [
                f"{row['step_s']:.3f}",
                f"{row['samples_per_s']:.1f}",
                f"{row['achieved_tflops']:.3g}",
                _f(row["mfu_vs_matmul_ceiling"], ".1%"),
                _f(row["mfu_vs_datasheet"], ".1%"),
                _f(row["peak_allocated_gib"], ".1f"),
                _f(row["peak_reserved_gib"], ".1f"),
                f"{row['loss']:.3f}",
            ]
        else:
            cells += [_status(row)] + [""] * 7
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _anchor_lines(r: dict) -> list[str]:
    """Published numbers, each beside our closest measurement."""
    ran = [x for x in r["train"] if "step_s" in x]

    def mem(mode: str) -> str:  # the largest batch that ran, without checkpointing if it fit
        rows = [x for x in ran if x["mode"] == mode and x["peak_reserved_gib"] is not None]
        if not rows:
            return "ours: not measured"
        x = max(rows, key=lambda x: (x["batch"], not x["checkpointing"]))
        return f"ours: {x['peak_reserved_gib']:.1f} GiB reserved at batch {x['batch']}, act. ckpt " + (
            "on" if x["checkpointing"] else "off"
        )

    b32 = [x for x in ran if x["mode"] == "full" and x["batch"] == 32]
    b32_text = ", ".join(
        f"{x['step_s']:.2f} s/step with act. ckpt {'on' if x['checkpointing'] else 'off'}" for x in b32
    )
    mfus = [x["mfu_vs_datasheet"] for x in ran if x["mode"] == "full" and x["mfu_vs_datasheet"] is not None]
    goal = ANCHORS["goal_mfu_full_bf16"]
    verdict = (
        "not measured"
        if not mfus
        else f"ours best {max(mfus):.1%}: " + ("met" if max(mfus) >= goal else "not met")
    )
    openpi = ANCHORS["openpi_memory_gb"]
    return [
        f"- openpi, memory per GPU: LoRA > {openpi['lora']} GB ({mem('lora')}); "
        f"full > {openpi['full']:.0f} GB ({mem('full')}); inference > {openpi['inference']:.0f} GB "
        "(see sample_actions).",
        f"- LeRobot pi0.5: ~{ANCHORS['lerobot_pi05_s_per_step_b32_4xh100']} s/step at batch 32 per GPU on "
        f"4 x H100 (ours, one GPU, full, batch 32: {b32_text or 'not measured'}).",
        f"- Goal >= {goal:.0%} MFU (datasheet peak) for full bf16 fine-tuning: {verdict}.",
    ]


def render_markdown(r: dict) -> str:
    env, mm, model, sample, lora, entry = (
        r[k] for k in ("env", "matmul_ceiling", "model", "sample_actions", "lora", "train_entrypoint")
    )
    gpu = "no GPU"
    if env["gpu"] is not None:
        gpu = f"{env['gpu']} x{env['gpu_count']} ({env['gpu_memory_gib']:.0f} GiB, sm {env['capability']})"
    lines = [
        f"# GPU check{' (dry run: CPU, tiny model)' if r['dry_run'] else ''}",
        "",
        f"{r['date']} · `{r['command']}` · budget {r['budget_s']:.0f} s, used {r['elapsed_s']:.0f} s",
        "",
        f"Environment: {gpu} · driver {env['driver'] or '-'} · torch {env['torch']} · "
        f"CUDA {env['cuda']} · cuDNN {env['cudnn']} · Python {env['python']} · {env['cpu_count']} CPUs",
        "",
        "## bf16 matmul ceiling",
        "",
    ]
    if "tflops" in mm:
        lines.append(
            f"{mm['n']} x {mm['n']} bf16 matmul: **{mm['tflops']:.3g} TFLOP/s** measured; datasheet dense "
            f"bf16 peak (by GPU name): {_f(mm['datasheet_tflops'], '.0f')} TFLOP/s."
        )
    else:
        lines.append(_status(mm))
    lines += ["", "## Model", ""]
    if "params" in model:
        lines.append(
            f"pi0.5 `{r['plan']['variant']}`: {model['params']:,} parameters, built on meta and "
            f"materialised with random weights in {model['build_s']:.1f} s "
            f"(finite: {model['weights_finite']}); forward {model['forward_gflops_per_sample']:.4g} GFLOP "
            "per sample."
        )
    else:
        lines.append(_status(model))
    lines += ["", "## sample_actions (batch 1, 10 Euler steps, K/V cache)", ""]
    if "latency_s" in sample:
        lines.append(
            f"Median {sample['latency_s'] * 1e3:.1f} ms (min {sample['latency_s_min'] * 1e3:.1f} ms); "
            f"peak allocated {_f(sample['peak_allocated_gib'], '.1f')} GiB (fp32 weights, bf16 autocast)."
        )
    else:
        lines.append(_status(sample))
    lines += ["", "## Train step (forward + backward + AdamW; bf16 autocast, fp32 master weights)", ""]
    if "trainable_params" in lora:
        lines += [
            f"LoRA rank {lora['rank']}, preset {lora['preset']}: {lora['trainable_params'] / 1e6:.1f} M "
            "trainable parameters.",
            "",
        ]
    elif lora:
        lines += [f"LoRA setup: {_status(lora)}", ""]
    lines += _train_table(r["train"])
    lines += ["", f"FLOP model: {r['flop_model']}", "", "## Anchors beside ours", "", *_anchor_lines(r)]
    lines += ["", "## Training entry point (`python -m steps.train`, one process, bf16, tiny model)", ""]
    if "perf_keys" in entry:
        c = entry["config"]
        lines.append(
            f"{entry['steps']} steps on `{c['device']}` at global batch {c['global_batch']}: median step "
            f"{entry['median_step_s'] * 1e3:.0f} ms ({entry['samples_per_s']:.1f} samples/s), final loss "
            f"{entry['final_loss']:.3f}; `perf/*` keys in its metrics file: {', '.join(entry['perf_keys'])} "
            f"(log: {entry['log']})."
        )
    else:
        lines.append(_status(entry))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--budget-s", type=float, default=420.0, help="no section starts past this (seconds)")
    parser.add_argument("--dry-run", action="store_true", help="same code on CPU: tiny model, tiny loops")
    args = parser.parse_args()
    process_start = time.monotonic() - (time.time() - psutil.Process().create_time())
    check = Check(args, DRY_PLAN if args.dry_run else GPU_PLAN, started=process_start)
    try:
        check.run()
    finally:
        check.write()  # also after an interrupt: what was measured so far
    r = check.result
    entries = [
        r["matmul_ceiling"],
        r["model"],
        r["sample_actions"],
        r["lora"],
        *r["train"],
        r["train_entrypoint"],
    ]
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md in {r['elapsed_s']:.0f} s", file=sys.stderr)
    # Non-zero for a broken check: no GPU, or an error other than an OOM (a batch that does not fit is
    # a result).
    return 1 if check.blocked or any("error" in e and not e.get("oom") for e in entries) else 0


if __name__ == "__main__":
    sys.exit(main())
