"""The Open Inference Protocol v2 wire format, binary tensor extension included."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import Problem
from app.inference.codec import Decoded
from app.inference.protocol_v2 import V2Request, decode_request, encode_response, split_body
from models.demo import demo_model
from models.manifest import Signature, TensorSpec

SIG = Signature(
    inputs=(TensorSpec(name="x", shape=(-1, 3)),),
    outputs=(TensorSpec(name="y", shape=(-1, 2)), TensorSpec(name="z", shape=(-1, 1))),
)
DECODER = demo_model("vae-digits-decoder").signature


def x_input(**fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": "x", "shape": [2, 3], "datatype": "FP32"}
    item.update(fields)
    return item


def header(*inputs: dict[str, Any], **fields: Any) -> bytes:
    document: dict[str, Any] = {"inputs": list(inputs)}
    document.update(fields)
    return orjson.dumps(document)


def with_binary(document: bytes, *chunks: bytes) -> tuple[bytes, str]:
    return document + b"".join(chunks), str(len(document))


def refused(code: str = "invalid-input") -> pytest.RaisesExc[Problem]:
    return pytest.raises(Problem, check=lambda p: p.code == code)


ROWS = np.arange(6, dtype=np.float32).reshape(2, 3)


# ------------------------------------------------------------------ JSON data
def test_flat_json_data_is_reshaped_to_the_declared_shape() -> None:
    request = decode_request(SIG, header(x_input(data=list(range(6)))), None)
    np.testing.assert_array_equal(request.decoded.arrays[0], ROWS)
    assert request.decoded.items == 2


def test_nested_json_data_is_accepted_too() -> None:
    request = decode_request(SIG, header(x_input(data=ROWS.tolist())), None)
    np.testing.assert_array_equal(request.decoded.arrays[0], ROWS)


def test_data_that_does_not_fit_the_shape_is_refused() -> None:
    with refused():
        decode_request(SIG, header(x_input(data=[1, 2, 3])), None)


def test_a_shape_that_does_not_fit_the_signature_is_refused() -> None:
    with refused():
        decode_request(SIG, header(x_input(shape=[3, 2], data=list(range(6)))), None)


@pytest.mark.parametrize("datatype", ["FP8", "BYTES", None, "fp32", ["FP32"], {"t": "FP32"}, 32])
def test_an_unknown_datatype_is_refused_naming_the_expected_one(datatype: Any) -> None:
    with refused() as caught:
        decode_request(SIG, header(x_input(datatype=datatype, data=list(range(6)))), None)
    assert "FP32" in caught.value.detail


def test_an_integer_datatype_is_accepted_for_a_float_input() -> None:
    request = decode_request(SIG, header(x_input(datatype="INT64", data=list(range(6)))), None)
    assert request.decoded.arrays[0].dtype == np.float32


@pytest.mark.parametrize("datatype", ["FP32", "INT64"])
def test_booleans_mixed_into_numeric_data_are_refused(datatype: str) -> None:
    # numpy reads [true, 2.5] as [1.0, 2.5]: a JSON type error would pass unseen.
    with refused():
        decode_request(SIG, header(x_input(datatype=datatype, data=[True] + [2] * 5)), None)
    # Booleans in the parameters alone leave numeric data alone.
    request = decode_request(
        SIG, header(x_input(data=list(range(6))), parameters={"binary_data_output": True}), None
    )
    np.testing.assert_array_equal(request.decoded.arrays[0], ROWS)


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 300), ("UINT8", -5), ("INT16", 40_000)])
def test_data_outside_its_declared_datatype_is_refused(datatype: str, value: int) -> None:
    # The model takes float32, which holds 300; the client said INT8, which does not.
    with refused() as caught:
        decode_request(SIG, header(x_input(datatype=datatype, data=[value] + [0] * 5)), None)
    assert f"out of range; declared {datatype}" in caught.value.detail
    fits = decode_request(SIG, header(x_input(datatype=datatype, data=[7] * 6)), None)
    assert fits.decoded.arrays[0].tolist() == [[7.0] * 3] * 2


def test_fractional_data_under_an_integer_datatype_is_refused() -> None:
    sig = Signature(
        inputs=(TensorSpec(name="x", dtype="int64", shape=(-1, 3)),),
        outputs=(TensorSpec(name="y", shape=(-1, 1)),),
    )
    with refused():
        decode_request(sig, header(x_input(datatype="INT64", data=[1.5] * 6)), None)


@pytest.mark.parametrize(
    "item",
    [
        pytest.param("x", id="not-an-object"),
        pytest.param({"shape": [2, 3], "datatype": "FP32", "data": []}, id="no-name"),
        pytest.param(x_input(shape=[2, -3], data=[0] * 6), id="negative-dim"),
        pytest.param(x_input(shape="2,3", data=[0] * 6), id="shape-string"),
        pytest.param(x_input(shape=[True, 3], data=[0] * 3), id="bool-dim"),
        pytest.param(x_input(shape=[2.0, 3], data=[0] * 6), id="float-dim"),
        pytest.param(x_input(shape=[[2], 3], data=[0] * 6), id="list-dim"),
        pytest.param(x_input(), id="no-data"),
    ],
)
def test_a_malformed_input_entry_is_refused(item: Any) -> None:
    with refused():
        decode_request(SIG, header(item), None)


@pytest.mark.parametrize(
    "shape",
    # The batch dimension within the item limit, which is checked first.
    [[4, 2**62], [1, 2**63], [128, 2**64 - 1]],
    ids=["wraps-to-0", "wraps-negative", "huge"],
)
def test_a_shape_whose_element_count_overflows_int64_is_refused(shape: list[int]) -> None:
    with refused() as caught:
        decode_request(SIG, header(x_input(shape=shape, data=[])), None)
    assert "does not match shape" in caught.value.detail
    document = header(x_input(shape=shape, parameters={"binary_data_size": 0}))
    with refused() as caught:
        decode_request(SIG, *with_binary(document, b"\x00"))
    assert "binary_data_size" in caught.value.detail


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**64 - 1]])
def test_a_shape_numpy_cannot_take_is_refused_even_when_its_count_fits(shape: list[int]) -> None:
    with refused() as caught:
        decode_request(SIG, header(x_input(shape=shape, data=[])), None)
    assert "shape is too large" in caught.value.detail
    document = header(x_input(shape=shape, parameters={"binary_data_size": 0}))
    with refused() as caught:
        decode_request(SIG, document, str(len(document)))
    assert "shape is too large" in caught.value.detail


def test_a_bool_binary_data_size_is_refused() -> None:
    sig = Signature(
        inputs=(TensorSpec(name="x", dtype="uint8", shape=(-1, 1)),),
        outputs=(TensorSpec(name="y", shape=(-1, 1)),),
    )
    item = x_input(shape=[1, 1], datatype="UINT8", parameters={"binary_data_size": True})
    with refused() as caught:
        decode_request(sig, *with_binary(header(item), b"\x01"))
    assert "binary_data_size" in caught.value.detail


def test_input_parameters_that_are_not_an_object_are_refused() -> None:
    with refused():
        decode_request(SIG, header(x_input(data=[0] * 6, parameters=[1])), None)


def test_output_parameters_that_are_not_an_object_are_refused() -> None:
    body = header(x_input(data=[0] * 6), outputs=[{"name": "y", "parameters": "x"}])
    with refused():
        decode_request(SIG, body, None)


def test_an_input_given_twice_is_refused() -> None:
    item = x_input(data=[0] * 6)
    with refused() as caught:
        decode_request(SIG, header(item, item), None)
    assert "twice" in caught.value.detail


def test_an_unknown_input_is_refused() -> None:
    item = {"name": "w", "shape": [1], "datatype": "FP32", "data": [0]}
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), item), None)
    assert "'w'" in caught.value.detail


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[]", id="array"),
        pytest.param(b'{"inputs": {}}', id="inputs-object"),
        pytest.param(b'{"inputs": [], "model": "x"}', id="unknown-field"),
        pytest.param(b'{"inputs": [], "parameters": [1]}', id="parameters-list"),
    ],
)
def test_a_header_of_the_wrong_form_is_refused(body: bytes) -> None:
    with refused():
        decode_request(SIG, body, None)


def test_a_header_that_is_not_json_is_a_400() -> None:
    with refused("malformed-request"):
        decode_request(SIG, b"{nope", None)


# ------------------------------------------------------------------ binary data
def test_binary_inputs_are_read_after_the_header() -> None:
    document = header(x_input(parameters={"binary_data_size": 24}))
    body, length = with_binary(document, ROWS.tobytes())
    request = decode_request(SIG, body, length)
    np.testing.assert_array_equal(request.decoded.arrays[0], ROWS)


def test_binary_inputs_decode_to_writable_arrays() -> None:
    document = header(x_input(parameters={"binary_data_size": 24}))
    body, length = with_binary(document, ROWS.tobytes())
    assert decode_request(SIG, body, length).decoded.arrays[0].flags.writeable


BOOL_SIG = Signature(
    inputs=(TensorSpec(name="x", dtype="bool", shape=(-1, 3)),),
    outputs=(TensorSpec(name="y", shape=(-1, 1)),),
)


def bool_request(raw: bytes) -> tuple[bytes, str]:
    item = x_input(shape=[1, 3], datatype="BOOL", parameters={"binary_data_size": 3})
    return with_binary(header(item), raw)


def test_bool_binary_data_is_bytes_of_0_and_1() -> None:
    request = decode_request(BOOL_SIG, *bool_request(b"\x01\x00\x01"))
    assert request.decoded.arrays[0].tolist() == [[True, False, True]]
    with refused() as caught:
        decode_request(BOOL_SIG, *bool_request(b"\x01\x02\x00"))
    assert "BOOL bytes must be 0 or 1" in caught.value.detail


def test_two_binary_inputs_are_read_in_order() -> None:
    sig = Signature(
        inputs=(
            TensorSpec(name="x", shape=(-1, 3)),
            TensorSpec(name="n", dtype="int64", shape=(-1, 1)),
        ),
        outputs=(TensorSpec(name="y", shape=(-1, 1)),),
    )
    counts = np.array([[7], [8]], dtype=np.int64)
    document = header(
        x_input(parameters={"binary_data_size": 24}),
        {"name": "n", "shape": [2, 1], "datatype": "INT64", "parameters": {"binary_data_size": 16}},
    )
    body, length = with_binary(document, ROWS.tobytes(), counts.tobytes())
    arrays = decode_request(sig, body, length).decoded.arrays
    np.testing.assert_array_equal(arrays[0], ROWS)
    np.testing.assert_array_equal(arrays[1], counts)


@pytest.mark.parametrize("size", [20, 28, "24", 2.4e1])
def test_a_binary_data_size_that_does_not_fit_the_shape_is_refused(size: Any) -> None:
    document = header(x_input(parameters={"binary_data_size": size}))
    body, length = with_binary(document, ROWS.tobytes(), b"\x00" * 4)
    with refused() as caught:
        decode_request(SIG, body, length)
    assert "binary_data_size" in caught.value.detail


def test_binary_data_shorter_than_declared_is_refused() -> None:
    document = header(x_input(parameters={"binary_data_size": 24}))
    body, length = with_binary(document, ROWS.tobytes()[:12])
    with refused():
        decode_request(SIG, body, length)


def test_leftover_binary_bytes_are_refused() -> None:
    document = header(x_input(parameters={"binary_data_size": 24}))
    body, length = with_binary(document, ROWS.tobytes(), b"\x01")
    with refused() as caught:
        decode_request(SIG, body, length)
    assert "left over" in caught.value.detail


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_fp16_binary_data_is_refused_for_a_float32_input(value: float) -> None:
    rows = ROWS.astype(np.float16)
    rows[0, 2] = value
    document = header(x_input(datatype="FP16", parameters={"binary_data_size": rows.nbytes}))
    with refused() as caught:
        decode_request(SIG, *with_binary(document, rows.tobytes()))
    assert "NaN or infinity" in caught.value.detail


def test_fp16_json_data_out_of_float32_range_is_refused() -> None:
    # JSON has no infinity; the nearest a JSON client gets is a number no float32 can hold.
    with refused() as caught:
        decode_request(SIG, header(x_input(datatype="FP16", data=[1e300] + [0] * 5)), None)
    assert "out of range" in caught.value.detail


def test_nan_in_binary_data_is_refused() -> None:
    rows = ROWS.copy()
    rows[1, 1] = np.nan
    body, length = with_binary(header(x_input(parameters={"binary_data_size": 24})), rows.tobytes())
    with refused() as caught:
        decode_request(SIG, body, length)
    assert "NaN" in caught.value.detail


@pytest.mark.parametrize(
    "length",
    [
        "abc",
        "0",
        "000",
        "-1",
        "100000",
        "+14",
        " 14",
        "14 ",
        "1_4",
        "١٤",
        "9" * 4400,
        "1" + "0" * 4400,
    ],
)
def test_a_bad_inference_header_content_length_is_a_400(length: str) -> None:
    """4,400 digits were a 500: int() refuses text past 4,300 digits."""
    with refused("malformed-request"):
        split_body(b'{"inputs": []}', length)


@pytest.mark.parametrize("length", ["0", "000"])
def test_a_zero_inference_header_content_length_says_there_is_no_json_header(length: str) -> None:
    """It said the length "exceeds the body", which sends the client looking elsewhere."""
    with refused("malformed-request") as caught:
        split_body(b'{"inputs": []}', length)
    assert "is 0" in caught.value.detail


def test_an_inference_header_content_length_with_leading_zeros_is_read() -> None:
    for length in ("0014", "0" * 4400 + "14"):
        assert split_body(b'{"inputs": []}xyz', length) == (b'{"inputs": []}', b"xyz")


def test_without_a_header_length_the_whole_body_is_the_header() -> None:
    assert split_body(b"abc", None) == (b"abc", b"")


# ------------------------------------------------------------------ parameters
def test_timeout_is_read_in_microseconds() -> None:
    request = decode_request(SIG, header(x_input(data=[0] * 6), parameters={"timeout": 2500}), None)
    assert request.timeout_s == pytest.approx(0.0025)


def test_a_timeout_of_0_means_no_timeout_as_in_triton() -> None:
    request = decode_request(SIG, header(x_input(data=[0] * 6), parameters={"timeout": 0}), None)
    assert request.timeout_s is None


@pytest.mark.parametrize("timeout", [-1, 1.5, True, False, "10"])
def test_a_timeout_that_is_not_a_non_negative_integer_is_refused(timeout: Any) -> None:
    body = header(x_input(data=[0] * 6), parameters={"timeout": timeout})
    with refused() as caught:
        decode_request(SIG, body, None)
    assert "timeout" in caught.value.detail


def test_protocol_parameters_are_not_taken_for_model_parameters() -> None:
    params = {"binary_data_output": False, "sequence_id": 0, "priority": 0, "headers": {}}
    request = decode_request(SIG, header(x_input(data=[0] * 6), parameters=params), None)
    assert request.decoded.parameters == {}


@pytest.mark.parametrize(
    "params",
    [
        # What tritonclient sends for infer(..., sequence_id=5, sequence_start=True).
        {"sequence_id": 5, "sequence_start": True, "sequence_end": False},
        {"sequence_id": "session-1"},
        {"sequence_end": True},
    ],
)
def test_a_request_in_a_sequence_is_refused_as_needing_a_stateful_model(
    params: dict[str, Any],
) -> None:
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), parameters=params), None)
    assert "sequence batching" in caught.value.detail


def test_the_model_may_be_named_in_the_body_as_in_tritons_binary_example() -> None:
    body = header(x_input(data=[0] * 6), model_name="m", model_version="1")
    assert decode_request(SIG, body, None).decoded.items == 2


def test_an_unknown_input_sent_as_binary_is_reported_as_unknown() -> None:
    unknown: dict[str, Any] = {"name": "foo", "shape": [2, 3], "datatype": "FP32"}
    unknown["parameters"] = {"binary_data_size": 24}
    document, length = with_binary(header(x_input(data=[0] * 6), unknown), bytes(24))
    with refused() as caught:
        decode_request(SIG, document, length)
    assert "unknown input" in caught.value.detail and "foo" in caught.value.detail


def test_an_empty_outputs_list_asks_for_every_output() -> None:
    request = decode_request(SIG, header(x_input(data=[0] * 6), outputs=[]), None)
    assert request.outputs == [spec.name for spec in SIG.outputs]


def test_an_output_requested_twice_is_refused() -> None:
    name = SIG.outputs[0].name
    body = header(x_input(data=[0] * 6), outputs=[{"name": name}, {"name": name}])
    with refused() as caught:
        decode_request(SIG, body, None)
    assert "twice" in caught.value.detail


def test_an_output_named_by_a_bare_string_is_told_the_form_expected() -> None:
    """It was called an "unknown output", though the name was the model's."""
    name = SIG.outputs[0].name
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), outputs=[name]), None)
    assert caught.value.detail == f'outputs[0]: must be an object such as {{"name":"{name}"}}'


