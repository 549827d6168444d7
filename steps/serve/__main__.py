"""``python -m steps.serve --model models:/<name>@champion``: serve a policy to openpi robot clients.

    python -m steps.serve --model models:/pi05_libero@champion [--host 127.0.0.1] [--port 8000]
    python -m steps.serve --model runs:/<run id>/policy
    python -m steps.serve --model path/to/export          # a training export folder

The MLflow tracking URI comes from ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory (as everywhere in the project). Bad input exits with
status 2 and one line naming the option.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from steps.serve.server import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_MB, DEFAULT_PORT, PolicyServer, log


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m steps.serve", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="MLflow model URI or local export / pyfunc folder")
    p.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)"
    )
    p.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}, openpi's; 0: any free)"
    )
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the flow's noise; same observation, same actions"
    )
    p.add_argument(
        "--num-steps", type=int, default=10, help="Euler steps of the flow (default 10, as openpi)"
    )
    p.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_MB,
                   help=f"largest client message in MiB; larger ones close the connection (default {DEFAULT_MAX_MESSAGE_MB})")  # fmt: skip
    p.add_argument("--tracking-uri", default=None, help="MLflow URI (default: MLFLOW_TRACKING_URI or sqlite)")
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error(f"--port: must be in 0..65535, got {args.port}")
    if args.max_message_mb <= 0:
        p.error(f"--max-message-mb: must be > 0, got {args.max_message_mb}")
    if args.num_steps < 1:
        p.error(f"--num-steps: must be >= 1, got {args.num_steps}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from steps.policy import Policy
    from steps.serve.loading import ModelSourceError, resolve_export

    with tempfile.TemporaryDirectory(prefix="vla-sft-serve-") as download_dir:
        try:
            export = resolve_export(args.model, Path(download_dir), args.tracking_uri)
            policy = Policy.from_export(export, device=args.device, seed=args.seed, num_steps=args.num_steps)
        except (ModelSourceError, FileNotFoundError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        server = PolicyServer(
            policy,
            metadata={"model": args.model},
            host=args.host,
            port=args.port,
            max_message_bytes=int(args.max_message_mb * 2**20),
        )

        log.info("warm-up inference: %.2f s", server.warm_up())

        def ready(srv: PolicyServer) -> None:
            cfg = policy.config_type
            print(f"serving {args.model} ({cfg.name}, {policy.device}) on ws://{srv.host}:{srv.port}; "
                  f"observation keys {srv.mapper.expected_keys}", flush=True)  # fmt: skip

        try:
            server.run(on_ready=ready)
        except OSError as err:  # the port is taken, the address is not this machine's, ...
            print(f"error: --host/--port: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
