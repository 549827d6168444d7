"""A minimal @torchrun flow used by tests/test_torchrun_compat.py (not part of the product).

Run: python tests/torchrun_probe/probe_flow.py run --nodes 2 --nproc 1 --out_dir /tmp/probe
"""

import sys
from pathlib import Path

from metaflow import FlowSpec, Parameter, current, step, torchrun

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root: import flows.*
from flows.torchrun_compat import install  # noqa: E402

install()

PROBE = str(Path(__file__).with_name("allreduce_probe.py"))


class TorchrunProbeFlow(FlowSpec):
    nodes = Parameter("nodes", default=2, type=int)
    nproc = Parameter("nproc", default=1, type=int)
    out_dir = Parameter("out_dir", required=True)
    fail_node = Parameter("fail_node", default=-1, type=int)

    @step
    def start(self):
        self.next(self.train, num_parallel=self.nodes)

    @torchrun
    @step
    def train(self):
        current.torch.run(
            entrypoint=PROBE,
            entrypoint_args=["--out_dir", self.out_dir, "--fail_node", str(self.fail_node)],
            nproc_per_node=self.nproc,
        )
        self.node_index = current.parallel.node_index
        self.next(self.join)

    @step
    def join(self, inputs):
        self.nodes_done = sorted(i.node_index for i in inputs)
        self.next(self.end)

    @step
    def end(self):
        pass


if __name__ == "__main__":
    TorchrunProbeFlow()
