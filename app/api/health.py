"""Probes. Liveness never checks dependencies; readiness says whether to send traffic here."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.deps import HostDep

router = APIRouter(tags=["health"])

_NO_STORE = {"cache-control": "no-store"}


class HeadResponse(Response):
    """An answer to a route that takes GET and HEAD: to HEAD, the same status and headers,
    Content-Length included, without the body (RFC 9110 9.3.2)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] != "HEAD":
            await super().__call__(scope, receive, send)
            return
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": b""})


class ProbeResponse(HeadResponse):
    """A probe's JSON answer (load balancers probe with HEAD too)."""

    media_type = "application/json"


def readiness_answer(
    body: dict[str, Any], ready: bool, headers: dict[str, str] | None = None
) -> ProbeResponse:
    """200, or 503 with a Retry-After, as every 503 of this server carries one."""
    extra = {} if ready else {"retry-after": "1"}
    return ProbeResponse(
        orjson.dumps(body), 200 if ready else 503, headers={**(headers or {}), **extra}
    )


def readiness(request: Request) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Each readiness check with its verdict and reason."""
    host = request.state.host
    status = host.status()
    checks: dict[str, dict[str, Any]] = {
        "model": {
            "ok": status.state == "ready",
            "reason": status.reason,
            "model": status.model,
            "version": status.version,
        },
    }
    running_since = request.state.batcher.running_since
    checks["forward"] = forward_check(running_since, request.state.settings.request_timeout_ms)
    follower = getattr(request.state, "follower", None)
    if follower is not None:
        checks["rollout"] = {
            "ok": True,  # informational: a refused or rolled-back version leaves the old serving
            "reason": follower.last_event,
            "refused": follower.refused,
            "pinned_against": follower.pinned_against,
        }
    draining = request.state.lifecycle.shutdown.is_shutting_down
    checks["draining"] = {
        "ok": not draining,
        "reason": "shutting down" if draining else "accepting traffic",
    }
    return all(c["ok"] for c in checks.values()), checks


def forward_check(running_since: float | None, request_timeout_ms: float) -> dict[str, Any]:
    """Not ready while one forward pass has run past twice the request timeout (a stuck kernel,
    an input that makes a model loop): every request queued behind it times out (504) while
    the replica looked ready, so the load balancer kept sending it traffic. The batcher's pass,
    whichever version runs it (a switch does not free a batcher stuck on the old one)."""
    running_s = 0.0 if running_since is None else time.monotonic() - running_since
    if running_s > 2 * request_timeout_ms / 1000:
        return {"ok": False, "reason": f"one forward pass has run for {running_s:.0f} s"}
    return {"ok": True, "reason": "no forward pass past twice the request timeout"}


# The hidden route (registered first) serves GET and HEAD, so a 405 there names both methods;
# the route above it documents GET alone: HEAD stays out of the OpenAPI document.
@router.get("/healthz", summary="Liveness: the process and its event loop answer")
@router.api_route("/healthz", methods=["GET", "HEAD"], include_in_schema=False)
async def healthz() -> Response:
    return ProbeResponse(b'{"status":"ok"}', headers=_NO_STORE)


@router.get(
    "/readyz",
    summary="Readiness: model loaded, warm and checked; not draining",
    responses={503: {"description": "Not ready", "content": {"application/json": {}}}},
    # Read as a flag by the handler (present or not), so FastAPI does not parse it: declared
    # here only, where a `bool` parameter would refuse the bare `?verbose` with a 422.
    openapi_extra={
        "parameters": [
            {
                "name": "verbose",
                "in": "query",
                "required": False,
                "allowEmptyValue": True,
                "description": "a flag, given without a value (`/readyz?verbose`; any value "
                "counts the same): the answer lists each check with its verdict and reason",
                "schema": {"type": "string"},
            }
        ]
    },
)
@router.api_route("/readyz", methods=["GET", "HEAD"], include_in_schema=False)
async def readyz(request: Request, host: HostDep) -> Response:
    ready, checks = readiness(request)
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
    if "verbose" in request.query_params:
        body["checks"] = checks
    return readiness_answer(body, ready, _NO_STORE)
