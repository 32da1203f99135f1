"""Requests <-> arrays, checked against the model's signature.

Every check failure is a Problem naming the field and what the signature expects, so a client
can fix its request; nothing here echoes the client's values back.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.errors import Problem, quoted_list
from app.inference.images import EncodedImage, decode_b64, decode_images
from app.inference.json_shape import check_json_shape, holds_boolean
from app.production import RequestValidator, ValidationError
from models.manifest import Signature, TensorSpec
from models.tensors import FLOAT_DTYPES, NUMPY_DTYPES, generate

# torch.finfo(torch.bfloat16).max: larger float32 values are infinity once cast.
BFLOAT16_MAX = 3.3895313892515355e38

# Which array kinds a spec dtype accepts from JSON: ints are valid floats, not vice versa.
_ACCEPTED_KINDS = {"f": "fiu", "i": "iu", "u": "iu", "b": "b"}
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "str": (str,),
}


@dataclass
class Decoded:
    """A request's inputs in signature order, all with the same batch dimension."""

    arrays: list[np.ndarray]
    items: int
    parameters: dict[str, Any] = field(default_factory=dict)
    # An input drawn at random without a seed: the result is not reproducible, never cached.
    random: bool = False


def describe(spec: TensorSpec) -> str:
    return f"{spec.name}: {spec.dtype}{list(spec.shape)}"


