"""Compatibility shim for metaflow-torchrun 0.2.2 (``@torchrun``) so it also runs locally.

Import this module (and call :func:`install`) in a flow file before the flow class is defined;
the flow file is re-executed by every Metaflow task, so every task gets the fix. It patches the
installed classes in place and is idempotent. What it fixes, all measured on 0.2.2:

1. ``TorchrunDecoratorParallel.task_pre_step`` skips ``ParallelDecorator.task_pre_step``, so
   ``input_paths`` is never set and the local multinode control task dies with
   ``AttributeError: ... 'input_paths'``. We call the parent first.
2. ``TorchrunDatastore.get_storage_root`` raises ``NotImplementedError`` for the local datastore.
   Local storage resolves relative keys under its own root (as S3 does), so we return the same
   relative suffix. Keys also get an ``attempt-<retry_count>`` level: without it a ``@retry``
   attempt reads the previous attempt's "failed" node status and kills itself at once.
3. The rendezvous port is fixed at 3339, so two runs on one host (or a retry while the old
   socket lingers) collide. Unless the user set ``@torchrun(master_port=...)``, node 0 picks a
   port derived from run id / step / attempt, moves up to the next free one on its host (the
   master's host) and publishes it through the datastore; the other nodes read it.
4. Each node waited up to 10 s after training finished (a sleeping health-monitor thread is
   joined), and a node whose peer failed kept waiting on the collective until its timeout. The
   replacement ``run`` polls every few seconds, stops the monitor as soon as training ends, and
   terminates this node's torchrun process when a peer reports failure so ``@retry`` can start
   the next attempt.
5. The task process imported torch (seconds of CPU per node) only to check it is installed;
   ``importlib.util.find_spec`` answers the same question without importing it.
6. torchrun's rendezvous store (a TCPStore in the node-0 launcher, no authentication) listened on every
   interface, also for a local run whose master address is 127.0.0.1. When the master address is a
   loopback address (a local run, single node or the local multi-node simulation) the command runs
   ``python -m flows.torchrun_loopback`` instead of ``torch.distributed.run``: the same torchrun with the
   store bound to that address, and gloo / NCCL sockets on the loopback interface. A real multi-node run
   (master address of another host) launches plain torchrun, which must listen where the peers reach it.

Kubernetes (JobSet) and AWS Batch runs go through the same, now uniform, code path.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading

DEFAULT_MASTER_PORT = "3339"  # metaflow-torchrun 0.2.2's default; anything else is user-chosen
PORT_RANGE = (20000, 30000)  # below Linux's ephemeral range (32768+), so clients don't squat it
PORT_KEY = "master_port"
MONITOR_INTERVAL_S = 2.0
LOOPBACK_LAUNCHER = "flows.torchrun_loopback"
_PATCH_MARK = "_vla_sft_compat_installed"


def derived_port(run_id: str, step_name: str, attempt: int) -> int:
    """A port in PORT_RANGE that differs between runs, steps and retry attempts."""
    digest = hashlib.sha256(f"{run_id}/{step_name}/{attempt}".encode()).digest()
    low, high = PORT_RANGE
    return low + int.from_bytes(digest[:4], "big") % (high - low)


def port_is_free(port: int) -> bool:
    """True when nothing on this host is bound to ``port`` (TCP, all interfaces)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def first_free_port(start: int, tries: int = 200) -> int:
    """The first free port at or after ``start`` (wrapping inside PORT_RANGE)."""
    low, high = PORT_RANGE
    for offset in range(tries):
        port = low + (start - low + offset) % (high - low)
        if port_is_free(port):
            return port
    raise RuntimeError(f"no free TCP port among {tries} tried from {start} for torch.distributed rendezvous")


def _agree_on_port(flow_datastore, timeout_s: float) -> int:
    """Node 0 chooses the rendezvous port and publishes it; every node returns the same value."""
    from metaflow import current
    from metaflow_extensions.torchrun.plugins.torchrun_libs.datastore import (
        TorchrunDatastore,
        wait_for_key_data,
    )

    datastore = TorchrunDatastore(flow_datastore=flow_datastore, pathspec=current.pathspec)
    if current.parallel.node_index == 0:
        start = derived_port(current.run_id, current.step_name, current.retry_count)
        port = first_free_port(start)
        datastore.put(PORT_KEY, json.dumps({"port": port}), overwrite=True)
        return port
    blob = wait_for_key_data(datastore, [PORT_KEY], max_wait_time=timeout_s, frequency=0.2)[PORT_KEY]
    return int(json.loads(blob.text)["port"])


