"""What a JSON body's text and nesting say before numpy sees it: its depth and element count
(numbers, strings, lists and objects; refused when absurd), and whether it holds a boolean
among numbers."""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import Problem

# What the checks before parsing look at: the brackets, and the letters of `true` and `false`.
# One translate keeps just these; a numeric body shrinks to its brackets (and an "e" per
# exponent), whatever its size.
_BRACKETS = b"[]{}"
_BOOLEAN_LETTERS = b"truefals"
_NOT_SKELETON = bytes(b for b in range(256) if b not in _BRACKETS + _BOOLEAN_LETTERS)
_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_DEPTH_STEP[[ord("["), ord("{")]] = 1  # open a level
_DEPTH_STEP[[ord("]"), ord("}")]] = -1  # close one


def check_json_shape(body: bytes, max_depth: int, max_elements: int) -> bool:
    """Refuse absurd nesting and element counts before parsing, at C speed. Returns whether the
    JSON may hold a boolean (a `true` or `false` literal), so that `holds_boolean`'s walk over
    every element runs only then.

    Both are read off the text without parsing it, brackets and letters inside strings
    included. A boolean is never missed (its letters stay together). The depth is exact for
    documents without brackets in strings; closing brackets in a string can hide nesting from
    it, up to what orjson parses at all (1,024 levels), and numpy refuses arrays of more than
    64 dimensions (422): a hidden depth costs a 4xx later, never a crash.
    """
    skeleton = body.translate(None, _NOT_SKELETON)
    # Each element takes at least two bytes ("0," or "[]"): a shorter body cannot have too many.
    # Lists and objects count: each is a Python object to make, and one-element lists need no
    # comma (`[[[0]]]` packed 4.6 million lists into a 10 MB body that counted 160,000).
    if len(body) >= 2 * max_elements:
        containers = skeleton.count(b"[") + skeleton.count(b"{")
        if body.count(b",") + 1 + containers > max_elements:
            raise Problem("payload-too-large", f"the JSON has more than {max_elements} elements")
    # Letters of strings and exponents may join into "true" here: a walk for nothing.
    may_hold_bools = b"true" in skeleton or b"false" in skeleton
    # No deeper than its number of opening brackets: the common case, with no numpy call.
    if skeleton.count(b"[") + skeleton.count(b"{") > max_depth:
        steps = _DEPTH_STEP[np.frombuffer(skeleton, dtype=np.uint8)]
        if int(np.cumsum(steps, dtype=np.int32).max()) > max_depth:
            raise Problem("malformed-request", f"the JSON is nested deeper than {max_depth} levels")
    return may_hold_bools


def holds_boolean(values: list[Any]) -> bool:
    """Whether a nested list has a boolean anywhere. numpy turns `[true, 0.5]` into floats and
    `[true, 2]` into integers, so a JSON type error would pass as 1.0 or 1 unless looked for.
    A walk over every element: callers skip it when `check_json_shape` found no literal."""
    pending = [values]
    while pending:
        level = pending.pop()
        kinds = set(map(type, level))  # twice as fast as a Python loop over the elements
        if bool in kinds:
            return True
        if list in kinds:
            pending.extend(value for value in level if type(value) is list)
    return False
