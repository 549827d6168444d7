"""torch.distributed entry point for the @torchrun tests: one all_reduce over gloo, results to JSON.

Each rank writes ``rank<k>.json`` with what it saw, so the test can check that all ranks of all
nodes joined one process group on the rendezvous port the shim chose.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--fail_node", type=int, default=-1, help="this node exits 3 before joining")
    args = parser.parse_args()
    node_rank = int(os.environ["GROUP_RANK"])
    if node_rank == args.fail_node:
        print(f"probe: node {node_rank} failing on purpose", file=sys.stderr)
        sys.exit(3)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    record = {
        "rank": rank,
        "world_size": world,
        "node_rank": node_rank,
        "all_reduce_sum": value.item(),
        "master_port": int(os.environ["MASTER_PORT"]),
    }
    Path(args.out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
