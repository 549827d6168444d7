"""Interpreter exit time of a process that imported what our tasks import, with and without gc.freeze.

    python benchmarks/bench_exit.py [--repeats 5] [--append-results]

Each measurement is a fresh ``python -c`` child that imports torch, peft and mlflow (what a training
worker or a Metaflow task of the flow holds), prints a timestamp as its last statement and exits; the
time from that print to the child's end is its exit cost. ``freeze`` registers ``atexit.register(
gc.freeze)`` first, as ``flows/sft_flow.py`` and ``steps/train/trainer.py`` do. The two variants alternate.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import date

CHILD = "import torch, peft, mlflow, time\n{freeze}print(repr(time.time()), flush=True)\n"
FREEZE = "import atexit, gc\natexit.register(gc.freeze)\n"


def exit_seconds(freeze: bool) -> float:
    code = CHILD.format(freeze=FREEZE if freeze else "")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    printed = float(proc.stdout.readline())
    proc.wait()
    return time.time() - printed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--append-results", action="store_true")
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"plain": [], "freeze": []}
    for _ in range(args.repeats):
        for name in runs:
            runs[name].append(exit_seconds(name == "freeze"))
    plain, frozen = statistics.median(runs["plain"]), statistics.median(runs["freeze"])
    text = (f"\n### {date.today()} · 2-core CPU, no GPU · `python benchmarks/bench_exit.py --repeats {args.repeats}`\n\n"
            f"| variant | exit s (median) | runs |\n| --- | ---: | --- |\n"
            f"| plain exit | {plain:.2f} | {' '.join(f'{x:.2f}' for x in runs['plain'])} |\n"
            f"| atexit gc.freeze | {frozen:.2f} | {' '.join(f'{x:.2f}' for x in runs['freeze'])} |\n\n"
            f"- gc.freeze saves {plain - frozen:.2f} s per process exit ({plain / frozen:.1f}x less).\n")  # fmt: skip
    print(text)
    if args.append_results:
        from results_md import append_to_section  # benchmarks/ is on sys.path when run as a script

        append_to_section("Process exit", text)


if __name__ == "__main__":
    main()
