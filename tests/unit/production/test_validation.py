"""RequestValidator and ValidationError."""

from __future__ import annotations

from typing import Any

import pytest

from app.production import RequestValidator, ValidationError
from app.production.validation import FieldError

SECRET = "s3cr3t-value-that-must-not-leak"


def checklist_validator() -> RequestValidator:
    validator = RequestValidator()
    validator.add_rule("image", type=bytes, max_size_mb=10)
    validator.add_rule("batch_size", type=int, min_value=1, max_value=128)
    return validator


def errors_of(validator: RequestValidator, data: Any) -> list[FieldError]:
    with pytest.raises(ValidationError) as caught:
        validator.validate(data)
    return caught.value.errors


def test_add_rule_takes_the_checklists_type_keyword() -> None:
    assert checklist_validator().validate({"image": b"\x89PNG", "batch_size": 4}) is True


def test_validation_error_is_a_value_error_listing_every_failing_field() -> None:
    errors = errors_of(checklist_validator(), {"image": "not bytes", "batch_size": 0})
    assert errors == [
        FieldError("image", "must be of type bytes"),
        FieldError("batch_size", "must be at least 1"),
    ]
    assert issubclass(ValidationError, ValueError)


def test_error_messages_never_echo_the_input_value() -> None:
    validator = RequestValidator()
    validator.add_rule("token", type=int)
    validator.add_rule("mode", allowed_values={"fast", "exact"})
    validator.add_rule("name", max_length=3)
    validator.add_rule("note", custom_validator=lambda v: False)
    with pytest.raises(ValidationError) as caught:
        validator.validate({"token": SECRET, "mode": SECRET, "name": SECRET, "note": SECRET})
    assert len(caught.value.errors) == 4
    assert SECRET not in str(caught.value)
    assert SECRET not in repr(caught.value.to_list())


def test_a_bool_is_not_an_int_but_an_int_is_a_float() -> None:
    validator = RequestValidator().add_rule("n", type=int)
    assert errors_of(validator, {"n": True}) == [FieldError("n", "must be of type int")]
    assert RequestValidator().add_rule("x", type=float).validate({"x": 3})
    assert errors_of(RequestValidator().add_rule("x", type=float), {"x": False})


def test_a_tuple_of_types_accepts_any_of_them() -> None:
    validator = RequestValidator().add_rule("v", type=(str, bytes))
    assert validator.validate({"v": b"x"}) and validator.validate({"v": "x"})
    assert errors_of(validator, {"v": 1}) == [FieldError("v", "must be of type str or bytes")]


def test_range_rules_need_a_number() -> None:
    validator = RequestValidator().add_rule("n", max_value=10)
    assert errors_of(validator, {"n": "5"}) == [FieldError("n", "must be a number")]
    assert errors_of(validator, {"n": True}) == [FieldError("n", "must be a number")]
    assert errors_of(validator, {"n": 11}) == [FieldError("n", "must be at most 10")]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        (b"x" * (1024 * 1024), True),
        (b"x" * (1024 * 1024 + 1), False),
        (bytearray(1024 * 1024 + 1), False),
        (memoryview(b"x" * (1024 * 1024 + 1)), False),
        ("x" * (1024 * 1024), True),
        ("é" * (512 * 1024 + 1), False),  # two UTF-8 bytes each
    ],
)
def test_max_size_mb_counts_the_bytes_of_bytes_and_strings(value: Any, ok: bool) -> None:
    validator = RequestValidator().add_rule("blob", max_size_mb=1)
    if ok:
        assert validator.validate({"blob": value})
    else:
        assert errors_of(validator, {"blob": value}) == [FieldError("blob", "must be at most 1 MB")]


def test_max_size_mb_refuses_values_that_have_no_byte_size() -> None:
    validator = RequestValidator().add_rule("blob", max_size_mb=1)
    assert errors_of(validator, {"blob": 5}) == [FieldError("blob", "must be bytes or a string")]


def test_max_length_applies_to_anything_with_a_length() -> None:
    validator = RequestValidator().add_rule("items", max_length=2)
    assert validator.validate({"items": [1, 2]})
    assert errors_of(validator, {"items": [1, 2, 3]})
    assert errors_of(validator, {"items": 3}) == [FieldError("items", "must have a length")]


