"""An Open Inference Protocol v2 input's JSON `data`, read as its declared datatype allows.

Split from app.inference.protocol_v2, which reads the rest of the request.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.errors import Problem
from app.inference.json_shape import holds_boolean

# Which array kinds a declared datatype's kind accepts: ints are valid floats, not vice versa.
_KINDS_OF = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}


def json_data(
    name: str,
    data: list[Any],
    dtype: np.dtype[Any],
    datatype: str,
    count: int,
    may_hold_bools: bool,
) -> np.ndarray:
    """An input's JSON `data` as an array of its declared datatype's kind (`dtype`, named
    `datatype` on the wire) and `count` values: 1.5 declared INT64 is refused, not cut, and
    true among FP32 numbers, not read as 1.0."""
    mismatch = Problem("invalid-input", f"input {name!r}: data does not match shape and datatype")
    try:
        given = np.asarray(data)
        if dtype.kind in "iu" and given.dtype.kind == "f":
            given = _exact_integers(name, data, dtype, datatype, mismatch)
    except (ValueError, TypeError, OverflowError):
        raise mismatch from None
    if given.dtype.kind not in _KINDS_OF[dtype.kind] or given.size != count:
        raise mismatch
    if may_hold_bools and given.dtype.kind != "b" and holds_boolean(data):
        raise mismatch
    return given


def _exact_integers(
    name: str, data: list[Any], dtype: np.dtype[Any], datatype: str, mismatch: Problem
) -> np.ndarray:
    """Integer data that numpy read as floats: a Python int past int64 next to one that is
    negative or fits int64 does that (2**63 next to 0 makes float64), though 2**63 is a valid
    UINT64, which the binary form takes. Read in the declared dtype, exactly, the two agree; a
    float or a boolean among the values is still refused. (orjson reads an integer past uint64
    or below int64 as a float: refused here as one.)"""
    # A walk in Python, but only here (integer data numpy did not read as integers), and a
    # float, the usual mistake, ends it at once.
    if not all(type(v) is int for v in np.asarray(data, dtype=object).flat):
        raise mismatch
    try:
        return np.asarray(data, dtype=dtype)
    except OverflowError:  # 2**63 as INT64, -1 as UINT64: numpy refuses to wrap a Python int
        raise Problem(
            "invalid-input", f"input {name!r} has values out of range; declared {datatype}"
        ) from None
