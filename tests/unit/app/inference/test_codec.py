"""The codec: JSON requests -> arrays checked against a signature, and outputs -> JSON."""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import orjson
import pytest

from app.errors import Problem
from app.inference import codec
from app.inference.codec import (
    Decoded,
    array_from_json,
    assemble,
    check_array,
    check_parameters,
    encode_infer_json,
    read_infer_json,
)
from app.inference.json_shape import check_json_shape, holds_boolean
from models.demo import demo_model, sample_png
from models.manifest import Dtype, ParameterSpec, Signature, TensorSpec

CNN = demo_model("cnn-digits").signature
DECODER = demo_model("vae-digits-decoder").signature


def spec(dtype: Dtype = "float32", shape: tuple[int, ...] = (-1, 3), **kw: Any) -> TensorSpec:
    return TensorSpec(name="x", dtype=dtype, shape=shape, **kw)


def signature(*inputs: TensorSpec, **kw: Any) -> Signature:
    return Signature(
        inputs=inputs or (spec(),),
        outputs=(TensorSpec(name="y", shape=(-1, 2)),),
        **kw,
    )


def body(document: Any) -> bytes:
    return orjson.dumps(document)


def decode_infer_json(sig: Signature, body: bytes) -> Decoded:
    """A JSON request read and decoded in one go."""
    return read_infer_json(sig, body).decode()


def json_input(name: str, value: Any, sig: Signature = CNN) -> np.ndarray:
    """One input's JSON value as the array it decodes to, the request's only input."""
    return decode_infer_json(sig, body({"inputs": {name: value}})).arrays[0]


def refused(code: str = "invalid-input") -> pytest.RaisesExc[Problem]:
    """pytest.raises for a Problem of this code."""
    return pytest.raises(Problem, check=lambda p: p.code == code)


# ------------------------------------------------------------------ shapes and dtypes
def test_a_nested_list_of_the_right_shape_becomes_an_array_of_the_spec_dtype() -> None:
    array = array_from_json("x", [[1.5, 2, 3], [4, 5, 6]], spec())
    assert array.dtype == np.float32
    assert array.shape == (2, 3)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([[1.0, 2.0]], id="short-row"),
        pytest.param([1.0, 2.0, 3.0], id="no-batch-dimension"),
        pytest.param([[[1.0, 2.0, 3.0]]], id="extra-dimension"),
    ],
)
def test_a_shape_that_does_not_fit_the_spec_is_refused_naming_the_expected_shape(
    value: Any,
) -> None:
    with refused() as caught:
        array_from_json("x", value, spec())
    assert "x: float32[-1, 3]" in caught.value.detail


def test_an_empty_batch_is_refused() -> None:
    with refused():
        check_array("x", np.zeros((0, 3), np.float32), spec())


def test_a_float_spec_accepts_integers() -> None:
    array = array_from_json("x", [[1, 2, 3]], spec("float32"))
    assert array.dtype == np.float32
    assert array.tolist() == [[1.0, 2.0, 3.0]]


def test_an_int_spec_refuses_floats() -> None:
    with refused() as caught:
        array_from_json("x", [[1.0, 2.5, 3.0]], spec("int64"))
    assert "wrong type" in caught.value.detail


def test_a_bool_spec_accepts_booleans_only() -> None:
    assert array_from_json("x", [[True, False, True]], spec("bool")).dtype == np.bool_
    with refused():
        array_from_json("x", [[1, 0, 1]], spec("bool"))


def test_numeric_specs_refuse_booleans() -> None:
    with refused():
        array_from_json("x", [[True, False, True]], spec("float32"))
    with refused():
        array_from_json("x", [[True, False, True]], spec("int64"))


@pytest.mark.parametrize("dtype", ["float32", "int64"])
@pytest.mark.parametrize(
    "value",
    [[[True, 2, 3]], [[1.5, 2.0, False]], [[1, 2, 3], [4, True, 6]]],
    ids=["bool-first", "bool-last", "bool-in-a-later-row"],
)
def test_booleans_mixed_with_numbers_are_refused(dtype: Dtype, value: list[Any]) -> None:
    # numpy would read them as 1.0 and 0 without a word.
    with refused() as caught:
        array_from_json("x", value, spec(dtype))
    assert "mixes booleans with numbers" in caught.value.detail


