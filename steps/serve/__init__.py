"""Serve a trained policy to robot clients over openpi's websocket protocol.

``python -m steps.serve --model models:/<name>@champion`` (or ``runs:/...``, any MLflow model URI, a
downloaded pyfunc folder, or a training export folder) listens on ws://127.0.0.1:8000. The protocol is
the one ``openpi-client``'s ``WebsocketClientPolicy`` speaks:

- on connect the server sends one binary msgpack message: the metadata (config type, action horizon
  and dims, the observation keys it expects);
- each request is a binary msgpack map (numpy arrays as openpi-client packs them: raw bytes with dtype
  and shape), the answer a binary msgpack map ``{"actions": float [horizon, action_dim] in robot units,
  "server_timing": {"infer_ms": ..., "prev_total_ms": ...}}`` (openpi's key names);
- a request the server cannot use is answered with a text frame naming the bad key (the client raises
  it as ``RuntimeError``); the connection stays open for the next request.

Modules: ``protocol`` (the msgpack-numpy codec, no pickle), ``observations`` (client keys -> the
policy's raw observation, per config type), ``loading`` (model URI -> export folder), ``server``
(websockets), ``__main__`` (the command line). Inference itself is ``steps.policy.Policy``, the path
evaluation and the MLflow pyfunc use.
"""
