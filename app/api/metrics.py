"""GET /metrics: Prometheus text format, or OpenMetrics (with exemplars) when asked for."""

from __future__ import annotations

import hmac
from typing import NoReturn

from fastapi import APIRouter, Request
from starlette.responses import PlainTextResponse, Response

from app.api.health import HeadResponse
from app.deps import SettingsDep
from app.errors import Problem, problem_responses, retry_after
from app.middleware.auth import bearer_token, over_failure_budget
from app.telemetry.metrics import Metrics

router = APIRouter(tags=["observability"])

# The metrics token is not an API key: its 401 names a realm (protection space) of its own.
_WWW_AUTHENTICATE = {"www-authenticate": 'Bearer realm="frameworm-metrics"'}


_TEXT = {"schema": {"type": "string"}}


# The hidden route (registered first) serves GET and HEAD, so a 405 there names both methods;
# the route above it documents GET alone: HEAD stays out of the OpenAPI document.
@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Prometheus text format, or OpenMetrics (with exemplars) when the Accept "
    "header asks for application/openmetrics-text. No API key; a bearer token when "
    "FRAMEWORM_METRICS_TOKEN is set.",
    response_class=PlainTextResponse,  # documents text/plain; the handler sends its own type
    responses={
        200: {"content": {"text/plain": _TEXT, "application/openmetrics-text": _TEXT}},
        **problem_responses(401, 429),
    },
)
@router.api_route("/metrics", methods=["GET", "HEAD"], include_in_schema=False)
async def metrics(request: Request, settings: SettingsDep) -> Response:
    token = settings.metrics_token
    if token is not None:
        # The token is compared whole. Several Authorization lines that differ are refused, as
        # for API keys: a proxy in front may have read another one than the first. An empty
        # line says nothing; another scheme's is None, which no token matches.
        lines = [line for line in request.headers.getlist("authorization") if line.strip()]
        given = {bearer_token(line) for line in lines}
        token_given = given.pop() if len(given) == 1 else None
        expected = token.get_secret_value().encode()
        if token_given is None or not hmac.compare_digest(token_given.encode(), expected):
            _refuse(request)
    registry: Metrics = request.app.state.metrics
    body, content_type = registry.render(request.headers.get("accept", ""))
    return HeadResponse(body, headers={"content-type": content_type})


def _refuse(request: Request) -> NoReturn:
    """401; past the client's budget of failed authentications (the one API keys use), 429."""
    state = request.app.state
    wait_s = over_failure_budget(request.scope, state.auth_failures, state.metrics, "metrics_token")
    if wait_s is not None:
        detail = "too many failed authentications"
        raise Problem("rate-limited", detail, headers=retry_after(wait_s))
    raise Problem(
        "unauthorized", "a valid metrics bearer token is required", headers=_WWW_AUTHENTICATE
    )
