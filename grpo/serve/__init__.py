"""The servers and their wire formats: reference log-probs (`grpo serve-ref`) and rollouts (`grpo serve-rollout`).

- server.py, client.py, protocol.py: the reference server, RemoteReference (the trainer's client) and their format;
- rollout_server.py, rollout_protocol.py, weights.py: the rollout server, its format and the weight push
  (the trainer's side is grpo/rollout/server_engine.py);
- common.py: what both servers share (bearer token, limits, the app skeleton, uvicorn start).
The clients need only the standard library, torch and safetensors; the servers also starlette + uvicorn
(`pip install grpo[serve]`).
"""
