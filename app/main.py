"""create_app(settings) -> the ASGI app. Nothing is built at import time.

Served as `frameworm serve` or `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import APIRouter, FastAPI
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import health, infer, v2
from app.api import metrics as metrics_api
from app.api.direct import DirectRoutes
from app.config import Settings
from app.errors import install_error_handlers
from app.lifespan import Lifecycle, lifespan, quiet_forced_exit
from app.middleware.auth import APIKeyMiddleware
from app.middleware.context import RequestContextMiddleware
from app.middleware.limits import RequestLimitsMiddleware
from app.middleware.metrics import HttpMetricsMiddleware
from app.middleware.ratelimit import RateLimitMiddleware
from app.production import APIKeyAuth, GracefulShutdown, RateLimiter, TokenBucketLimiter
from app.production.ratelimit import parse_limit
from app.production.tracing import shutdown_tracing
from app.telemetry.error_tracking import init_error_tracking
from app.telemetry.metrics import LATENCY_BUCKETS, Metrics
from app.telemetry.tracing import tracing_middleware

log = logging.getLogger("frameworm.app")

PROBE_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
# Reachable without an API key: probes, the protocol's server metadata, and /metrics (which
# has its own optional bearer token).
PUBLIC_PATHS = PROBE_PATHS | {"/v2", "/metrics"}
QUIET_PATHS = PROBE_PATHS | {"/metrics"}
TRACE_FLUSH_S = 3.0
# How the OpenAPI document says a request authenticates (app.middleware.auth): the same API key
# in either header; /metrics has a bearer token of its own (FRAMEWORM_METRICS_TOKEN).
API_KEY_SCHEMES: dict[str, dict[str, str]] = {
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "bearerApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "the API key, as Authorization: Bearer <key>",
    },
}
METRICS_SCHEME: dict[str, dict[str, str]] = {
    "metricsToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "FRAMEWORM_METRICS_TOKEN, for /metrics only",
    }
}
_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# The routes every app serves; /metrics's router is added when metrics are on.
ROUTERS = (health.router, infer.router, v2.router)


class FramewormApp(FastAPI):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            receive, send = quiet_forced_exit(receive, send)
        await super().__call__(scope, receive, send)

    def build_middleware_stack(self) -> ASGIApp:
        # Wrap Starlette's own error layer, so that even a 500 carries the request id and the
        # security headers, and is counted.
        app = super().build_middleware_stack()
        # Innermost: the inference routes, served without FastAPI's per-request machinery.
        app = DirectRoutes(app, routes=self.state.direct_routes)
        for middleware in reversed(self.state.middleware):
            app = middleware.cls(app, *middleware.args, **middleware.kwargs)
        return app

    def openapi(self) -> dict[str, Any]:
        """FastAPI's document (built once, cached by FastAPI), with how each route is
        authenticated added once to each document built."""
        document = super().openapi()
        if document is not getattr(self.state, "secured_openapi", None):
            document_security(document, self.state.settings)
            drop_default_validation_errors(document)
            self.state.secured_openapi = document
        return document


def drop_default_validation_errors(document: dict[str, Any]) -> None:
    """FastAPI documents a 422 `HTTPValidationError` for every route with parameters. Here a
    validation error is answered as a problem (app.errors), and the routes that take only a
    path's strings cannot fail one: their 422 and its schemas go; a route's own 422 stays."""
    default = "#/components/schemas/HTTPValidationError"
    for item in document.get("paths", {}).values():
        for operation in item.values():
            responses = operation.get("responses", {}) if isinstance(operation, dict) else {}
            content = responses.get("422", {}).get("content", {})
            if content.get("application/json", {}).get("schema", {}).get("$ref") == default:
                del responses["422"]
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    if default not in orjson.dumps(document.get("paths")).decode():
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)


def document_security(document: dict[str, Any], settings: Settings) -> None:
    """securitySchemes and each operation's `security`, as the server enforces them: with auth
    on, an API key (in either header) on every path but the public ones; the metrics token on
    /metrics when one is set; nothing else (auth off: no key is claimed anywhere). An operation
    that asks for no credential cannot answer 401 or 403 (nor /metrics 429, which only its
    failed tokens earn): those are taken out of its responses."""
    paths: dict[str, dict[str, Any]] = document.get("paths", {})
    api_key: list[dict[str, list[str]]] = (
        [{name: []} for name in API_KEY_SCHEMES] if settings.auth_enabled else []
    )
    token = settings.metrics_token is not None and "/metrics" in paths
    metrics: list[dict[str, list[str]]] = [{name: []} for name in METRICS_SCHEME] if token else []
    for path, item in paths.items():
        # A list of requirements: any one of them is enough.
        required = metrics if path == "/metrics" else [] if path in PUBLIC_PATHS else api_key
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            if required:
                operation["security"] = required
                continue
            responses: dict[str, Any] = operation.get("responses", {})
            for status in ("401", "403", "429") if path == "/metrics" else ("401", "403"):
                responses.pop(status, None)
    schemes = (API_KEY_SCHEMES if api_key else {}) | (METRICS_SCHEME if metrics else {})
    if schemes:
        document.setdefault("components", {})["securitySchemes"] = schemes


def auth_failure_limiter(settings: Settings) -> TokenBucketLimiter:
    """Failed authentications per client (FRAMEWORM_AUTH_FAILURE_LIMIT): one budget shared by
    API keys and the metrics token, so neither can be guessed at the other's expense."""
    limit = parse_limit(settings.auth_failure_limit)
    return TokenBucketLimiter(capacity=limit.amount, refill_rate=limit.amount / limit.get_expiry())


