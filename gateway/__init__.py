"""OSpark Gateway: a WebSocket gateway in front of an agent runtime."""

__version__ = "0.1.0"
