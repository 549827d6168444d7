"""Data pipeline throughput: our LeRobot reader vs LeRobot 0.4.4's and 0.6.1's LeRobotDataset vs plain decoding.

Writes two v3.0 datasets with our writer (LIBERO layout: cameras ``image`` and ``wrist_image`` at
256x256, state 8, actions 7; one with PNG images in parquet, one with AV1 videos), then measures, in
fresh subprocesses and on the same shuffled frame order:

- ``ours``: `LeRobotFrames` items (horizon 50, both cameras decoded) through a DataLoader, 0 and 2 workers;
- ``ours+transform``: the same plus `InputTransform` (pi0_libero: resize-with-pad to 224, normalize,
  tokenize, pad to 32) and `collate`;
- ``lerobot``: `LeRobotDataset(delta_timestamps={"action": [k / fps for k in range(50)]},
  video_backend="pyav")` through a DataLoader, once per LeRobot release (``--lerobot-versions``), each
  run by its own venv's python (printing JSON);
- ``floor``: decoding the same frames alone (Pillow on in-memory PNG bytes; PyAV seek + decode on
  open containers), one process.

Reported: median steady-state frames/s over repeats (the first batch, which includes worker start-up,
is excluded), construction time, and peak RSS of the main process and of the largest worker. The
measurements run in ``--rounds`` rounds, each running every role once (ours, ours+transform, each
LeRobot release back to back; the releases swap places every round), and ratios are medians of the
per-round ratios: a change in machine load between rounds then moves both sides of a ratio, not one.

Usage: ``python benchmarks/bench_data_pipeline.py [--episodes 24 --length 50 --samples 480]``
(LeRobot venvs: see `benchmarks/lerobot_venv.py`; ``--lerobot-python 0.6.1=PATH`` overrides one).
The script imports only the standard library at module level, so the LeRobot venv can run its half.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HORIZON = 50
FPS = 10
SIZE = 256
CAMERAS = ("image", "wrist_image")
BATCH = 8
REPO = Path(__file__).resolve().parents[1]


# -- dataset ---------------------------------------------------------------------------------------------


def build_dataset(root: Path, storage: str, episodes: int, length: int) -> None:
    """LIBERO-shaped v3.0 dataset; images are smooth scenes with sensor-like noise (PNG ~ real footage)."""
    import numpy as np

    from data_adapters.lerobot_writer import LeRobotWriter

    features = {
        "state": {"dtype": "float32", "shape": (8,), "names": None},
        "actions": {"dtype": "float32", "shape": (7,), "names": None},
        **{cam: {"dtype": storage, "shape": (SIZE, SIZE, 3), "names": ["height", "width", "channel"]} for cam in CAMERAS},
    }  # fmt: skip
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    writer = LeRobotWriter(root, fps=FPS, features=features, robot_type="panda")
    for ep in range(episodes):
        state = np.cumsum(rng.normal(0, 0.05, (length, 8)), axis=0).astype(np.float32)
        for t in range(length):
            frame = {"state": state[t], "actions": state[min(t + 1, length - 1), :7] + 0.01}
            for c, cam in enumerate(CAMERAS):
                scene = np.stack([x * 180 + 40 * c, y * 160 + 2 * t, (x + y) * 90 + 10 * ep], axis=-1)
                cy, cx = int(100 + 60 * np.tanh(state[t, 0])), int(100 + 60 * np.tanh(state[t, 1]))
                scene[cy : cy + 40, cx : cx + 40] = (220, 200, 40)
                noisy = scene + rng.normal(0, 3, scene.shape)
                frame[cam] = np.clip(noisy, 0, 255).astype(np.uint8)
            writer.add_frame(frame, task=f"put the bowl on the plate {ep % 4}")
        writer.save_episode()
    writer.finalize()


def sample_order(num_frames: int, samples: int) -> list[int]:
    import numpy as np

    return np.random.default_rng(0).permutation(num_frames)[:samples].tolist()


# -- measured roles (each runs in its own process) -----------------------------------------------------


class MemoryProbe:
    """Peak RSS of this process and peak RSS / USS (private pages) of its DataLoader workers.

    Sampled after every batch. Forked workers share the parent's pages (torch alone is ~0.7 GB), so a
    worker's USS is what it really adds; the baseline is this process's RSS right after the imports.
    """

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.baseline = self.process.memory_info().rss
        self.worker_rss = self.worker_uss = 0

    def sample(self) -> None:
        for child in self.process.children():
            try:
                info = child.memory_full_info()
            except Exception:  # noqa: BLE001 - a worker may exit between listing and reading
                continue
            self.worker_rss, self.worker_uss = max(self.worker_rss, info.rss), max(self.worker_uss, info.uss)

    def report(self) -> dict:
        mb = 1024 * 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return {
            "rss_after_imports_mb": round(self.baseline / mb),
            "peak_rss_main_mb": round(peak / mb),
            "peak_rss_worker_mb": round(self.worker_rss / mb),
            "peak_uss_worker_mb": round(self.worker_uss / mb),
        }


def time_loader(make_loader, repeats: int, probe: MemoryProbe) -> list[float]:
    """Steady-state frames/s per repeat: frames after the first batch / time after the first batch."""
    rates = []
    for _ in range(repeats):
        loader = make_loader()
        first, frames = None, 0
        for batch in loader:
            size = len(batch["task"]) if "task" in batch else len(batch["tokens"])
            probe.sample()
            if first is None:
                first = time.perf_counter()
                continue
            frames += size
        rates.append(frames / (time.perf_counter() - first))
        del loader
    return rates


def role_ours(args, with_transform: bool) -> dict:
    import torch

    from data_adapters.lerobot_reader import LeRobotFrames, loader_worker_init

    torch.set_num_threads(1)
    probe = MemoryProbe()
    start = time.perf_counter()
    frames = LeRobotFrames(
        args.root, state_keys=["state"], action_keys=["actions"], camera_keys=list(CAMERAS),
        horizon=HORIZON, cache_dir=args.cache_dir,
    )  # fmt: skip
    dataset, collate_fn = frames, None
    if with_transform:
        dataset, collate_fn = transformed(frames, args)
    construction = time.perf_counter() - start
    order = sample_order(len(frames), args.samples)

    def make_loader():
        return torch.utils.data.DataLoader(
            dataset, batch_size=BATCH, sampler=order, num_workers=args.workers, collate_fn=collate_fn,
            worker_init_fn=loader_worker_init if args.workers else None,
        )  # fmt: skip

    rates = time_loader(make_loader, args.repeats, probe)
    return {
        "fps": statistics.median(rates),
        "fps_runs": rates,
        "construction_s": construction,
        **probe.report(),
    }


def transformed(frames, args):
    import dataclasses
    import tempfile

    import numpy as np
    import torch

    from data_adapters.lerobot_reader import read_numeric
    from data_adapters.normalization import NormStats, Stats
    from data_adapters.registry import get_config_type
    from data_adapters.tokenizer import PromptTokenizer, train_tiny_tokenizer
    from data_adapters.transforms import InputTransform, collate

    cfg = get_config_type("pi0_libero")
    assert cfg.action_horizon == HORIZON and set(cfg.camera_keys) == set(CAMERAS)
    values = np.concatenate(list(read_numeric(args.root, ["state", "actions"]).values()))

    def stats(x):
        q01, q99 = np.quantile(x, [0.01, 0.99], axis=0)
        return Stats(mean=x.mean(0), std=x.std(0), q01=q01, q99=q99)

    norm = NormStats(state=stats(values[:, :8]), actions=stats(values[:, 8:]))
    tokenizer = PromptTokenizer(
        train_tiny_tokenizer(Path(tempfile.mkdtemp()) / "tok.model"), cfg.max_token_len
    )
    transform = InputTransform(dataclasses.replace(cfg), norm, tokenizer, train=True, augment=False)

    class Transformed(torch.utils.data.Dataset):
        def __len__(self):
            return len(frames)

        def __getitem__(self, i):
            return transform(frames[i])

    return Transformed(), collate


def role_lerobot(args) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    probe = MemoryProbe()
    start = time.perf_counter()
    dataset = LeRobotDataset(
        "bench/data_pipeline", root=args.root, video_backend="pyav",
        delta_timestamps={"actions": [k / FPS for k in range(HORIZON)]},
    )  # fmt: skip
    dataset[0]  # LeRobot loads its frame table lazily; count that as construction
    construction = time.perf_counter() - start
    order = sample_order(len(dataset), args.samples)

    def make_loader():
        return torch.utils.data.DataLoader(dataset, batch_size=BATCH, sampler=order, num_workers=args.workers)

    rates = time_loader(make_loader, args.repeats, probe)
    from importlib.metadata import version

    return {
        "fps": statistics.median(rates),
        "fps_runs": rates,
        "construction_s": construction,
        "lerobot": version("lerobot"),
        **probe.report(),
    }


def role_floor(args) -> dict:
    """Decode the same frames of both cameras and nothing else, one process."""
    import io

    import av
    import numpy as np
    import pyarrow.parquet as pq
    from av.video.reformatter import VideoReformatter
    from PIL import Image

    from data_adapters.lerobot_format import read_meta

    probe = MemoryProbe()
    meta = read_meta(args.root)
    order = sample_order(meta.total_frames, args.samples)
    starts = np.cumsum([0] + [ep.length for ep in meta.episodes.values()])
    episodes = list(meta.episodes.values())
    rates = []
    located = []  # (episode, frame) of every sampled flat index
    for i in order:
        pos = int(np.searchsorted(starts, i, side="right")) - 1
        located.append((episodes[pos], i - int(starts[pos])))
    if meta.features[CAMERAS[0]]["dtype"] == "image":
        blobs = {}
        for rel in sorted({ep.data_path for ep, _ in located}):
            table = pq.read_table(args.root / rel, columns=list(CAMERAS))
            for ep, t in located:
                if ep.data_path == rel:
                    blobs[(ep.index, t)] = [
                        table.column(c)[ep.row_start + t].as_py()["bytes"] for c in CAMERAS
                    ]
            del table
        pairs = [blobs[(ep.index, t)] for ep, t in located]
        for _ in range(args.repeats):
            start = time.perf_counter()
            for pair in pairs:
                for data in pair:
                    np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
            rates.append(len(pairs) / (time.perf_counter() - start))
    else:
        containers = {}
        for ep in episodes:
            for cam in CAMERAS:
                path = str(args.root / ep.videos[cam].path)
                if path not in containers:
                    containers[path] = av.open(path)
                    containers[path].streams.video[0].thread_count = 1
        wanted = [
            [
                (containers[str(args.root / ep.videos[cam].path)], ep.videos[cam].from_timestamp + t / FPS)
                for cam in CAMERAS
            ]
            for ep, t in located
        ]
        rgb = VideoReformatter()  # one single-threaded scaler, as a careful PyAV user would keep
        for _ in range(args.repeats):
            start = time.perf_counter()
            for pair in wanted:
                for container, ts in pair:
                    stream = container.streams.video[0]
                    container.seek(int((ts - 0.02) / stream.time_base), stream=stream, backward=True)
                    for frame in container.decode(stream):
                        if frame.time >= ts - 0.02:
                            rgb.reformat(frame, format="rgb24", threads=1).to_ndarray()
                            break
            rates.append(len(wanted) / (time.perf_counter() - start))
    return {"fps": statistics.median(rates), "fps_runs": rates, **probe.report()}


# -- driver -----------------------------------------------------------------------------------------------


def run_role(
    python: str, role: str, root: Path, workers: int, samples: int, repeats: int, cache_dir: Path
) -> dict:
    cmd = [python, __file__, "--role", role, "--root", str(root), "--workers", str(workers),
           "--samples", str(samples), "--repeats", str(repeats), "--cache-dir", str(cache_dir)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        return {"error": (done.stderr or done.stdout)[-2000:]}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=["ours", "ours_transform", "lerobot", "floor"])
    parser.add_argument("--root", type=Path)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--samples", type=int, default=480, help="frames per measurement (ours, floor)")
    parser.add_argument("--lerobot-image-samples", type=int, default=40, help="frames per LeRobot image run")
    parser.add_argument("--lerobot-video-samples", type=int, default=240, help="frames per LeRobot video run")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes inside one measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds alternating the roles")
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument("--length", type=int, default=50)
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/vla_sft_bench_data"))
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--lerobot-versions", default="0.4.4,0.6.1", help="LeRobot releases to measure")
    parser.add_argument("--lerobot-python", action="append", default=[], metavar="VERSION=PATH",
                        help="python of the venv holding LeRobot VERSION (default: benchmarks/lerobot_venv.py)")  # fmt: skip
    parser.add_argument("--json-out", type=Path, default=None)
    args = parser.parse_args()

    if args.role:
        runners = {"ours": lambda: role_ours(args, False), "ours_transform": lambda: role_ours(args, True),
                   "lerobot": lambda: role_lerobot(args), "floor": lambda: role_floor(args)}  # fmt: skip
        print(json.dumps(runners[args.role]()))
        return

    lerobot_pythons = find_lerobot_pythons(args.lerobot_versions, args.lerobot_python)
    cache_dir = args.cache_dir or args.out_dir / "image_cache"
    results = {"load_avg_before": os.getloadavg(), "lerobot_versions": list(lerobot_pythons), "rows": []}
    for storage in ("image", "video"):
        root = args.out_dir / f"libero_like_{storage}_{args.episodes}x{args.length}"
        if not (root / "meta/info.json").is_file():
            start = time.perf_counter()
            build_dataset(root, storage, args.episodes, args.length)
            print(f"[bench] wrote {root} in {time.perf_counter() - start:.1f}s", flush=True)
        for rnd in range(args.rounds):
            floor = run_role(sys.executable, "floor", root, 0, args.samples, args.repeats, cache_dir)
            results["rows"].append({"storage": storage, "role": "floor", "workers": 0, "round": rnd, **floor})
            print(f"[bench] {storage} round {rnd} floor: {floor}", flush=True)
            # The releases swap places every round, so neither always runs right after ours.
            versions = list(lerobot_pythons) if rnd % 2 == 0 else list(reversed(lerobot_pythons))
            lerobot_samples = getattr(args, f"lerobot_{storage}_samples")
            for workers in (0, 2):
                for name, role, python, samples in (
                    ("ours", "ours", sys.executable, args.samples),
                    ("ours_transform", "ours_transform", sys.executable, args.samples),
                    *((f"lerobot {v}", "lerobot", lerobot_pythons[v], lerobot_samples) for v in versions),
                ):
                    out = run_role(python, role, root, workers, samples, args.repeats, cache_dir)
                    if role == "lerobot" and "lerobot" in out and name != f"lerobot {out['lerobot']}":
                        raise SystemExit(f"{python} runs LeRobot {out['lerobot']}, not {name}: wrong venv")
                    results["rows"].append({"storage": storage, "role": name, "workers": workers, "round": rnd,
                                            **out})  # fmt: skip
                    print(f"[bench] {storage} round {rnd} {name} workers={workers}: {out}", flush=True)
    results["load_avg_after"] = os.getloadavg()
    print_table(results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2))


def find_lerobot_pythons(versions: str, overrides: list[str]) -> dict[str, str]:
    """LeRobot release -> its venv's python; one clear error when a venv is missing."""
    sys.path.insert(0, str(REPO))
    from benchmarks.lerobot_venv import lerobot_python

    given = {}
    for item in overrides:
        version, sep, path = item.partition("=")
        if not sep or not path:
            raise SystemExit(f"--lerobot-python {item!r}: expected VERSION=PATH, e.g. 0.6.1=/venv/bin/python")
        given[version] = path
    pythons = {}
    for version in [v.strip() for v in versions.split(",") if v.strip()]:
        try:
            pythons[version] = lerobot_python(given.get(version), version)
        except ValueError as err:
            raise SystemExit(f"--lerobot-versions: {err}") from None
        if not Path(pythons[version]).is_file():
            raise SystemExit(
                f"--lerobot-versions: no python for LeRobot {version} at {pythons[version]} "
                f"(build its venv as .ci/run does, or pass --lerobot-python {version}=PATH)"
            )
    return pythons


