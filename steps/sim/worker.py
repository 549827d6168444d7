"""A simulator in its own process, driven over stdin / stdout by ``steps.sim.rollout`` (``steps.sim.wire``).

    python -m steps.sim.worker      # then: {"op": "make", "simulator": "libero", "options": {...}}, ...

Requests: ``make`` (build the simulator), ``reset`` (task, episode, seed), ``step`` (action, observe),
``observe``, ``timings``, ``call`` (method, kwargs: one of the simulator's ``remote_methods``), ``close``. Replies carry the result, or ``{"error": "..."}`` with one line.
The real stdout is kept for messages and file descriptor 1 is pointed at stderr, so a simulator
that prints cannot corrupt the stream. Any Python with numpy and the simulator can run it (the
repository on ``PYTHONPATH``): it imports ``steps.sim.base`` and the simulator's package only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from steps.sim import wire

REPO = Path(__file__).resolve().parents[2]
# One BLAS / OpenMP / llvmpipe thread per worker: a worker per core beats workers fighting for cores.
_WORKER_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "NUMBA_NUM_THREADS": "1", "LP_NUM_THREADS": "1"}  # fmt: skip


def serve(inp, out) -> None:
    from steps.sim.base import make_simulator

    sim = None
    while True:
        try:
            msg = wire.read_message(inp)
        except EOFError:
            break
        op = msg.get("op")
        try:
            if op == "make":
                sim = make_simulator(msg["simulator"], msg.get("options"))
                reply: Any = {"ok": True}
            elif op == "reset":
                reply = {"obs": sim.reset(msg["task"], int(msg["episode"]), int(msg["seed"]))}
            elif op == "step":
                success = bool(sim.step(msg["action"]))
                reply = {"success": success, "obs": sim.observe() if msg.get("observe") else None}
            elif op == "observe":
                reply = {"obs": sim.observe()}
            elif op == "timings":
                reply = {"timings": sim.timings()}
            elif op == "call":
                method = msg.get("method")
                if method not in type(sim).remote_methods:
                    raise ValueError(f"{method!r} is not one of the simulator's remote methods "
                                     f"{list(type(sim).remote_methods)}")  # fmt: skip
                reply = {"result": getattr(sim, method)(**dict(msg.get("kwargs") or {}))}
            elif op == "close":
                wire.write_message(out, {"ok": True})
                break
            else:
                reply = {"error": f"unknown request {op!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the driver as one line, which raises it
            reply = {"error": f"{type(exc).__name__}: {' '.join(str(exc).split())}"}
        wire.write_message(out, reply)
    if sim is not None:
        sim.close()


def main() -> None:
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed from here on goes to stderr
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, out)


class WorkerError(RuntimeError):
    pass


class Worker:
    """One ``python -m steps.sim.worker`` subprocess holding one simulator (``send`` / ``recv``)."""

    def __init__(self, simulator: str, options: Mapping[str, Any] | None = None, *,
                 python: str | None = None, env: Mapping[str, str] | None = None, name: str = "worker"):  # fmt: skip
        self.name = name
        child_env = {**os.environ, **_WORKER_THREADS, **(env or {})}
        child_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), child_env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            [python or sys.executable, "-m", "steps.sim.worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env, cwd=REPO,
        )  # fmt: skip
        # Keep the last lines of the worker's stderr for error messages (and keep the pipe drained).
        self._stderr: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            self.send("make", simulator=simulator, options=dict(options or {}))
            self.recv()
        except WorkerError:
            self.close()
            raise

    def _drain(self) -> None:
        for line in iter(self._proc.stderr.readline, b""):
            self._stderr = [*self._stderr[-19:], line.decode(errors="replace").rstrip()]

    def send(self, op: str, **kw) -> None:
        try:
            wire.write_message(self._proc.stdin, {"op": op, **kw})
        except (BrokenPipeError, OSError):
            raise WorkerError(self._died()) from None

    def recv(self) -> Any:
        try:
            reply = wire.read_message(self._proc.stdout)
        except EOFError:
            raise WorkerError(self._died()) from None
        if isinstance(reply, dict) and "error" in reply:
            raise WorkerError(f"simulator {self.name}: {reply['error']}")
        return reply

    def _died(self) -> str:
        code = self._proc.wait(timeout=10)
        tail = next((line for line in reversed(self._stderr) if line.strip()), "no output")
        return f"simulator {self.name} exited with code {code}: {tail}"

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self.send("close")
                self.recv()
                self._proc.wait(timeout=30)
            except (WorkerError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            stream.close()


if __name__ == "__main__":
    main()
