"""GET /metrics: Prometheus text format, or OpenMetrics (with exemplars) when asked for."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from starlette.responses import Response

from app.deps import SettingsDep
from app.errors import Problem
from app.telemetry.metrics import Metrics

router = APIRouter(tags=["observability"])

# The metrics token is not an API key: its 401 names a realm (protection space) of its own.
_WWW_AUTHENTICATE = {"www-authenticate": 'Bearer realm="frameworm-metrics"'}


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    token = settings.metrics_token
    if token is not None:
        # The scheme is case-insensitive (RFC 9110 section 11.1); the token is compared whole.
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        expected = token.get_secret_value()
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), expected.encode()
        ):
            raise Problem(
                "unauthorized",
                "a valid metrics bearer token is required",
                headers=_WWW_AUTHENTICATE,
            )
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render(request.headers.get("accept", ""))
    return Response(body, headers={"content-type": content_type})
