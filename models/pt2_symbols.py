"""The size expressions of a torch.export program: text that torch's loader evaluates as Python.

A program with a dynamic batch stores each symbolic size as sympy's source form, e.g.
`Mul(Integer(2), Symbol('s77', positive=True, integer=True))`, and torch's loader turns each
back into an expression with `sympy.sympify`, which evaluates the text: an `expr_str` of
`__import__('os').system(...)` runs while the archive loads, before any check of the loaded
program could. So every `expr_str` of the program JSON is parsed here first (not evaluated)
and refused unless it is sympy's form of an expression: calls of sympy's and torch's
arithmetic, comparison and logic classes, with numbers, symbol names and flags as arguments.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any

from models.errors import ArtefactError

# sympy's classes in srepr form, and the functions torch's deserializer adds
# (torch.utils._sympy.functions, as torch 2.13 lists them).
FUNCTIONS = frozenset(
    {
        *("Symbol", "Integer", "Float", "Rational", "Add", "Mul", "Pow", "Mod", "Max", "Min"),
        *("Abs", "floor", "ceiling", "Piecewise", "ExprCondPair", "And", "Or", "Not"),
        *("Eq", "Ne", "Lt", "Le", "Gt", "Ge", "Equality", "Unequality"),
        *("StrictLessThan", "StrictGreaterThan", "LessThan", "GreaterThan"),
        *("FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt"),
        *("FloorToInt", "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow"),
        *("FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator", "TruncToFloat"),
        *("TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity"),
    }
)
CONSTANTS = frozenset({"true", "false", "oo", "zoo", "nan", "int_oo"})
FLAGS = frozenset(
    {
        *("positive", "negative", "nonnegative", "nonpositive", "integer", "real", "finite"),
        *("infinite", "zero", "nonzero", "even", "odd", "rational", "commutative", "precision"),
    }
)
_SYMBOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
# A Float's digits: sympy computes exactly, so numbers stay the size of a tensor's dimensions.
_NUMBER_TEXT = re.compile(r"-?[0-9]{1,20}(\.[0-9]{0,20})?(e[-+]?[0-9]{1,3})?")
MAX_INTEGER = 2**63
MAX_PRECISION = 128  # bits of a Float
# Powers and shifts grow numbers exponentially: a literal exponent or shift up to 64, and no
# power inside another (nested, `Pow(Pow(Integer(2**62), 64), 64)...` is gigabytes of digits).
EXPONENTIAL = frozenset({"Pow", "PowByNatural", "FloatPow", "LShift", "RShift"})
MAX_EXPONENT = 64
MAX_CALLS = 32  # one expression
MAX_ARGUMENTS = 8  # one call
MAX_CHARS = 4096  # one expression
MAX_TOTAL_CHARS = 1 << 20  # all of a program's


def refuse_unsafe_expressions(program: Any) -> None:
    """Raise ArtefactError unless every `expr_str` in the program's JSON document is a plain
    size expression."""
    total = 0
    for text in _expressions(program):
        total += len(text) if isinstance(text, str) else 0
        if not isinstance(text, str) or len(text) > MAX_CHARS or not _is_size_expression(text):
            shown = str(text)[:80]
            raise ArtefactError(
                f"the exported program has a size expression that is not one ({shown!r}); refused"
            )
        if total > MAX_TOTAL_CHARS:
            raise ArtefactError("the exported program's size expressions are too long; refused")


def _expressions(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "expr_str":
                yield item
            else:
                yield from _expressions(item)
    elif isinstance(value, list):
        for item in value:
            yield from _expressions(item)


def _is_size_expression(text: str) -> bool:
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError):
        return False
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)]
    # sympy's Max of 100 arguments takes 15 s to build (it compares them pairwise): a size's
    # expression is small, in its calls and in each call's arguments.
    if len(calls) > MAX_CALLS or any(len(call.args) > MAX_ARGUMENTS for call in calls):
        return False
    return _allowed(tree.body, in_power=False)


def _allowed(node: ast.AST, *, in_power: bool) -> bool:
    if isinstance(node, ast.Call):
        if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS):
            return False
        power = node.func.id in EXPONENTIAL
        if power and (in_power or not _small_exponent(node)):
            return False
        return all(_allowed(arg, in_power=in_power or power) for arg in node.args) and all(
            _flag(keyword) for keyword in node.keywords
        )
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):  # a symbol's name, or a Float's digits
            return bool(_SYMBOL_NAME.fullmatch(value) or _NUMBER_TEXT.fullmatch(value))
        if isinstance(value, int):  # bool is an int
            return abs(value) <= MAX_INTEGER
        return isinstance(value, float)
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub | ast.UAdd) and _allowed(
            node.operand, in_power=in_power
        )
    if isinstance(node, ast.Name):
        return node.id in CONSTANTS
    if isinstance(node, ast.Tuple):
        return all(_allowed(item, in_power=in_power) for item in node.elts)
    return False


def _small_exponent(call: ast.Call) -> bool:
    """The exponent (or shift) is a number up to MAX_EXPONENT, or a size's symbol. Not any
    expression: sympy simplifies `Add(s0, Integer(10**9), Mul(Integer(-1), s0))` to 10**9."""
    if len(call.args) != 2 or not isinstance(exponent := call.args[1], ast.Call):
        return False
    if not isinstance(exponent.func, ast.Name):
        return False
    if exponent.func.id == "Rational":  # a root: Pow(s0, Rational(1, 2))
        return len(exponent.args) == 2 and all(_small_number(a) for a in exponent.args)
    if len(exponent.args) != 1:
        return False
    value = exponent.args[0]
    if exponent.func.id == "Symbol":
        return isinstance(value, ast.Constant) and isinstance(value.value, str)
    return exponent.func.id in ("Integer", "Float") and _small_number(value)


def _small_number(node: ast.AST) -> bool:
    """A number (or a Float's digits) no larger than MAX_EXPONENT."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    if not isinstance(node, ast.Constant) or isinstance(node.value, bool):
        return False
    number = node.value
    if isinstance(number, str):
        if _NUMBER_TEXT.fullmatch(number) is None:
            return False
        number = float(number)
    return isinstance(number, int | float) and abs(number) <= MAX_EXPONENT


def _flag(keyword: ast.keyword) -> bool:
    if keyword.arg not in FLAGS or not isinstance(keyword.value, ast.Constant):
        return False
    value = keyword.value.value
    if keyword.arg == "precision":
        return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_PRECISION
    return isinstance(value, bool)
