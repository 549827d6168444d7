"""torch.distributed entry point for the @torchrun tests: one all_reduce over gloo, results to JSON.

Each rank writes ``rank<k>.json`` with what it saw, so the test can check that all ranks of all
nodes joined one process group on the rendezvous port the shim chose.
"""

import argparse
import json
import os
import socket
import struct
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _address(hex_addr: str) -> str:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(
        socket.AF_INET6, b"".join(struct.pack("<I", x) for x in struct.unpack(">4I", raw))
    )


def listening_sockets(pids: list[int]) -> list[dict]:
    """TCP sockets in LISTEN state (st 0A) owned by ``pids``, from the kernel's socket table."""
    owners = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in owners:
                addr, port = fields[1].split(":")
                found.append({"address": _address(addr), "port": int(port, 16), "pid": owners[fields[9]]})
    return found


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
        # This worker's and its torchrun launcher's listening sockets (node 0's launcher hosts the store).
        "listening": listening_sockets([os.getpid(), os.getppid()]),
    }
    Path(args.out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
