"""Declarative per-field rules for a request's fields.

`validate` checks every rule and reports every failing field at once. Messages describe the
rule, never the value: request content does not reach error bodies or logs.
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
from collections.abc import Callable, Collection, Mapping, Sized
from dataclasses import dataclass
from typing import Any

from .hooks import is_async_callable

logger = logging.getLogger(__name__)

MB = 1024 * 1024  # max_size_mb counts mebibytes
_NUMBERS = (int, float)


@dataclass(frozen=True)
class FieldError:
    field: str
    message: str


class ValidationError(ValueError):
    """Raised by `RequestValidator.validate`; `errors` lists each failing field."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = list(errors)
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in self.errors))

    def to_list(self) -> list[dict[str, str]]:
        return [{"field": e.field, "message": e.message} for e in self.errors]


def _type_name(expected: type | tuple[type, ...]) -> str:
    if isinstance(expected, tuple):
        return " or ".join(t.__name__ for t in expected)
    return expected.__name__


def _is_instance(value: Any, expected: type | tuple[type, ...]) -> bool:
    options = expected if isinstance(expected, tuple) else (expected,)
    for option in options:
        # bool is an int subclass, but True is not a batch size.
        if isinstance(value, bool) and option is not bool:
            continue
        if isinstance(value, option):
            return True
        # An int is a valid float (the numeric tower), as in type hints.
        if option is float and isinstance(value, int) and not isinstance(value, bool):
            return True
    return False


def _non_finite(value: Any) -> bool:
    # NaN compares False with everything, so it slips past min_value/max_value; +-inf is no
    # batch size or temperature either. An int is always finite (and may be too big for a float).
    return isinstance(value, float) and not math.isfinite(value)


def _size_bytes(value: Any) -> int | None:
    if isinstance(value, bytes | bytearray):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    if isinstance(value, str):
        # Counting characters is enough for ASCII; otherwise count the UTF-8 bytes.
        return len(value) if value.isascii() else len(value.encode("utf-8", "surrogatepass"))
    return None


def _accepted(field: str, result: Any) -> bool:
    """A custom validator's verdict. An awaitable is no verdict (a coroutine is always truthy,
    so an async validator would pass everything): it fails, and is closed unawaited."""
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if callable(close):
            close()  # no "coroutine was never awaited" warning
        logger.warning("custom validator for %r returned an awaitable; the value fails", field)
        return False
    return bool(result)


@dataclass(frozen=True)
class Rule:
    field: str
    required: bool = True
    type: type | tuple[type, ...] | None = None
    min_value: float | None = None
    max_value: float | None = None
    max_length: int | None = None
    max_size_mb: float | None = None
    allowed_values: Collection[Any] | None = None
    custom_validator: Callable[[Any], bool] | None = None
    allow_non_finite: bool = False

    def check(self, value: Any) -> str | None:
        """The first failing constraint's message, or None when the value passes."""
        if self.type is not None and not _is_instance(value, self.type):
            return f"must be of type {_type_name(self.type)}"
        if self._takes_floats() and not self.allow_non_finite and _non_finite(value):
            return "must be a finite number"
        for message in (self._check_range(value), self._check_size(value)):
            if message:
                return message
        if self.allowed_values is not None and not self._is_allowed(value):
            return "is not one of the allowed values"
        if self.custom_validator is not None:
            try:
                result = self.custom_validator(value)
                accepted = _accepted(self.field, result)
            except Exception as exc:  # a validator that raises rejects the value
                logger.debug("custom validator for %r raised %s", self.field, type(exc).__name__)
                accepted = False
            if not accepted:
                return "failed validation"
        return None

    def _check_range(self, value: Any) -> str | None:
        if self.min_value is None and self.max_value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, _NUMBERS):
            return "must be a number"
        if _non_finite(value):  # whatever allow_non_finite says: NaN has no place in a range
            return "must be a finite number"
        if self.min_value is not None and value < self.min_value:
            return f"must be at least {_bound(self.min_value)}"
        if self.max_value is not None and value > self.max_value:
            return f"must be at most {_bound(self.max_value)}"
        return None

    def _check_size(self, value: Any) -> str | None:
        if self.max_length is not None:
            if not isinstance(value, Sized):
                return "must have a length"
            if len(value) > self.max_length:
                return f"must have at most {self.max_length} elements"
        if self.max_size_mb is not None:
            size = _size_bytes(value)
            if size is None:
                return "must be bytes or a string"
            if size > self.max_size_mb * MB:
                return f"must be at most {self.max_size_mb:g} MB"
        return None

    def _takes_floats(self) -> bool:
        options = self.type if isinstance(self.type, tuple) else (self.type,)
        return float in options

    def _is_allowed(self, value: Any) -> bool:
        allowed = self.allowed_values if self.allowed_values is not None else ()
        try:
            if value not in allowed:
                return False
            # True == 1 (and hashes alike), so `in` lets a bool match an int and an int match a
            # bool. As for type=int, a flag is not a number: it must match a bool, and a number
            # a non-bool.
            if isinstance(value, bool):
                return any(option is value for option in allowed)
            if isinstance(value, _NUMBERS):
                return any(option == value and not isinstance(option, bool) for option in allowed)
            return True
        except TypeError:  # an unhashable value checked against a set
            return False