def build_middleware(
    settings: Settings,
    metrics: Metrics | None,
    tracing: Middleware | None,
    lifecycle: Lifecycle,
    failures: TokenBucketLimiter,
) -> list[Middleware]:
    """The middleware, in request order: the first here sees a request first."""
    public = PUBLIC_PATHS | ({"/docs", "/openapi.json"} if settings.enable_docs else set())
    # Tracing first, so the access-log line (context) is written inside the request's span.
    stack = [tracing] if tracing is not None else []
    stack.append(
        Middleware(
            RequestContextMiddleware,
            quiet_paths=QUIET_PATHS,
            draining=lambda: lifecycle.shutdown.is_shutting_down,
        )
    )
    if metrics is not None:
        stack.append(
            Middleware(
                HttpMetricsMiddleware,
                registry=metrics.registry,
                tallies=metrics.tallies,
                buckets=LATENCY_BUCKETS,
                handlers=route_templates(*ROUTERS, metrics_api.router),
                excluded_paths=QUIET_PATHS,
            )
        )
    if settings.auth_enabled:
        stack.append(
            Middleware(
                APIKeyMiddleware,
                auth=APIKeyAuth(settings=settings),
                public_paths=frozenset(public),
                failures=failures,
                metrics=metrics,
            )
        )
    else:
        log.warning("authentication is OFF (FRAMEWORM_AUTH_ENABLED=false): anyone can call /infer")
    # After auth: a client without a key must not hold one of the concurrency slots (a request
    # that is refused 401 never reads its body, so the body limits lose nothing by it).
    stack.append(
        Middleware(
            RequestLimitsMiddleware,
            max_body_bytes=settings.max_body_bytes,
            body_timeout_s=settings.body_timeout_s,
            max_concurrency=settings.max_concurrency,
            exempt_paths=QUIET_PATHS,
            metrics=metrics,
            at_shutdown_deadline=lifecycle.at_shutdown_deadline,
        )
    )
    if not settings.rate_limit_enabled:
        log.warning("rate limiting is OFF (FRAMEWORM_RATE_LIMIT_ENABLED=false)")
        return stack
    stack.append(
        Middleware(
            RateLimitMiddleware,
            limiter=RateLimiter.from_string(
                settings.rate_limit,
                storage_uri=settings.rate_limit_storage,
                fail_open=settings.rate_limit_fail_open,
                timeout_s=settings.rate_limit_timeout_s,
                max_connections=128,
            ),
            default_limit=settings.rate_limit,
            exempt_paths=frozenset(public),
            metrics=metrics,
        )
    )
    return stack


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    docs = settings.enable_docs
    app = FramewormApp(
        title="Frameworm",
        summary="A registered PyTorch model behind a hardened HTTP API",
        version="0.1.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
        # A path one slash off a route is 404, not a 307 whose Location comes from the client's
        # Host header (and which clients follow resending their API key).
        redirect_slashes=False,
        # FastAPI's own OpenTelemetry layer switches itself on once a global tracer provider
        # exists, and would trace every request (probes too) a second time, unsampled ones
        # included. Tracing here is the OTel ASGI middleware behind TraceSampling.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    app.state.lifecycle = Lifecycle(GracefulShutdown(timeout=settings.shutdown_timeout_s))
    app.state.metrics = Metrics(settings.model) if settings.metrics_enabled else None
    app.state.report_error = init_error_tracking(settings)
    app.state.tracer, tracing = tracing_middleware(settings)
    if tracing is not None:
        # Spans are flushed in the drain, within a bound that fits the shutdown budget.
        app.state.lifecycle.shutdown.register_handler(lambda: shutdown_tracing(TRACE_FLUSH_S))
    app.state.auth_failures = auth_failure_limiter(settings)
    app.state.middleware = build_middleware(
        settings, app.state.metrics, tracing, app.state.lifecycle, app.state.auth_failures
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.state.direct_routes = [*infer.DIRECT_ROUTES, *v2.DIRECT_ROUTES]
    if settings.metrics_enabled:
        app.include_router(metrics_api.router)
    return app


def route_templates(*routers: APIRouter) -> frozenset[str]:
    """Every path template the routers serve (prefixes included), e.g. /v2/models/{name}."""
    return frozenset(
        path for router in routers for r in router.routes if (path := getattr(r, "path", ""))
    )
