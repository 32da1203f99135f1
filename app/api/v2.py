"""The Open Inference Protocol v2 routes (KServe / Triton REST), so stock clients work."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.routing import APIRoute
from starlette.responses import Response

from app.api.body_headers import content_encoding, media_type, single_value
from app.api.health import HeadResponse, ProbeResponse, readiness, readiness_answer
from app.api.v2_openapi import INFER_OPENAPI, INFER_RESPONSES, MODEL_RESPONSES, READY_RESPONSES
from app.config import Settings
from app.deps import HostDep, inference_context
from app.errors import Problem
from app.inference.batcher import DynamicBatcher
from app.inference.compression import decompressed
from app.inference.host import ModelHost
from app.inference.protocol_v2 import (
    DATATYPES,
    decode_request,
    encode_response,
)
from app.inference.runner import ModelRunner
from app.inference.service import off_the_loop_if_large, run_inference
from app.telemetry.metrics import Metrics
from models.manifest import TensorSpec

router = APIRouter(prefix="/v2", tags=["open-inference-protocol-v2"])

SERVER_METADATA = {
    "name": "frameworm",
    "version": "0.1.0",
    "extensions": ["binary_tensor_data"],
}


def _json(body: Any, status: int = 200) -> Response:
    # The GET routes here answer HEAD too: the same status and headers, no body.
    return HeadResponse(orjson.dumps(body), status, media_type="application/json")


def _serving(
    request: Request, name: str, version: str | None
) -> tuple[ModelRunner, DynamicBatcher, Settings]:
    """What serves `name` (at `version`). Another model is 404 even while this server's model
    loads: the 503 of a model still loading is for the model this server will serve."""
    _this_model(name, request.state.settings)
    context = inference_context(request)
    _this_version(context[0].manifest.version, version)
    return context


def _this_model(name: str, settings: Settings) -> None:
    if name != settings.model:  # the name the served version was resolved from
        raise Problem("model-not-found", "this server does not serve that model")


def _this_version(
    served: str, version: str | None, detail: str = "this server does not serve that model version"
) -> None:
    """404 when the route names a version (`version`) other than the one `served`."""
    if version is not None and version != served:
        raise Problem("model-not-found", detail)


def _tensor_metadata(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "datatype": DATATYPES[spec.dtype], "shape": list(spec.shape)}


# On each GET route, the hidden route (registered first) serves GET and HEAD, so a 405 there
# names both methods; the route above it documents GET alone: HEAD stays out of the OpenAPI
# document.
@router.get("", summary="Server metadata")
@router.api_route("", methods=["GET", "HEAD"], include_in_schema=False)
async def server_metadata() -> Response:
    return _json(SERVER_METADATA)


@router.get("/health/live", summary="Server liveness")
@router.api_route("/health/live", methods=["GET", "HEAD"], include_in_schema=False)
async def live() -> Response:
    return ProbeResponse(orjson.dumps({"live": True}))


@router.get(
    "/health/ready",
    summary="Server readiness",
    responses={503: {"description": "Not ready", "content": {"application/json": {}}}},
)
@router.api_route("/health/ready", methods=["GET", "HEAD"], include_in_schema=False)
async def ready(request: Request) -> Response:
    ok, _ = readiness(request)
    return readiness_answer({"ready": ok}, ok)


@router.get("/models/{name}", summary="Model metadata", responses=MODEL_RESPONSES)
@router.api_route("/models/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def model_metadata(request: Request, name: str) -> Response:
    return _metadata(_serving(request, name, None)[0])


@router.get(
    "/models/{name}/versions/{version}", summary="Model version metadata", responses=MODEL_RESPONSES
)
@router.api_route(
    "/models/{name}/versions/{version}", methods=["GET", "HEAD"], include_in_schema=False
)
async def version_metadata(request: Request, name: str, version: str) -> Response:
    return _metadata(_serving(request, name, version)[0])


def _metadata(runner: ModelRunner) -> Response:
    manifest = runner.manifest
    return _json(
        {
            "name": manifest.name,
            "versions": [manifest.version],
            "platform": f"pytorch_{manifest.format}",
            "inputs": [_tensor_metadata(s) for s in manifest.signature.inputs],
            "outputs": [_tensor_metadata(s) for s in manifest.signature.outputs],
        }
    )


@router.get("/models/{name}/ready", summary="Model readiness", responses=READY_RESPONSES)
@router.api_route("/models/{name}/ready", methods=["GET", "HEAD"], include_in_schema=False)
async def model_ready(host: HostDep, name: str) -> Response:
    return _ready(host, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="Model version readiness",
    responses=READY_RESPONSES,
)
@router.api_route(
    "/models/{name}/versions/{version}/ready", methods=["GET", "HEAD"], include_in_schema=False
)
async def version_ready(host: HostDep, name: str, version: str) -> Response:
    return _ready(host, name, version)


def _ready(host: ModelHost, name: str, version: str | None) -> Response:
    _this_model(name, host.settings)
    runner = host.runner
    if runner is None:
        return readiness_answer({"name": name, "ready": False}, False)
    _this_version(runner.manifest.version, version)
    return _json({"name": name, "ready": True})


@router.post(
    "/models/{name}/infer",
    summary="Inference",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def model_infer(request: Request, name: str) -> Response:
    return await _infer(request, *_serving(request, name, None))


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="Inference on a version",
    responses=INFER_RESPONSES,
    openapi_extra=INFER_OPENAPI,
)
async def version_infer(request: Request, name: str, version: str) -> Response:
    return await _infer(request, *_serving(request, name, version), pinned=version)


# Served by app.api.direct.DirectRoutes (POST); FastAPI documents them and answers other methods.
DIRECT_ROUTES = [
    r
    for r in router.routes
    if isinstance(r, APIRoute) and r.endpoint in (model_infer, version_infer)
]


async def _infer(
    request: Request,
    runner: ModelRunner,
    batcher: DynamicBatcher,
    settings: Settings,
    pinned: str | None = None,
) -> Response:
    """`pinned`: the version the route named; the answer must come from it."""
    # Stock clients send JSON, octet-stream (binary extension) or no content type at all.
    if media_type(request) not in ("", "application/json", "application/octet-stream"):
        raise Problem("unsupported-media-type", "send application/json or application/octet-stream")
    signature = runner.manifest.signature
    body = decompressed(
        await request.body(),
        content_encoding(request),
        settings.max_body_bytes,
    )
    v2 = await off_the_loop_if_large(
        len(body),
        decode_request,
        signature,
        body,
        single_value(request, "inference-header-content-length"),
        settings.max_json_depth,
        settings.max_json_elements,
    )
    timeout_s = settings.request_timeout_ms / 1000
    client_deadline = v2.timeout_s is not None and v2.timeout_s < timeout_s
    if v2.timeout_s is not None:
        timeout_s = min(timeout_s, v2.timeout_s)
    try:
        served = await run_inference(
            request, runner, batcher, v2.decoded, timeout_s, client_deadline=client_deadline
        )
    except Problem as problem:
        if client_deadline and problem.code == "deadline-exceeded":
            _client_deadline_missed(request)
        raise
    # A switch while the request waited in the queue: the batch ran on the version now served.
    _this_version(served.version, pinned, "that model version stopped serving during the request")
    body, headers = encode_response(
        runner.manifest.name, served.version, signature, served.outputs, v2
    )
    return Response(body, headers={**headers, "x-model-version": served.version})


def _client_deadline_missed(request: Request) -> None:
    """Count a 504 whose deadline the client chose, shorter than the server's.

    Still 504 (the protocol's answer), but no fault of the server: the error-rate alert, the
    canary analysis and the dashboard subtract `frameworm_requests_shed_total{reason=
    "client_deadline"}` from the 5xx, so a client cannot fail a version by asking for 1 us.
    The batcher has counted the same request under `deadline` too (all deadline misses).
    """
    metrics: Metrics | None = request.app.state.metrics
    if metrics is not None:
        metrics.shed("client_deadline")
