"""Built-in tools, served as in-process MCP servers: a safe calculator and a clock.

They use the low-level ``mcp.server.Server`` (no decorators, no pydantic models per tool, and no
``logging.basicConfig`` side effect like ``MCPServer`` has) and are created once per process:
listing them needs no connection, and a task connects to one in-process, without JSON-RPC framing,
only when its model calls it.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import mcp_types as types
from mcp.server import Server
from mcp.server.context import ServerRequestContext

MAX_EXPRESSION_CHARS = 500
MAX_RESULT_BITS = 4096  # integers beyond ~1233 decimal digits are refused
MAX_EXPONENT = 10_000


class CalculatorError(ValueError):
    """The expression is not plain arithmetic, or its result would be too large."""


_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs,
    "round": round,
    "min": min,
    "max": max,
    "sqrt": math.sqrt,
    "log": math.log,
    "exp": math.exp,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
}
_CONSTANTS = {"pi": math.pi, "e": math.e}


def _check_size(value: Any) -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_RESULT_BITS:
        raise CalculatorError("result too large")
    if isinstance(value, float) and math.isinf(value):
        raise CalculatorError("result too large")
    return value


def _power(base: Any, exponent: Any) -> Any:
    if isinstance(exponent, int) and abs(exponent) > MAX_EXPONENT:
        raise CalculatorError(f"exponent {exponent} is larger than {MAX_EXPONENT}")
    # Estimate the size before computing, so 9**9999 is refused without being computed.
    if (
        isinstance(base, int)
        and isinstance(exponent, int)
        and exponent > 0
        and abs(base) > 1
        and exponent * math.log2(abs(base)) > MAX_RESULT_BITS
    ):
        raise CalculatorError("result too large")
    return base**exponent


def _evaluate(node: ast.AST) -> Any:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    if isinstance(node, ast.Name) and node.id in _CONSTANTS:
        return _CONSTANTS[node.id]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in _FUNCTIONS
        and not node.keywords
    ):
        args = [_evaluate(arg) for arg in node.args]
        try:
            return _check_size(_FUNCTIONS[node.func.id](*args))
        except (TypeError, ValueError, OverflowError) as exc:
            raise CalculatorError(f"{node.func.id}: {exc}") from None
    raise CalculatorError(f"unsupported syntax: {ast.dump(node)[:60]}")


def calculate(expression: str) -> str:
    """Evaluate arithmetic safely (no ``eval``): numbers, + - * / // % ** (or ^), parentheses,
    ``pi``, ``e`` and a few functions (abs, round, min, max, sqrt, log, exp, sin, cos, tan)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise CalculatorError(f"expression longer than {MAX_EXPRESSION_CHARS} characters")
    text = expression.replace("^", "**").replace("×", "*").replace("÷", "/").strip()
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise CalculatorError(f"not an arithmetic expression: {expression!r}") from None
    try:
        value = _evaluate(tree)
    except OverflowError:
        raise CalculatorError("result too large") from None
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.12g}"
    return str(value)


def now(timezone: str = "UTC") -> str:
    """The current date and time in an IANA time zone."""
    try:
        zone = UTC if timezone.upper() == "UTC" else ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalculatorError(f"unknown time zone: {timezone!r}") from None
    moment = datetime.now(zone)
    return f"{moment.isoformat(timespec='seconds')} ({moment.strftime('%A')}, {timezone})"


# --- MCP servers ------------------------------------------------------------------------------

Handler = Callable[[dict[str, Any]], str]


def _make_server(name: str, tools: list[types.Tool], handlers: dict[str, Handler]) -> Server[Any]:
    async def list_tools(
        ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=tools)

    async def call_tool(
        ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        handler = handlers.get(params.name)
        if handler is None:
            text, is_error = f"unknown tool {params.name!r}", True
        else:
            try:
                text, is_error = handler(dict(params.arguments or {})), False
            except (CalculatorError, TypeError, KeyError) as exc:
                text, is_error = str(exc), True
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=text)], is_error=is_error
        )

    return Server(name, on_list_tools=list_tools, on_call_tool=call_tool)


CALCULATOR_TOOLS = [
    types.Tool(
        name="calculate",
        description=(
            "Evaluate an arithmetic expression exactly, e.g. '17*23+4' or '(2^10)/3'. "
            "Supports + - * / // % ** ^, parentheses, pi, e, abs, round, min, max, sqrt, log, exp, "
            "sin, cos, tan."
        ),
        input_schema={
            "type": "object",
            "properties": {"expression": {"type": "string", "description": "The expression"}},
            "required": ["expression"],
        },
    )
]
CLOCK_TOOLS = [
    types.Tool(
        name="now",
        description="The current date, time and weekday, in UTC or an IANA time zone.",
        input_schema={
            "type": "object",
            "properties": {
                "timezone": {
                    "type": "string",
                    "description": "IANA time zone such as 'Europe/Paris'; default UTC",
                }
            },
        },
    )
]


def _calculator_handler(arguments: dict[str, Any]) -> str:
    return calculate(str(arguments["expression"]))


def _clock_handler(arguments: dict[str, Any]) -> str:
    return now(str(arguments.get("timezone") or "UTC"))


_SERVERS: dict[str, Server[Any]] = {}
_FACTORIES: dict[str, Callable[[], Server[Any]]] = {
    "calculator": lambda: _make_server(
        "calculator", CALCULATOR_TOOLS, {"calculate": _calculator_handler}
    ),
    "clock": lambda: _make_server("clock", CLOCK_TOOLS, {"now": _clock_handler}),
}
BUILTIN_LISTINGS: dict[str, list[types.Tool]] = {
    "calculator": CALCULATOR_TOOLS,
    "clock": CLOCK_TOOLS,
}


def builtin_server(name: str) -> Server[Any]:
    """The process-wide in-process MCP server for a built-in tool set."""
    server = _SERVERS.get(name)
    if server is None:
        server = _SERVERS[name] = _FACTORIES[name]()
    return server
