"""Rate limits per principal (the API key id; the client address when auth is off).

A moving window in the `limits` engine (memory, or Redis shared by replicas, reached through
its async client so the event loop never blocks on it). Responses of limited routes carry the
IETF draft's RateLimit-Limit / RateLimit-Remaining / RateLimit-Reset (delta seconds); a refused
request gets 429 with Retry-After and never reaches the model. While the storage fails, nothing
is counted: no RateLimit-* header, and a limiter failing closed answers 503 (the client used
up nothing), with a Retry-After of seconds, not of the window.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import retry_after, send_problem
from app.middleware.auth import client_address, failure_bucket
from app.middleware.context import add_response_headers
from app.production import RateLimiter
from app.production.ratelimit import STORAGE_RETRY_S
from app.telemetry.metrics import Metrics


class RateLimitMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limiter: RateLimiter,
        default_limit: str,
        exempt_paths: frozenset[str],
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.default_limit = default_limit
        self.exempt_paths = exempt_paths
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        principal = scope.get("state", {}).get("principal")
        if principal is not None:
            key, limit = f"key:{principal.key_id}", principal.rate_limit or self.default_limit
        else:
            # By IPv6 /64, as failed authentications are: one host usually holds a whole /64.
            key, limit = f"addr:{failure_bucket(client_address(scope))}", self.default_limit
        decision = await self.limiter.hit(key, limit=limit)
        if decision.degraded:
            if decision.allowed:  # failing open
                await self.app(scope, receive, send)
            else:
                detail = "the rate limit cannot be checked (its storage is unreachable)"
                await send_problem(send, scope, "not-ready", detail, retry_after(STORAGE_RETRY_S))
            return
        # The numbers are ints: b"%d" writes what str() did, without two calls for each.
        reset_s = decision.retry_after_s
        headers = [
            (b"ratelimit-limit", b"%d" % decision.limit),
            (b"ratelimit-remaining", b"%d" % decision.remaining),
            (b"ratelimit-reset", b"%d" % reset_s),
        ]
        if not decision.allowed:
            if self.metrics is not None:
                self.metrics.rate_limited.inc()
            extra = {k.decode(): v.decode() for k, v in headers}
            extra["retry-after"] = str(reset_s)
            await send_problem(send, scope, "rate-limited", "the rate limit is exhausted", extra)
            return
        add_response_headers(scope, headers)  # written by the context layer, outermost
        await self.app(scope, receive, send)