def test_an_output_parameter_this_server_does_not_implement_is_refused() -> None:
    # tritonclient's InferRequestedOutput(name, class_count=3): the classification extension.
    outputs = [{"name": SIG.outputs[0].name, "parameters": {"classification": 3}}]
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), outputs=outputs), None)
    assert "classification" in caught.value.detail


def test_unknown_parameters_are_refused_naming_the_protocol_s_as_accepted() -> None:
    """It said "accepted: []" while the route takes timeout, priority, binary_data_output."""
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), parameters={"temperature": 1}), None)
    assert "accepted: ['binary_data_output', 'headers', 'priority', 'timeout']" in (
        caught.value.detail
    )


def test_model_parameters_drive_generated_inputs() -> None:
    request = decode_request(DECODER, header(parameters={"batch_size": 3, "seed": 5}), None)
    assert request.decoded.items == 3
    assert request.decoded.arrays[0].shape == (3, 16)


def test_the_request_id_is_kept() -> None:
    assert decode_request(SIG, header(x_input(data=[0] * 6), id="r1"), None).id == "r1"
    assert decode_request(SIG, header(x_input(data=[0] * 6)), None).id is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"id": 5}, "'id'"),
        ({"id": {"a": 1}}, "'id'"),
        ({"model_name": 7}, "'model_name'"),
        ({"model_version": 1}, "'model_version'"),
        ({"parameters": []}, "'parameters'"),
        ({"parameters": False}, "'parameters'"),
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output"),
        ({"parameters": {"binary_data_output": 1}}, "binary_data_output"),
        ({"parameters": {"priority": "high"}}, "priority"),
        ({"parameters": {"priority": -1}}, "priority"),
        ({"outputs": [{"name": "y", "parameters": {"binary_data": "yes"}}]}, "binary_data"),
    ],
)
def test_protocol_fields_of_another_type_are_refused_not_ignored(
    fields: dict[str, Any], named: str
) -> None:
    """Ignored, `"binary_data_output": "yes"` answered JSON and `"id": 5` was dropped from the
    answer, whose id the protocol echoes as a string."""
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), **fields), None)
    assert named in caught.value.detail


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (x_input(data=[0] * 6, parameters={"shared_memory_region": "r"}), "shared_memory_region"),
        (x_input(data=[0] * 6, contents={"fp32_contents": [0] * 6}), "contents"),
    ],
)
def test_input_fields_and_parameters_this_server_lacks_are_refused(
    item: dict[str, Any], named: str
) -> None:
    """Shared memory and the like were ignored: the data is not where the server looked."""
    with refused() as caught:
        decode_request(SIG, header(item), None)
    assert named in caught.value.detail