def _task_pre_step(self, step_name, task_datastore, metadata, run_id, task_id, flow, graph,
                   retry_count, max_user_code_retries, ubf_context, inputs):  # fmt: skip
    from metaflow.plugins.parallel_decorator import ParallelDecorator

    ParallelDecorator.task_pre_step(self, step_name, task_datastore, metadata, run_id, task_id, flow,
                                    graph, retry_count, max_user_code_retries, ubf_context, inputs)  # fmt: skip
    self._ubf_context = ubf_context


def _setup_distributed_env(self, flow):
    from metaflow import current
    from metaflow_extensions.torchrun.plugins.torchrun_libs.torch_distributed_setup import (
        setup_torch_distributed_env,
    )

    timeout_s = float(self.attributes["all_nodes_started_timeout"])
    port = str(self.attributes["master_port"])
    if port == DEFAULT_MASTER_PORT:
        port = str(_agree_on_port(self.flow_datastore, timeout_s))
    setup_torch_distributed_env(timeout_s, self.flow_datastore)
    self._setup_current(
        current.parallel.main_ip,
        port,
        self._ubf_context,
        current.parallel.num_nodes,
        current.parallel.node_index,
    )


def _storage_root(self):
    from metaflow_extensions.torchrun.plugins.torchrun_libs.constants import TORCHRUN_SUFFIX

    if self._backend.TYPE == "local":
        return TORCHRUN_SUFFIX  # LocalStorage.full_uri joins it under the local datastore root
    return _ORIGINAL["get_storage_root"].fget(self)


def _key_location(self):
    from metaflow import current

    attempt = current.retry_count or 0
    return os.path.join(
        self.get_storage_root, self._flow_name, self._run_id, self._step_name, f"attempt-{attempt}"
    )


def _terminate_torchrun_children() -> None:
    """Stop the torchrun launcher this task started (and its workers), never anything else.

    Only direct children whose command line runs ``torch.distributed.run`` (or the loopback launcher) are
    touched: the task also has Metaflow sidecars and, on a local control task, the other nodes as children.
    """
    import psutil

    launchers = []
    for child in psutil.Process().children():
        try:
            if {"torch.distributed.run", LOOPBACK_LAUNCHER} & set(child.cmdline()):
                launchers.append(child)
        except psutil.Error:
            continue
    doomed = launchers + [grandchild for p in launchers for grandchild in p.children(recursive=True)]
    for proc in doomed:
        proc.terminate()
    _, alive = psutil.wait_procs(doomed, timeout=10)
    for proc in alive:
        proc.kill()


def _run(self, torchrun_args=None, entrypoint=None, entrypoint_args=None, nproc_per_node=None, **unsupported):
    """Drop-in for ``TorchrunExecutor.run`` with a prompt, effective health monitor."""
    from metaflow import current
    from metaflow_extensions.torchrun.plugins.torchrun_libs.datastore import TorchrunDatastore
    from metaflow_extensions.torchrun.plugins.torchrun_libs.exceptions import TorchrunException
    from metaflow_extensions.torchrun.plugins.torchrun_libs.status_notifier import TaskStatusNotifier

    if unsupported.get("push_results_dir_to_cloud"):
        raise TorchrunException(
            "push_results_dir_to_cloud is not supported; write checkpoints to storage directly"
        )
    node_index, num_nodes = current.parallel.node_index, current.parallel.num_nodes
    notifier = TaskStatusNotifier(
        TorchrunDatastore(flow_datastore=self._flow_datastore, pathspec=current.pathspec)
    )
    notifier.running(node_index)
    finished = threading.Event()
    peer_failed: list[int] = []

    def watch_peers():
        while not finished.wait(MONITOR_INTERVAL_S):
            failed = [i for i in range(num_nodes) if i != node_index and notifier.read(i).status == "failed"]
            if failed:
                peer_failed.extend(failed)
                print(
                    f"[torchrun_compat] node(s) {failed} failed; stopping node {node_index}", file=sys.stderr
                )
                _terminate_torchrun_children()
                return

    monitor = threading.Thread(target=watch_peers, name="torchrun-peer-monitor", daemon=True)
    monitor.start()
    try:
        self._exec_cmd(torchrun_args=torchrun_args, entrypoint=entrypoint, entrypoint_args=entrypoint_args,
                       nproc_per_node=nproc_per_node)  # fmt: skip
    except BaseException:
        notifier.failed(node_index)
        raise
    finally:
        finished.set()
        monitor.join()
    if peer_failed:
        notifier.failed(node_index)
        raise TorchrunException(f"peer node(s) {peer_failed} failed")
    notifier.finished(node_index)