def test_allowed_values_tolerates_unhashable_input() -> None:
    validator = RequestValidator().add_rule("mode", allowed_values=frozenset({"a", "b"}))
    assert validator.validate({"mode": "a"})
    assert errors_of(validator, {"mode": ["a"]})


def test_a_custom_validator_that_raises_rejects_the_value() -> None:
    def positive(value: Any) -> bool:
        if value <= 0:
            raise ValueError(f"bad {value}")
        return True

    validator = RequestValidator().add_rule("n", custom_validator=positive)
    assert validator.validate({"n": 1})
    assert errors_of(validator, {"n": -1}) == [FieldError("n", "failed validation")]
    assert errors_of(validator, {"n": "text"}) == [FieldError("n", "failed validation")]


def test_missing_and_none_fields_fail_only_when_required() -> None:
    validator = RequestValidator()
    validator.add_rule("needed")
    validator.add_rule("optional", required=False, type=int)
    assert errors_of(validator, {"needed": None}) == [FieldError("needed", "is required")]
    assert validator.validate({"needed": 1, "optional": None, "unknown": object()})


def test_a_request_that_is_not_an_object_is_refused() -> None:
    assert errors_of(checklist_validator(), [1, 2]) == [
        FieldError("", "the request must be an object")
    ]


def test_contradictory_rules_are_refused() -> None:
    with pytest.raises(ValueError):
        RequestValidator().add_rule("n", min_value=5, max_value=1)
    with pytest.raises(ValueError):
        RequestValidator().add_rule("n", max_length=-1)
    with pytest.raises(TypeError):
        RequestValidator().add_rule("n", custom_validator="x")  # type: ignore[arg-type]


