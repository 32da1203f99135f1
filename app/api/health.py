"""Probes. Liveness never checks dependencies; readiness says whether to send traffic here."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import HostDep

router = APIRouter(tags=["health"])

_NO_STORE = {"cache-control": "no-store"}


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


@router.get("/healthz", summary="Liveness: the process and its event loop answer")
async def healthz() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json", headers=_NO_STORE)


@router.get(
    "/readyz",
    summary="Readiness: model loaded, warm and checked; not draining",
    responses={503: {"description": "Not ready", "content": {"application/json": {}}}},
)
async def readyz(request: Request, host: HostDep) -> Response:
    ready, checks = readiness(request)
    body: dict[str, Any] = {"status": "ready" if ready else "unavailable"}
    if "verbose" in request.query_params:
        body["checks"] = checks
    return Response(
        orjson.dumps(body),
        status_code=200 if ready else 503,
        media_type="application/json",
        headers=_NO_STORE,
    )
