"""The fixed costs under the demo flow's Metaflow + MLflow overhead, measured beside a real demo run.

    python benchmarks/bench_flow_floors.py [--repeats 3] [--no-demo] [--append-results]

The demo's overhead target (issue: Metaflow + MLflow <= 15% of the wall time) can only be met if these
floors, which no code of ours runs, fit in 15% of the demo:
- Metaflow: ``run`` of a flow with the demo's DAG and decorators (8 steps, ``@torchrun`` train with
  ``num_parallel=1`` and its join, ``@card`` on train and evaluate, ``@retry``/``@timeout``/``@resources``)
  whose steps do nothing: task launches, artifact persistence, cards;
- MLflow, in a fresh process each (what ``start`` and ``register`` each pay): ``import mlflow``; opening the
  tracking store of a fresh sqlite database (creates the tables: MLflow runs its ~60 schema migrations); and
  of an existing one (schema check).
The demo itself (``bench_demo_flow.one_run``, cold: fresh folder, database and caches) runs in the same
invocation, so all numbers share the machine's state.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_demo_flow import metaflow_env, one_run  # noqa: E402

# The demo's DAG and decorators (flows/sft_flow.py), with steps that do nothing.
EMPTY_FLOW = """
import sys
sys.path.insert(0, {repo!r})
from metaflow import FlowSpec, card, current, resources, retry, step, timeout, torchrun
from metaflow.cards import Markdown
from flows import torchrun_compat

torchrun_compat.install()


class EmptySFTFlow(FlowSpec):
    @step
    def start(self):
        self.next(self.fetch_data)

    @step
    def fetch_data(self):
        self.next(self.compute_norm_stats)

    @step
    def compute_norm_stats(self):
        self.next(self.train, num_parallel=1)

    @card(type="blank", id="train")
    @retry(times=1)
    @timeout(hours=24)
    @resources(cpu=1, memory=1024)
    @torchrun
    @step
    def train(self):
        self.node_index = current.parallel.node_index
        current.card["train"].append(Markdown("# train"))
        self.next(self.join)

    @step
    def join(self, inputs):
        self.merge_artifacts(inputs, exclude=["node_index"])
        self.next(self.evaluate)

    @card(type="blank", id="evaluate")
    @resources(cpu=1, memory=1024)
    @step
    def evaluate(self):
        current.card["evaluate"].append(Markdown("# evaluate"))
        self.next(self.register)

    @step
    def register(self):
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    EmptySFTFlow()
"""

# Times itself after interpreter start-up (which the Metaflow number already holds, once per task).
MLFLOW_PROBE = """
import sys, time
t0 = time.perf_counter()
import mlflow
t1 = time.perf_counter()
if sys.argv[1] != "import":
    from mlflow.tracking import MlflowClient
    MlflowClient(tracking_uri=sys.argv[2]).search_experiments(max_results=1)
print("PROBE", t1 - t0, time.perf_counter() - t0)
"""


def empty_flow_seconds(tmp: Path) -> float:
    work = Path(tempfile.mkdtemp(dir=tmp))
    flow = work / "empty_sft_flow.py"
    flow.write_text(EMPTY_FLOW.format(repo=str(REPO)))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(flow), "run"], cwd=work, env=metaflow_env(work),
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"empty flow failed:\n{proc.stderr[-3000:]}")
    return seconds


def mlflow_seconds(tmp: Path, mode: str) -> float:
    """mode: "import", "fresh" (new sqlite database) or "existing" (one whose tables exist)."""
    db = Path(tempfile.mkdtemp(dir=tmp)) / "mlflow.db"
    uri = f"sqlite:///{db}"
    if mode == "existing":
        _probe("fresh", uri)
    return _probe(mode, uri)


def _probe(mode: str, uri: str) -> float:
    proc = subprocess.run([sys.executable, "-c", MLFLOW_PROBE, mode, uri], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("PROBE")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"MLflow probe failed:\n{proc.stderr[-3000:]}")
    return float(line.split()[2])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-demo", action="store_true", help="floors only (no demo run beside them)")
    parser.add_argument("--append-results", action="store_true", help="append to benchmarks/RESULTS.md")
    args = parser.parse_args()
    med = statistics.median
    samples: dict[str, list[float]] = {"empty flow": [], "import": [], "fresh": [], "existing": []}
    demo = None
    with tempfile.TemporaryDirectory(prefix="bench-floors-") as tmp:
        for _ in range(args.repeats):  # interleaved, so a change of machine load hits every kind alike
            samples["empty flow"].append(empty_flow_seconds(Path(tmp)))
            for mode in ("import", "fresh", "existing"):
                samples[mode].append(mlflow_seconds(Path(tmp), mode))
        if not args.no_demo:
            work = Path(tmp) / "demo"
            work.mkdir()
            demo = one_run(work, work / "cache", nodes=1)
    flow_s, import_s = med(samples["empty flow"]), med(samples["import"])
    fresh_s, existing_s = med(samples["fresh"]), med(samples["existing"])
    # start opens a fresh database on a first run; register opens it again in its own process.
    floor = flow_s + fresh_s + existing_s
    lines = [
        f"| fixed cost (median of {args.repeats}, fresh processes) | s |",
        "| --- | ---: |",
        f"| Metaflow: `run` of the demo's DAG and decorators, empty steps | {flow_s:.1f} |",
        f"| MLflow: `import mlflow` | {import_s:.1f} |",
        f"| MLflow: import + open a fresh sqlite store (table creation) | {fresh_s:.1f} |",
        f"| MLflow: import + open an existing store (schema check) | {existing_s:.1f} |",
        f"| **floor of a cold demo run** (Metaflow + fresh store in start + existing store in register) "
        f"| **{floor:.1f}** |",
    ]
    if demo is not None:
        total, over = demo["total"], demo["mlflow"] + demo["metaflow"]
        lines += [
            "",
            f"- demo run beside them (cold): {total:.1f} s, of which Metaflow + MLflow {over:.1f} s "
            f"({100 * over / total:.0f}%); 15% of it is {0.15 * total:.1f} s",
            f"- the floor alone is {100 * floor / total:.0f}% of that demo run",
        ]
    per_run = {k: [round(v, 2) for v in vs] for k, vs in samples.items()}
    lines.append(f"- per-repeat seconds: {json.dumps(per_run)}")
    command = f"python benchmarks/bench_flow_floors.py --repeats {args.repeats}" + (
        " --no-demo" if args.no_demo else ""
    )
    text = f"\n### {date.today()} · 2-core CPU, no GPU · `{command}`\n\n" + "\n".join(lines) + "\n"
    print(text)
    if args.append_results:
        from results_md import append_to_section

        append_to_section("Demo flow", text)


if __name__ == "__main__":
    main()
