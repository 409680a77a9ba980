"""Reference log-probs over HTTP: `grpo serve-ref` (server.py) and RemoteReference (client.py).

The wire format (protocol.py) is shared by both; the client needs only the standard library,
torch and safetensors, the server also starlette + uvicorn (`pip install grpo[serve]`).
"""
