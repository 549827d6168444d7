"""Building the model to train from pretrained weights: random init then load vs meta device then load.

    python benchmarks/bench_model_build.py [--variant real] [--rounds 2] [--data_dir /tmp/vla-sft-bench]

Training from a checkpoint (``steps.train.setup.build_model`` with ``pretrained``) replaces every tensor,
so a random initialisation first is wasted work. This times, in fresh processes, both ways of getting a
pi0.5 model of ``--variant`` (bf16) holding a checkpoint's weights:
- ``random init + load``: ``Pi0Model(config)`` (random init on CPU), then ``load_pretrained`` copies the
  weights in (what training did before);
- ``meta + load``: ``Pi0Model(config)`` under ``torch.device("meta")``, then ``load_pretrained`` puts the
  loaded tensors in place (what training and ``load_model`` do now).
The checkpoint (one safetensors file of the model's own keys, zeros: the values do not change the cost)
is written once into --data_dir. Reported: wall seconds and peak RSS per way, medians over rounds that
alternate the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time, torch
sys.path.insert(0, {repo!r})
from model_zoo.checkpoint import load_pretrained
from model_zoo.config import ModelConfig
from model_zoo.pi0 import Pi0Model
torch.set_num_threads({threads})
config = ModelConfig(model_type="pi05", variant={variant!r}, dtype="bfloat16")
start = time.perf_counter()
if {meta}:
    with torch.device("meta"):
        model = Pi0Model(config)
else:
    model = Pi0Model(config)
built = time.perf_counter() - start
load_pretrained(model, {checkpoint!r}, strict=True)
total = time.perf_counter() - start
assert not any(p.is_meta for p in model.parameters())
peak = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")) / 1024
print("RESULT" + json.dumps({{"build_s": built, "total_s": total, "peak_rss_mb": peak}}))
"""


def write_checkpoint(path: Path, variant: str) -> None:
    import torch
    from safetensors.torch import save_file

    sys.path.insert(0, str(REPO))
    from model_zoo.config import ModelConfig
    from model_zoo.pi0 import Pi0Model

    with torch.device("meta"):
        model = Pi0Model(ModelConfig(model_type="pi05", variant=variant, dtype="bfloat16"))
    seen, tensors = set(), {}
    for name, p in model.state_dict(keep_vars=True).items():
        if id(p) not in seen:  # tied tensors are stored once, as exports do
            seen.add(id(p))
            tensors[name] = torch.zeros(p.shape, dtype=p.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp))
    tmp.rename(path)


def measure(meta: bool, checkpoint: Path, variant: str, threads: int) -> dict:
    code = CHILD.format(
        repo=str(REPO), threads=threads, variant=variant, meta=meta, checkpoint=str(checkpoint)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"build failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[len("RESULT") :])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variant", default="real")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data_dir", type=Path, default=Path("/tmp/vla-sft-bench"))
    args = parser.parse_args()
    checkpoint = args.data_dir / f"pi05_{args.variant}_bf16_zeros" / "model.safetensors"
    if not checkpoint.is_file():
        start = time.perf_counter()
        write_checkpoint(checkpoint, args.variant)
        print(f"wrote {checkpoint} ({checkpoint.stat().st_size / 1e9:.1f} GB) in "
              f"{time.perf_counter() - start:.0f} s", file=sys.stderr)  # fmt: skip
    runs: dict[str, list[dict]] = {"random init + load": [], "meta + load": []}
    for _ in range(args.rounds):  # alternating, so both ways meet the same machine state
        for name, meta in (("random init + load", False), ("meta + load", True)):
            runs[name].append(measure(meta, checkpoint, args.variant, args.threads))
            print(name, json.dumps(runs[name][-1]), file=sys.stderr)
    med = statistics.median
    print(f"pi0.5 {args.variant} (bf16, {checkpoint.stat().st_size / 1e9:.1f} GB checkpoint), {args.rounds} rounds, "
          f"{args.threads} threads, fresh process each\n")  # fmt: skip
    print("| way | build s | build + load s | peak RSS MB |")
    print("| --- | ---: | ---: | ---: |")
    for name, rs in runs.items():
        print(f"| {name} | {med(r['build_s'] for r in rs):.1f} | {med(r['total_s'] for r in rs):.1f} | "
              f"{med(r['peak_rss_mb'] for r in rs):,.0f} |")  # fmt: skip
    old, new = (med(r["total_s"] for r in runs[k]) for k in runs)
    print(f"\nmeta + load is {old / new:.1f}x faster ({old - new:.0f} s less per training start)")


if __name__ == "__main__":
    main()
