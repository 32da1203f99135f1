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
import json
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
_NUMBER_TEXT = re.compile(r"-?[0-9]+(\.[0-9]*)?(e[-+]?[0-9]+)?")
MAX_CHARS = 4096


def refuse_unsafe_expressions(program_json: bytes) -> None:
    """Raise ArtefactError unless every `expr_str` in the program is a plain size expression."""
    try:
        document = json.loads(program_json)
    except ValueError:
        raise ArtefactError("the torch.export program is not JSON") from None
    for text in _expressions(document):
        if not isinstance(text, str) or len(text) > MAX_CHARS or not _is_size_expression(text):
            shown = str(text)[:80]
            raise ArtefactError(
                f"the exported program has a size expression that is not one ({shown!r}); refused"
            )


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
    except (SyntaxError, ValueError):
        return False
    return _allowed(tree.body)


def _allowed(node: ast.AST) -> bool:
    if isinstance(node, ast.Call):
        return (
            isinstance(node.func, ast.Name)
            and node.func.id in FUNCTIONS
            and all(_allowed(arg) for arg in node.args)
            and all(_flag(keyword) for keyword in node.keywords)
        )
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, str):  # a symbol's name, or a Float's digits
            return bool(_SYMBOL_NAME.fullmatch(value) or _NUMBER_TEXT.fullmatch(value))
        return isinstance(value, int | float)  # bool is an int
    if isinstance(node, ast.UnaryOp):
        return isinstance(node.op, ast.USub | ast.UAdd) and _allowed(node.operand)
    if isinstance(node, ast.Name):
        return node.id in CONSTANTS
    if isinstance(node, ast.Tuple):
        return all(_allowed(item) for item in node.elts)
    return False


def _flag(keyword: ast.keyword) -> bool:
    return (
        keyword.arg in FLAGS
        and isinstance(keyword.value, ast.Constant)
        and isinstance(keyword.value.value, int | bool)
    )
