"""create_app(settings) -> the ASGI app. Nothing is built at import time.

Served as `frameworm serve` or `uvicorn --factory app.main:create_app`.
"""

from __future__ import annotations

from fastapi import FastAPI
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.types import ASGIApp

from app.api import health, infer, metrics, v2
from app.config import Settings
from app.errors import install_error_handlers
from app.lifespan import Lifecycle, lifespan
from app.middleware.context import RequestContextMiddleware
from app.production import GracefulShutdown
from app.telemetry.metrics import LATENCY_BUCKETS, Metrics

QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})


class FramewormApp(FastAPI):
    def build_middleware_stack(self) -> ASGIApp:
        """The middleware, written in request order: the first here sees a request first.

        They wrap Starlette's own error layer, so even a 500 carries the request id and the
        security headers.
        """
        metrics: Metrics | None = self.state.metrics
        app = super().build_middleware_stack()
        if metrics is not None:
            app = PrometheusInstrumentatorMiddleware(
                app,
                registry=metrics.registry,
                excluded_handlers=sorted(QUIET_PATHS),
                should_group_status_codes=True,
                should_ignore_untemplated=True,
                latency_lowr_buckets=LATENCY_BUCKETS,
            )
        return RequestContextMiddleware(app, quiet_paths=QUIET_PATHS)


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
    )
    app.state.settings = settings
    app.state.lifecycle = Lifecycle(GracefulShutdown(timeout=settings.shutdown_timeout_s))
    app.state.metrics = Metrics(settings.model) if settings.metrics_enabled else None
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(infer.router)
    app.include_router(v2.router)
    if settings.metrics_enabled:
        app.include_router(metrics.router)
    return app
