"""The OpenAPI description of the v2 routes: the inference request and answer as
app.inference.protocol_v2 reads and writes them, and what each route may answer."""

from __future__ import annotations

from typing import Any

from app.errors import GUARD_STATUSES, problem_responses
from app.inference.protocol_v2 import DATATYPES, NUMPY_OF, OUTPUT_PARAMETERS

MODEL_RESPONSES = problem_responses(*GUARD_STATUSES, 404)
# Not ready is `{"name", "ready": false}`; a guard's refusal (shedding, shutting down) a problem.
READY_RESPONSES = {
    **MODEL_RESPONSES,
    503: {
        "description": "Not ready, or refused",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}},
                }
            },
            **MODEL_RESPONSES[503]["content"],
        },
    },
}

# The inference request and answer as app.inference.protocol_v2 reads and writes them.
_HEADER_LENGTH = "Inference-Header-Content-Length"
_BINARY = {"type": "string", "format": "binary"}
_SHAPE = {"type": "array", "items": {"type": "integer", "minimum": 0}}


def _or_null(schema: dict[str, Any]) -> dict[str, Any]:
    """The protocol's own fields may be null, which means "not given"."""
    return {**schema, "type": [schema["type"], "null"]}


# `inputs` may be left out: a generative model draws its inputs from its parameters.
V2_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "id": _or_null({"type": "string", "description": "echoed in the answer"}),
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string"},
                    "shape": _SHAPE,
                    "datatype": {"type": "string", "enum": list(NUMPY_OF)},
                    "data": _or_null(
                        {
                            "type": "array",
                            "description": "the values, row-major, flat or nested; left out "
                            "when parameters.binary_data_size is given",
                        }
                    ),
                    "parameters": _or_null(
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "binary_data_size": _or_null(
                                    {
                                        "type": "integer",
                                        "minimum": 0,
                                        "description": "the input's bytes (little-endian, "
                                        "row-major) follow the JSON header in an "
                                        "application/octet-stream body",
                                    }
                                )
                            },
                        }
                    ),
                },
            },
        },
        "outputs": _or_null(
            {
                "type": "array",
                "description": "the outputs wanted, each once; left out or empty: all of them",
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "parameters": _or_null(
                            {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    n: _or_null({"type": "boolean"})
                                    for n in sorted(OUTPUT_PARAMETERS)
                                },
                            }
                        ),
                    },
                },
            }
        ),
        "parameters": _or_null(
            {
                "type": "object",
                "description": "the model's own parameters (its signature's), and the protocol's: "
                "binary_data_output, timeout, and priority and headers (accepted, not used); "
                "sequence batching (sequence_id, sequence_start, sequence_end) is refused",
                "properties": {
                    "binary_data_output": _or_null(
                        {
                            "type": "boolean",
                            "description": "every output as binary (an octet-stream answer)",
                        }
                    ),
                    "timeout": _or_null(
                        {
                            "type": "integer",
                            "minimum": 0,
                            "maximum": 2**64 - 1,  # JSON integers past 64 bits are refused
                            "description": "microseconds; 0 means none",
                        }
                    ),
                    "priority": _or_null({"type": "integer", "minimum": 0, "maximum": 2**64 - 1}),
                    "headers": _or_null(
                        {"type": "object", "additionalProperties": {"type": "string"}}
                    ),
                },
                "additionalProperties": True,
            }
        ),
        # Triton's binary-extension example names the model in the body; the route decides.
        "model_name": _or_null({"type": "string"}),
        "model_version": _or_null({"type": "string"}),
    },
}
V2_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model_name", "model_version", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string", "description": "the request's id, when it had one"},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "datatype", "shape"],
                "properties": {
                    "name": {"type": "string"},
                    "datatype": {"type": "string", "enum": sorted(set(DATATYPES.values()))},
                    "shape": _SHAPE,
                    "data": {"type": "array", "description": "the values, flat, row-major"},
                    "parameters": {
                        "type": "object",
                        "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
                    },
                },
            },
        },
    },
}
INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": _HEADER_LENGTH,
            "in": "header",
            "required": False,
            "description": "the length of the JSON header, when binary tensor data follows it",
            "schema": {"type": "integer", "minimum": 1},
        }
    ],
    "requestBody": {
        "required": True,
        "description": "JSON, or (binary tensor data extension) the JSON header followed by "
        f"the inputs' bytes, its length in {_HEADER_LENGTH}; a missing Content-Type is read "
        "as either; gzip or deflate Content-Encoding is accepted",
        "content": {
            "application/json": {"schema": V2_REQUEST_SCHEMA},
            "application/octet-stream": {"schema": _BINARY},
        },
    },
}
INFER_RESPONSES = {
    200: {
        "description": "The outputs: JSON, or the JSON header followed by the outputs' bytes "
        "when any output is asked for as binary",
        "headers": {
            _HEADER_LENGTH: {
                "description": "the JSON header's length (application/octet-stream only)",
                "schema": {"type": "integer"},
            }
        },
        "content": {
            "application/json": {"schema": V2_RESPONSE_SCHEMA},
            "application/octet-stream": {"schema": _BINARY},
        },
    },
    **problem_responses(*GUARD_STATUSES, 400, 404, 415, 422, 500, 504),
}
