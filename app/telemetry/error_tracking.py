"""Error tracking (Sentry), off unless FRAMEWORM_SENTRY_DSN is set (the `sentry` extra).

Only server faults are reported, explicitly, with the request id and the model version as tags.
Events are scrubbed: no request bodies, no cookies, no credential headers, no local variables.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from app.config import Settings

log = logging.getLogger("frameworm.errors")

Reporter = Callable[[BaseException, Mapping[str, str | None]], None]
_SECRET_HEADERS = {"authorization", "x-api-key", "cookie", "set-cookie", "proxy-authorization"}


def scrub(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    """Remove what must never leave the server: bodies, cookies, credentials."""
    request = event.get("request")
    if isinstance(request, dict):
        request.pop("data", None)
        request.pop("cookies", None)
        request.pop("query_string", None)
        headers = request.get("headers")
        if isinstance(headers, dict):
            request["headers"] = {
                k: ("[Filtered]" if k.lower() in _SECRET_HEADERS else v) for k, v in headers.items()
            }
    return event


def init_error_tracking(settings: Settings) -> Reporter | None:
    if settings.sentry_dsn is None:
        return None
    try:
        import sentry_sdk
    except ImportError:
        log.error(
            "FRAMEWORM_SENTRY_DSN is set but sentry-sdk is missing: pip install 'frameworm[sentry]'"
        )
        return None
    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.env,
        release="frameworm@0.1.0",
        include_local_variables=False,
        max_request_body_size="never",
        # Explicit reports only: the integrations would also turn log lines into events.
        default_integrations=False,
        auto_enabling_integrations=False,
        before_send=scrub,  # type: ignore[arg-type]  # Event is a TypedDict of the same shape
    )

    def report(error: BaseException, tags: Mapping[str, str | None]) -> None:
        with sentry_sdk.new_scope() as scope:
            for key, value in tags.items():
                if value is not None:
                    scope.set_tag(key, value)
            scope.capture_exception(error)

    return report
