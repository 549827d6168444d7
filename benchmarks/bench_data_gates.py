"""What the data gates of issue #16 cost: the content digest in the statistics pass, the cache lookup by
file identity, and fetch_data's proof that every file opens.

    python benchmarks/bench_data_gates.py                      # shipped demo + 1,000,000 frames
    python benchmarks/bench_data_gates.py --frames 100000      # quick

Data: the shipped Meta-World demo (data_adapters/demo_data/metaworld_demo: v3.0, 15 episodes, one mp4)
and bench_norm_stats.py's numeric-only 1M-frame LIBERO-like v3.0 dataset (generated once into
--data_dir, reused).

Per dataset, each in a fresh subprocess, --repeats times (medians reported; wall and CPU seconds):

- ``stats``: ``compute_norm_stats`` without the cache (the digest folded in) over all episodes;
- ``digest``: the digest alone (blake2b over the same float arrays the pass reads, read first, not timed);
- ``read``: reading those parquet columns (``numeric_columns.read_numeric_file``), the part of the pass
  the digest rides on;
- ``whole_file_sha256``: the alternative of hashing every data file's bytes (what "any byte changes"
  would cost if the statistics pass did not read the values anyway);
- ``cache_hit``: ``compute_norm_stats`` again with the cache (meta read, file identities, index);
- ``verify`` / ``verify_cached``: ``steps.fetch.verify.verify_dataset_files`` first (footers, video
  demux) and again (every file unchanged since).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEMO = REPO / "data_adapters" / "demo_data" / "metaworld_demo"


def _timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}, out


def child(root: Path, config_type: str) -> dict:
    import hashlib

    import numpy as np

    from data_adapters.lerobot_format import read_meta
    from data_adapters.registry import get_config_type
    from steps.fetch.verify import verify_dataset_files
    from steps.stats.norm_stats import compute_norm_stats
    from steps.stats.numeric_columns import read_numeric_file

    ct = get_config_type(config_type)
    meta = read_meta(root)
    keys = list(dict.fromkeys([*ct.state_keys, *ct.action_keys]))
    by_file: dict[str, list] = {}
    for ep in meta.episodes.values():
        by_file.setdefault(ep.data_path, []).append(ep)
    out: dict = {"frames": meta.total_frames, "data_files": len(by_file),
                 "data_bytes": sum((root / rel).stat().st_size for rel in by_file)}  # fmt: skip
    out["read"], arrays = _timed(
        lambda: [read_numeric_file(meta, rel, eps, keys) for rel, eps in by_file.items()]
    )
    out["values_bytes"] = sum(a.nbytes for a in arrays)

    def digest():
        h = hashlib.blake2b(digest_size=16)
        for a in arrays:
            h.update(np.ascontiguousarray(a))
        return h.hexdigest()

    out["digest"], _ = _timed(digest)

    def whole_files():
        h = hashlib.sha256()
        for rel in by_file:
            with open(root / rel, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
        return h.hexdigest()

    out["whole_file_sha256"], _ = _timed(whole_files)
    with tempfile.TemporaryDirectory() as cache:
        out["stats"], _ = _timed(lambda: compute_norm_stats(ct, root, None, cache_dir=cache, use_cache=False))
        out["cache_hit"], _ = _timed(lambda: compute_norm_stats(ct, root, None, cache_dir=cache))
        out["verify"], checked = _timed(lambda: verify_dataset_files(meta, cache_dir=cache))
        out["verify_cached"], again = _timed(lambda: verify_dataset_files(meta, cache_dir=cache))
    out["videos"] = checked.videos
    out["video_bytes"] = sum(p.stat().st_size for p in root.glob("videos/**/*.mp4"))
    assert again.from_cache == checked.data_files + checked.videos
    return out


def measure(root: Path, config_type: str) -> dict:
    code = f"import sys, json; sys.path.insert(0, {str(REPO)!r}); from benchmarks.bench_data_gates import child; " \
           f"print(json.dumps(child(__import__('pathlib').Path({str(root)!r}), {config_type!r})))"  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


TIMED = ("read", "digest", "whole_file_sha256", "stats", "cache_hit", "verify", "verify_cached")


def main() -> None:
    from benchmarks.bench_norm_stats import CONFIG_TYPE, generate

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1_000_000)
    parser.add_argument("--data_dir", default="/tmp/vla-sft-bench")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    big = Path(args.data_dir) / f"norm_stats_numeric_{args.frames}"
    if not big.exists():
        start = time.perf_counter()
        generate(big, args.frames)
        print(f"generated {big} in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    summary = {}
    for name, root, config_type in (
        ("demo", DEMO, "pi05_metaworld"),
        (f"{args.frames}_frames", big, CONFIG_TYPE),
    ):
        runs = [measure(root, config_type) for _ in range(args.repeats)]
        for run in runs:
            print(name, json.dumps({k: round(run[k]["seconds"], 4) for k in TIMED}), file=sys.stderr)
        first = runs[0]
        summary[name] = {
            **{
                k: first[k]
                for k in ("frames", "data_files", "data_bytes", "values_bytes", "videos", "video_bytes")
            },
            **{f"{k}_seconds": round(statistics.median(r[k]["seconds"] for r in runs), 4) for k in TIMED},
            **{
                f"{k}_cpu_seconds": round(statistics.median(r[k]["cpu_seconds"] for r in runs), 4)
                for k in TIMED
            },
        }
        s = summary[name]
        s["digest_share_of_stats_cpu"] = round(s["digest_cpu_seconds"] / s["stats_cpu_seconds"], 4)
    summary["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