@pytest.mark.parametrize(
    ("text", "may_hold_bools"),
    [
        (b'{"inputs": {"x": [[1, 2, 3]]}}', False),
        (b'{"inputs": {"x": [[1e-05, 2.5E+3, 3]]}, "parameters": {"steps": 4}}', False),
        (b'{"inputs": {"x": [[1, true, 3]]}}', True),
        (b'{"parameters": {"flag":false}}', True),
        (b'{"t": 1, "rue": 2}', True),  # letters of strings may join: a walk for nothing
    ],
)
def test_the_shape_check_says_whether_a_boolean_may_be_there(
    text: bytes, may_hold_bools: bool
) -> None:
    assert check_json_shape(text, 32, 1000) is may_hold_bools


def test_the_depth_limit_counts_brackets_not_the_letters_kept_beside_them() -> None:
    letters = b'{"a": "' + b"truefalse" * 20 + b'", "x": [[[1]]]}'
    check_json_shape(letters, 4, 1000)  # 4 levels deep, 180 letters kept
    with refused("malformed-request"):
        check_json_shape(b'{"x": [[[[1]]]]}', 4, 1000)


def test_the_element_limit_counts_numbers_and_lists() -> None:
    check_json_shape(b"[" + b",".join([b"0"] * 99) + b"]", 32, 100)  # 99 numbers and a list
    with refused("payload-too-large"):
        check_json_shape(b"[" + b",".join([b"0"] * 100) + b"]", 32, 100)


def test_lists_of_one_element_count_toward_the_limit_without_commas() -> None:
    """`[[[0]]]` items: 4.6 million lists in a 10 MB body counted as its 160,000 commas, and
    orjson made every list before the request was refused."""
    packed = b"[" + b",".join([b"[[[[0]]]]"] * 30) + b"]"  # 30 numbers and 121 lists: 151 elements
    with refused("payload-too-large") as caught:
        check_json_shape(packed, 32, 100)
    assert "more than 100 elements" in caught.value.detail


def test_a_body_without_boolean_literals_skips_the_element_walk() -> None:
    # The walk is what refuses: told the text has no literal, a caller gets numpy's reading.
    assert array_from_json("x", [[True, 2, 3]], spec(), may_hold_bools=False).tolist() == [
        [1.0, 2.0, 3.0]
    ]


def test_a_json_body_mixing_booleans_into_numbers_is_refused() -> None:
    with refused():
        decode_infer_json(signature(), b'{"inputs": {"x": [[1, true, 3]]}}')
    assert holds_boolean([[1, 2], [3, [4, False]]])
    assert not holds_boolean([[1, 2], [3, [4, 0]]])


@pytest.mark.parametrize(
    ("dtype", "value"),
    [
        pytest.param("int32", 2**31, id="int32-overflow"),
        pytest.param("uint8", -1, id="uint8-negative"),
        pytest.param("uint8", 256, id="uint8-overflow"),
    ],
)
def test_an_integer_outside_the_spec_dtypes_range_is_refused(dtype: Dtype, value: int) -> None:
    with refused():
        array_from_json("x", [[value, 0, 0]], spec(dtype))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused_with_422(value: float) -> None:
    with refused() as caught:
        check_array("x", np.array([[1.0, value, 2.0]]), spec())
    assert caught.value.status == 422
    assert "NaN or infinity" in caught.value.detail


def test_non_finite_values_pass_when_the_spec_allows_them() -> None:
    array = check_array("x", np.array([[np.nan, np.inf, 0.0]]), spec(allow_non_finite=True))
    assert np.isnan(array[0, 0])


