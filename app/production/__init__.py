"""The production checklist's building blocks, usable on their own in any ASGI app.

The server's middleware are thin adapters over these classes; see README.md, "Building blocks".
"""

from __future__ import annotations

from .health import HealthChecker, HealthStatus
from .key_records import KeyRecord
from .keys import APIKeyAuth, AuthFailure, KeyStoreUnavailableError, Principal
from .keystore import FileKeyStore, HashedFileKeyStore, KeyStore, RedisKeyStore
from .ratelimit import RateLimitDecision, RateLimiter, parse_limit
from .shutdown import GracefulShutdown, attach_server, detach_server
from .signing import RequestSigner
from .tokenbucket import TokenBucketLimiter
from .tracing import setup_tracing, shutdown_tracing
from .validation import FieldError, RequestValidator, ValidationError

__all__ = [
    "APIKeyAuth",
    "AuthFailure",
    "FieldError",
    "FileKeyStore",
    "GracefulShutdown",
    "HashedFileKeyStore",
    "HealthChecker",
    "HealthStatus",
    "KeyRecord",
    "KeyStore",
    "KeyStoreUnavailableError",
    "Principal",
    "RateLimitDecision",
    "RateLimiter",
    "RedisKeyStore",
    "RequestSigner",
    "RequestValidator",
    "TokenBucketLimiter",
    "ValidationError",
    "attach_server",
    "detach_server",
    "parse_limit",
    "setup_tracing",
    "shutdown_tracing",
]
