"""Size expressions of a torch.export program are parsed, never evaluated, before torch loads."""

from __future__ import annotations

import pytest

from models.errors import ArtefactError
from models.pt2_symbols import refuse_unsafe_expressions

# What torch 2.13 writes for a dynamic batch and arithmetic on it.
WRITTEN_BY_TORCH = [
    "Symbol('s77', positive=True, integer=True)",
    "Add(FloorDiv(Symbol('s77', positive=True, integer=True), Integer(2)), Integer(1))",
    "Mul(Float('0.5', precision=53), ToFloat(Symbol('s77', positive=True, integer=True)))",
    "Mul(Integer(-1), Symbol('u0', integer=True))",
    "StrictLessThan(Integer(1), Symbol('s0', positive=True, integer=True))",
    "Eq(Mod(Symbol('s0', integer=True), Integer(2)), Integer(0))",
    "Max(Integer(1), Symbol('s1', integer=True))",
    "PowByNatural(Symbol('s0', positive=True, integer=True), Integer(2))",
    "Mul(Symbol('s0', integer=True), Pow(Symbol('s1', integer=True), Integer(-1)))",
    "Pow(Symbol('s0', positive=True, integer=True), Rational(1, 2))",
    "LShift(Symbol('s0', integer=True), Symbol('s1', integer=True))",
    "true",
]


def program(*expressions: object) -> dict[str, object]:
    values = {f"v{i}": {"expr_str": e, "hint": None} for i, e in enumerate(expressions)}
    return {"graph_module": {"graph": {"sym_int_values": values}}}


def test_expressions_torch_writes_pass() -> None:
    refuse_unsafe_expressions(program(*WRITTEN_BY_TORCH))


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('true')",
        "Symbol('s0').__class__",
        "Integer(1).__class__.__mro__",
        "os",
        "Symbol(x)",
        "Symbol('s0', positive=__import__('os'))",
        "Symbol('s0', evil=True)",
        "(lambda: 1)()",
        "[c for c in ()]",
        "Function('system')(Integer(1))",
        "Integer(1) + Integer(2)",
        "Symbol('a; import os')",
        "Symbol('s0'",
        "x" * 5000,
        5,
        None,
    ],
)
def test_anything_else_is_refused(text: object) -> None:
    with pytest.raises(ArtefactError, match="size expression"):
        refuse_unsafe_expressions(program(*WRITTEN_BY_TORCH, text))


@pytest.mark.parametrize(
    "text",
    [
        "Pow(Integer(10), Integer(100000000))",
        "PowByNatural(Integer(10), Integer(65))",
        "LShift(Integer(1), Integer(1000000000))",
        "Pow(Pow(Integer(2), Integer(64)), Integer(64))",
        "Pow(Integer(10), Add(Symbol('s0'), Integer(10000000), Mul(Integer(-1), Symbol('s0'))))",
        "Pow(Integer(10), Rational(100000, 1))",
        "Integer(100000000000000000000000)",
        "Float('1e99999')",
        "Float('111111111111111111111111111111')",
        "Float('0.1', precision=3000000)",
        "Symbol('s0', positive=1)",
    ],
)
def test_numbers_that_would_take_sympy_hours_are_refused(text: str) -> None:
    """sympy computes exactly while it loads: 10**(10**8) ran for over a minute on one core."""
    with pytest.raises(ArtefactError, match="size expression"):
        refuse_unsafe_expressions(program(*WRITTEN_BY_TORCH, text))


def test_all_of_a_programs_expressions_together_are_bounded() -> None:
    many = ["Mul(Integer(2), Symbol('s77', positive=True, integer=True))"] * 20_000
    with pytest.raises(ArtefactError, match="too long"):
        refuse_unsafe_expressions(program(*many))
