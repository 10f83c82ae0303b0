"""The built-in calculator: exact arithmetic without eval, bounded."""

from __future__ import annotations

import pytest

from gateway.agent.tools import calculate
from gateway.agent.tools.builtin import CalculatorError


@pytest.mark.parametrize(
    ("expression", "value"),
    [
        ("17*23+4", "395"),
        ("2^10", "1024"),
        ("(1+2)*3 - 4/2", "7"),
        ("7 // 2 + 7 % 2", "4"),
        ("-3 ** 2", "-9"),
        ("sqrt(16) + abs(-1)", "5"),
        ("10 / 4", "2.5"),
        ("2 ** 0.5", "1.41421356237"),
        ("3 × 4 ÷ 2", "6"),
    ],
)
def test_values(expression: str, value: str) -> None:
    assert calculate(expression) == value


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "open('/etc/passwd')",
        "x + 1",
        "(1).__class__",
        "9 ** 99999",
        "10 ** 5000",
        "1 / 0",
        "1e308 * 10",
        "'a' * 3",
        "1" + "+1" * 400,
    ],
)
def test_rejected(expression: str) -> None:
    with pytest.raises(CalculatorError):
        calculate(expression)