def test_unknown_fields_of_a_requested_output_are_refused() -> None:
    outputs = [{"name": "y", "datatype": 17}]
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), outputs=outputs), None)
    assert "'datatype'" in caught.value.detail


@pytest.mark.parametrize("headers", [5, "x", {"a": 1}])
def test_a_headers_parameter_that_is_not_an_object_of_strings_is_refused(headers: Any) -> None:
    with refused() as caught:
        decode_request(SIG, header(x_input(data=[0] * 6), parameters={"headers": headers}), None)
    assert "headers" in caught.value.detail


def test_null_protocol_fields_are_taken_as_not_given() -> None:
    """Clients built on pydantic send unset fields as null; those requests were served."""
    nulls = {"id": None, "model_name": None, "model_version": None}
    params = {"binary_data_output": None, "priority": None, "headers": None, "timeout": None}
    item = x_input(data=[0] * 6, parameters=None)
    request = decode_request(SIG, header(item, parameters=params, **nulls), None)
    assert (request.id, request.binary) == (None, set())
    binary = x_input(data=None, parameters={"binary_data_size": 24})
    request = decode_request(SIG, *with_binary(header(binary), ROWS.tobytes()))
    np.testing.assert_array_equal(request.decoded.arrays[0], ROWS)


def test_protocol_fields_of_the_right_type_are_accepted() -> None:
    fields = {
        "id": "r1",
        "model_name": "m",
        "model_version": "1",
        "parameters": {"binary_data_output": False, "priority": 2},
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    request = decode_request(SIG, header(x_input(data=[0] * 6), **fields), None)
    assert (request.id, request.outputs, request.binary) == ("r1", ["y"], {"y"})
    assert decode_request(SIG, header(x_input(data=[0] * 6), parameters=None), None).id is None


def test_an_input_with_both_data_and_binary_data_size_is_refused() -> None:
    document = header(x_input(data=[0] * 6, parameters={"binary_data_size": 24}))
    with refused() as caught:
        decode_request(SIG, *with_binary(document, ROWS.tobytes()))
    assert "not both" in caught.value.detail


def test_a_shape_of_the_wrong_rank_is_refused_before_its_size_is_computed() -> None:
    """The product of 30,000 huge dimensions took 5 s on the event loop (a 630 KB body)."""
    shape = [2**62] * 30_000 + [7]
    with refused() as caught:
        decode_request(SIG, header(x_input(shape=shape, data=[0.0])), None)
    assert "has 30001 dimensions; expected x: float32[-1, 3]" in caught.value.detail


# ------------------------------------------------------------------ outputs
def test_all_outputs_are_json_by_default() -> None:
    request = decode_request(SIG, header(x_input(data=[0] * 6)), None)
    assert request.outputs == ["y", "z"]
    assert request.binary == set()


def test_binary_data_output_makes_every_output_binary() -> None:
    body = header(x_input(data=[0] * 6), parameters={"binary_data_output": True})
    assert decode_request(SIG, body, None).binary == {"y", "z"}


def test_per_output_binary_data_overrides_binary_data_output() -> None:
    outputs = [{"name": "y", "parameters": {"binary_data": False}}, {"name": "z"}]
    body = header(x_input(data=[0] * 6), outputs=outputs, parameters={"binary_data_output": True})
    request = decode_request(SIG, body, None)
    assert request.outputs == ["y", "z"]
    assert request.binary == {"z"}


def test_only_the_requested_outputs_are_returned() -> None:
    body = header(
        x_input(data=[0] * 6), outputs=[{"name": "z", "parameters": {"binary_data": True}}]
    )
    request = decode_request(SIG, body, None)
    assert (request.outputs, request.binary) == (["z"], {"z"})


@pytest.mark.parametrize("outputs", [{"name": "y"}, [{"name": "nope"}], ["y"]])
def test_unknown_or_malformed_requested_outputs_are_refused(outputs: Any) -> None:
    with refused():
        decode_request(SIG, header(x_input(data=[0] * 6), outputs=outputs), None)


def v2_request(outputs: list[str], binary: set[str], request_id: str | None = None) -> V2Request:
    decoded = Decoded([ROWS], 2)
    return V2Request(decoded=decoded, id=request_id, timeout_s=None, outputs=outputs, binary=binary)


Y = np.array([[0.5, 1.5], [2.5, 3.5]], dtype=np.float32)
Z = np.array([[1.0], [2.0]], dtype=np.float32)


def test_a_json_response_carries_flat_data_shape_datatype_and_id() -> None:
    body, headers = encode_response("m", "1.0.0", SIG, [Y, Z], v2_request(["y", "z"], set(), "r"))
    assert headers == {"content-type": "application/json"}
    document = orjson.loads(body)
    assert document["model_name"] == "m"
    assert document["model_version"] == "1.0.0"
    assert document["id"] == "r"
    assert document["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [2, 2],
        "data": [0.5, 1.5, 2.5, 3.5],
    }


def test_a_binary_response_puts_the_tensor_bytes_after_the_header() -> None:
    body, headers = encode_response("m", "1.0.0", SIG, [Y, Z], v2_request(["z", "y"], {"y"}))
    assert headers["content-type"] == "application/octet-stream"
    length = int(headers["inference-header-content-length"])
    document = orjson.loads(body[:length])
    assert "id" not in document
    z_entry, y_entry = document["outputs"]
    assert z_entry["data"] == [1.0, 2.0]
    assert y_entry["parameters"] == {"binary_data_size": 16}
    assert "data" not in y_entry
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype="<f4").reshape(2, 2), Y)
