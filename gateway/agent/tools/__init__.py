"""Tools over MCP: the per-task :class:`ToolManager` and the built-in in-process servers."""

from .builtin import calculate
from .manager import ToolInfo, ToolManager, stop_tool_servers

__all__ = ["ToolInfo", "ToolManager", "calculate", "stop_tool_servers"]