def test_rules_are_listed_in_the_order_they_were_added() -> None:
    assert [r.field for r in checklist_validator().rules] == ["image", "batch_size"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_range_rules_refuse_non_finite_numbers_without_echoing_them(value: float) -> None:
    # NaN compares False with every bound, so it used to pass min_value and max_value.
    for rule in ({"min_value": 1}, {"max_value": 128}, {"min_value": 1, "max_value": 128}):
        validator = RequestValidator().add_rule("n", **rule)  # type: ignore[arg-type]
        assert errors_of(validator, {"n": value}) == [FieldError("n", "must be a finite number")]
    # Even a rule that allows them by type: a range has no room for NaN.
    lenient = RequestValidator().add_rule("n", type=float, max_value=1, allow_non_finite=True)
    assert errors_of(lenient, {"n": value}) == [FieldError("n", "must be a finite number")]


def test_range_rules_still_take_any_int_however_large() -> None:
    validator = RequestValidator().add_rule("n", max_value=10)
    assert errors_of(validator, {"n": 10**400}) == [FieldError("n", "must be at most 10")]
    assert RequestValidator().add_rule("n", min_value=0).validate({"n": 10**400})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float_rules_refuse_non_finite_values_unless_allowed(value: float) -> None:
    for expected in (float, (int, float)):
        validator = RequestValidator().add_rule("x", type=expected)
        assert errors_of(validator, {"x": value}) == [FieldError("x", "must be a finite number")]
    assert RequestValidator().add_rule("x", type=float).validate({"x": 1.5})
    lenient = RequestValidator().add_rule("x", type=float, allow_non_finite=True)
    assert lenient.validate({"x": value})


@pytest.mark.parametrize("flag", [True, False])
def test_allowed_values_never_match_a_bool_to_an_int_or_back(flag: bool) -> None:
    # True == 1 and hash(True) == hash(1): `in` alone let a flag pass as a mode number.
    numbers = RequestValidator().add_rule("mode", allowed_values=[0, 1])
    assert errors_of(numbers, {"mode": flag}) == [
        FieldError("mode", "is not one of the allowed values")
    ]
    assert numbers.validate({"mode": 0}) and numbers.validate({"mode": 1.0})
    flags = RequestValidator().add_rule("on", allowed_values=frozenset({True, False}))
    assert flags.validate({"on": flag})
    assert errors_of(flags, {"on": int(flag)}) == [
        FieldError("on", "is not one of the allowed values")
    ]


def test_an_async_custom_validator_is_refused_when_the_rule_is_added() -> None:
    async def is_even(value: int) -> bool:
        return value % 2 == 0

    class AsyncCheck:
        async def __call__(self, value: int) -> bool:
            return True

    for check in (is_even, AsyncCheck()):
        with pytest.raises(TypeError, match="not async"):
            RequestValidator().add_rule("n", custom_validator=check)  # type: ignore[arg-type]


def test_a_custom_validator_returning_an_awaitable_fails_the_field_and_closes_it(
    recwarn: pytest.WarningsRecorder,
) -> None:
    created: list[Any] = []

    async def verdict() -> bool:
        return True

    def sneaky(value: object) -> Any:  # a plain function handing back a coroutine
        created.append(verdict())
        return created[-1]

    validator = RequestValidator().add_rule("n", custom_validator=sneaky)
    assert errors_of(validator, {"n": 1}) == [FieldError("n", "failed validation")]
    assert created[0].cr_frame is None  # closed, never awaited
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_bound_read_from_json_as_a_float_is_said_as_the_number_it_is() -> None:
    """A manifest's `"maximum": 128` arrives as 128.0: "must be at most 128.0" for a count."""
    validator = RequestValidator()
    validator.add_rule("batch_size", type=int, min_value=1.0, max_value=128.0)
    assert errors_of(validator, {"batch_size": 129}) == [
        FieldError("batch_size", "must be at most 128")
    ]
    validator.add_rule("ratio", type=float, max_value=0.5)
    assert errors_of(validator, {"batch_size": 1, "ratio": 0.75}) == [
        FieldError("ratio", "must be at most 0.5")
    ]


@pytest.mark.parametrize("bound", ["min_value", "max_value", "max_length", "max_size_mb"])
def test_a_nan_bound_is_refused_when_the_rule_is_added(bound: str) -> None:
    # NaN compares False with everything: the rule used to be added and check nothing.
    with pytest.raises(ValueError, match=f"{bound} must not be NaN"):
        RequestValidator().add_rule("n", **{bound: float("nan")})  # type: ignore[arg-type]


@pytest.mark.parametrize("bound", ["min_value", "max_value", "max_length", "max_size_mb"])
def test_a_bound_that_is_not_a_number_is_refused_when_the_rule_is_added(bound: str) -> None:
    for value in ("5", True):
        with pytest.raises(TypeError, match=f"{bound} must be a number"):
            RequestValidator().add_rule("n", **{bound: value})  # type: ignore[arg-type]


def test_an_infinite_bound_means_no_limit_that_way() -> None:
    inf = float("inf")
    validator = RequestValidator().add_rule("n", type=int, min_value=-inf, max_value=inf)
    assert validator.validate({"n": -(10**400)}) and validator.validate({"n": 10**400})
    sized = RequestValidator().add_rule("s", max_length=inf, max_size_mb=inf)  # type: ignore[arg-type]
    assert sized.validate({"s": "x" * 1000})
    # A range rule still refuses a non-finite value, infinite bounds or not.
    assert errors_of(validator, {"n": inf}) == [FieldError("n", "must be of type int")]


@pytest.mark.parametrize("bad", [list[int], "int", int | str, (), (int, "str"), Any])
def test_a_type_that_isinstance_cannot_take_is_refused_when_the_rule_is_added(bad: Any) -> None:
    # It used to be accepted, and validate() then raised TypeError, not a ValidationError.
    with pytest.raises(TypeError, match="type must be a class"):
        RequestValidator().add_rule("ids", type=bad)


def test_allowed_values_must_be_a_collection_of_values_not_a_string() -> None:
    # `in` on a string is a substring test: "as" was one of the allowed values of "fast".
    for text in ("fast", b"fast", bytearray(b"fast")):
        with pytest.raises(TypeError, match="not a string"):
            RequestValidator().add_rule("mode", allowed_values=text)
    with pytest.raises(TypeError, match="must be a collection"):
        RequestValidator().add_rule("mode", allowed_values=(m for m in ["a"]))  # type: ignore[arg-type]
    validator = RequestValidator().add_rule("mode", allowed_values={"fast"})
    assert errors_of(validator, {"mode": "as"}) == [
        FieldError("mode", "is not one of the allowed values")
    ]