class RequestValidator:
    """A set of field rules; `validate(data)` returns True or raises `ValidationError`.

    Fields without a rule are ignored. A field whose value is None counts as missing.
    """

    def __init__(self) -> None:
        self._rules: dict[str, Rule] = {}

    def add_rule(
        self,
        field_name: str,
        required: bool = True,
        type: type | tuple[type, ...] | None = None,  # the checklist's keyword
        min_value: float | None = None,
        max_value: float | None = None,
        max_length: int | None = None,
        max_size_mb: float | None = None,
        allowed_values: Collection[Any] | None = None,
        custom_validator: Callable[[Any], bool] | None = None,
        *,
        allow_non_finite: bool = False,
    ) -> RequestValidator:
        """Add (or replace) the rule for one field; returns self so calls can chain.

        A rule whose `type` includes float refuses NaN and +-inf unless `allow_non_finite`;
        a rule with `min_value` or `max_value` always refuses them.
        A rule that could not be checked as written is refused here, not at `validate`: a NaN
        bound or a negative size (ValueError); a bound that is not a number, a `type` that is
        not a class or a tuple of classes, `allowed_values` that is a string or not a
        collection (TypeError). An infinite bound is kept: it means no limit that way.
        """
        _check_bounds(
            field_name,
            min_value=min_value,
            max_value=max_value,
            max_length=max_length,
            max_size_mb=max_size_mb,
        )
        _check_type(field_name, type)
        _check_allowed_values(field_name, allowed_values)
        if custom_validator is not None and not callable(custom_validator):
            raise TypeError(f"rule for {field_name!r}: custom_validator must be callable")
        if custom_validator is not None and is_async_callable(custom_validator):
            # validate() is synchronous: an async validator's coroutine is never run.
            raise TypeError(
                f"rule for {field_name!r}: custom_validator must be a plain function, not async"
            )
        self._rules[field_name] = Rule(
            field=field_name,
            required=required,
            type=type,
            min_value=min_value,
            max_value=max_value,
            max_length=max_length,
            max_size_mb=max_size_mb,
            allowed_values=allowed_values,
            custom_validator=custom_validator,
            allow_non_finite=allow_non_finite,
        )
        return self

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(self._rules.values())

    def errors(self, data: Any) -> list[FieldError]:
        """Every failing field of `data` (empty when it is valid)."""
        if not isinstance(data, Mapping):
            return [FieldError("", "the request must be an object")]
        found: list[FieldError] = []
        for rule in self._rules.values():
            value = data.get(rule.field)
            if value is None:
                if rule.required:
                    found.append(FieldError(rule.field, "is required"))
                continue
            message = rule.check(value)
            if message is not None:
                found.append(FieldError(rule.field, message))
        return found

    def validate(self, data: Any) -> bool:
        found = self.errors(data)
        if found:
            logger.debug("request rejected: %d field(s) invalid", len(found))
            raise ValidationError(found)
        return True


def _check_bounds(field: str, **bounds: float | None) -> None:
    for name, bound in bounds.items():
        if bound is None:
            continue
        if isinstance(bound, bool) or not isinstance(bound, numbers.Real):
            raise TypeError(f"rule for {field!r}: {name} must be a number or None")
        # NaN compares False with everything: as a bound it would silently switch the rule
        # off. An infinite bound means what it says (max_value=inf: no upper limit), and a
        # manifest's float bound may be written `.inf`, so infinity is kept.
        if math.isnan(bound):
            raise ValueError(f"rule for {field!r}: {name} must not be NaN")
    low, high = bounds["min_value"], bounds["max_value"]
    if low is not None and high is not None and low > high:
        raise ValueError(f"rule for {field!r}: min_value is above max_value")
    for name in ("max_length", "max_size_mb"):
        bound = bounds[name]
        if bound is not None and bound < 0:
            raise ValueError(f"rule for {field!r}: {name} must not be negative")


def _check_type(field: str, expected: Any) -> None:
    # isinstance() raises TypeError for a parametrised generic (list[int]) or a string ("int"),
    # so validate() would raise that instead of a ValidationError; a union (int | str) passes
    # isinstance but not the bool/float rules or the message. A tuple says the same thing.
    if expected is None:
        return
    options = expected if isinstance(expected, tuple) else (expected,)
    usable = bool(options) and all(isinstance(t, type) for t in options)
    if usable:
        try:  # a class may still refuse isinstance (typing.Any)
            isinstance(None, options)
        except TypeError:
            usable = False
    if not usable:
        raise TypeError(
            f"rule for {field!r}: type must be a class or a non-empty tuple of classes"
            f" (list, not list[int]; (int, str), not int | str)"
        )


def _check_allowed_values(field: str, allowed: Any) -> None:
    if allowed is None:
        return
    # `in` on a string is a substring test: allowed_values="fast" would let "as" through.
    if isinstance(allowed, str | bytes | bytearray):
        raise TypeError(
            f"rule for {field!r}: allowed_values must be a collection of values, not a string"
            f" (write {{{allowed!r}}} for one value)"
        )
    # A generator is used up by the first `in`, and an int has no `in` at all.
    if not isinstance(allowed, Collection):
        raise TypeError(f"rule for {field!r}: allowed_values must be a collection (a set, a list)")


def _bound(value: float) -> str:
    """A bound as a client reads it: 128, not the 128.0 a manifest's JSON number became."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**63 else str(value)
