"""The Python client of the OSpark gateway: many tasks over one WebSocket.

```python
async with GatewayClient("ws://127.0.0.1:8000/ws") as client:
    task = await client.start("What is 17*23+4?")
    async for event in task.events():
        ...
```

Depends only on :mod:`protocol` (msgspec) and ``websockets``: importing it loads nothing of
the server. See :mod:`gateway.client.client` for the
reconnect and resume policy and :mod:`gateway.client.errors` for the exceptions.
"""

from .client import DEFAULT_URL, GatewayClient, TaskFrame, TaskHandle, Terminal, Thread
from .errors import CannotConnect, ConnectionLost, GatewayError, ProtocolMismatch, RequestError

__all__ = [
    "DEFAULT_URL",
    "CannotConnect",
    "ConnectionLost",
    "GatewayClient",
    "GatewayError",
    "ProtocolMismatch",
    "RequestError",
    "TaskFrame",
    "TaskHandle",
    "Terminal",
    "Thread",
]
