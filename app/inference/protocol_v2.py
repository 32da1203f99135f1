"""The Open Inference Protocol v2 wire format (KServe / Triton REST), binary extension included.

A request body is a JSON header, optionally followed by raw tensor bytes; the header's length
is in `Inference-Header-Content-Length` when bytes follow. An input carries its bytes there
when its `parameters.binary_data_size` says so. Outputs go back as binary when the request asks
(`binary_data_output`, or an output's `binary_data`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.errors import Problem, quoted, quoted_list
from app.inference.codec import (
    Decoded,
    assemble,
    check_array,
    check_items,
    check_parameters,
    check_range,
    describe,
)
from app.inference.json_shape import check_json_shape
from app.inference.v2_json_data import json_data
from models.manifest import Dtype, Signature, TensorSpec
from models.tensors import NUMPY_DTYPES

DATATYPES: dict[Dtype, str] = {
    "float32": "FP32",
    "float16": "FP16",
    "bfloat16": "FP32",  # travels as FP32 (numpy has no bfloat16)
    "float64": "FP64",
    "int64": "INT64",
    "int32": "INT32",
    "uint8": "UINT8",
    "bool": "BOOL",
}
NUMPY_OF: dict[str, np.dtype[Any]] = {
    "FP32": np.dtype("<f4"),
    "FP16": np.dtype("<f2"),
    "FP64": np.dtype("<f8"),
    "INT64": np.dtype("<i8"),
    "INT32": np.dtype("<i4"),
    "INT16": np.dtype("<i2"),
    "INT8": np.dtype("i1"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
}
# Parameters the protocol itself defines; everything else must be a model parameter.
PROTOCOL_PARAMETERS = {"binary_data_output", "timeout", "priority", "headers"}
# Triton's sequence batching (stateful models) has no counterpart here: a request that starts
# or continues a sequence is refused rather than served as if it were stateless. Falsy values
# (what "no sequence" looks like) pass.
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")
# Top-level fields of a request header; Triton's binary-extension example names the model in
# the body too (the route decides which model serves it, as in Triton).
REQUEST_FIELDS = {"id", "inputs", "outputs", "parameters", "model_name", "model_version"}
INPUT_FIELDS = {"name", "shape", "datatype", "parameters", "data"}
INPUT_PARAMETERS = {"binary_data_size"}
OUTPUT_FIELDS = {"name", "parameters"}
OUTPUT_PARAMETERS = {"binary_data"}


@dataclass
class V2Request:
    decoded: Decoded
    id: str | None
    timeout_s: float | None
    outputs: list[str]
    binary: set[str] = field(default_factory=set)


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    # Digits only: int() would also take "+118", " 118 " and "1_18".
    if not (header_length.isascii() and header_length.isdigit()):
        raise Problem("malformed-request", "Inference-Header-Content-Length is not an integer")
    # More digits than the body's length has is more than the body (and past 4,300 digits,
    # int() refuses the text altogether).
    if len(header_length.lstrip("0")) > len(str(len(body))):
        raise Problem("malformed-request", "Inference-Header-Content-Length exceeds the body")
    size = int(header_length.lstrip("0") or "0")
    if size == 0:
        # The JSON header is what names the inputs: a body without one cannot be read.
        raise Problem("malformed-request", "Inference-Header-Content-Length is 0: no JSON header")
    if size > len(body):
        raise Problem("malformed-request", "Inference-Header-Content-Length exceeds the body")
    return body[:size], body[size:]


def decode_request(
    signature: Signature,
    body: bytes,
    header_length: str | None,
    max_depth: int = 32,
    max_elements: int = 4_000_000,
) -> V2Request:
    header_bytes, binary = split_body(body, header_length)
    may_hold_bools = check_json_shape(header_bytes, max_depth, max_elements)
    try:
        header = orjson.loads(header_bytes)
    except orjson.JSONDecodeError:
        raise Problem("malformed-request", "the inference header is not valid JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs", []), list):
        raise Problem("invalid-input", "the body must be an object with an 'inputs' list")
    unknown = set(header) - REQUEST_FIELDS
    if unknown:
        raise Problem("invalid-input", f"unknown field(s) {quoted_list(unknown)}")
    params = _object_or_empty(header.get("parameters"), "'parameters'")
    _check_protocol_fields(header, params)
    if any(params.get(name) for name in SEQUENCE_PARAMETERS):
        raise Problem(
            "invalid-input",
            "sequence_id, sequence_start and sequence_end need sequence batching (a stateful "
            "model), which this server does not have: send each request on its own",
        )
    model_params = check_parameters(
        signature,
        {
            k: v
            for k, v in params.items()
            if k not in PROTOCOL_PARAMETERS and k not in SEQUENCE_PARAMETERS
        },
        also=PROTOCOL_PARAMETERS,
    )

    arrays: dict[str, np.ndarray] = {}
    offset = 0
    for i, item in enumerate(header.get("inputs", [])):
        name, array, used = _decode_input(signature, i, item, binary, offset, may_hold_bools)
        offset += used
        if name in arrays:
            raise Problem("invalid-input", f"input {quoted(name)} is given twice")
        arrays[name] = array
    # Unknown and missing inputs first: an unknown input's binary bytes are left over too.
    decoded = assemble(signature, arrays, model_params)
    if offset != len(binary):
        raise Problem("invalid-input", "binary data left over after the declared inputs")

    wanted, binary_out = _requested_outputs(signature, header.get("outputs"), params)
    return V2Request(
        decoded=decoded,
        id=header.get("id"),
        timeout_s=_timeout(params.get("timeout")),
        outputs=wanted,
        binary=binary_out,
    )


def _decode_input(
    signature: Signature,
    index: int,
    item: Any,
    binary: bytes,
    offset: int,
    may_hold_bools: bool,
) -> tuple[str, np.ndarray, int]:
    if not isinstance(item, dict):
        raise Problem("invalid-input", f"inputs[{index}] must be an object")
    name = item.get("name")
    if not isinstance(name, str):
        raise Problem("invalid-input", f"inputs[{index}].name must be a string")
    try:
        spec = signature.input(name)
    except KeyError:
        return name, np.zeros(0), 0  # assemble reports unknown inputs with the expected list
    shape, datatype = _shape_and_datatype(name, item, spec)
    if shape:
        # Before the data is read: converting JSON data holds the GIL (every thread waits)
        # about 0.1 s a million numbers, so too many items are refused having cost the parse.
        check_items(shape[0], signature)
    # A Python int, which cannot wrap: an absurd count is one that no data matches, refused below.
    count = math.prod(shape)
    size = _input_parameters(name, item).get("binary_data_size")
    if size is not None:
        if item.get("data") is not None:
            raise Problem(
                "invalid-input", f"input {name!r}: give 'data' or binary_data_size, not both"
            )
        array = _binary_data(name, binary, offset, size, NUMPY_OF[datatype], count)
        # A copy: torch needs writable memory, and the request body must not be kept alive.
        return name, check_array(name, _reshaped(name, array, shape).copy(), spec), size
    data = item.get("data")
    if not isinstance(data, list):
        raise Problem("invalid-input", f"input {name!r} needs 'data' or binary_data_size")
    given = json_data(name, data, NUMPY_OF[datatype], datatype, count, may_hold_bools)
    # Within its declared datatype's range too: 300 declared INT8 is refused, not passed on.
    # (Declared as the model's own dtype, the usual case, check_array checks just that.)
    if NUMPY_OF[datatype] != NUMPY_DTYPES[spec.dtype]:
        check_range(name, given, NUMPY_OF[datatype], f"declared {datatype}")
    return name, check_array(name, _reshaped(name, given, shape), spec), 0


def _shape_and_datatype(name: str, item: dict[str, Any], spec: TensorSpec) -> tuple[list[int], str]:
    shape, datatype = item.get("shape"), item.get("datatype")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise Problem(
            "invalid-input", f"input {name!r}: shape must be a list of non-negative integers"
        )
    if not isinstance(datatype, str) or datatype not in NUMPY_OF:
        raise Problem(
            "invalid-input",
            f"input {name!r}: datatype {str(datatype)[:16]!r} is not supported here; "
            f"the model takes {DATATYPES[spec.dtype]}",
        )
    if len(shape) != len(spec.shape):
        # Before the caller takes the shape's product: of a long list of huge dimensions that
        # takes seconds (each step multiplies a bigger integer), all on the event loop.
        raise Problem(
            "invalid-input",
            f"input {name!r} has {len(shape)} dimensions; expected {describe(spec)}",
        )
    return shape, datatype


def _binary_data(
    name: str, binary: bytes, offset: int, size: Any, dtype: np.dtype[Any], count: int
) -> np.ndarray:
    """The input's bytes from the binary part of the body, as a read-only view."""
    if not _is_count(size) or size != count * dtype.itemsize or offset + size > len(binary):
        raise Problem("invalid-input", f"input {name!r}: binary_data_size does not fit its shape")
    array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset)
    # A BOOL is one byte, 0 or 1 (Triton's encoding); numpy would keep any other byte as a
    # "true" that compares unequal to True.
    if dtype.kind == "b" and array.view(np.uint8).max(initial=0) > 1:
        raise Problem("invalid-input", f"input {name!r}: BOOL bytes must be 0 or 1")
    return array