def check_array(name: str, value: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Shape and dtype must fit the spec exactly (batch first); returns the spec's dtype."""
    target = NUMPY_DTYPES[spec.dtype]
    expected = f"expected {describe(spec)}"
    if value.dtype.kind not in _ACCEPTED_KINDS.get(target.kind, target.kind):
        raise Problem("invalid-input", f"input {name!r} has the wrong type; {expected}")
    if value.ndim != len(spec.shape) or tuple(value.shape[1:]) != spec.shape[1:]:
        raise Problem("invalid-input", f"input {name!r} has shape {list(value.shape)}; {expected}")
    if value.shape[0] < 1:
        raise Problem("invalid-input", f"input {name!r} is empty; {expected}")
    # bfloat16 travels as float32, whose top values are infinity in bfloat16.
    float_max = BFLOAT16_MAX if spec.dtype == "bfloat16" else None
    if (
        target.kind == "f"
        and value.dtype.kind in "fiu"
        and _finite_within(value, target, float_max)
    ):
        return value.astype(target, copy=False)  # the common case, in two reductions
    check_range(name, value, target, expected, float_max)
    array = value.astype(target, copy=False)
    if spec.dtype in FLOAT_DTYPES and not spec.allow_non_finite and not np.isfinite(array).all():
        raise Problem("invalid-input", f"input {name!r} contains NaN or infinity, not allowed")
    return array


def _finite_within(value: np.ndarray, target: np.dtype[Any], float_max: float | None) -> bool:
    """True when every value is finite and fits `target` (a float type; at most `float_max`
    when given): then the cast is exact enough and no NaN or infinity needs reporting. NaN
    makes min and max NaN, and every comparison with NaN is False, so a NaN anywhere sends
    the caller to the precise checks."""
    # A float64 bound, so the comparison happens in float64: a Python float would be cast to a
    # narrower array's dtype (float32's max is infinity in float16, letting infinity through).
    high = np.float64(np.finfo(target).max if float_max is None else float_max)
    return bool(-high <= value.min() and value.max() <= high)


def check_range(
    name: str,
    value: np.ndarray,
    target: np.dtype[Any],
    expected: str,
    float_max: float | None = None,
) -> None:
    """Values must fit the target dtype (a float one: up to `float_max` when given, for a type
    narrower than the one it travels as): a cast would wrap integers or overflow floats."""
    # The same dtype fits, unless it travels wider than it is used (bfloat16 as float32).
    if (value.dtype == target and float_max is None) or value.dtype.kind == "b" or not value.size:
        return
    low: float
    high: float
    if target.kind in "iu":
        info = np.iinfo(target)
        low, high = info.min, info.max
    elif target.kind == "f" and (
        value.dtype.itemsize > target.itemsize or value.dtype.kind in "iu" or float_max is not None
    ):
        high = float(np.finfo(target).max) if float_max is None else float_max
        low = -high
    else:
        return
    finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value
    if finite.size and (finite.min() < low or finite.max() > high):
        raise Problem("invalid-input", f"input {name!r} has values out of range; {expected}")


def array_from_json(
    name: str, value: Any, spec: TensorSpec, may_hold_bools: bool = True
) -> np.ndarray:
    if not isinstance(value, list):
        raise Problem(
            "invalid-input", f"input {name!r} must be a nested list; expected {describe(spec)}"
        )
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        array = None
    if array is None or array.dtype == object or array.dtype.kind in "USO":
        raise Problem(
            "invalid-input", f"input {name!r} is ragged or not numeric; expected {describe(spec)}"
        )
    if may_hold_bools and array.dtype.kind != "b" and holds_boolean(value):
        raise Problem(
            "invalid-input",
            f"input {name!r} mixes booleans with numbers; expected {describe(spec)}",
        )
    return check_array(name, array, spec)


def images_from_json(name: str, values: list[Any], spec: TensorSpec) -> list[EncodedImage]:
    if spec.image is None:
        raise Problem(
            "invalid-input", f"input {name!r} does not take images; expected {describe(spec)}"
        )
    images = []
    for i, value in enumerate(values):
        where = f"{name}[{i}]" if len(values) > 1 else name
        if (
            not isinstance(value, dict)
            or set(value) - {"b64", "content_type"}
            or "b64" not in value
        ):
            raise Problem(
                "invalid-input", f"input {where!r} must be {{'b64': ..., 'content_type': ...}}"
            )
        content_type = value.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise Problem("invalid-input", f"input {where!r}: content_type must be a string")
        images.append(
            EncodedImage(where, decode_b64(where, value["b64"]), spec.image, content_type)
        )
    return images


def _as_deep_as(value: list[Any], rank: int) -> bool:
    """Whether a nested list reaches `rank` levels along its first elements, so that its length
    is its item count. One item sent without its batch dimension is a level short: left to the
    shape check, which says so (its 784 numbers are not 784 items)."""
    for _ in range(rank - 1):
        if not value or not isinstance(value[0], list):
            return False
        value = value[0]
    return True


@dataclass
class Inputs:
    """A request's inputs as read: arrays checked, images still encoded.

    `decode` decodes the images and assembles the inputs. Decoding images is slow CPU work, so
    on an event loop it runs in a worker thread when there are `images`, and inline (the hot
    path, no thread hop) when there are none.
    """

    signature: Signature
    parameters: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    images: dict[str, list[EncodedImage]] = field(default_factory=dict)

    def add_json(self, name: str, value: Any, may_hold_bools: bool = True) -> None:
        """A known input's JSON value: a nested list, or one or more image objects.
        `may_hold_bools` is what `check_json_shape` said of the text it was parsed from."""
        spec = self.signature.input(name)
        if isinstance(value, dict):
            self.images[name] = images_from_json(name, [value], spec)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            # Before any decoding: each image is an item, and too many are refused anyway.
            check_items(len(value), self.signature)
            self.images[name] = images_from_json(name, value, spec)
        else:
            if isinstance(value, list) and _as_deep_as(value, len(spec.shape)):
                # Before the conversion, which holds the GIL (every thread waits) for about 0.1
                # s a million numbers: a request of too many items is refused having cost its
                # parse alone.
                check_items(len(value), self.signature)
            self.arrays[name] = array_from_json(name, value, spec, may_hold_bools)

    def decode(self, deadline: float = math.inf) -> Decoded:
        """`deadline` (`time.monotonic()`): when decoding images gives up (504)."""
        if self.images:
            # One call for all of them: the request's pixel budget spans its inputs.
            images = [i for batch in self.images.values() for i in batch]
            decoded = iter(decode_images(images, deadline))
            for name, batch in self.images.items():
                stacked = np.stack([next(decoded) for _ in batch])
                self.arrays[name] = check_array(name, stacked, self.signature.input(name))
        return assemble(self.signature, self.arrays, self.parameters)


class SignatureRules:
    """The signature's parameter rules as a RequestValidator (the checklist's building block)."""

    def __init__(self, signature: Signature) -> None:
        self.signature = signature
        self.parameters = RequestValidator()
        for name, spec in signature.parameters.items():
            self.parameters.add_rule(
                name,
                required=False,
                type=_PARAMETER_TYPES[spec.type],
                min_value=spec.minimum,
                max_value=spec.maximum,
            )


# Built once per signature; the signature is kept in the value so its id is never reused.
_RULES: dict[int, SignatureRules] = {}


def rules_for(signature: Signature) -> SignatureRules:
    rules = _RULES.get(id(signature))
    if rules is None or rules.signature is not signature:
        if len(_RULES) > 32:
            _RULES.clear()
        rules = _RULES[id(signature)] = SignatureRules(signature)
    return rules


def check_parameters(
    signature: Signature, given: Mapping[str, Any], also: Collection[str] = ()
) -> dict[str, Any]:
    """Known parameters only, of the declared type, within bounds; defaults filled in. `also`:
    what the route itself takes (v2's protocol parameters), named among those accepted."""
    unknown = set(given) - set(signature.parameters)
    if unknown:
        accepted = sorted({*signature.parameters, *also})
        raise Problem(
            "invalid-input", f"unknown parameter(s) {quoted_list(unknown)}; accepted: {accepted}"
        )
    for name, value in given.items():
        # The validator treats None as "not given" and has no notion of NaN; neither is a value.
        if value is None:
            kind = signature.parameters[name].type
            raise Problem("invalid-input", f"parameter {name!r} must be of type {kind}")
        if isinstance(value, float) and not math.isfinite(value):
            raise Problem("invalid-input", f"parameter {name!r} must be finite")
    try:
        rules_for(signature).parameters.validate(dict(given))
    except ValidationError as exc:
        raise Problem(
            "invalid-input", f"invalid parameter(s): {exc}", extra={"errors": exc.to_list()}
        ) from None
    values: dict[str, Any] = {
        name: spec.default
        for name, spec in signature.parameters.items()
        if spec.default is not None
    }
    values.update(given)
    return values


def assemble(
    signature: Signature, arrays: dict[str, np.ndarray], parameters: dict[str, Any]
) -> Decoded:
    """Order inputs by the signature, generate what may be generated, check the batch size."""
    unknown = set(arrays) - {s.name for s in signature.inputs}
    if unknown:
        raise Problem(
            "invalid-input",
            f"unknown input(s) {quoted_list(unknown)}; the model takes "
            + ", ".join(describe(s) for s in signature.inputs),
        )
    ordered: list[np.ndarray] = []
    random = False
    for spec in signature.inputs:
        if spec.name in arrays:
            ordered.append(arrays[spec.name])
        elif spec.generate is not None and "batch_size" in parameters:
            seed = parameters.get("seed")
            random = random or seed is None
            drawn = generate(spec, int(parameters["batch_size"]), seed)
            # In its wire dtype, as a request would send it: numpy has no bfloat16.
            ordered.append((drawn.float() if spec.dtype == "bfloat16" else drawn).numpy())
        else:
            raise Problem("invalid-input", f"missing input; expected {describe(spec)}")
    items = ordered[0].shape[0]
    if any(a.shape[0] != items for a in ordered):
        raise Problem(
            "invalid-input", "all inputs must have the same size along the batch dimension"
        )
    check_items(items, signature)
    return Decoded(ordered, items, parameters, random)


def check_items(items: int, signature: Signature) -> None:
    # 413 as when a request holds more items than the queue: too large, whichever limit.
    if items > signature.max_items_per_request:
        raise Problem(
            "payload-too-large",
            f"{items} items in one request; at most {signature.max_items_per_request} are allowed",
        )


def read_infer_json(
    signature: Signature, body: bytes, max_depth: int = 32, max_elements: int = 4_000_000
) -> Inputs:
    """POST /infer JSON: {"inputs": {NAME: nested list | image}, "parameters": {...}}."""
    may_hold_bools = check_json_shape(body, max_depth, max_elements)
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise Problem("malformed-request", "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise Problem("invalid-input", "the body must be a JSON object with 'inputs'")
    unknown = set(document) - {"inputs", "parameters"}
    if unknown:
        raise Problem(
            "invalid-input", f"unknown field(s) {quoted_list(unknown)}; expected inputs, parameters"
        )
    inputs = document.get("inputs", {})
    parameters = document.get("parameters", {})
    if not isinstance(inputs, dict) or not isinstance(parameters, dict):
        raise Problem("invalid-input", "'inputs' and 'parameters' must be JSON objects")
    params = check_parameters(signature, parameters)
    known = {spec.name for spec in signature.inputs}
    unknown = set(inputs) - known
    if unknown:
        raise Problem(
            "invalid-input",
            f"unknown input(s) {quoted_list(unknown)}; the model takes "
            + ", ".join(describe(s) for s in signature.inputs),
        )
    read = Inputs(signature, params)
    for name, value in inputs.items():
        read.add_json(name, value, may_hold_bools)
    return read


def encode_infer_json(
    model: str,
    version: str,
    signature: Signature,
    outputs: list[np.ndarray],
    request_id: str | None,
) -> bytes:
    return orjson.dumps(
        {
            "model": model,
            "version": version,
            "outputs": {
                spec.name: out for spec, out in zip(signature.outputs, outputs, strict=True)
            },
            "request_id": request_id,
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )
