"""API-key authentication: X-API-Key or Authorization: Bearer -> a principal, or 401/403.

Deny by default: every path needs a key except an explicit set of exact public paths (probes,
`/v2` and `/v2/health/*`); so `//infer`, `/infer/` and other spellings are never a way around it.
A key in the query string or a cookie is not looked at. Every authentication failure gets the
same 401 body (apart from the request id); the reason goes to the metrics and the log, with
the key id only. Past a budget of failures, one client address gets 429 instead of 401 for a
while; valid keys from that address keep working.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import logging
import operator
import re
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import retry_after, send_problem
from app.production import APIKeyAuth, TokenBucketLimiter
from app.production.keys import PREFIX_PATTERN, AuthFailure, KeyStoreUnavailableError
from app.telemetry.metrics import Metrics

log = logging.getLogger("frameworm.auth")

# A token shaped like a key of ours: its id, for the log; a bearer beside an X-API-Key is one.
_KEY_ID = re.compile(rf"^{PREFIX_PATTERN}_([0-9a-f]{{8,32}})_")
_WWW_AUTHENTICATE = {"www-authenticate": 'Bearer realm="frameworm"'}
_NAME = operator.itemgetter(0)
# A tuple's `in` compares with ==, as the loop below does (a set would need hashable names).
_CARRIES_KEY = (b"x-api-key", b"authorization").__contains__


class APIKeyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        auth: APIKeyAuth,
        public_paths: frozenset[str],
        failures: TokenBucketLimiter,
        required_scope: str = "infer",
        metrics: Metrics | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.public_paths = public_paths
        self.failures = failures
        self.required_scope = required_scope
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.public_paths:
            await self.app(scope, receive, send)
            return
        tokens = _tokens(scope, self.auth.is_bootstrap)
        if len(tokens) > 1:  # two different keys: which one speaks for the client? Neither.
            await self._refuse(scope, send, AuthFailure("ambiguous"), None)
            return
        token = tokens[0] if tokens else None
        try:
            result = await self.auth.authenticate(token)
        except KeyStoreUnavailableError:
            await send_problem(
                send, scope, "not-ready", "authentication is unavailable", retry_after(2)
            )
            return
        if isinstance(result, AuthFailure):
            await self._refuse(scope, send, result, token)
            return
        scope.setdefault("state", {})["principal"] = result  # the access log names it, 403 too
        if not result.has_scope(self.required_scope):
            log.info("forbidden", extra={"key_id": result.key_id, "scope": self.required_scope})
            await send_problem(send, scope, "forbidden", "this key may not use this route")
            return
        await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, send: Send, failure: AuthFailure, token: str | None
    ) -> None:
        match = _KEY_ID.match(token or "")
        key_id = match.group(1) if match else None
        wait_s = over_failure_budget(
            scope, self.failures, self.metrics, failure.reason, key_id=key_id
        )
        if wait_s is not None:
            # Guessing from this address: refused for a while (a valid key still works, so
            # clients sharing the address behind a NAT are not locked out).
            detail = "too many failed authentications"
            await send_problem(send, scope, "rate-limited", detail, retry_after(wait_s))
            return
        await send_problem(
            send, scope, "unauthorized", "a valid API key is required", _WWW_AUTHENTICATE
        )


def _tokens(scope: Scope, is_bootstrap: Callable[[str], bool]) -> list[str]:
    """The distinct keys the request presents: X-API-Key headers, and a bearer credential
    unless an X-API-Key is there and the bearer is no key of ours (a gateway's own JWT, which
    Cloud Run IAM, oauth2-proxy or a mesh pass on; the bootstrap key, shaped as it pleases,
    is ours). More than one is refused, not resolved: a gateway in front that picked another
    one would check one key and meter it as another."""
    keys: dict[str, None] = {}  # distinct, in order (a list made thousands of lines quadratic)
    bearers: dict[str, None] = {}  # every Authorization line: a gateway may read the first, or any
    headers = scope["headers"]
    # Only the lines that can carry a key, in order, picked out in C: a loop in Python over a
    # request's dozen other lines cost more than the rest of this function.
    for name, value in itertools.compress(headers, map(_CARRIES_KEY, map(_NAME, headers))):
        if name == b"x-api-key":
            # httptools keeps trailing whitespace, which is not part of the value (RFC 9110).
            # An empty X-API-Key (a client's unset variable) is no key: it hides no bearer.
            if key := value.decode("latin-1").strip(" \t"):
                keys[key] = None
                if len(keys) > 1:
                    break  # ambiguous already: the rest is not read
        elif name == b"authorization" and (bearer := bearer_token(value.decode("latin-1"))):
            bearers[bearer] = None
    has_api_key = bool(keys)
    for bearer in bearers:
        if not has_api_key or _KEY_ID.match(bearer) or is_bootstrap(bearer):
            keys[bearer] = None
            if len(keys) > 1:
                break
    return list(keys)


def bearer_token(authorization: str) -> str | None:
    """The credentials of an `Authorization: Bearer ...` line (the scheme in any case, RFC 9110
    section 11.1); None for another scheme or none."""
    scheme, _, credentials = authorization.strip().partition(" ")
    return (credentials.strip() or None) if scheme.lower() == "bearer" else None


def over_failure_budget(
    scope: Scope,
    failures: TokenBucketLimiter,
    metrics: Metrics | None,
    reason: str,
    **log_fields: str | None,
) -> float | None:
    """Record a failed authentication (the metric, a log line naming the client). None while
    the client's budget of failures lasts (401); once it is spent (429 rather than 401), the
    seconds until it allows one more. API keys and the metrics token spend the same budget."""
    client = client_address(scope)
    if metrics is not None:
        metrics.auth_failures.labels(reason).inc()
    log.info("authentication failed", extra={"reason": reason, **log_fields, "client": client})
    bucket = failure_bucket(client)
    return None if failures.allow(bucket) else failures.wait_s(bucket)


def client_address(scope: Scope) -> str:
    # uvicorn has already applied X-Forwarded-For when the peer is a trusted proxy.
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


# Remembered: with auth off the rate limit keys every request by it, and parsing the address
# (ipaddress, in Python) cost more than the rest of the rate limit.
@functools.lru_cache(maxsize=4096)
def failure_bucket(address: str) -> str:
    """Whose failed authentications are counted together: an IPv4 address, or an IPv6 /64.
    One IPv6 host usually holds a whole /64 (SLAAC, privacy addresses), so a budget per
    address would give it 2**64 budgets."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address  # "unknown", or a unix socket path
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return address
