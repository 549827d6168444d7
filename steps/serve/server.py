"""The websocket server: openpi's protocol in front of one ``steps.policy.Policy``.

Per connection: send the metadata, then answer each binary msgpack observation with
``{"actions": ..., "server_timing": {...}}``. Timing keys as openpi's server writes them
(``src/openpi/serving/websocket_policy_server.py``): ``infer_ms`` is this request's time from the
decoded observation to the actions (inference only: waiting for another client's inference is not
in it), ``prev_total_ms`` the previous request's whole server time, receive to send, which a
response cannot hold of itself.

A request the server cannot use gets a text frame back ("bad observation: ..." naming the key;
openpi-client raises it as RuntimeError) and the connection stays open; so does an unexpected
inference error ("internal server error: ...", with the traceback in the server log only). Unlike
openpi's server, neither closes the connection: the client's next request is served.

Inference runs in a worker thread, one request at a time over all connections, so the event loop
keeps answering pings and health checks (``GET /healthz``) while the model runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from steps.serve import protocol
from steps.serve.observations import ObservationError, ObservationMapper

log = logging.getLogger("steps.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_MESSAGE_MB = 32


class PolicyServer:
    """Serves ``policy`` (a ``steps.policy.Policy``) to openpi websocket clients.

    Args:
        policy: the loaded policy; its config type decides the observation keys.
        metadata: extra entries for the metadata message (e.g. the model URI).
        host, port: where to listen (port 0: any free port, see ``port`` once started).
        max_message_bytes: larger client messages close the connection (websockets' ``max_size``).
    """

    def __init__(
        self,
        policy,
        *,
        metadata: dict[str, Any] | None = None,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB * 2**20,
    ) -> None:
        self.policy = policy
        self.mapper = ObservationMapper(policy.config_type)
        cfg = policy.config_type
        self.metadata = {
            "server": "vla-sft",
            "config_type": cfg.name,
            "model_type": cfg.model_type,
            "action_horizon": cfg.action_horizon,
            "action_dim": cfg.action_dim,
            "observation_keys": self.mapper.describe(),
            "max_message_bytes": max_message_bytes,
            **(metadata or {}),
        }
        self.host, self.port = host, port
        self.max_message_bytes = max_message_bytes
        self._inference = asyncio.Lock()

    def warm_up(self) -> float:
        """One inference on a blank observation, so the first robot request does not pay for torch's
        first-call set-up (seconds on CPU); returns its time in seconds."""
        cfg = self.policy.config_type
        raw = {"images": {key: np.zeros((224, 224, 3), np.uint8) for key in cfg.camera_keys},
               "state": np.zeros(cfg.state_dim, np.float32), "task": ""}  # fmt: skip
        started = time.monotonic()
        self.policy.predict(raw)
        return time.monotonic() - started

    def run(self, on_ready: Callable[[PolicyServer], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM."""
        asyncio.run(self._run(on_ready))

    async def _run(self, on_ready) -> None:
        stop = asyncio.get_running_loop().create_future()
        for sig in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
        async with serve(
            self._handle,
            self.host,
            self.port,
            max_size=self.max_message_bytes,
            compression=None,  # images do not deflate well; openpi-client turns it off too
            process_request=_health_check,
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            if on_ready is not None:
                on_ready(self)
            await stop
        log.info("stopped")

    async def _handle(self, ws: ServerConnection) -> None:
        peer = ws.remote_address
        log.info("client %s connected", peer)
        prev_total_ms: float | None = None
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(protocol.pack(self.metadata))
            async for message in ws:
                started = time.monotonic()
                reply, ok = await self._answer(message, prev_total_ms, peer)
                await ws.send(reply)
                prev_total_ms = (time.monotonic() - started) * 1000 if ok else None
        log.info("client %s disconnected (%s)", peer, ws.close_reason or ws.close_code)

    async def _answer(
        self, message: bytes | str, prev_total_ms: float | None, peer
    ) -> tuple[bytes | str, bool]:
        """The reply frame to one request and whether it carries actions."""
        if isinstance(message, str):
            return "bad observation: expected a binary msgpack message, got a text frame", False
        try:
            raw = self.mapper(protocol.unpack(message))
            async with self._inference:
                started = time.monotonic()
                actions = await asyncio.to_thread(self.policy.predict, raw)
                infer_ms = (time.monotonic() - started) * 1000
        except (protocol.ProtocolError, ObservationError) as err:
            log.warning("client %s: bad observation: %s", peer, err)
            return f"bad observation: {err}", False
        except Exception as err:
            log.exception("client %s: inference failed", peer)
            return f"internal server error: {type(err).__name__}: {err}", False
        timing = {"infer_ms": infer_ms}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        return protocol.pack({"actions": np.asarray(actions), "server_timing": timing}), True


def _health_check(connection: ServerConnection, request) -> Any:
    """``GET /healthz`` answers 200 without a websocket handshake (load balancers, tests)."""
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None