def _is_count(value: Any) -> bool:
    """A non-negative JSON integer (bool is an int subclass in Python, not in JSON)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _reshaped(name: str, array: np.ndarray, shape: list[int]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:  # a dimension numpy cannot index, next to a 0 that makes the count fit
        raise Problem("invalid-input", f"input {name!r}: shape is too large") from None


def _object_or_empty(value: Any, what: str) -> dict[str, Any]:
    """A `parameters` object; absent or null is none."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Problem("invalid-input", f"{what} must be an object")
    return value


def _check_protocol_fields(header: dict[str, Any], params: dict[str, Any]) -> None:
    """The protocol's own fields, typed as it defines them: a value of another type is refused,
    not ignored (`"binary_data_output": "yes"` would otherwise answer in JSON)."""
    # null is "not given" (clients built on pydantic send unset fields as null).
    for name in ("id", "model_name", "model_version"):
        if header.get(name) is not None and not isinstance(header[name], str):
            raise Problem("invalid-input", f"'{name}' must be a string")
    binary, priority, headers = (
        params.get(k) for k in ("binary_data_output", "priority", "headers")
    )
    if binary is not None and not isinstance(binary, bool):
        raise Problem("invalid-input", "parameter 'binary_data_output' must be true or false")
    if priority is not None and not _is_count(priority):
        raise Problem("invalid-input", "parameter 'priority' must be a non-negative integer")
    if headers is not None and not (
        isinstance(headers, dict) and all(isinstance(v, str) for v in headers.values())
    ):
        raise Problem("invalid-input", "parameter 'headers' must be an object of strings")


