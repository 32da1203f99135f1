"""The v2 wire format's checks on an input's data: the item count before the data is read,
UINT64 past int64 from JSON as from binary, and client-sent parameter names cut when quoted."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import NAME_CHARS, Problem
from app.inference.protocol_v2 import decode_request
from models.manifest import Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec(name="x", shape=(-1, 3)),),
    outputs=(TensorSpec(name="y", shape=(-1, 2)),),
    max_items_per_request=4,
)
INT_SIG = Signature(
    inputs=(TensorSpec(name="x", dtype="int64", shape=(-1, 3)),),
    outputs=(TensorSpec(name="y", shape=(-1, 2)),),
)
BIG = 2**63  # a valid UINT64 that int64 cannot hold


def body(*inputs: dict[str, Any], **fields: Any) -> bytes:
    # The standard library's json writes any integer, as a client in another language may.
    return json.dumps({"inputs": list(inputs), **fields}).encode()


def refused(code: str = "invalid-input") -> pytest.RaisesExc[Problem]:
    return pytest.raises(Problem, check=lambda p: p.code == code)


# ------------------------------------------------------------------ the item count first
def test_json_data_of_too_many_items_is_refused_before_it_is_converted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Converting JSON data holds the GIL about 0.1 s a million numbers: a request of too many
    items, which assemble would refuse after all, must be refused having cost its parse alone."""
    convert = np.asarray

    def never_the_data(value: Any, *args: Any, **kwargs: Any) -> Any:
        assert not isinstance(value, list), "the data was converted before the item count"
        return convert(value, *args, **kwargs)

    monkeypatch.setattr(np, "asarray", never_the_data)
    item = {"name": "x", "shape": [5, 3], "datatype": "FP32", "data": [0.5] * 15}
    with refused("payload-too-large") as caught:
        decode_request(SIG, body(item), None)
    assert caught.value.detail == "5 items in one request; at most 4 are allowed"


def test_too_many_items_is_what_is_reported_whatever_the_data() -> None:
    # The count comes from the shape: data that does not even fit it is not read first.
    item = {"name": "x", "shape": [5, 3], "datatype": "FP32"}
    with refused("payload-too-large") as caught:
        decode_request(SIG, body({**item, "data": ["not", "numbers"]}), None)
    assert "5 items in one request" in caught.value.detail
    header = body({**item, "parameters": {"binary_data_size": 8}})  # 60 bytes would fit
    with refused("payload-too-large") as caught:
        decode_request(SIG, header + b"\0" * 8, str(len(header)))
    assert "5 items in one request" in caught.value.detail


def test_a_huge_batch_dimension_is_refused_as_too_many_items() -> None:
    for shape in ([2**63, 0], [2**64 - 1, 3]):
        with refused("payload-too-large") as caught:
            decode_request(
                SIG, body({"name": "x", "shape": shape, "datatype": "FP32", "data": []}), None
            )
        assert "items in one request" in caught.value.detail


# ------------------------------------------------------------------ UINT64 past int64
def uint64(data: list[Any]) -> dict[str, Any]:
    return {"name": "x", "shape": [2, 3], "datatype": "UINT64", "data": data}


def test_uint64_json_data_past_int64_is_read_as_binary_data_is() -> None:
    """numpy reads [2**63, 0] as float64: refused as "not integers" though the same values
    sent as binary were accepted."""
    values = [BIG, 0, 2**64 - 1, 1, 2, 3]
    from_json = decode_request(SIG, body(uint64(values)), None).decoded.arrays[0]
    raw = np.array(values, dtype="<u8").tobytes()
    binary = {"name": "x", "shape": [2, 3], "datatype": "UINT64"}
    header = body({**binary, "parameters": {"binary_data_size": len(raw)}})
    from_binary = decode_request(SIG, header + raw, str(len(header))).decoded.arrays[0]
    np.testing.assert_array_equal(from_json, from_binary)
    assert from_json.dtype == np.float32
    # Nested data too.
    nested = decode_request(SIG, body(uint64([values[:3], values[3:]])), None).decoded.arrays[0]
    np.testing.assert_array_equal(nested, from_binary)


def test_uint64_json_data_past_int64_is_refused_by_an_int64_model_as_out_of_range() -> None:
    with refused() as caught:
        decode_request(INT_SIG, body(uint64([BIG] + [0] * 5)), None)
    assert "out of range" in caught.value.detail


@pytest.mark.parametrize(
    ("datatype", "data"),
    [
        pytest.param("UINT64", [-1] + [0] * 5, id="negative"),
        pytest.param("UINT64", [BIG, -1] + [0] * 4, id="past-int64-and-negative"),
        pytest.param("INT64", [BIG, 0] + [0] * 4, id="int64-past-int64"),
    ],
)
def test_integers_outside_the_declared_datatype_are_refused_as_out_of_range(
    datatype: str, data: list[int]
) -> None:
    with refused() as caught:
        decode_request(SIG, body({**uint64(data), "datatype": datatype}), None)
    assert f"out of range; declared {datatype}" in caught.value.detail


@pytest.mark.parametrize(
    "data",
    [
        pytest.param([1.5, BIG] + [0] * 4, id="a-fraction"),
        pytest.param([BIG, 3.0] + [0] * 4, id="a-whole-float"),
        pytest.param([True, BIG] + [0] * 4, id="a-boolean"),
        pytest.param([BIG, 0, 1], id="too-few"),
        pytest.param([[BIG, 0, 1], [2, 3]], id="ragged"),
        pytest.param([BIG, None] + [0] * 4, id="a-null"),
        pytest.param([BIG, "1"] + [0] * 4, id="a-string"),
        # orjson reads an integer past uint64 (or below int64) as a float.
        pytest.param([2**64, BIG] + [0] * 4, id="past-uint64"),
        pytest.param([-(2**63) - 1, BIG] + [0] * 4, id="below-int64"),
    ],
)
def test_uint64_json_data_past_int64_is_still_checked_for_kind_and_count(data: list[Any]) -> None:
    with refused() as caught:
        decode_request(SIG, body(uint64(data)), None)
    assert "data does not match shape and datatype" in caught.value.detail


# ------------------------------------------------------------------ names quoted, cut
LONG = {f"p{k}" + "X" * 300: 1 for k in range(7)}


def quoted_names(detail: str) -> list[str]:
    return [part for part in detail.split("'")[1::2] if part.startswith("p")]


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [2, 3],
                        "datatype": "FP32",
                        "data": [0] * 6,
                        "parameters": LONG,
                    }
                ]
            },
            id="input",
        ),
        pytest.param(
            {
                "inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [0] * 6}],
                "outputs": [{"name": "y", "parameters": LONG}],
            },
            id="output",
        ),
    ],
)
def test_unsupported_parameter_names_are_quoted_cut_and_a_few_listed(
    fields: dict[str, Any],
) -> None:
    """Names the client sent, quoted like every other: cut to 64 characters, five listed."""
    with refused() as caught:
        decode_request(SIG, orjson.dumps(fields), None)
    detail = caught.value.detail
    assert "unsupported parameter(s)" in detail
    names = quoted_names(detail)
    assert len(names) == 5 and all(len(n) + 2 <= NAME_CHARS for n in names)
    assert "and 2 more" in detail
    assert len(detail) < 600
