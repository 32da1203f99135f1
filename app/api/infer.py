"""POST /infer: JSON or multipart/form-data in, the model's outputs (and version) out."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import UploadFile
from starlette.responses import Response

from app.api.body_headers import content_encoding, media_type
from app.config import Settings
from app.deps import inference_context
from app.errors import GUARD_STATUSES, Problem, problem_responses, quoted, request_id_of
from app.inference.codec import (
    Inputs,
    check_parameters,
    encode_infer_json,
    read_infer_json,
)
from app.inference.compression import decompressed, is_identity
from app.inference.images import EncodedImage
from app.inference.json_shape import check_json_shape
from app.inference.service import off_the_loop_if_large, run_inference
from models.manifest import Signature

router = APIRouter(tags=["inference"])

INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "inputs": {
            "type": "object",
            "description": "name -> nested list (batch first), or {b64, content_type} image(s)",
            "additionalProperties": True,
        },
        "parameters": {"type": "object", "additionalProperties": True},
    },
}
INFER_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["model", "version", "outputs", "request_id"],
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "string"},
        "outputs": {"type": "object", "additionalProperties": True},
        "request_id": {"type": ["string", "null"]},
    },
}


@router.post(
    "/infer",
    summary="Run the served model on one request (one or more items)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": INFER_REQUEST_SCHEMA},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "description": "one part per input, named after it",
                    }
                },
            },
        }
    },
    responses={
        200: {"content": {"application/json": {"schema": INFER_RESPONSE_SCHEMA}}},
        **problem_responses(*GUARD_STATUSES, 400, 415, 422, 500, 504),
    },
)
async def infer(request: Request) -> Response:
    runner, batcher, settings = inference_context(request)
    signature = runner.manifest.signature
    body_type = media_type(request)
    encoding = content_encoding(request)
    if body_type == "application/json":
        body = decompressed(await request.body(), encoding, settings.max_body_bytes)
        inputs = await off_the_loop_if_large(
            len(body),
            read_infer_json,
            signature,
            body,
            settings.max_json_depth,
            settings.max_json_elements,
        )
    elif body_type == "multipart/form-data":
        if not is_identity(encoding):
            raise Problem("unsupported-media-type", "a multipart body cannot be sent compressed")
        inputs = await read_multipart(request, signature, settings)
    else:
        raise Problem("unsupported-media-type", "send application/json or multipart/form-data")
    # Decoding images is slow CPU work: in a worker thread, so the loop serves other requests
    # (and the probes) meanwhile. Tensors alone, the hot path, are assembled inline. The
    # deadline counts from here: images' decoding spends it too.
    deadline = time.monotonic() + settings.request_timeout_ms / 1000
    if inputs.images:
        decoded = await asyncio.to_thread(inputs.decode, deadline)
    else:
        decoded = inputs.decode()
    served = await run_inference(request, runner, batcher, decoded, deadline - time.monotonic())
    body = encode_infer_json(
        runner.manifest.name,
        served.version,
        signature,
        served.outputs,
        request_id_of(request.scope),
    )
    return Response(
        body, media_type="application/json", headers={"x-model-version": served.version}
    )


# Served by app.api.direct.DirectRoutes (POST); FastAPI documents it and answers other methods.
DIRECT_ROUTES = [r for r in router.routes if isinstance(r, APIRoute) and r.endpoint is infer]


async def read_multipart(request: Request, signature: Signature, settings: Settings) -> Inputs:
    """One part per input, named after it: image files, or JSON arrays; `parameters` as JSON."""
    limit = len(signature.inputs) + 1
    # Read whole first (the limits layer has bounded it): the parser takes a body cut short
    # for complete and drops the part it was in, so a truncated request would be served
    # without its last part. Request.form() then parses the body kept here.
    if not _is_complete_multipart(await request.body(), request.headers["content-type"]):
        detail = "the multipart body has no boundary or ends before its closing boundary"
        raise Problem("malformed-request", detail)
    try:
        # A JSON field may take the whole body (Starlette's default stops fields at 1 MB).
        form = await request.form(
            max_files=limit, max_fields=limit, max_part_size=settings.max_body_bytes
        )
    except Exception:  # python-multipart raises several types for malformed bodies
        raise Problem("malformed-request", "the multipart body cannot be parsed") from None
    try:
        inputs = Inputs(signature)
        parameters: dict[str, Any] = {}
        names: set[str] = set()
        for name, part in form.multi_items():
            if name in names:
                raise Problem("invalid-input", f"part {quoted(name)} is given twice")
            names.add(name)
            size = len(part) if isinstance(part, str) else 0
            if name == "parameters":
                parameters = await off_the_loop_if_large(
                    size, _parameters_part, signature, part, settings
                )
                continue
            spec = next((s for s in signature.inputs if s.name == name), None)
            if spec is None:
                inputs.arrays[name] = np.zeros(0)  # reported by assemble, with the expected inputs
            elif isinstance(part, UploadFile):
                if spec.image is None:
                    raise Problem("invalid-input", f"input {name!r} does not take a file")
                raw = await part.read()
                inputs.images[name] = [EncodedImage(name, raw, spec.image, part.content_type)]
            else:
                await off_the_loop_if_large(size, _add_json_part, inputs, name, part, settings)
        inputs.parameters = check_parameters(signature, parameters)  # checked: only defaults
        return inputs
    finally:
        await form.close()


def _is_complete_multipart(body: bytes, content_type: str) -> bool:
    """Whether the body holds its close delimiter, "--BOUNDARY--" (RFC 2046, 5.1.1). An empty
    boundary is none (its delimiter would be any "----")."""
    boundary = parse_options_header(content_type)[1].get(b"boundary")
    return boundary is not None and boundary != b"" and b"--" + boundary + b"--" in body


def _parameters_part(
    signature: Signature, part: str | UploadFile, settings: Settings
) -> dict[str, Any]:
    """The `parameters` part, parsed and checked (a million unknown names take a while)."""
    parameters, _ = _json_part("parameters", part, settings)
    if not isinstance(parameters, dict):
        raise Problem("invalid-input", "the 'parameters' part must be a JSON object")
    return check_parameters(signature, parameters)


def _add_json_part(inputs: Inputs, name: str, part: str | UploadFile, settings: Settings) -> None:
    inputs.add_json(name, *_json_part(name, part, settings))


def _json_part(name: str, part: str | UploadFile, settings: Settings) -> tuple[Any, bool]:
    """A JSON field, checked as a JSON body is; with whether it may hold a boolean."""
    if not isinstance(part, str):
        raise Problem("invalid-input", f"part {quoted(name)} must be a form field, not a file")
    text = part.encode()
    may_hold_bools = check_json_shape(text, settings.max_json_depth, settings.max_json_elements)
    try:
        return orjson.loads(text), may_hold_bools
    except orjson.JSONDecodeError:
        raise Problem("malformed-request", f"part {quoted(name)} is not valid JSON") from None