def test_a_value_that_overflows_a_float16_spec_is_refused_without_a_warning() -> None:
    with refused():
        array_from_json("x", [[1e10, 0, 0]], spec("float16"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_float16_values_are_refused_for_a_wider_float_spec(
    dtype: Dtype, value: float
) -> None:
    # Compared with float32's max cast to float16 (infinity), infinity used to pass; the cast
    # also warned (an error under this suite's filterwarnings).
    with refused() as caught:
        check_array("x", np.array([[0.0, value, 1.0]], dtype=np.float16), spec(dtype))
    assert "NaN or infinity" in caught.value.detail


def test_finite_float16_values_pass_for_a_float32_spec() -> None:
    array = check_array("x", np.array([[0.5, -65504.0, 65504.0]], dtype=np.float16), spec())
    assert array.dtype == np.float32


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([[1, 2, 3], [4, 5]], id="ragged"),
        pytest.param([["a", "b", "c"]], id="strings"),
        pytest.param([[None, 1, 2]], id="null"),
        pytest.param([[2**80, 1, 2]], id="huge-int"),
        pytest.param(3, id="scalar"),
        pytest.param("abc", id="string"),
    ],
)
def test_ragged_or_non_numeric_values_are_refused(value: Any) -> None:
    with refused():
        array_from_json("x", value, spec())


# ------------------------------------------------------------------ images inside JSON
def test_an_image_object_becomes_a_one_item_batch() -> None:
    image = {"b64": base64.b64encode(sample_png(3)).decode(), "content_type": "image/png"}
    array = json_input("image", image)
    assert array.shape == (1, 1, 28, 28)
    assert array.dtype == np.float32
    assert float(array.min()) >= 0.0 and float(array.max()) <= 1.0


def test_a_list_of_image_objects_becomes_a_batch() -> None:
    images = [{"b64": base64.b64encode(sample_png(d)).decode()} for d in (1, 2)]
    assert json_input("image", images).shape == (2, 1, 28, 28)


def test_an_image_object_for_a_tensor_without_an_image_spec_is_refused() -> None:
    with refused() as caught:
        json_input("x", {"b64": "AAAA"}, signature())
    assert "does not take images" in caught.value.detail


@pytest.mark.parametrize(
    "image",
    [
        pytest.param({"content_type": "image/png"}, id="no-b64"),
        pytest.param({"b64": "AAAA", "url": "http://x"}, id="unknown-field"),
        pytest.param({"b64": "AAAA", "content_type": 3}, id="content-type-not-string"),
    ],
)
def test_a_malformed_image_object_is_refused(image: dict[str, Any]) -> None:
    with refused():
        json_input("image", image)


def test_a_mixed_list_of_images_and_other_values_is_refused_naming_the_item() -> None:
    good = {"b64": base64.b64encode(sample_png(1)).decode()}
    with refused() as caught:
        json_input("image", [good, [1, 2]])
    assert "image[1]" in caught.value.detail


# ------------------------------------------------------------------ whole requests
def test_a_json_request_is_decoded_in_signature_order_with_its_item_count() -> None:
    sig = signature(spec(), TensorSpec(name="z", dtype="int64", shape=(-1, 1)))
    decoded = decode_infer_json(sig, body({"inputs": {"z": [[1], [2]], "x": [[0, 0, 0]] * 2}}))
    assert [a.shape for a in decoded.arrays] == [(2, 3), (2, 1)]
    assert decoded.items == 2


def test_malformed_json_is_a_400() -> None:
    with refused("malformed-request") as caught:
        decode_infer_json(signature(), b"{not json")
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "document",
    [
        pytest.param([1, 2], id="not-an-object"),
        pytest.param({"inputs": {"x": [[0, 0, 0]]}, "extra": 1}, id="unknown-field"),
        pytest.param({"inputs": [[0, 0, 0]]}, id="inputs-not-object"),
        pytest.param({"inputs": {"x": [[0, 0, 0]]}, "parameters": [1]}, id="parameters-list"),
    ],
)
def test_a_body_of_the_wrong_form_is_a_422(document: Any) -> None:
    with refused():
        decode_infer_json(signature(), body(document))


def test_an_unknown_input_is_refused_listing_what_the_model_takes() -> None:
    with refused() as caught:
        decode_infer_json(signature(), body({"inputs": {"x": [[0, 0, 0]], "w": [[1]]}}))
    assert "'w'" in caught.value.detail
    assert "x: float32[-1, 3]" in caught.value.detail


def test_a_missing_input_is_refused() -> None:
    with refused() as caught:
        decode_infer_json(signature(), body({"inputs": {}}))
    assert "missing input" in caught.value.detail