def print_table(results: dict) -> None:
    rows = results["rows"]

    def per_round(storage, role, workers) -> dict[int, float]:
        return {r.get("round", 0): r["fps"] for r in rows
                if (r["storage"], r["role"], r["workers"]) == (storage, role, workers) and "fps" in r}  # fmt: skip

    def fps(storage, role, workers):
        values = list(per_round(storage, role, workers).values())
        return statistics.median(values) if values else float("nan")

    def ratio(storage, a, wa, b, wb):
        """Median over rounds of fps(a) / fps(b), each round's pair measured back to back."""
        ra, rb = per_round(storage, a, wa), per_round(storage, b, wb)
        values = [ra[k] / rb[k] for k in ra if rb.get(k)]
        return statistics.median(values) if values else float("nan")

    versions = results.get("lerobot_versions", [])
    lerobot_heads = "".join(f" LeRobot {v} fps | ours / {v} |" for v in versions)
    print(
        f"\n| dataset | workers | ours fps | ours+transform fps |{lerobot_heads} floor fps | floor / ours |"
    )
    print("|---|---|---|---|" + "---|---|" * len(versions) + "---|---|")
    for storage in ("image", "video"):
        floor = fps(storage, "floor", 0)
        for workers in (0, 2):
            lerobot_cells = "".join(
                f" {fps(storage, f'lerobot {v}', workers):.1f} |"
                f" {ratio(storage, 'ours', workers, f'lerobot {v}', workers):.1f}x |"
                for v in versions
            )  # medians over rounds
            print(
                f"| {storage} | {workers} | {fps(storage, 'ours', workers):.0f} | "
                f"{fps(storage, 'ours_transform', workers):.0f} |{lerobot_cells} {floor:.0f} | "
                f"{ratio(storage, 'floor', 0, 'ours', workers):.2f}x |"
            )
    if len(versions) == 2:
        old, new = versions
        print(f"\nLeRobot {new} / {old} (median of per-round ratios): " + ", ".join(
            f"{storage} w{workers} {ratio(storage, f'lerobot {new}', workers, f'lerobot {old}', workers):.2f}x"
            for storage in ("image", "video") for workers in (0, 2)
        ))  # fmt: skip
    print(f"\nload average before {results['load_avg_before']}, after {results['load_avg_after']}")


if __name__ == "__main__":
    main()