def torchrun_command(base_args: dict, torchrun_args: dict | None, entrypoint: str, entrypoint_args: list,
                     nproc_per_node: int | None) -> list[str]:  # fmt: skip
    """The launcher command line: ``base_args`` (the executor's nnodes, master address and port, node rank)
    updated by the step's ``torchrun_args`` ("" = a bare flag), then the entry point and its arguments."""
    args = {**base_args, **(torchrun_args or {})}
    if nproc_per_node is not None:
        args["nproc_per_node"] = nproc_per_node
    args.setdefault("nproc_per_node", 1)
    launcher = LOOPBACK_LAUNCHER if is_loopback(str(args["master_addr"])) else "torch.distributed.run"
    cmd = [sys.executable, "-m", launcher]
    for key, value in args.items():
        cmd += [f"--{key}"] if value in ("", None) else [f"--{key}", str(value)]
    cmd += ["--rdzv_endpoint", f"{args['master_addr']}:{args['master_port']}", entrypoint, *entrypoint_args]
    return cmd


def is_loopback(address: str) -> bool:
    import ipaddress

    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def loopback_environment(master_addr: str) -> dict[str, str]:
    """gloo and NCCL on the loopback interface for a local run (unless the user chose an interface)."""
    if not is_loopback(master_addr):
        return {}
    names = {name for _, name in socket.if_nameindex()}
    iface = next((n for n in ("lo", "lo0") if n in names), None)
    if iface is None:
        return {}
    return {k: os.environ.get(k, iface) for k in ("GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME")}


def _exec_cmd(self, torchrun_args=None, entrypoint=None, entrypoint_args=None, nproc_per_node=None):
    """Drop-in for ``TorchrunExecutor._exec_cmd`` (dict ``torchrun_args`` and list ``entrypoint_args`` only)."""
    import subprocess

    from metaflow_extensions.torchrun.plugins.torchrun_libs.exceptions import TorchrunException
    from metaflow_extensions.torchrun.plugins.torchrun_libs.streaming import stream_subprocess_output

    if entrypoint is None:
        raise TorchrunException("current.torch.run(..., entrypoint=<SCRIPT>, ...) arg must be specified.")
    if not isinstance(torchrun_args or {}, dict) or not isinstance(entrypoint_args or [], list):
        raise TorchrunException("torchrun_compat: torchrun_args must be a dict and entrypoint_args a list")
    self._ensure_torch_installed()
    cmd = torchrun_command(
        self.torchrun_args, torchrun_args, entrypoint, list(entrypoint_args or []), nproc_per_node
    )
    env = {**os.environ, **loopback_environment(str(self.torchrun_args["master_addr"]))}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as process:
        returncode = stream_subprocess_output(process, sys.stdout, sys.stderr)
    if returncode != 0:
        raise TorchrunException(f"Subprocess exited with return code {returncode}")


def _ensure_torch_installed(self):
    import importlib.util

    from metaflow_extensions.torchrun.plugins.torchrun_libs.exceptions import TorchNotInstalledException

    if importlib.util.find_spec("torch") is None:
        raise TorchNotInstalledException()


_ORIGINAL: dict = {}


def install() -> None:
    """Patch metaflow-torchrun in this process (idempotent)."""
    from metaflow_extensions.torchrun.plugins.torchrun_libs import datastore, executor, torchrun_decorator

    decorator_cls = torchrun_decorator.TorchrunDecoratorParallel
    if getattr(decorator_cls, _PATCH_MARK, False):
        return
    _ORIGINAL["get_storage_root"] = datastore.TorchrunDatastore.__dict__["get_storage_root"]
    decorator_cls.task_pre_step = _task_pre_step
    decorator_cls.setup_distributed_env = _setup_distributed_env
    datastore.TorchrunDatastore.get_storage_root = property(_storage_root)
    datastore.TorchrunDatastore.get_datastore_key_location = _key_location
    executor.TorchrunExecutor.run = _run
    executor.TorchrunExecutor._ensure_torch_installed = _ensure_torch_installed
    executor.TorchrunExecutor._exec_cmd = _exec_cmd
    setattr(decorator_cls, _PATCH_MARK, True)


def is_installed() -> bool:
    from metaflow_extensions.torchrun.plugins.torchrun_libs.torchrun_decorator import (
        TorchrunDecoratorParallel,
    )

    return bool(getattr(TorchrunDecoratorParallel, _PATCH_MARK, False))