def test_inputs_with_different_batch_sizes_are_refused() -> None:
    sig = signature(spec(), TensorSpec(name="z", shape=(-1, 1)))
    with refused() as caught:
        decode_infer_json(sig, body({"inputs": {"x": [[0, 0, 0]], "z": [[1], [2]]}}))
    assert "same size along the batch dimension" in caught.value.detail


def test_more_items_than_max_items_per_request_are_refused() -> None:
    sig = signature(max_items_per_request=2)
    assert decode_infer_json(sig, body({"inputs": {"x": [[0, 0, 0]] * 2}})).items == 2
    with refused("payload-too-large") as caught:
        decode_infer_json(sig, body({"inputs": {"x": [[0, 0, 0]] * 3}}))
    assert "at most 2" in caught.value.detail


def test_too_many_items_are_refused_before_their_numbers_are_converted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Converting 5,000 items of 784 floats held the GIL for about a second (probes waited),
    and only then was the request refused for its item count."""
    limit = CNN.max_items_per_request
    converted: list[str] = []

    def convert(name: str, *args: Any) -> np.ndarray:
        converted.append(name)
        return np.zeros(1)

    monkeypatch.setattr(codec, "array_from_json", convert)
    with refused("payload-too-large") as caught:
        read_infer_json(CNN, body({"inputs": {"image": [[[[0.0]]]] * (limit + 1)}}))
    assert f"{limit + 1} items in one request; at most {limit}" in caught.value.detail
    assert converted == []


def test_one_item_without_its_batch_dimension_is_told_its_shape_not_its_item_count() -> None:
    sig = signature(spec("float32", (-1, 784)), max_items_per_request=256)
    with refused() as caught:
        decode_infer_json(sig, body({"inputs": {"x": [0.1] * 784}}))
    assert "has shape [784]" in caught.value.detail


@pytest.mark.parametrize("value", [3.39e38, -3.4e38, 3.4028234e38])
def test_a_bfloat16_input_past_its_range_is_refused_not_sent_as_infinity(value: float) -> None:
    """bfloat16 travels as float32, which reaches 3.4028e38; bfloat16 stops at 3.3895e38."""
    sig = signature(spec("bfloat16", (-1, 2)))
    with refused() as caught:
        decode_infer_json(sig, body({"inputs": {"x": [[1.0, value]]}}))
    assert "out of range" in caught.value.detail
    (array,) = decode_infer_json(sig, body({"inputs": {"x": [[1.0, 3.38e38]]}})).arrays
    assert np.isfinite(array).all()


@pytest.mark.parametrize("value", [3.39e38, -3.4e38])
def test_a_bfloat16_input_sent_as_float32_past_its_range_is_refused(value: float) -> None:
    """The binary extension's FP32 data is float32 already: the range check was skipped, and
    the model got infinity for a finite value."""
    wire = np.array([[1.0, value]], dtype=np.float32)
    with refused() as caught:
        check_array("x", wire, spec("bfloat16", (-1, 2)))
    assert "out of range" in caught.value.detail
    fits = check_array("x", np.array([[1.0, 3.38e38]], dtype=np.float32), spec("bfloat16", (-1, 2)))
    assert fits.dtype == np.float32 and np.isfinite(fits).all()


def test_too_many_images_are_refused_before_any_is_decoded() -> None:
    # Junk that would fail to decode: refused for the count, so nothing was decoded first.
    junk = {"b64": "not base64 at all!", "content_type": "image/png"}
    limit = CNN.max_items_per_request
    with refused("payload-too-large") as caught:
        read_infer_json(CNN, body({"inputs": {"image": [junk] * (limit + 1)}}))
    assert f"{limit + 1} items in one request; at most {limit}" in caught.value.detail


def test_input_values_are_never_echoed_in_the_detail() -> None:
    with refused() as caught:
        decode_infer_json(signature(), body({"inputs": {"x": [[123456789, 987654321]]}}))
    assert "123456789" not in caught.value.detail


# ------------------------------------------------------------------ generated inputs
def test_a_generated_input_is_drawn_with_batch_size_items() -> None:
    decoded = decode_infer_json(DECODER, body({"parameters": {"batch_size": 4, "seed": 1}}))
    assert decoded.items == 4
    assert decoded.arrays[0].shape == (4, 16)
    assert decoded.arrays[0].dtype == np.float32


def test_the_same_seed_draws_the_same_input_and_another_seed_another() -> None:
    def draw(seed: int) -> np.ndarray:
        document = {"parameters": {"batch_size": 2, "seed": seed}}
        return decode_infer_json(DECODER, body(document)).arrays[0]

    np.testing.assert_array_equal(draw(1), draw(1))
    assert not np.array_equal(draw(1), draw(2))


def test_a_generated_input_defaults_to_the_default_batch_size() -> None:
    assert decode_infer_json(DECODER, body({})).items == 1


def test_a_given_input_wins_over_generation() -> None:
    latent = [[0.0] * 16] * 3
    decoded = decode_infer_json(DECODER, body({"inputs": {"latent": latent}}))
    assert decoded.items == 3
    assert not decoded.arrays[0].any()


def test_assemble_does_not_generate_without_a_batch_size() -> None:
    with refused():
        assemble(DECODER, {}, {})


# ------------------------------------------------------------------ parameters
@pytest.mark.parametrize("batch_size", [0, 129, -1])
def test_a_parameter_outside_its_bounds_is_refused(batch_size: int) -> None:
    with refused() as caught:
        check_parameters(DECODER, {"batch_size": batch_size})
    assert "batch_size" in caught.value.detail


@pytest.mark.parametrize(
    "value", [pytest.param(True, id="bool"), pytest.param(2.0, id="float"), "2", None]
)
def test_an_int_parameter_refuses_other_types_and_a_bool_is_not_an_int(value: Any) -> None:
    with refused() as caught:
        check_parameters(DECODER, {"batch_size": value})
    assert "must be of type int" in caught.value.detail


def test_an_unknown_parameter_is_refused_listing_the_accepted_ones() -> None:
    with refused() as caught:
        check_parameters(DECODER, {"temperature": 1})
    assert "temperature" in caught.value.detail
    assert "batch_size" in caught.value.detail


def test_a_model_without_parameters_refuses_any() -> None:
    with refused():
        check_parameters(CNN, {"batch_size": 1})


def test_defaults_are_filled_in_and_parameters_without_default_are_left_out() -> None:
    assert check_parameters(DECODER, {}) == {"batch_size": 1}


def with_parameters(**parameters: ParameterSpec) -> Signature:
    return CNN.model_copy(update={"parameters": parameters})


def test_a_float_parameter_accepts_ints_refuses_bools_and_non_finite_values() -> None:
    signature = with_parameters(t=ParameterSpec(type="float", minimum=0, maximum=2))
    assert check_parameters(signature, {"t": 1}) == {"t": 1}
    assert check_parameters(signature, {"t": 1.5}) == {"t": 1.5}
    for bad in (True, math.nan, math.inf, 2.5, -0.1):
        with refused():
            check_parameters(signature, {"t": bad})


def test_bool_and_str_parameters_take_their_own_type_only() -> None:
    signature = with_parameters(b=ParameterSpec(type="bool"), s=ParameterSpec(type="str"))
    assert check_parameters(signature, {"b": False, "s": "x"}) == {"b": False, "s": "x"}
    with refused():
        check_parameters(signature, {"b": 0})
    with refused():
        check_parameters(signature, {"s": 1})


# ------------------------------------------------------------------ encoding
def test_outputs_are_encoded_by_name_with_model_version_and_request_id() -> None:
    out = np.array([[0.25, 0.75]], dtype=np.float32)
    encoded = orjson.loads(encode_infer_json("m", "1.2.3", signature(), [out], "rid"))
    assert encoded == {
        "model": "m",
        "version": "1.2.3",
        "outputs": {"y": [[0.25, 0.75]]},
        "request_id": "rid",
    }


def test_a_repeated_name_keeps_its_last_value_and_a_number_past_float64_is_400() -> None:
    # What the README promises of JSON that RFC 8259 leaves to the receiver.
    repeated = b'{"inputs": {"x": [[9, 9, 9]], "x": [[1, 2, 3]]}}'
    assert decode_infer_json(signature(), repeated).arrays[0].tolist() == [[1.0, 2.0, 3.0]]
    with refused("malformed-request"):
        decode_infer_json(signature(), b'{"inputs": {"x": [[1e400, 2, 3]]}}')
