"""The built-in `calculator` tool: exact arithmetic, parsed with `ast`, never evaluated as code.

Accepted: integer and decimal numbers (`12`, `-3`, `1.5`, `2.5e3`, `1_000`), `+ - * / **`,
unary `+`/`-` and parentheses. The unicode minus `−`, `×` and `÷` are read as `-`, `*`, `/`
(models copy them from math text). Not accepted: names, calls, attributes, `^` (it is XOR in
Python; the error says to use `**`), `%`, `//`, and thousands separators with commas
(`1,000` is ambiguous with a decimal comma; `1_000` works).

Arithmetic is exact (`fractions.Fraction`; a decimal literal is read from its text, so
`0.1 + 0.2` is `0.3`, not `0.30000000000000004`). The result is written as an integer when
whole, else as an exact decimal when one exists (`7/4` -> `1.75`), else as a fraction in
lowest terms (`1/3`): every answer is exact, never a rounded float.

Bounds, so a model cannot make the trainer spin: input <= 500 characters, integer exponents
with |exponent| <= 100, and no number (literal, intermediate or result) over 1000 digits in
numerator or denominator. Breaking one raises ToolError (a ValueError) with a short message,
which `call_tool` hands the model as its observation.
"""

from __future__ import annotations

import ast
import operator
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from grpo.episodes.tools.errors import ToolError

__all__ = ["calculator", "evaluate"]

MAX_CHARS = 500
MAX_EXPONENT = 100
MAX_DIGITS = 1000
_MAX_BITS = int(MAX_DIGITS * 3.3219)  # log2(10) bits per decimal digit

_UNICODE = str.maketrans({"−": "-", "×": "*", "÷": "/"})
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly.

    Args:
        expression: numbers with + - * / ** and parentheses, e.g. "(1.5 + 2) * -3 ** 2"
    """
    return format_number(evaluate(expression))


def evaluate(expression: str) -> Fraction:
    """The exact value of `expression`; ToolError when it is not plain bounded arithmetic."""
    if not isinstance(expression, str):
        raise ToolError(f"expression must be a string, not {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise ToolError(f"expression too long ({len(expression)} characters; at most {MAX_CHARS})")
    source = expression.translate(_UNICODE).strip()
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError:
        raise ToolError(f"cannot parse {expression!r} as arithmetic") from None
    return _value(tree.body, source)


def _value(node: ast.AST, source: str) -> Fraction:
    """Walk only the allowed node types; everything else is refused by name."""
    if isinstance(node, ast.Constant):
        return _bounded(_number(node, source))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_value(node.operand, source))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
        return _power(_value(node.left, source), _value(node.right, source))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _value(node.left, source), _value(node.right, source)
        if isinstance(node.op, ast.Div) and right == 0:
            raise ToolError("division by zero")
        return _bounded(_BINARY[type(node.op)](left, right))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitXor):
        raise ToolError("unsupported operator ^ (use ** for powers)")
    shown = ast.get_source_segment(source, node) or type(node).__name__
    raise ToolError(f"unsupported: {shown!r} (only numbers, + - * / ** and parentheses)")


def _number(node: ast.Constant, source: str) -> Fraction:
    """A literal's exact value: decimals from their source text (`0.1` is 1/10, not a float)."""
    if isinstance(node.value, bool) or not isinstance(node.value, int | float):
        raise ToolError(f"unsupported: {node.value!r} is not a number")
    if isinstance(node.value, int):
        return Fraction(node.value)
    text = (ast.get_source_segment(source, node) or "").replace("_", "")
    try:
        decimal = Decimal(text)
    except InvalidOperation:
        raise ToolError(f"cannot read the number {text!r}") from None
    # Decimal keeps `1e999999` as digits and exponent: check before Fraction expands it.
    if not decimal.is_finite() or abs(decimal.as_tuple().exponent) > MAX_DIGITS:
        raise ToolError(f"number {text!r} is too large (at most {MAX_DIGITS} digits)")
    return Fraction(decimal)


def _power(base: Fraction, exponent: Fraction) -> Fraction:
    if exponent.denominator != 1:
        raise ToolError("unsupported: fractional exponents (roots) are not exact")
    if abs(exponent) > MAX_EXPONENT:
        raise ToolError(f"exponent {exponent} is too large (at most {MAX_EXPONENT} in absolute value)")
    if base == 0 and exponent < 0:
        raise ToolError("division by zero")
    # The result has about |exponent| times the base's bits: refuse before computing it.
    if _bits(base) * abs(int(exponent)) > _MAX_BITS:
        raise ToolError(f"result too large (over {MAX_DIGITS} digits)")
    return _bounded(base ** int(exponent))


def _bits(value: Fraction) -> int:
    return max(abs(value.numerator).bit_length(), value.denominator.bit_length())


def _bounded(value: Fraction) -> Fraction:
    if _bits(value) > _MAX_BITS:
        raise ToolError(f"number too large (over {MAX_DIGITS} digits)")
    return value


def format_number(value: Fraction) -> str:
    """`12`, `1.75`, `-0.001`, or `1/3` when no finite decimal is exact."""
    if value.denominator == 1:
        return str(value.numerator)
    twos, fives = _multiplicity(value.denominator, 2), _multiplicity(value.denominator, 5)
    if value.denominator != 2**twos * 5**fives:
        return f"{value.numerator}/{value.denominator}"
    places = max(twos, fives)
    scaled = abs(value.numerator) * 10**places // value.denominator  # exact: 10**places / den is whole
    digits = str(scaled).rjust(places + 1, "0")
    sign = "-" if value < 0 else ""
    return f"{sign}{digits[:-places]}.{digits[-places:]}"


def _multiplicity(n: int, p: int) -> int:
    count = 0
    while n % p == 0:
        n, count = n // p, count + 1
    return count