def _input_parameters(name: str, item: dict[str, Any]) -> dict[str, Any]:
    """An input's parameters; fields and parameters this server does not implement (shared
    memory) are refused, not ignored: the data would be looked for where it is not."""
    return _known_parameters(item, f"input {name!r}", INPUT_FIELDS, INPUT_PARAMETERS)


def _known_parameters(
    item: dict[str, Any], where: str, fields: set[str], supported: set[str]
) -> dict[str, Any]:
    """`item`'s parameters, after refusing any field or parameter outside those named."""
    unknown = set(item) - fields
    if unknown:
        raise Problem("invalid-input", f"{where}: unknown field(s) {quoted_list(unknown)}")
    parameters = _object_or_empty(item.get("parameters"), f"{where}: parameters")
    unsupported = set(parameters) - supported
    if unsupported:
        raise Problem(
            "invalid-input",
            f"{where}: unsupported parameter(s) {quoted_list(unsupported)}; "
            f"supported: {sorted(supported)}",
        )
    return parameters


def _requested_outputs(
    signature: Signature, outputs: Any, params: dict[str, Any]
) -> tuple[list[str], set[str]]:
    all_binary = params.get("binary_data_output") is True
    names = [spec.name for spec in signature.outputs]
    if outputs is None or outputs == []:  # none named: all of them, as Triton does
        return names, set(names) if all_binary else set()
    if not isinstance(outputs, list):
        raise Problem("invalid-input", "'outputs' must be a list")
    wanted: list[str] = []
    binary = set()
    for i, out in enumerate(outputs):
        if not isinstance(out, dict):
            # A bare name ("outputs": ["y"]) is a common slip: say what form is expected.
            example = orjson.dumps({"name": names[0]}).decode()
            raise Problem("invalid-input", f"outputs[{i}]: must be an object such as {example}")
        name = out.get("name")
        if name not in names:
            raise Problem("invalid-input", f"outputs[{i}]: unknown output; the model has {names}")
        if name in wanted:
            raise Problem("invalid-input", f"outputs[{i}]: output {name!r} is requested twice")
        wanted.append(name)
        # An unsupported parameter, e.g. class_count (Triton's classification extension), is
        # refused: answering with the plain tensor would hand back something else than asked.
        parameters = _known_parameters(out, f"outputs[{i}]", OUTPUT_FIELDS, OUTPUT_PARAMETERS)
        flag = parameters.get("binary_data")
        if flag is not None and not isinstance(flag, bool):
            raise Problem("invalid-input", f"outputs[{i}]: binary_data must be true or false")
        if flag is True or (flag is None and all_binary):
            binary.add(name)
    return wanted, binary


def _timeout(value: Any) -> float | None:
    """The protocol's `timeout` is in microseconds; 0 means none, as in Triton."""
    if value is None:
        return None
    if not _is_count(value):
        raise Problem("invalid-input", "parameter 'timeout' must be a non-negative integer (µs)")
    return value / 1_000_000 if value else None


def encode_response(
    model: str,
    version: str,
    signature: Signature,
    outputs: list[np.ndarray],
    request: V2Request,
) -> tuple[bytes, dict[str, str]]:
    entries, chunks = [], []
    by_name = {spec.name: (spec, out) for spec, out in zip(signature.outputs, outputs, strict=True)}
    for name in request.outputs:
        spec, array = by_name[name]
        entry: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPES[spec.dtype],
            "shape": list(array.shape),
        }
        if name in request.binary:
            raw = np.ascontiguousarray(array, dtype=NUMPY_OF[entry["datatype"]]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = np.ascontiguousarray(array).reshape(-1)
        entries.append(entry)
    document: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": entries}
    if request.id is not None:
        document["id"] = request.id
    header = orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return header, {"content-type": "application/json"}
    return header + b"".join(chunks), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
