"""``python -m steps.train --config FILE.json``: the torchrun entry point (see ``steps.train.trainer``)."""

import atexit
import gc
import sys

from steps.train.trainer import cli

# A worker process ends here: skip the interpreter's final garbage collection over every object
# torch, peft and MLflow left alive (2.8 s -> 0.45 s here: benchmarks/bench_exit.py, RESULTS.md).
atexit.register(gc.freeze)
sys.exit(cli())
