"""OSpark Gateway: a WebSocket gateway in front of an agent runtime."""
